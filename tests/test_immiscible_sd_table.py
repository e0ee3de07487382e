"""The immiscible_sd table kind: its config checks name the key, the plan wires a regime's scores
and the shared timing, and the table is built from scores and timing as the DiT training tables
(speed-up with a bootstrap interval) with the assignment's float16 agreement and the paper's FIDs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from diffrepro.config import ConfigError, check_config
from diffrepro.plan import Plan
from diffrepro.report import training
from diffrepro.report.kinds.immiscible_sd import agreement_note
from diffrepro.report.paper import PAPER_DIR, load_paper_table
from diffrepro.validation import apply_schema
from workflow_run import ROOT



@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config/default.yaml").read_text())


def _checked(config):
    apply_schema(config)
    check_config(config)
    return config


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["tables"]["immiscible_sd_scratch"].update(regime="nope"),
     r"tables.immiscible_sd_scratch.regime: 'nope' is not under unet_training.regimes"),
    (lambda c: c["unet_training"]["methods"].update(lsa=["speed_v1"]),
     r"unet_training.methods.lsa: 'speed_v1' changes \[.timesteps., .weighting.\]; U-Net training methods take noise-pairing"),
    (lambda c: c["unet_training"]["methods"].update(lsa=[{"immiscible": {"distance_dtype": "bf16"}}]),
     r"unet_training.methods.lsa: .*distance_dtype must be one of"),
    (lambda c: c["unet_training"]["regimes"]["scratch"].update(snapshots=[100, 200]),
     r"unet_training.regimes.scratch.snapshots: \[100, 200\] must be ascending and end at train.iterations"),
    (lambda c: c["unet_training"].update(model="large"),
     r"unet_training.model: 'large' must be a trained sd_unet model"),
    (lambda c: c["tables"]["immiscible_sd_finetune"].update(baseline="knn2"),
     r"tables.immiscible_sd_finetune.baseline: 'knn2' must be one of the table's methods"),
])
def test_config_errors_name_the_key(config, mutate, expected):
    mutate(config)
    with pytest.raises(ConfigError, match=expected):
        _checked(config)


def test_plan_wires_a_regimes_scores_timing_and_fine_tuning_init(config):
    plan = Plan(_checked(config))
    inputs = plan.table_inputs(SimpleNamespace(table="immiscible_sd_finetune"))
    assert inputs["scores"] == [f"results/digits/unet_training/finetune/scores/{m}.json" for m in ("vanilla", "lsa", "knn")]
    assert inputs["timing"] == "results/digits/unet_training/timing.json"
    assert plan.unet_training_init(SimpleNamespace(regime="finetune")) == {"init": "resources/checkpoints/digits/sd_large.safetensors"}
    assert plan.unet_training_init(SimpleNamespace(regime="scratch")) == {}
    summaries = plan.unet_training_score_inputs(SimpleNamespace(regime="scratch", method="lsa"))["summaries"]
    assert summaries == [f"resources/checkpoints/digits/unet_training/scratch/lsa/seed{s}/train.json" for s in (0, 1, 2)]


def test_published_numbers_are_the_seeds():
    scratch = load_paper_table(PAPER_DIR / "immiscible_sd.yaml", "sd_scratch").set_index("method")
    finetune = load_paper_table(PAPER_DIR / "immiscible_sd.yaml", "sd_finetune").set_index("method")
    assert scratch["method_fid"].to_dict() == {"vanilla": 17.92, "lsa": 16.43, "knn": 16.84}
    assert finetune["method_fid"].to_dict() == {"vanilla": 11.45, "lsa": 10.28, "knn": 10.38}


def _scores(curves):
    rows = []
    for method, runs in curves.items():
        for seed, curve in enumerate(runs):
            for it, fid in zip((50, 100, 150), curve):
                rows.append({"method": method, "seed": seed, "iteration": it, "fid": fid, "inception_score": 2.0,
                             "class_accuracy": 0.5, "validation_loss": 0.1})
    return pd.DataFrame(rows)


def test_table_speedup_and_agreement_note():
    base = np.array([[30.0, 20.0, 10.0]] * 3)
    curves = {"vanilla": base, "lsa": base - np.array([0.0, 5.0, 5.0])}  # lsa hits 10 at iteration 125
    timing = {"methods": {"vanilla": {"iteration_ms": 10.0, "iteration_vs_baseline": 1.0},
                          "lsa": {"iteration_ms": 11.0, "iteration_vs_baseline": 1.1, "assignment_agreement": [
                              {"distance_dtype": "float16", "optimal": 0.8, "same_permutation": 0.5, "batches": 200,
                               "batch_size": 32, "same_pairs": 0.97, "excess_total_distance": 1e-6}]}}}
    paper = load_paper_table(PAPER_DIR / "immiscible_sd.yaml", "sd_finetune")
    table = training.build_table(_scores(curves), timing, ["vanilla", "lsa"], "vanilla", paper, reps=50, seed=0)
    lsa = table.set_index("method").loc["lsa"]
    assert lsa["iterations_to_baseline_fid"] == pytest.approx(125.0)
    assert lsa["speedup"] == pytest.approx(150 / 125) and lsa["paper_method_fid"] == 10.28
    note = agreement_note(timing, ["vanilla", "lsa"])
    assert "an exact (float64) optimum in 80.0%" in note and "of 200 batches of 32" in note
    assert agreement_note(timing, ["vanilla"]) == ""
