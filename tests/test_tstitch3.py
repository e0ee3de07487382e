"""Three-model T-Stitch: the released rule, its two-model special cases, step counts."""

import pytest
import torch

from diffrepro.diffusion.guidance import GuidedDenoiser
from diffrepro.diffusion.samplers import DDIMSampler
from diffrepro.diffusion.sampling import initial_noise_and_labels
from diffrepro.diffusion.schedule import sampling_timesteps
from diffrepro.methods import get_method
from methods.tstitch import uses_small_model
from methods.tstitch3 import model_for_timestep


def run(method, denoisers, setting, steps=20):
    noise, y, generators = initial_noise_and_labels(0, range(3), (1, 8, 8), 10)
    spec = get_method(method)
    return spec.run(denoisers, DDIMSampler(steps), noise, y, generators, spec.make_setting(setting))


@pytest.fixture(scope="module")
def three(tiny_models):
    from conftest import tiny_dit

    return {"small": GuidedDenoiser(tiny_models["small"], 1.5),
            "medium": GuidedDenoiser(tiny_dit(3, hidden=24), 1.5),
            "large": GuidedDenoiser(tiny_models["large"], 1.5)}


@pytest.mark.parametrize("small, medium, expected", [
    (0.4, 0.4, (40, 40, 20)),   # the README's --three_combo 0.4 0.4 0.2 example
    (0.3, 0.6, (30, 60, 10)),   # 0.3 + 0.6 = 0.8999999999999999 in floating point
    (0.0, 0.0, (0, 0, 100)),
    (0.0, 1.0, (0, 100, 0)),
    (0.1, 0.2, (10, 20, 70)),
])
def test_steps_per_model_at_ddim_100(small, medium, expected):
    roles = [model_for_timestep(t, small, medium) for t in sampling_timesteps(100)]
    assert tuple(roles.count(r) for r in ("small", "medium", "large")) == expected
    # the small model runs first, then the medium, then the large: one hand-off each
    assert roles == sorted(roles, key=("small", "medium", "large").index)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_no_medium_steps_is_two_model_tstitch(ratio):
    for t in sampling_timesteps(100):
        two = "small" if uses_small_model(t, ratio) else "large"
        assert model_for_timestep(t, ratio, 0.0) == two


def test_medium_fraction_runs_the_medium_model_and_endpoints_are_single_models(three):
    mixed = run("tstitch3", three, {"small": 0.2, "medium": 0.4})
    assert dict(mixed.model_steps) == {"small": 4, "medium": 8, "large": 8}
    large_only = run("tstitch3", three, {"small": 0.0, "medium": 0.0})
    two_model = run("tstitch", {"small": three["small"], "large": three["large"]}, {"ratio": 0.0})
    assert torch.equal(large_only.samples, two_model.samples)
    assert not torch.equal(mixed.samples, large_only.samples)


def test_fractions_over_one_are_refused():
    with pytest.raises(ValueError, match=r"small \+ medium must be at most 1"):
        get_method("tstitch3").make_setting({"small": 0.7, "medium": 0.4})
    assert get_method("tstitch3").setting_id(get_method("tstitch3").make_setting(
        {"small": 0.3, "medium": 0.7})) == "s0.3-m0.7"


def test_pareto_frontier_keeps_only_undominated_points():
    from diffrepro.report.tstitch3 import pareto_frontier

    times = [1.0, 0.8, 0.8, 0.5, 0.6, 0.3]
    fids = [10.0, 10.5, 12.0, 15.0, 15.0, 30.0]
    # (0.8, 12) is beaten by (0.8, 10.5); (0.6, 15) by (0.5, 15)
    assert pareto_frontier(times, fids) == [True, True, False, True, False, True]


def test_three_model_table_claims_and_plot_from_records(tmp_path):
    """The report of rule `table` (kind tstitch3) on synthetic records."""
    import pandas as pd

    from diffrepro.report import tstitch3 as report

    def record(small, medium, fid, speedup):
        return {"params": {"small": small, "medium": medium},
                "metrics": {"fid": fid, "fid_bootstrap_se": 0.2, "fid_diff_se": 0.1},
                "timing": {"median_s": 1.0 / speedup, "speedup_vs_baseline": speedup},
                "model_steps": {"small": round(100 * small), "medium": round(100 * medium),
                                "large": 100 - round(100 * small) - round(100 * medium)}}

    records = [record(0.0, 0.0, 10.0, 1.0), record(0.4, 0.0, 10.5, 1.4),
               record(0.2, 0.4, 10.4, 1.6), record(0.0, 0.5, 11.0, 1.3)]
    table = report.build_table(records)
    assert list(table["on_frontier"]) == [True, False, True, False]  # sorted by (small, medium)
    assert list(table["large"]) == [1.0, 0.5, 0.4, 0.6]
    report.write_outputs(table, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "c.md",
                         labels={}, setting_note="synthetic")
    claims = (tmp_path / "c.md").read_text()
    assert "on the Pareto frontier: 2, of which 1 use the medium model and 1 use all three" in claims
    assert "**holds**" in claims
    assert len(pd.read_csv(tmp_path / "t.csv")) == 4
    report.pareto_plot(table, tmp_path / "p.png", tmp_path / "p.svg", labels={}, title="t")
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(ValueError, match="large model alone"):
        report.build_table(records[1:])
