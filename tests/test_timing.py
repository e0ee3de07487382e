"""Round-robin timing of a table's settings (diffrepro.timing) on tiny DiTs: one record per
row with the keys the table builders read, speed-ups from the same rounds, the reference run
timed once however many rows share it, a baseline of another method, and the ideal time."""

from __future__ import annotations

import statistics

import pytest
import torch

from diffrepro.checkpoints import save_checkpoint
from diffrepro.integrity import read_verified_json, write_hashed_json
from diffrepro.jobs import merge_records
from diffrepro.models.dit import build_dit
from diffrepro.timing import table_rounds, time_setting, time_table_settings

DIT = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2,
           mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
SAMPLING = {"sampler": "ddim", "steps": 5, "cfg_scale": 1.5, "guided_channels": 1,
            "device": "cpu", "precision": "fp32", "tf32": False, "compile": False}
TIMING = {"batch_size": 2, "warmup": 1, "repeats": 3, "forward_repeats": 2, "threads": 1}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root, paths = tmp_path_factory.mktemp("timing"), {}
    for seed, role in enumerate(("small", "large")):
        torch.manual_seed(seed)
        paths[role] = str(root / f"{role}.safetensors")
        save_checkpoint(paths[role], build_dit(CONFIGS[role]).state_dict())
    return paths


CONFIGS = {"small": DIT, "large": {**DIT, "hidden_size": 32}}  # the large model: 4x the FLOPs of its matmuls


def entry(checkpoints, roles, **timing):
    return {"checkpoints": {r: checkpoints[m] for r, m in roles.items()},
            "model_configs": {r: CONFIGS[m] for r, m in roles.items()}, "sampling": SAMPLING,
            "timing": {**TIMING, **timing}}


def test_rounds_are_the_most_any_method_asks_for():
    assert table_rounds([TIMING, {**TIMING, "repeats": 5, "warmup": 0}]) == \
        {"rounds": 5, "warmup": 1, "forward_repeats": 2}


def test_a_table_is_timed_round_robin(checkpoints, tmp_path):
    tstitch = {"method": "tstitch", "baseline": {"method": "tstitch", "params": {"ratio": 0.0}}}
    settings = [{**tstitch, "params": {"ratio": r}} for r in (0.0, 0.4, 1.0)]
    settings.append({"method": "parataa", "params": {"steps": 5, "window": 5, "order": 2, "memory": 2},
                     "baseline": {"method": "sequential", "params": {"steps": 5}}})
    methods = {"tstitch": entry(checkpoints, {"small": "small", "large": "large"}),
               "parataa": entry(checkpoints, {"model": "large"}, batch_size=1),
               "sequential": entry(checkpoints, {"model": "large"}, batch_size=1)}
    out = tmp_path / "table.json"
    table = time_table_settings(settings=settings, methods=methods, seed=0, config={"seed": 0}, output=str(out),
                                log=lambda *a: None)
    assert read_verified_json(out) == table
    # the r = 0 row is the other rows' reference: timed once per round, not once per row
    assert table["order"] == [["tstitch", "r0", 2], ["tstitch", "r0.4", 2], ["tstitch", "r1", 2],
                              ["parataa", "n5-w5-k2-m2-tol0.001-rtol0.001-it5", 1], ["sequential", "n5", 1]]
    assert table["rounds"] == 3 and table["batch_sizes"] == [1, 2]
    rows = {(r["method"], r["setting"]): r for r in table["settings"]}
    r0, r04 = rows[("tstitch", "r0")], rows[("tstitch", "r0.4")]
    assert r0["speedup_pairs"] == [1.0] * 3 and r04["baseline_times_s"] == r0["times_s"]
    assert r04["speedup_pairs"] == [b / t for b, t in zip(r0["times_s"], r04["times_s"])]
    assert r04["speedup_vs_baseline"] == statistics.median(r04["speedup_pairs"])
    assert r04["model_steps"] == {"small": 2, "large": 3} and r04["batch_size"] == 2
    for row in (r0, r04, rows[("tstitch", "r1")]):
        assert row["median_s"] <= row["p90_s"] <= max(row["times_s"])
        assert row["ideal_s"] > 0 and row["ideal_ratio"] == statistics.median(row["pair_ratios"])
        assert row["overhead_fraction"] == pytest.approx(row["ideal_ratio"] - 1)
        assert 0 < row["loop_only_fraction"] and row["threads"] == torch.get_num_threads()
        assert set(row["per_step_forward_s"]) == {"small", "large"}
    parallel = rows[("parataa", "n5-w5-k2-m2-tol0.001-rtol0.001-it5")]
    assert parallel["baseline"] == {"method": "sequential", "params": {"steps": 5}} and parallel["batch_size"] == 1
    assert parallel["forward_s"]["window"] == 5 and "overhead_fraction" not in parallel  # windows, not whole batches
    assert set(table["provenance"]["models"]) == {"tstitch", "parataa", "sequential"}
    # cost beside time: p50 / p90, images/s at the timed batch, FLOPs of the calls made
    small, large = r04["flops"]["per_forward_per_image"]["small"], r04["flops"]["per_forward_per_image"]["large"]
    assert 0 < small < large
    for row in (r0, r04, rows[("tstitch", "r1")]):
        assert row["p50_s"] == pytest.approx(row["median_s"]) and row["images_per_s"] == 2 / row["median_s"]
        # every call ran on the whole batch: FLOPs = NFE x one pass, per model
        assert row["flops"]["calls_by_model"] == row["model_steps"]
        assert row["flops"]["per_image"] == pytest.approx(
            sum(n * row["flops"]["per_forward_per_image"][role] for role, n in row["model_steps"].items()))
    assert r0["flops_speedup_vs_baseline"] == 1.0
    assert r04["flops_speedup_vs_baseline"] == pytest.approx(5 * large / (2 * small + 3 * large))
    # ParaTAA evaluates windows: more FLOPs than the sequential sampler it is measured against
    # (each call evaluates between one and `window` steps of every image)
    calls, one = parallel["model_steps"]["model"], parallel["flops"]["per_forward_per_image"]["model"]
    assert calls * one < parallel["flops"]["per_image"] <= calls * 5 * one
    assert parallel["flops_speedup_vs_baseline"] < 1 and parallel["flops"]["counted_images"] == 1
    # the table rule merges each score file with its row
    scores = []
    for k, key in enumerate(rows):
        scores.append(str(tmp_path / f"score{k}.json"))
        write_hashed_json(scores[-1], {"method": key[0], "setting": key[1]})
    merged = merge_records(scores, [str(out)])
    assert merged[1]["timing"]["median_s"] == r04["median_s"]
    assert merged[1]["timing"]["provenance"] == table["provenance"]


def test_one_setting_against_its_baseline(checkpoints, tmp_path):
    record = time_setting(method="tstitch", setting_values={"ratio": 0.4},
                          baseline={"method": "tstitch", "params": {"ratio": 0.0}}, checkpoints=checkpoints,
                          model_configs=CONFIGS, sampling=SAMPLING, seed=0,
                          timing={**TIMING, "warmup": 0, "repeats": 2}, config={}, output=str(tmp_path / "t.json"),
                          log=lambda *a: None)
    assert read_verified_json(tmp_path / "t.json") == record
    assert len(record["speedup_pairs"]) == 2 and record["setting"] == "r0.4"
    assert record["provenance"]["decoder"] is None and "file_sha256" in record["provenance"]
