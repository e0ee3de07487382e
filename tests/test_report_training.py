"""Training reports: the papers' speed-up definition, its bootstrap interval over seeds,
verdicts against the published claim, and the figures, on synthetic curves."""

import numpy as np
import pandas as pd
import pytest

from diffrepro.report import training, training_plots
from diffrepro.report.paper import PAPER_DIR

ITERATIONS = np.array([100, 200, 400, 800, 1600])
IMMISCIBLE_YAML = PAPER_DIR / "immiscible.yaml"


def test_first_reach_interpolates_between_checkpoints():
    curve = np.array([50.0, 30.0, 20.0, 12.0, 10.0])
    assert training.first_reach(ITERATIONS, curve, 20.0) == 400
    assert training.first_reach(ITERATIONS, curve, 16.0) == pytest.approx(600)  # halfway 400 -> 800
    assert training.first_reach(ITERATIONS, curve, 9.0) == float("inf")
    assert training.first_reach(ITERATIONS, curve, 60.0) == 100


def test_speedup_is_final_iterations_over_iterations_to_the_baseline_final_value():
    baseline = np.array([50.0, 30.0, 20.0, 12.0, 10.0])
    method = np.array([30.0, 20.0, 12.0, 10.0, 9.0])  # the baseline's curve, twice as fast
    assert training.speedup(ITERATIONS, method, baseline) == pytest.approx(2.0)
    assert training.speedup(ITERATIONS, baseline, baseline) == pytest.approx(1.0)


def _scores(curves: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for method, runs in curves.items():
        for seed, run in enumerate(runs):
            for it, fid in zip(ITERATIONS, run):
                rows.append({"method": method, "seed": seed, "iteration": int(it), "fid": fid,
                             "inception_score": 5.0, "class_accuracy": 0.9, "validation_loss": 0.1,
                             "validation_loss_by_bin": [0.2, 0.1, 0.05]})
    return pd.DataFrame(rows)


BASE = np.array([50.0, 30.0, 20.0, 12.0, 10.0])
FAST = np.array([20.0, 12.0, 10.0, 9.0, 8.5])       # reaches 10 at 400: 4x
SAME = BASE.copy()


def _noisy(curve, seeds=4, scale=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return curve[None] + rng.normal(0, scale, size=(seeds, len(curve)))


def _table(curves, claims):
    timing = {"methods": {m: {"iteration_ms": 10.0, "iteration_vs_baseline": 1.0, "batch_size": 8,
                              "batch_prep_ms": {"8": 0.1, "64": 0.5}} for m in curves}}
    paper = pd.DataFrame([[m, c, None, None, ""] for m, c in claims.items()],
                         columns=["method", "speedup", "baseline_fid", "method_fid", "note"])
    return training.build_table(_scores(curves), timing, list(curves), "base", paper, reps=400, seed=0)


def test_table_speedups_intervals_and_verdicts():
    curves = {"base": _noisy(BASE, seed=1), "fast": _noisy(FAST, seed=2), "same": _noisy(SAME, seed=3)}
    table = _table(curves, {"fast": 3.0, "same": 3.0}).set_index("method")
    assert table.loc["base", "speedup"] == 1.0
    assert table.loc["fast", "speedup"] == pytest.approx(4.0, rel=0.1)
    assert table.loc["fast", "speedup_ci_low"] <= table.loc["fast", "speedup"] <= table.loc["fast", "speedup_ci_high"]
    assert table.loc["same", "speedup_ci_low"] < 1.5
    assert training.verdict(table.loc["fast"], 3.0).startswith("holds")
    assert training.verdict(table.loc["same"], 3.0).startswith("does not reproduce")
    assert training.verdict(table.loc["fast"], 4.0).startswith("inconclusive")
    claims = training.claims_markdown(table.reset_index(), "base", small_scale_note="note",
                                      paper_yaml=IMMISCIBLE_YAML)
    assert "**fast**: paper 3× faster training" in claims and "**base**" not in claims
    assert "one significant figure" in claims  # the band's reason stands beside the verdict


@pytest.mark.parametrize("ours, expected", [(3.4, "within band"), (2.6, "within band"),
                                             (3.6, "better"), (2.4, "worse")])
def test_training_speedup_verdict_crosses_the_band(ours, expected):
    """Immiscible's 3x with its ±0.5 band (one significant figure): 2.5x to 3.5x is within."""
    curves = {"base": _noisy(BASE, seed=1), "fast": _noisy(FAST, seed=2)}
    table = _table(curves, {"fast": 3.0}).reset_index(drop=True)
    table.loc[table["method"] == "fast", "speedup"] = ours
    claims = training.claims_markdown(table, "base", small_scale_note="note", paper_yaml=IMMISCIBLE_YAML)
    line = next(line for line in claims.splitlines() if line.startswith("- **fast**"))
    assert f"**{expected}** (band ±0.5: " in line


def test_a_method_that_never_reaches_the_target_is_not_reached():
    curves = {"base": _noisy(BASE, seed=1), "slow": _noisy(BASE + 5, seed=4)}
    table = _table(curves, {}).set_index("method")
    assert table.loc["slow", "speedup"] == 0 and table.loc["slow", "speedup_ci_high"] == 0
    md = training.to_markdown(table.reset_index(), title="t", setting_note="s", paper_note="p",
                              baseline="base")
    row = next(line for line in md.splitlines() if line.startswith("| slow"))
    assert "not reached [not reached, not reached]" in row and "| never" in row


def test_reaching_the_target_at_the_first_checkpoint_is_only_a_lower_bound():
    curves = {"base": _noisy(BASE, seed=1), "instant": _noisy(np.full(5, 5.0), seed=5)}
    table = _table(curves, {"instant": 30.0}).set_index("method")
    row = table.loc["instant"]
    assert bool(row["speedup_lower_bound"]) and row["speedup"] == pytest.approx(16.0)
    assert training.verdict(row, 30.0).startswith("inconclusive: the target was reached by the first")


def test_curves_differing_in_checkpoints_are_refused():
    scores = _scores({"base": _noisy(BASE), "other": _noisy(FAST)})
    scores.loc[scores["method"] == "other", "iteration"] *= 2
    timing = {"methods": {m: {"iteration_ms": 1.0, "iteration_vs_baseline": 1.0} for m in ("base", "other")}}
    with pytest.raises(ValueError, match="curves must share checkpoints"):
        training.build_table(scores, timing, ["base", "other"], "base",
                             pd.DataFrame(columns=["method", "speedup", "baseline_fid", "method_fid"]),
                             reps=10, seed=0)


def test_figures_are_written(tmp_path):
    scores = _scores({"base": _noisy(BASE), "fast": _noisy(FAST)})
    training_plots.curves_plot(scores, ["base", "fast"], "base", tmp_path / "c.png", tmp_path / "c.svg",
                               title="t", fid_label="FID")
    t = np.arange(1000)
    training_plots.schedules_plot({"a": (np.full(1000, 1e-3), np.ones(1000)),
                                   "b": (np.where(t < 500, 1.5e-3, 0.5e-3), 1 - t / 2000)},
                                  tmp_path / "s.png", tmp_path / "s.svg", title="t")
    timing = {"threads": 1, "methods": {m: {"iteration_ms": 10.0, "batch_size": 8,
                                            "batch_prep_ms": {"8": 0.1, "64": 0.5}} for m in ("base", "fast")}}
    training_plots.cost_plot(timing, ["base", "fast"], tmp_path / "k.png", tmp_path / "k.svg", title="t")
    for name in ("c", "s", "k"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        assert (tmp_path / f"{name}.svg").read_text().startswith("<?xml")
