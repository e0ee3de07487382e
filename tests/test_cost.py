"""Cost beside time on a tiny run: T-Stitch on two tiny DiTs of different widths, timed
round-robin (diffrepro.timing), then tabulated by the pareto and tstitch kinds through the
table rule's entry point. The new timing-side columns and the Markdown section appear; the
tables' other columns are the ones a timing file without FLOPs gives."""

from __future__ import annotations

import copy
import re

import pandas as pd
import pytest
import torch

from diffrepro.checkpoints import save_checkpoint
from diffrepro.integrity import read_verified_json, write_hashed_json
from diffrepro.models.dit import build_dit
from diffrepro.report import cost
from diffrepro.report.paper import TSTITCH_YAML
from diffrepro.report.tables import TableJob, build_table
from diffrepro.timing import time_table_settings

DIT = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2,
           mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
CONFIGS = {"small": DIT, "large": {**DIT, "hidden_size": 48, "depth": 2}}
SAMPLING = {"sampler": "ddim", "steps": 4, "cfg_scale": 1.5, "guided_channels": 1,
            "device": "cpu", "precision": "fp32", "tf32": False, "compile": False}
TIMING = {"batch_size": 8, "warmup": 0, "repeats": 2, "forward_repeats": 1, "threads": 1}
RATIOS = (0.0, 0.5, 1.0)
pytestmark = pytest.mark.slow  # times a tiny sweep at batch 8 (5-13 s on 2 shared cores)


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """(timing file, score files, timing table) of a tiny T-Stitch sweep."""
    root, checkpoints = tmp_path_factory.mktemp("cost"), {}
    for seed, role in enumerate(CONFIGS):
        torch.manual_seed(seed)
        checkpoints[role] = str(root / f"{role}.safetensors")
        save_checkpoint(checkpoints[role], build_dit(CONFIGS[role]).state_dict())
    base = {"method": "tstitch", "params": {"ratio": 0.0}}
    table = time_table_settings(
        settings=[{"method": "tstitch", "params": {"ratio": r}, "baseline": base} for r in RATIOS],
        methods={"tstitch": {"checkpoints": checkpoints, "model_configs": CONFIGS, "sampling": SAMPLING,
                             "timing": TIMING}},
        seed=0, config={"seed": 0}, output=str(root / "timing.json"), log=lambda *a: None)
    scores = []
    for k, row in enumerate(table["settings"]):  # score files as the score rule writes them (metrics made up)
        scores.append(str(root / f"score{k}.json"))
        write_hashed_json(scores[-1], {
            "method": "tstitch", "setting": row["setting"], "params": row["params"],
            "model_steps": row["model_steps"], "reference": {"method": "tstitch", "setting": "r0"},
            "metrics": {"fid": 10.0 - k, "fid_bootstrap_se": 0.5, "fid_diff_se": 0.1, "inception_score": 2.0,
                        "class_accuracy": 0.9}})
    return str(root / "timing.json"), scores, table


def _job(root, kind, timing, scores, name):
    """The table rule's job for table `tiny`, its outputs under root/name."""
    (root / name).mkdir(exist_ok=True)
    entry = ({"kind": kind, "method": "tstitch", "paper": "dit_s_xl_ddim100"} if kind == "tstitch"
             else {"kind": kind, "methods": ["tstitch"]})
    outputs = {k: str(root / name / k) for k in ("csv", "md", "claims")}
    return TableJob(name="tiny", entry=entry, inputs={"scores": scores, "timings": [timing], "features": [],
                                                    "reference": None, "paper": str(TSTITCH_YAML)},
                    outputs=outputs, setting_note="tiny DiTs", scoring={"bootstrap_reps": 10, "seed": 0, "backend": "digits"})


def _without_flops(timing_path, out):
    """The same timing file as one written before FLOPs were counted."""
    data = copy.deepcopy(read_verified_json(timing_path))
    for row in data["settings"]:
        for key in ("flops", "flops_speedup_vs_baseline", "p50_s", "images_per_s"):
            row.pop(key)
    write_hashed_json(out, data)
    return str(out)


