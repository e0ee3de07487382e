"""ParaTAA report: table, Markdown, plots and claims on synthetic records (no models, no GPU)."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from diffrepro.report.paper import load_paper_table, paper_source
from diffrepro.report.parataa import (
    NOT_CONFIGURED,
    PARATAA_YAML,
    TABLE_COLUMNS,
    build_table,
    claims,
    table_markdown,
    claims_markdown,
    convergence_plot,
    labels_from_records,
    pareto_plot,
    write_table,
)

LABELS = {
    "fid": "FID (digits-CNN features)",
    "inception_score": "IS (digits-CNN softmax)",
    "class_accuracy": "class accuracy (digits-CNN)",
}
NOTE = "embedded digits suite, DDIM 25 and 100 steps, 1000 samples"
BATCH, FORWARD_S, WINDOW_COST = 8, 0.01, 10.0  # a window-sized batch costs 10 batches
SEQ_FID, SEQ_TIME = 10.0, 1.0  # per step count: the sequential run's FID and time per 25 steps


def make_record(method: str, setting: str, steps: int, *, iterations: float = 0.0,
                memory: int = 2, warm: bool = False, window: int = 25, order: int = 4,
                fid: float = SEQ_FID, fid_diff_se: float = 0.2, speedup: float = 1.5,
                ci: tuple[float, float] = (1.3, 1.7), converged: float = 1.0,
                dev: float = 1e-3, off: float = 0.0, options: dict | None = None) -> dict:
    """One record in the report's input schema; `iterations` 0 means sequential (= steps)."""
    sequential = method == "sequential"
    iterations = float(steps) if sequential else iterations
    params: dict = {"steps": steps}
    if method == "picard":
        params |= {"window": window, "tolerance": 0.1, "max_iterations": steps}
    if method == "parataa":
        params |= {"window": window, "order": order, "memory": memory, "tolerance": 1e-3,
                   "relative_tolerance": 1e-3, "max_iterations": steps, "warm_start": warm,
                   **(options or {})}
    ref_time = SEQ_TIME * steps / 25
    stats = {"mean": iterations, "median": iterations, "min": iterations - 1, "max": iterations + 2}
    return {
        "method": method,
        "setting": setting,
        "params": params,
        "num_samples": 1000,
        "metrics": {"fid": fid, "fid_bootstrap_se": 0.3, "inception_score": 8.0, "class_accuracy": 0.95,
                    "fid_diff_se": 0.0 if sequential else fid_diff_se},
        "labels": dict(LABELS),
        "reference": {"method": "sequential", "setting": f"n{steps}", "params": {"steps": steps}},
        "parallel": {"steps": steps, "iterations": stats,
                     "network_evaluations": {k: v * (1 if sequential else window)
                                             for k, v in stats.items()},
                     "converged_fraction": 1.0 if sequential else converged},
        "deviation": {"max_abs": 0.0 if sequential else dev,
                      "mean_abs": 0.0 if sequential else dev / 10,
                      "images_off_fraction": 0.0 if sequential else off},
        "convergence": {} if sequential else {
            "median_residual": [10.0 ** -(i / 2) for i in range(math.ceil(iterations))]},
        "timing": {
            "median_s": ref_time / (1.0 if sequential else speedup),
            "speedup_vs_baseline": 1.0 if sequential else speedup,
            "speedup_ci95": [1.0, 1.0] if sequential else list(ci),
            "batch_size": BATCH,
            "forward_s": {"batch": FORWARD_S,
                          "window_batch": None if sequential else FORWARD_S * WINDOW_COST,
                          "window": None if sequential else window},
            "threads": 1, "device": "cpu",
        },
    }


