"""One contract over every registered table kind (as test_method_contract.py over the methods):
what the workflow reads from a kind is there and consistent, and the registry stays light."""

import subprocess
import sys

import pytest

from diffrepro.report.kinds import STAGES, load_table_kinds, table_targets
from diffrepro.report.paper import PAPER_DIR

KINDS = load_table_kinds()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_declares_what_the_workflow_reads(name):
    kind = KINDS[name]
    assert kind.name == name and kind.summary and kind.stage in STAGES
    assert kind.figures and all(callable(draw) for draw in kind.figures.values()) and callable(kind.build)
    assert set(kind.captions) <= set(kind.figures) and set(kind.groups) <= set(kind.figures)
    for figure in kind.figures:
        assert kind.caption(figure, "T").strip() and kind.group(figure)
    if kind.paper is not None:
        assert (PAPER_DIR / f"{kind.paper}.yaml").is_file()
    assert all(target.startswith("reproduce_") for target in kind.targets)
    entry = {"kind": name, "method": "m"} if kind.one_method else {"kind": name, "methods": ["m", "n"]}
    assert kind.methods(entry) == (["m"] if kind.one_method else ["m", "n"])


def test_group_targets_build_only_their_kinds_tables():
    tables = {"tstitch": {"method": "a"}, "pair": {"method": "b"}, "mine": {"kind": "pareto", "methods": ["a"]}}
    targets = table_targets(tables)
    assert targets["reproduce_tstitch_table"] == ["tstitch"] and targets["reproduce_mine_table"] == ["mine"]
    assert targets["reproduce_tstitch_pairs"] == ["pair"] and targets["reproduce_parataa_table"] == []


def test_loading_the_registry_imports_no_torch_or_matplotlib():
    """The Snakefile loads every kind at each start: plotting and torch load when a job runs."""
    code = ("import sys; from diffrepro.report.kinds import load_table_kinds; load_table_kinds(); "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