@pytest.mark.parametrize("kind", ["pareto", "tstitch"])
def test_cost_columns_beside_time_on_a_tiny_run(timed, tmp_path, kind):
    timing, scores, table = timed
    build_table(_job(tmp_path, kind, timing, scores, "new"))
    built = pd.read_csv(tmp_path / "new" / "csv")
    md = (tmp_path / "new" / "md").read_text()
    rows = {r["setting"]: r for r in table["settings"]}
    r0, r1 = rows["r0"]["flops"]["per_image"], rows["r1"]["flops"]["per_image"]
    assert r0 > r1 > 0  # r = 1: the small model alone
    prefix = "ours_" if kind == "tstitch" else ""
    # rows by setting (the pareto kind orders them by time)
    built = built.set_index(built["ratio"].map(lambda r: f"r{r:g}") if kind == "tstitch" else built["setting"])
    built = built.loc[["r0", "r0.5", "r1"]].reset_index(drop=True)
    flops_speedup = built[f"{prefix}flops_speedup"].tolist()
    assert flops_speedup[0] == pytest.approx(1.0) and flops_speedup[-1] == pytest.approx(r0 / r1)
    assert flops_speedup == sorted(flops_speedup)  # more of the small model, fewer FLOPs
    assert built[f"{prefix}gflops_per_image"].tolist() == pytest.approx(
        [rows[s]["flops"]["per_image"] / 1e9 for s in ("r0", "r0.5", "r1")])
    assert built[f"{prefix}images_per_s"].tolist() == pytest.approx(
        [8 / rows[s]["median_s"] for s in ("r0", "r0.5", "r1")])
    # the Markdown section: every setting, NFE per model, FLOPs beside wall-clock speed-up
    section = md[md.index("## Cost beside time"):]
    for header in ("NFE (per model)", "GFLOPs / image", "FLOPs speed-up", "wall-clock speed-up",
                   "time (s): p50 / p90", "images / s"):
        assert header in section
    assert re.search(r"\| tstitch +\| r0\.5 +\| 4 \(large=2 small=2\) +\|", section)
    assert "FlopCounterMode" in section and "Not counted" in section
    # every other column is what the same run gives without FLOPs in its timing file
    build_table(_job(tmp_path, kind, _without_flops(timing, tmp_path / "old.json"), scores, "old"))
    old = pd.read_csv(tmp_path / "old" / "csv")
    built = pd.read_csv(tmp_path / "new" / "csv")
    cost_cols = [f"{prefix}{c}" for c in cost.CSV_COLUMNS if f"{prefix}{c}" in built]
    assert old[f"{prefix}gflops_per_image"].isna().all()
    pd.testing.assert_frame_equal(built.drop(columns=cost_cols), old.drop(columns=cost_cols))
    assert "not in these timing files" in (tmp_path / "old" / "md").read_text()
    assert (tmp_path / "old" / "md").read_text().split("## Cost beside time")[0] == md.split("## Cost beside time")[0]


def test_flops_of_given_inputs_are_said_so():
    """ParaTAA's warm start: its trajectory's calls are counted, its time is not; the section says so."""
    timing = {"median_s": 1.0, "p90_s": 1.2, "batch_size": 1, "speedup_vs_baseline": 0.5,
              "flops": {"per_image": 4e9, "counted": "what torch counts", "not_counted": "the rest",
                        "includes_given_inputs": True}}
    record = {"method": "parataa", "setting": "n25-warm", "model_steps": {"model": 9}, "timing": timing,
              "reference": {"method": "sequential", "setting": "n25"}}
    section = cost.cost_markdown([record])
    assert "parataa n25-warm include the evaluations on inputs the paper treats as given" in section
    assert cost.cost_columns(timing)["time_p50_s"] == 1.0 and cost.cost_columns(timing)["gflops_per_image"] == 4.0
