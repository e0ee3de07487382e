"""REPRODUCIBILITY.md is written by a rule from result files: every table and claims file of the
build appears in it as generated, with the commit and config hash of its results; a table
without results is marked as not regenerated."""

import json
import shutil

import pytest

from diffrepro.integrity import write_hashed_json
from diffrepro.report.gpu_check import GPU_CHECK_JSON, gpu_check_section
from diffrepro.report.kinds import get_table_kind
from diffrepro.report.reproducibility import nest, render, sections
from workflow_run import ROOT, SMOKE, snakemake

TEMPLATE = ROOT / "workflow/report/reproducibility.md.j2"


def test_headings_nest_under_the_section():
    assert nest("# A\n\ntext\n\n## B\n", top=3) == "### A\n\ntext\n\n#### B"
    assert nest("## claims\n", top=3) == "### claims"


def test_a_table_without_results_is_marked_not_regenerated(tmp_path):
    (tmp_path / "t.md").write_text("# T-Stitch table\n\n| r | FID |\n|---|---|\n| 0 | 12.34 |\n")
    (tmp_path / "c.md").write_text("## claims\n\n| claim | verdict |\n")
    score = {"provenance": {"git": {"commit": "a" * 40, "dirty": False}, "config_sha256": "b" * 64}}
    write_hashed_json(tmp_path / "s.json", score)
    tables = {"tstitch": {"method": "tstitch", "paper": "dit_s_xl_ddim100"},
              "parataa": {"kind": "parataa", "methods": ["sequential"], "paper": "parataa_iterations"}}
    kinds = {"tstitch": get_table_kind("tstitch"), "parataa": get_table_kind("parataa")}
    targets = {name: f"reproduce_{name}_table" for name in tables}
    files = {"tstitch": {"table": str(tmp_path / "t.md"), "claims": str(tmp_path / "c.md"),
                         "scores": [str(tmp_path / "s.json")]}}
    text = render(TEMPLATE, suite="digits", config_file="config/default.yaml",
                  sections_=sections(tables, kinds, targets, files))
    assert "### T-Stitch table" in text and "| 0 | 12.34 |" in text and "### claims" in text
    assert f"commit {'a' * 12}; config {'b' * 12}" in text
    parataa = text.split("## parataa")[1]
    assert "*Not regenerated*" in parataa and "reproduce_parataa_table" in parataa and "|" not in parataa


@pytest.mark.slow
def test_the_rule_writes_the_document_from_the_smoke_results(smoke_run):
    record = smoke_run / GPU_CHECK_JSON  # the tracked GPU check record, when the checkout has one
    if (ROOT / GPU_CHECK_JSON).exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / GPU_CHECK_JSON, record)
    snakemake(smoke_run, "--cores", "1", "reproducibility", *SMOKE)
    text = (smoke_run / "reports/smoke/REPRODUCIBILITY.md").read_text()
    assert gpu_check_section(record) in text
    config_hash = json.loads((smoke_run / "results/smoke/scores/tstitch/r0.json").read_text())[
        "provenance"]["config_sha256"][:12]
    assert f"config {config_hash}" in text and "config `config/smoke.yaml`" in text
    for table in ("tstitch", "parataa", "speedit", "immiscible"):
        for part in ("table", "claims"):
            generated = nest((smoke_run / f"reports/smoke/{table}_{part}.md").read_text())
            assert generated in text, f"{table}_{part}.md is not in the document as generated"
    assert "Not regenerated" not in text
