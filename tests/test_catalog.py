"""`python -m diffrepro list`: every method, training component, table kind and the config's
reproduce_* targets, one line each, without Snakemake or torch; unknown names point to it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffrepro.catalog import LIST_HINT, load_config
from diffrepro.config import ConfigError, check_config
from diffrepro.methods import get_method, load_plugins
from diffrepro.report.kinds import get_table_kind, table_targets
from diffrepro.training_methods import check_components

ROOT = Path(__file__).resolve().parents[1]


def run_list(*args, code=None):
    command = [sys.executable, "-m", "diffrepro", "list", *args] if code is None else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def rows(output: str, title: str) -> dict[str, str]:
    """name -> its line's text, in the section whose title starts with `title`."""
    section, = [block for block in output.split("\n\n") if block.startswith(title)]
    return dict(line.strip().split(None, 1) for line in section.splitlines()[1:])


def fresh_registry() -> dict:
    """The registries as a new process sees them (tests in this process register throwaway
    methods and kinds)."""
    code = ("import json; from diffrepro.methods import load_plugins; "
            "from diffrepro.report.kinds import load_table_kinds; "
            "from diffrepro.training_methods import training_components; "
            "print(json.dumps({'methods': sorted(load_plugins()), 'components': sorted(training_components()), "
            "'kinds': {n: k.summary for n, k in load_table_kinds().items()}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_list_names_every_method_kind_and_default_target():
    result = run_list()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    registry = fresh_registry()
    methods = rows(out, "Methods")
    assert sorted(methods) == registry["methods"]
    assert methods["tstitch"] == ("Trajectory stitching: small denoiser first, large denoiser from the switch on. "
                                  "(settings: ratio, sampler, steps)")
    assert sorted(rows(out, "Training components")) == registry["components"]
    assert rows(out, "Table kinds") == registry["kinds"]
    targets = rows(out, "Targets of config/default.yaml")
    default = yaml.safe_load((ROOT / "config/default.yaml").read_text())["tables"]
    expected = {t for t, tables in table_targets(default).items() if tables} | {"reproduce_all", "reproducibility"}
    assert set(targets) == expected
    assert targets["reproduce_tstitch_pairs"].startswith("tstitch_b_xl, tstitch_s_b (tstitch): T-Stitch")


def test_list_reads_a_standalone_config_alone():
    result = run_list("--configfile", "config/smoke.yaml")
    assert result.returncode == 0, result.stderr
    smoke = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())["tables"]
    assert set(rows(result.stdout, "Targets of config/smoke.yaml")) == (
        {t for t, tables in table_targets(smoke).items() if tables} | {"reproduce_all", "reproducibility"})


def test_a_config_file_is_merged_into_the_default_as_snakemake_merges_it(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("tables: {mine: {kind: pareto, methods: [tstitch]}}\nsampling: {steps: 10}\n")
    config = load_config(str(extra))
    default = load_config()
    assert set(config["tables"]) == set(default["tables"]) | {"mine"}
    assert config["sampling"] == {**default["sampling"], "steps": 10}


def test_listing_imports_neither_snakemake_nor_torch():
    code = ("import io, sys, contextlib\nfrom diffrepro.__main__ import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['list'])\n"
            "print(sorted(m for m in ('torch', 'snakemake', 'matplotlib') if m in sys.modules))")
    result = run_list(code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_config_file_is_one_line_and_exit_2():
    result = run_list("--configfile", "config/nope.yaml")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: [Errno 2] No such file or directory: 'config/nope.yaml'\n"


def test_every_method_has_a_one_line_summary():
    for name, spec in load_plugins().items():
        assert spec.summary and "\n" not in spec.summary, name


def test_unknown_names_point_to_the_listing():
    with pytest.raises(KeyError) as err:
        get_method("tstich")
    assert err.value.args[0].endswith(LIST_HINT)
    with pytest.raises(KeyError) as err:
        get_table_kind("nope")
    assert err.value.args[0].endswith(LIST_HINT)
    with pytest.raises(ValueError, match=f"has no setting \\['ratoi'\\]; .*; {LIST_HINT}$"):
        get_method("tstitch").make_setting({"ratoi": 0.5})
    with pytest.raises(ValueError, match=f"unknown training component 'sped'; .*; {LIST_HINT}$"):
        check_components(["sped"])
    config = load_config()
    config["methods"]["fastest_ever"] = dict(config["methods"]["tstitch"])
    with pytest.raises(ConfigError, match=f"methods.fastest_ever: unknown method 'fastest_ever'; .*; {LIST_HINT}$"):
        check_config(config)