def make_records(**overrides: dict) -> list[dict]:
    """Two step counts; overrides: setting -> keyword arguments replacing the defaults."""
    specs = {
        "n25": ("sequential", 25, {}),
        "p25": ("picard", 25, {"iterations": 10.0, "fid": 10.1}),
        "fp25": ("parataa", 25, {"iterations": 9.0, "memory": 1}),
        "taa25": ("parataa", 25, {"iterations": 5.0, "fid": 10.2}),
        "taa25w": ("parataa", 25, {"iterations": 3.0, "warm": True}),
        "n100": ("sequential", 100, {}),
        "p100": ("picard", 100, {"iterations": 20.0, "speedup": 0.7, "ci": (0.6, 0.8)}),
        "fp100": ("parataa", 100, {"iterations": 18.0, "memory": 1, "speedup": 0.8,
                                   "ci": (0.7, 0.9)}),
        "taa100": ("parataa", 100, {"iterations": 8.0, "speedup": 0.9, "ci": (0.8, 1.05),
                                    "dev": 4e-3}),
    }
    records = [make_record(m, s, n, **{**kw, **overrides.get(s, {})})
               for s, (m, n, kw) in specs.items()]
    return records[::-1]  # out of order on purpose: the table must sort


def by_key(found: list[dict], key: str) -> list[dict]:
    return [c for c in found if c["key"] == key]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return build_table(make_records())


# --- paper YAML ------------------------------------------------------------------------------


def test_yaml_numbers() -> None:
    runs = load_paper_table(PARATAA_YAML, "parataa_iterations").set_index(["model", "steps"])
    assert runs.loc[("SD", 100), "iterations"] == 7
    assert runs.loc[("SD-v1.5", 50), ["iterations", "iterations_min", "iterations_max"]].tolist() \
        == [16, 13, 18]
    assert runs.loc[("SD-v2", 1000), ["iterations", "speedup"]].tolist() == [44, 3.1]
    assert runs.loc[("SD-v2", 200), ["iterations", "speedup"]].tolist() == [16, 1.8]
    rng = load_paper_table(PARATAA_YAML, "parataa_claims")
    assert rng.iloc[0].tolist() == ["step_reduction", 4, 14]
    assert paper_source(PARATAA_YAML, "parataa_iterations")["exact"] is True


# --- table -----------------------------------------------------------------------------------


def test_table_order_and_values(table: pd.DataFrame) -> None:
    assert list(table.columns) == TABLE_COLUMNS
    assert table["setting"].tolist() == [
        "n25", "p25", "fp25", "taa25", "taa25w", "n100", "p100", "fp100", "taa100"]
    row = table.set_index("setting")
    assert row.loc["taa25", "step_reduction"] == pytest.approx(25 / 5)
    assert row.loc["taa100", "step_reduction"] == pytest.approx(100 / 8)
    assert row.loc["n25", "step_reduction"] == pytest.approx(1.0)
    assert row.loc["taa25", "nfe_per_step"] == pytest.approx(5 * 25 / 25)
    assert row.loc["n100", "nfe_per_step"] == pytest.approx(1.0)
    assert row.loc["taa25", "fid_diff"] == pytest.approx(0.2)
    assert row.loc["n25", "fid_diff"] == 0.0
    assert row.loc["taa100", "max_abs_dev"] == pytest.approx(4e-3)
    assert row.loc["taa100", "reference_time_s"] == pytest.approx(4 * SEQ_TIME)
    assert row.loc["taa100", "speedup"] == pytest.approx(0.9)
    assert row.loc["taa25", "window_cost_ratio"] == pytest.approx(WINDOW_COST)
    assert row.loc["taa25", "implied_speedup"] == pytest.approx(5 / WINDOW_COST)
    assert math.isnan(row.loc["n25", "window_cost_ratio"])
    assert row.loc["taa25w", "warm_start"] and not row.loc["taa25", "warm_start"]
    assert row.loc["fp25", "memory"] == 1 and math.isnan(row.loc["p25", "memory"])


def test_missing_reference_raises() -> None:
    records = [r for r in make_records() if r["setting"] != "n100"]
    with pytest.raises(ValueError, match="reference sequential/n100 is not among the records"):
        build_table(records)


def test_duplicate_record_raises() -> None:
    records = make_records()
    with pytest.raises(ValueError, match="more than one record for parataa/taa25"):
        build_table(records + [make_record("parataa", "taa25", 25, iterations=5.0)])


def test_write_table(tmp_path, table: pd.DataFrame) -> None:
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    write_table(table, csv, md, setting_note=NOTE, labels=labels_from_records(make_records()))
    back = pd.read_csv(csv)
    assert list(back.columns) == TABLE_COLUMNS
    assert back["step_reduction"].tolist() == pytest.approx(table["step_reduction"].tolist())
    text = md.read_text()
    assert NOTE in text and "FID (digits-CNN features) ± SE" in text
    assert "## Published" in text
    for number in ("4-14×", "13-18", "| 44 ", "3.1×", "1.8×", "| 7 ", "14.3×"):
        assert number in text, number
    assert "10.00" in text  # window-batch cost column
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]  # no temp files left


