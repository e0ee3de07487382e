"""The samplers x steps table on synthetic records: merge with the paper's long-format table,
FID relative to each curve's own r = 0, the no-loss verdict per curve, and the plot."""

import pandas as pd

from diffrepro.report import tstitch_samplers
from diffrepro.report.paper import TSTITCH_YAML, load_paper_table


def record(sampler, steps, ratio, fid, diff_se=0.5):
    return {"params": {"ratio": ratio, "sampler": sampler, "steps": steps},
            "sampling": {"sampler": "ddim", "steps": 100},
            "metrics": {"fid": fid, "fid_bootstrap_se": 0.3, "fid_diff_se": diff_se},
            "timing": {"speedup_vs_baseline": 1.0 / (1.0 - 0.8 * ratio)}}


def test_table_merges_paper_curves_and_judges_each_curve(tmp_path):
    records = [record("ddpm", 10, 0.0, 20.0), record("ddpm", 10, 0.4, 20.6),       # within 2 SE
               record("dpmsolver++", 20, 0.0, 10.0), record("dpmsolver++", 20, 0.4, 14.0)]  # loss
    table = tstitch_samplers.build_table(records, load_paper_table(TSTITCH_YAML, "dit_s_xl_steps_samplers"))
    ddpm = table[table["sampler"] == "ddpm"].set_index("ratio")
    assert ddpm.loc[0.0, "paper_fid"] == 51.9 and ddpm.loc[0.4, "paper_fid"] == 53.8
    assert abs(ddpm.loc[0.4, "ours_fid_relative"] - 1.03) < 1e-12
    dpm = table[table["sampler"] == "dpmsolver++"].set_index("ratio")
    assert dpm.loc[0.4, "paper_fid"] == 11.7 and abs(dpm.loc[0.4, "paper_fid_relative"] - 11.7 / 11.3) < 1e-12
    claims = tstitch_samplers.claims_markdown(table, "synthetic")
    assert "| DDPM-10 | +0.60 ± 0.50 | **holds** |" in claims
    assert "| DPM-Solver++-20 | +4.00 ± 0.50 | **does not hold** |" in claims
    tstitch_samplers.write_outputs(table, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "c.md",
                                   labels={}, setting_note="synthetic", paper_note="paper")
    assert len(pd.read_csv(tmp_path / "t.csv")) == 4
    tstitch_samplers.pareto_plot(table, tmp_path / "p.png", tmp_path / "p.svg", labels={}, title="t")
    assert (tmp_path / "p.png").stat().st_size > 0
