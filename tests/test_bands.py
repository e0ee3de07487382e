"""Tolerance bands: a verdict changes when our number crosses the band's edge, on either side."""

from __future__ import annotations

import pytest

from diffrepro.report.bands import BETTER, WITHIN, WORSE, Band, band_for, combined, load_bands, verdict
from diffrepro.report.paper import PAPER_DIR

RELATIVE = Band("fid", "relative", 0.02, "MLPerf SDXL FID band ±2 %", "test")
ABSOLUTE = Band("ratio", "absolute", 0.1, "one grid step", "test")


@pytest.mark.parametrize("ours, lower_better, higher_better", [
    (10.19, WITHIN, WITHIN),    # inside +2 % of 10
    (9.81, WITHIN, WITHIN),     # inside -2 %
    (10.2, WITHIN, WITHIN),     # on the edge counts as inside
    (10.21, WORSE, BETTER),     # just above the upper edge
    (9.79, BETTER, WORSE),      # just below the lower edge
])
def test_relative_band_edges(ours, lower_better, higher_better):
    assert verdict(ours, 10.0, RELATIVE, higher_is_better=False) == lower_better
    assert verdict(ours, 10.0, RELATIVE, higher_is_better=True) == higher_better


@pytest.mark.parametrize("ours, expected", [(0.49, WITHIN), (0.31, WITHIN), (0.51, BETTER), (0.29, WORSE)])
def test_absolute_band_edges(ours, expected):
    assert verdict(ours, 0.4, ABSOLUTE, higher_is_better=True) == expected


def test_relative_width_scales_with_the_published_number():
    # ±2 % of 100 is ±2, of 10 is ±0.2: 101.5 is inside the first, 10.15 inside the second
    assert verdict(101.5, 100.0, RELATIVE, higher_is_better=False) == WITHIN
    assert verdict(10.3, 10.0, RELATIVE, higher_is_better=False) == WORSE


def test_missing_numbers_and_combined_verdicts():
    assert verdict(None, 1.0, RELATIVE, True) == "not measured"
    assert verdict(float("nan"), 1.0, RELATIVE, True) == "not measured"
    assert combined([WITHIN, WITHIN]) == WITHIN
    assert combined([WITHIN, BETTER]) == BETTER
    assert combined([BETTER, WORSE, WITHIN]) == WORSE


def test_band_text_gives_width_and_reason():
    assert RELATIVE.text() == "±2 %: MLPerf SDXL FID band ±2 %"
    assert ABSOLUTE.text() == "±0.1: one grid step"


def test_a_paper_yaml_without_the_band_names_file_and_metric(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text("paper: x\nbands:\n  fid: {relative: 0.02, reason: r}\ntables: {}\n")
    assert band_for(path, "fid").width == 0.02
    with pytest.raises(KeyError, match=r"paper\.yaml.*'speedup'"):
        band_for(path, "speedup")


def test_bands_need_one_width_and_a_reason(tmp_path):
    path = tmp_path / "paper.yaml"
    for body, message in (("fid: {relative: 0.02}", "no reason"),
                          ("fid: {relative: 0.02, absolute: 1, reason: r}", "exactly one"),
                          ("fid: {absolute: -1, reason: r}", "negative")):
        path.write_text(f"bands:\n  {body}\ntables: {{}}\n")
        with pytest.raises(ValueError, match=message):
            load_bands(path)


def test_a_table_overrides_the_files_band(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text("bands:\n  speedup: {relative: 0.05, reason: noise}\n"
                    "tables:\n  coarse:\n    bands:\n      speedup: {relative: 0.09, reason: rounding}\n")
    assert band_for(path, "speedup").width == 0.05
    assert band_for(path, "speedup", "coarse").reason == "rounding"


@pytest.mark.parametrize("paper, metrics", [
    ("tstitch", ["speedup", "no_loss_ratio"]),
    ("bksdm", ["params_m", "gmacs"]),
    ("distill_sdxl", ["params_m"]),
    ("speedit", ["speedup"]),
    ("immiscible", ["speedup"]),
])
def test_every_compared_metric_has_a_band_with_a_reason(paper, metrics):
    for metric in metrics:
        band = band_for(PAPER_DIR / f"{paper}.yaml", metric)
        assert band.reason and band.width > 0
