"""The generic Pareto table kind, and the README's "Add a method" path end to end: one method
file and one config entry give a table and a plot beside T-Stitch."""

import math
import re
import shutil

import pandas as pd
import pytest
import yaml

from diffrepro.report import pareto
from diffrepro.snakejob import job_counts
from workflow_run import ROOT, snakemake


def record(method, setting, fid, time, steps, batch=8, speedup=1.0):
    return {"method": method, "setting": setting, "params": {"x": setting},
            "metrics": {"fid": fid, "fid_bootstrap_se": 0.5, "fid_diff_se": 0.1, "inception_score": 2.0,
                        "class_accuracy": 0.9},
            "model_steps": steps, "reference": {"method": method, "setting": "ref"},
            "timing": {"median_s": time, "batch_size": batch, "speedup_vs_baseline": speedup}}


def test_pareto_table_marks_the_frontier_across_methods():
    records = [record("a", "slow", 10.0, 2.0, {"large": 10}),
               record("a", "fast", 20.0, 1.0, {"large": 5}),
               record("b", "dominated", 21.0, 1.5, {"small": 4, "large": 6}),
               record("b", "fastest", 30.0, 0.5, {"small": 10})]
    table = pareto.build_table(records, methods=["b", "a"])
    assert list(zip(table["method"], table["setting"])) == [("b", "fastest"), ("b", "dominated"),
                                                            ("a", "fast"), ("a", "slow")]
    assert dict(zip(table["setting"], table["on_frontier"])) == {
        "fastest": True, "dominated": False, "fast": True, "slow": True}
    assert list(table["nfe"]) == [10, 10, 5, 10]
    assert table.loc[1, "nfe_by_model"] == "large=6 small=4"
    assert math.isnan(table.loc[0, "time_p90_s"])  # not measured: left empty, not invented


def test_pareto_table_refuses_times_at_different_batches():
    records = [record("a", "x", 10.0, 2.0, {"m": 1}, batch=8), record("b", "y", 9.0, 1.0, {"m": 1}, batch=1)]
    with pytest.raises(ValueError, match="timing batch sizes differ"):
        pareto.build_table(records, methods=["a", "b"])


def test_pareto_markdown_and_claims_name_every_row(tmp_path):
    records = [record("a", "slow", 10.0, 2.0, {"large": 10}), record("a", "fast", 20.0, 1.0, {"large": 5})]
    table = pareto.build_table(records, methods=["a"])
    paths = [tmp_path / name for name in ("t.csv", "t.md", "c.md")]
    pareto.write_outputs(table, *paths, title="mine", labels={"fid": "FID (test)"}, setting_note="note")
    markdown = paths[1].read_text()
    assert "FID (test) ± SE" in markdown and "**frontier**" in markdown
    assert re.search(r"\| a\s+\| fast\s+\|", markdown)
    assert "a: 2 of 2 settings on the frontier" in paths[2].read_text()
    assert pd.read_csv(paths[0])["setting"].tolist() == ["fast", "slow"]


@pytest.mark.slow
def test_a_method_added_as_the_readme_says_reaches_a_table_and_a_plot(smoke_run, tmp_path):
    """docs/examples/guidance_interval.{py,yaml}: the file into methods/, the entries into the
    config, and reproduce_<table>_table builds its table and plot beside T-Stitch."""
    work = tmp_path / "work"
    shutil.copytree(smoke_run, work, symlinks=True)  # the smoke models and T-Stitch results are reused
    for package in ("methods", "baselines"):  # the checkout's plugins, as a user's clone has them
        shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "docs/examples/guidance_interval.py", work / "methods/guidance_interval.py")
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    example = yaml.safe_load((ROOT / "docs/examples/guidance_interval.yaml").read_text())
    config["methods"].update(example["methods"])
    config["methods"]["guidance_interval"]["num_shards"] = 1  # one job per setting: a shorter suite
    config["tables"] = example["tables"]
    (work / "config/mine.yaml").write_text(yaml.safe_dump(config))

    target = "reproduce_guidance_interval_table"
    planned = job_counts(snakemake(work, "-n", target, "--configfile", "config/mine.yaml").stdout)
    # four new settings, one shard each; T-Stitch's results are reused
    assert planned["sample"] == 4 and planned["score"] == 4 and planned["figure"] == 1, planned
    snakemake(work, "--cores", "2", target, "--configfile", "config/mine.yaml")

    reports = work / "reports/smoke"
    table = pd.read_csv(reports / "guidance_interval_table.csv")
    assert sorted(set(table["method"])) == ["guidance_interval", "tstitch"]
    ours = table[table["method"] == "guidance_interval"].set_index("setting")
    assert sorted(ours.index) == ["guided0", "guided0.2", "guided0.5", "guided1"]
    assert ours.loc["guided1", "speedup"] == 1.0  # its own reference: full guidance
    assert (ours["nfe"] == 10).all() and table["on_frontier"].any()
    assert (reports / "guidance_interval_pareto.png").stat().st_size > 1000
    assert "guidance_interval" in (reports / "guidance_interval_claims.md").read_text()
