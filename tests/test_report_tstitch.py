"""T-Stitch report: table, Markdown, plot and claims on synthetic records (no models, no GPU)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from diffrepro.report.paper import TSTITCH_YAML, load_paper_table, paper_source
from diffrepro.report.tstitch import (
    TABLE_COLUMNS,
    build_table,
    claims,
    claims_markdown,
    labels_from_records,
    pareto_plot,
    write_table,
)

RATIOS = [round(0.1 * i, 1) for i in range(11)]
# Flat up to r=0.5, then rising: the shape the paper reports.
FIDS = [10.0, 10.1, 9.9, 10.0, 10.2, 10.4, 12.0, 15.0, 20.0, 26.0, 32.0]
SE = 0.3
T_LARGE, T_SMALL = 0.60, 0.06  # seconds per 8 images for each model alone
LABELS = {
    "fid": "FID (digits-CNN features)",
    "inception_score": "IS (digits-CNN softmax)",
    "class_accuracy": "class accuracy (digits-CNN)",
}
SE_DIFF = 0.4  # paired SE of FID(r) - FID(0)
NOTE = "embedded digits suite, DDIM-100, CFG 1.5, 1000 samples"


def make_record(ratio: float, fid: float) -> dict:
    ideal = T_SMALL * ratio + T_LARGE * (1 - ratio)  # time linear in r
    median = ideal * 1.01
    small = round(100 * ratio)
    return {
        "method": "tstitch",
        "setting": f"r{ratio:g}",
        "params": {"ratio": ratio},
        "metrics": {
            "fid": fid,
            "fid_bootstrap_se": SE,
            "fid_diff_se": 0.0 if ratio == 0 else SE_DIFF,
            "inception_score": 8.0 - ratio,
            "inception_score_std": 0.2,
            "class_accuracy": 0.95 - 0.1 * ratio,
        },
        "labels": dict(LABELS),
        "num_samples": 1000,
        "model_steps": {"small": small, "large": 100 - small},
        "timing": {
            "median_s": median,
            "batch_size": 8,
            "repeats": 7,
            "ideal_s": ideal,
            "overhead_fraction": median / ideal - 1,
            "device": "cpu",
            "threads": 2,
        },
    }


def make_records(fid_at_04: float | None = None) -> list[dict]:
    fids = list(FIDS)
    if fid_at_04 is not None:
        fids[4] = fid_at_04
    records = [make_record(r, f) for r, f in zip(RATIOS, fids)]
    return records[::-1]  # out of order on purpose: the table must sort


@pytest.fixture(scope="module")
def paper_df() -> pd.DataFrame:
    return load_paper_table(TSTITCH_YAML, "dit_s_xl_ddim100")


@pytest.fixture(scope="module")
def table(paper_df: pd.DataFrame) -> pd.DataFrame:
    return build_table(make_records(), paper_df)


# --- paper YAML ------------------------------------------------------------------------------


def test_yaml_has_exact_dit_s_xl_numbers(paper_df: pd.DataFrame) -> None:
    assert list(paper_df.columns) == ["ratio", "fid", "time_s"]
    assert paper_df["ratio"].tolist() == pytest.approx(RATIOS)
    assert paper_df["fid"].tolist() == [
        9.20, 9.17, 8.99, 9.03, 8.95, 10.06, 12.46, 18.04, 25.44, 30.11, 33.46
    ]
    assert paper_df["time_s"].tolist() == [16.5, 15.3, 13.9, 12.5, 11.0, 9.4, 7.9, 6.4, 4.8, 3.3, 1.7]
    source = paper_source(TSTITCH_YAML, "dit_s_xl_ddim100")
    assert source["exact"] is True and source["setting"]["cfg_scale"] == 1.5


def test_yaml_other_tables() -> None:
    ldm = load_paper_table(TSTITCH_YAML, "ldm_s_ldm")
    assert list(ldm.columns) == ["ratio", "fid", "is", "time_s"]
    assert ldm.iloc[4].tolist() == [0.4, 18.60, 193.62, 5.3]
    assert paper_source(TSTITCH_YAML, "dit_xl_b")["exact"] is False
    steps = load_paper_table(TSTITCH_YAML, "dit_s_xl_steps_samplers")
    assert len(steps) == 66
    pretrained = load_paper_table(TSTITCH_YAML, "dit_pretrained").set_index("model")
    assert pretrained.loc["DiT-XL/2", "fid_5k"] == 9.2


def test_unknown_table_lists_available() -> None:
    with pytest.raises(KeyError, match="available tables: .*dit_s_xl_ddim100"):
        load_paper_table(TSTITCH_YAML, "nope")


# --- table -----------------------------------------------------------------------------------


def test_table_columns_and_sorting(table: pd.DataFrame) -> None:
    assert list(table.columns) == TABLE_COLUMNS
    assert all(c == "ratio" or c.startswith(("ours_", "paper_")) for c in table.columns)
    assert table["ratio"].tolist() == pytest.approx(RATIOS)
    assert table["ours_fid"].tolist() == FIDS


def test_table_speedup_and_paper_values(table: pd.DataFrame, paper_df: pd.DataFrame) -> None:
    at_04 = table.iloc[4]
    assert at_04["ours_speedup"] == pytest.approx(T_LARGE / (0.4 * T_SMALL + 0.6 * T_LARGE))
    assert at_04["ours_overhead_vs_ideal"] == pytest.approx(0.01)
    assert (at_04["ours_small_steps"], at_04["ours_large_steps"]) == (40, 60)
    assert table["paper_fid"].tolist() == paper_df["fid"].tolist()
    assert table["paper_time_s"].tolist() == paper_df["time_s"].tolist()
    assert at_04["paper_speedup"] == pytest.approx(16.5 / 11.0)


def test_off_grid_ratio_gets_no_paper_numbers(paper_df: pd.DataFrame) -> None:
    records = [make_record(0.0, 10.0), make_record(0.25, 10.1)]
    table = build_table(records, paper_df)
    assert pd.isna(table.iloc[1]["paper_fid"])


def test_quarter_ratios_meet_their_own_paper_rows() -> None:
    """LCM's 4-step grid (0, 0.25, ..., 1): each row gets its own paper time, once."""
    lcm = load_paper_table(TSTITCH_YAML, "lcm_sdxl_ssd1b")
    records = [make_record(r, 10.0) for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
    table = build_table(records, lcm)
    assert table["ratio"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert table["paper_time_s"].tolist() == [1.029, 0.968, 0.921, 0.870, 0.823]
    near = build_table([make_record(0.0, 10.0), make_record(0.2, 10.0), make_record(0.3, 10.0)], lcm)
    assert near["paper_time_s"].isna().tolist() == [False, True, True]


def test_a_step_count_with_no_published_numbers_still_gets_its_table(tmp_path) -> None:
    """LCM at 8 steps (the released script's, not in the paper's figure): an empty paper table."""
    empty = load_paper_table(TSTITCH_YAML, "lcm_sdxl_ssd1b_8steps")
    assert empty.empty
    records = [make_record(i / 8, 10.0 + i) for i in range(9)]
    table = build_table(records, empty)
    assert len(table) == 9 and table["paper_time_s"].isna().all() and table["paper_speedup"].isna().all()
    assert table["ours_speedup"].iloc[0] == pytest.approx(1.0)
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md", labels=labels_from_records(records), setting_note=NOTE)
    assert "| 0.125 " in (tmp_path / "t.md").read_text()
    markdown = claims_markdown(table, NOTE, "no published numbers")
    assert "speed-up at r = 0.4" in markdown and "not in table" in markdown
    pareto_plot(table, tmp_path / "p.png", tmp_path / "p.svg", labels=labels_from_records(records), title="LCM 8")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_missing_r0_raises(paper_df: pd.DataFrame) -> None:
    records = [r for r in make_records() if r["params"]["ratio"] != 0.0]
    with pytest.raises(ValueError, match="r=0"):
        build_table(records, paper_df)


def test_write_table(tmp_path, table: pd.DataFrame) -> None:
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    write_table(table, csv, md, labels=labels_from_records(make_records()), setting_note=NOTE)
    back = pd.read_csv(csv)
    assert list(back.columns) == TABLE_COLUMNS
    assert back["paper_fid"].tolist() == table["paper_fid"].tolist()

    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| r "))
    cells = [c.strip() for c in header.strip("|").split("|")]
    ours = [c for c in cells if c.startswith("ours:")]
    assert "ours: FID (digits-CNN features) ± SE" in ours
    assert "paper: FID-5K (Inception)" in cells
    assert not any("Inception" in c for c in ours)
    assert NOTE in text


# --- plot ------------------------------------------------------------------------------------


def test_pareto_plot_writes_files(tmp_path, table: pd.DataFrame) -> None:
    png, svg = tmp_path / "p.png", tmp_path / "p.svg"
    pareto_plot(table, png, svg, labels=LABELS, title="T-Stitch (synthetic)")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "p.svg"]  # no temp files left


# --- claims ----------------------------------------------------------------------------------


def test_claims_hold_on_paper_like_shape(table: pd.DataFrame) -> None:
    found = claims(table)
    # ours: no loss up to r = 0.5, paper up to 0.4 (one grid step: on the band's edge);
    # speed-up 0.6 / 0.384 = 1.5625 against the paper's 16.5 / 11.0 = 1.5 (±5 %: up to 1.575)
    assert [c["verdict"] for c in found] == ["holds", "within band", "within band", "holds"]
    assert all(set(c) >= {"claim", "paper_value", "ours_value", "verdict", "rule", "band"} for c in found)
    assert [c["band"][:5] for c in found] == ["", "±0.1:", "±5 %:", ""]
    assert "8.95" in found[0]["paper_value"] and "9.20" in found[0]["paper_value"]
    assert "r = 0.4" in found[1]["paper_value"]
    assert "1.50" in found[2]["paper_value"]


def test_claim_40_percent_flips_with_fid_at_04(paper_df: pd.DataFrame) -> None:
    # threshold = FID(0) + 2 * paired SE = 10.0 + 2 * 0.4 = 10.8
    holds = claims(build_table(make_records(fid_at_04=10.75), paper_df))[0]
    fails = claims(build_table(make_records(fid_at_04=10.85), paper_df))[0]
    assert holds["verdict"] == "holds"
    assert fails["verdict"] == "does not hold"
    assert "10.85" in fails["ours_value"] and "+0.85 ± 0.40" in fails["ours_value"]
    assert "10.80" in fails["ours_value"]


def test_claim_largest_ratio_and_sanity_flip(paper_df: pd.DataFrame) -> None:
    records = make_records()
    for record in records:  # small-only barely worse: the suite sanity check must fail
        if record["params"]["ratio"] >= 0.6:
            record["metrics"]["fid"] = 10.5
    found = claims(build_table(records, paper_df))
    assert "r = 1" in found[1]["ours_value"] and found[1]["verdict"] == "better"  # beyond 0.4 ± 0.1
    assert found[3]["verdict"] == "does not hold"


def test_claim_speedup_flips(paper_df: pd.DataFrame) -> None:
    records = copy.deepcopy(make_records())
    for record in records:  # the large model costs nothing extra: no speed-up at all
        record["timing"]["median_s"] = T_LARGE
    assert claims(build_table(records, paper_df))[2]["verdict"] == "worse"


@pytest.mark.parametrize("factor, expected", [(1.04, "within band"), (0.96, "within band"),
                                               (1.06, "better"), (0.94, "worse")])
def test_claim_speedup_changes_when_it_crosses_the_band(paper_df: pd.DataFrame, factor, expected) -> None:
    """The paper's 1.5x at r = 0.4 with the ±5 % band of tstitch.yaml: 1.425 to 1.575."""
    records = copy.deepcopy(make_records())
    for record in records:
        ratio = record["params"]["ratio"]
        record["timing"]["speedup_vs_baseline"] = 1.5 * factor if ratio == 0.4 else 1.0 + ratio
    assert claims(build_table(records, paper_df))[2]["verdict"] == expected


def test_a_compared_claim_without_a_band_names_the_file_and_metric(tmp_path, table) -> None:
    bare = tmp_path / "tstitch.yaml"
    bare.write_text("paper: T-Stitch\nbands:\n  no_loss_ratio: {absolute: 0.1, reason: grid}\ntables: {}\n")
    with pytest.raises(KeyError, match=r"tstitch\.yaml.*'speedup'"):
        claims(table, bare, None)


def test_claims_markdown_gives_numbers(table: pd.DataFrame) -> None:
    text = claims_markdown(table, NOTE)
    assert NOTE in text
    for number in ("8.95", "9.20", "10.20", "10.80", "1.50×", "3.20"):
        assert number in text
    assert "FID(r) - FID(0) <= 2·SE_paired(r)" in text
    assert "publishes no SE" in text
    header = next(line for line in text.splitlines() if line.startswith("| claim"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "claim", "paper", "ours", "band (reason)", "verdict (ours)"]
    assert "±5 %: run-to-run noise" in text and "±0.1: one step of the paper's ratio grid" in text
    assert "**within band**" in text and "**holds**" in text


def test_paired_speedup_from_timing_job_is_used_when_present(paper_df: pd.DataFrame) -> None:
    records = copy.deepcopy(make_records())
    for record in records:  # side-by-side measurement disagrees with the ratio of medians
        record["timing"]["speedup_vs_baseline"] = 1.0 + record["params"]["ratio"]
    table = build_table(records, paper_df)
    assert table.loc[table["ratio"] == 0.4, "ours_speedup"].item() == pytest.approx(1.4)
    assert table.loc[table["ratio"] == 0.0, "ours_speedup"].item() == pytest.approx(1.0)


def test_the_report_groups_by_the_papers_short_names():
    from diffrepro.report.paper import PAPER_DIR, paper_short_name

    assert paper_short_name(PAPER_DIR / "tstitch.yaml") == "T-Stitch"
    assert paper_short_name(PAPER_DIR / "parataa.yaml") == "ParaTAA"