# --- plots -----------------------------------------------------------------------------------


def test_plots_write_files(tmp_path, table: pd.DataFrame) -> None:
    files = [tmp_path / n for n in ("c.png", "c.svg", "p.png", "p.svg")]
    convergence_plot(make_records(), files[0], files[1], title="convergence (synthetic)")
    pareto_plot(table, files[2], files[3], title="ParaTAA (synthetic)", labels=LABELS)
    for path in files:
        assert path.stat().st_size > 0
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = files[1].read_text()
    assert "<svg" in svg and "ParaTAA m=2 k=4, w=25" in svg and "Picard w=25" in svg
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)


def test_convergence_plot_needs_parallel_records(tmp_path) -> None:
    with pytest.raises(ValueError, match="convergence curve"):
        convergence_plot([make_record("sequential", "n25", 25)], tmp_path / "a.png",
                         tmp_path / "a.svg", title="x")


# --- claims ----------------------------------------------------------------------------------


def test_claims_on_default_records(table: pd.DataFrame) -> None:
    found = claims(table)
    reduction = by_key(found, "step_reduction")
    assert [c["verdict"] for c in reduction] == ["holds", "holds"]
    assert "25 / 5.00 = 5.00×" in reduction[0]["ours_value"] and "inside" in reduction[0]["ours_value"]
    assert "100 / 8.00 = 12.50×" in reduction[1]["ours_value"]
    assert "4-14×" in reduction[0]["paper_value"] and "7 iterations" in reduction[0]["paper_value"]
    assert by_key(found, "taa_vs_fixed_point")[0]["verdict"] == "holds"
    assert "taa25 5.00 vs fp25 9.00" in by_key(found, "taa_vs_fixed_point")[0]["ours_value"]
    assert by_key(found, "taa_vs_picard")[0]["verdict"] == "holds"
    assert "44 iterations" in by_key(found, "taa_vs_picard")[0]["paper_value"]
    converges = by_key(found, "converges_parataa")[0]
    assert converges["verdict"] == "holds" and "0.004 (taa100)" in converges["ours_value"]
    assert by_key(found, "converges_picard")[0]["verdict"] == "holds"
    wall = by_key(found, "wall_clock_parataa")
    assert [c["verdict"] for c in wall] == ["holds", "does not hold on this device"]
    picard_wall = by_key(found, "wall_clock_picard")
    assert [c["verdict"] for c in picard_wall] == ["holds", "does not hold on this device"]
    assert "costs 10.00 times a batch of 8" in wall[1]["note"]
    assert "12.50/10.00 = 1.25×" in wall[1]["note"]
    assert by_key(found, "warm_start")[0]["verdict"] == "holds"
    assert "taa25w 3.00 vs taa25 5.00" in by_key(found, "warm_start")[0]["ours_value"]
    assert "cold / warm: 1.67×" in by_key(found, "warm_start")[0]["note"]


def test_claims_flip_when_numbers_flip() -> None:
    slow = {"speedup": 0.6, "ci": (0.5, 0.7)}
    flipped = build_table(make_records(
        # slower than FP (9) and Picard (10); 25/12 < 4; fastest at 25 steps, CI straddles 1
        taa25={"iterations": 12.0, "speedup": 1.1, "ci": (0.95, 1.3)},
        taa100={"iterations": 30.0},  # 100/30 = 3.3 < 4
        taa25w={"iterations": 14.0, **slow},  # warm start slower than cold
        p25={"fid": 11.0, **slow},  # ΔFID +1.0 > 2 * 0.2
        fp25=slow,
        p100={"converged": 0.9, **slow},
    ))
    found = claims(flipped)
    for key in ("step_reduction", "taa_vs_fixed_point", "taa_vs_picard", "converges_picard",
                "warm_start"):
        assert {c["verdict"] for c in by_key(found, key)} == {"does not hold"}, key
    assert "below" in by_key(found, "step_reduction")[0]["ours_value"]
    assert "1/2 settings converged" in by_key(found, "converges_picard")[0]["ours_value"]
    assert {c["verdict"] for c in by_key(found, "wall_clock_parataa") + by_key(found, "wall_clock_picard")} \
        == {"does not hold on this device"}


def test_a_visibly_different_image_breaks_convergence() -> None:
    found = claims(build_table(make_records(p25={"off": 0.02, "dev": 2.5})))
    picard = by_key(found, "converges_picard")[0]
    assert picard["verdict"] == "does not hold" and "2.0% of images off by > 0.1 in p25" in picard["ours_value"]
    assert by_key(found, "converges_parataa")[0]["verdict"] == "holds"


def test_taa_is_compared_with_a_picard_setting_at_least_as_exact() -> None:
    records = make_records(p100={"iterations": 5.0, "dev": 0.5})  # fewer iterations, looser
    records.append(make_record("picard", "p100tight", 100, iterations=12.0, dev=1e-3))
    found = claims(build_table(records))
    versus = by_key(found, "taa_vs_picard")[0]
    assert "taa100 8.00 vs p100tight 12.00" in versus["ours_value"] and versus["verdict"] == "holds"
    loose_only = claims(build_table(make_records(p100={"iterations": 5.0, "dev": 0.5})))
    assert by_key(loose_only, "taa_vs_picard")[0]["verdict"] == "does not hold"  # the closest one


def test_step_reduction_above_range() -> None:
    found = claims(build_table(make_records(taa100={"iterations": 5.0})))
    assert "above" in by_key(found, "step_reduction")[1]["ours_value"]
    assert by_key(found, "step_reduction")[1]["verdict"] == "holds"


def test_claims_without_parataa_cannot_be_checked() -> None:
    records = [r for r in make_records() if r["method"] != "parataa"]
    found = claims(build_table(records))
    for key in ("step_reduction", "taa_vs_fixed_point", "taa_vs_picard", "warm_start"):
        assert [c["verdict"] for c in by_key(found, key)] == [NOT_CONFIGURED], key
    assert by_key(found, "converges_picard")[0]["verdict"] == "holds"  # Picard alone can be judged
    assert by_key(found, "converges_parataa")[0]["verdict"] == NOT_CONFIGURED


def test_claims_markdown_gives_numbers(table: pd.DataFrame) -> None:
    text = claims_markdown(table, NOTE)
    assert NOTE in text
    for number in ("4-14×", "12.50×", "44 iterations", "3.1× wall-clock", "1.25×"):
        assert number in text, number
    assert "**does not hold on this device**" in text and "**holds**" in text


# --- the released code's rules and the variation ---------------------------------------------

RELEASE = {"window_init": "release", "taa_history": "release"}


def records_with_rules_and_variations() -> list[dict]:
    """The default records plus, at 100 steps, window-25 settings with each rule (ours is the
    twin) and two variations that land far from their own class's sequential samples."""
    extra = [
        make_record("parataa", "w25", 100, iterations=30.0, memory=3, window=25, order=25),
        make_record("parataa", "w25init", 100, iterations=33.0, memory=3, window=25, order=25,
                    options={"window_init": "release"}),
        make_record("parataa", "w25hist", 100, iterations=36.0, memory=3, window=25, order=25,
                    options={"taa_history": "release"}),
        make_record("parataa", "w25rel", 100, iterations=38.0, memory=3, window=25, order=25,
                    options=RELEASE),
        make_record("parataa", "var20", 100, iterations=4.0, options={"variation_steps": 20},
                    window=100, dev=1.7, off=0.6, fid=14.0, speedup=9.0, ci=(8.0, 10.0)),
        make_record("parataa", "var60", 100, iterations=6.0, options={"variation_steps": 60},
                    window=100, dev=1.9, off=0.9, fid=18.0),
    ]
    return make_records() + extra


def test_rule_and_variation_rows_in_the_table() -> None:
    row = build_table(records_with_rules_and_variations()).set_index("setting")
    assert row.loc["w25rel", ["window_init", "taa_history"]].tolist() == ["release", "release"]
    assert row.loc["w25", ["window_init", "taa_history"]].tolist() == ["paradigms", "newest"]
    assert row.loc["p100", "window_init"] == "" and row.loc["taa100", "variation_steps"] == 0
    # a variation's iterations and NFE are per solved step (its last k)
    assert row.loc["var20", "solved_steps"] == 20 and row.loc["var20", "step_reduction"] == pytest.approx(20 / 4)
    assert row.loc["var20", "nfe_per_step"] == pytest.approx(4 * 100 / 20)
    assert row.loc["taa100", "solved_steps"] == 100


def test_markdown_shows_the_rules_and_variations_with_what_is_measured(tmp_path) -> None:
    table = build_table(records_with_rules_and_variations())
    text = re.sub(r" +", " ", table_markdown(table, labels=LABELS, setting_note=NOTE))  # no padding
    rules = text.split("## Window entry and TAA history")[1].split("## Variation")[0]
    assert "initialize_samples" in rules and "Measured: parallel iterations and network evaluations" in rules
    for cells in ("| paradigms | newest | 30.00 (32) | 750.0 | 7.50 |", "| release | newest | 33.00 (35) |",
                  "| paradigms | release | 36.00 (38) |", "| release | release | 38.00 (40) |"):
        assert cells in rules, cells
    assert "taa100" not in rules and "| 100 / 4 / 2 |" not in rules  # no twin with other rules
    variation = text.split("## Variation")[1].split("## Published")[0]
    assert "own class's sequential sample" in variation and "parallel_sd_winit.py" in variation
    assert "| 100 | 20 | 100 / 4 / 2 | 4.00 (6) | 5.00× | 400.0 | 1.7 (0.17) | 60.0% | +4.00 ± 0.20 |" in variation
    assert "| 60 |" in variation
    # back from CSV, the plots take the new rows
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md", setting_note=NOTE, labels=LABELS)
    pareto_plot(pd.read_csv(tmp_path / "t.csv"), tmp_path / "p.png", tmp_path / "p.svg", title="x", labels=LABELS)
    assert "var k=20" in (tmp_path / "p.svg").read_text()


def test_without_such_settings_the_sections_are_left_out(table: pd.DataFrame) -> None:
    text = table_markdown(table, labels=LABELS, setting_note=NOTE)
    assert "## Window entry" not in text and "## Variation" not in text


def test_claims_are_judged_on_our_rules_without_variations(table: pd.DataFrame) -> None:
    records = records_with_rules_and_variations()
    found = claims(build_table([r for r in records if r["setting"] not in ("w25", "w25init", "w25hist", "w25rel")]
                               + [r for r in records if r["setting"] == "w25"]))
    everything = claims(build_table(records))
    assert everything == found  # the release-rule rows and the variations change no verdict or number
    converges = by_key(everything, "converges_parataa")[0]
    assert converges["verdict"] == "holds" and "var20" not in converges["ours_value"]
    assert "var20" not in by_key(everything, "wall_clock_parataa")[1]["ours_value"]
    assert "Judged on the settings with our window-entry" in claims_markdown(build_table(records), NOTE)


def test_pipeline_runs_fill_the_same_rows_with_clip(table: pd.DataFrame) -> None:
    """sequential_sd / picard_sd / parataa_sd records (methods/parataa_sd.py) read as their
    solvers' rows; their CLIP score adds a CLIP column and its difference from sequential."""
    records = make_records()
    for r in records:
        r["method"] += "_sd"
        r["reference"]["method"] += "_sd"
        r["metrics"]["clip_score"] = 0.30 if r["method"] == "sequential_sd" else 0.29
        r["labels"]["clip_score"] = "CLIP score (digits-clip)"
    sd = build_table(records)
    assert list(sd.columns) == TABLE_COLUMNS + ["clip_score", "clip_diff"]
    pd.testing.assert_frame_equal(sd[TABLE_COLUMNS], table)  # the same rows as the DiT runs'
    row = sd.set_index("setting")
    assert row.loc["taa25", "clip_diff"] == pytest.approx(-0.01) and row.loc["n25", "clip_diff"] == 0
    markdown = table_markdown(sd, labels=labels_from_records(records), setting_note=NOTE)
    assert "CLIP score (digits-clip)" in markdown and "ΔCLIP vs sequential" in markdown
    assert "-0.0100" in markdown
