"""ParaTAA and Picard inside diffusers' SD pipeline (tiny, random weights): the pipeline's DDIM
step as an affine map, convergence to the pipeline's own sequential sample, the exact limit,
the variation (parallel_sd_winit.py) and the config errors."""

from __future__ import annotations

import pytest
import torch

from diffrepro.engines.pipeline import run_batch
from diffrepro.methods import get_method
from diffrepro.t2i.parallel import ddim_scheduler, trajectory_of
from t2i_tiny import sd_pipeline, sd_unet, sdxl_pipeline, sdxl_unet

PROMPTS = ["a black duck", "a red circle"]
STEPS = 10
T2I = {"guidance_scale": 4.0, "steps": STEPS}  # the script's cfg_scale


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return sd_pipeline(sd_unet(2, layers=1))


def run(pipe, method: str, prompts=PROMPTS, **values):
    spec = get_method(method)
    setting = spec.make_setting({"steps": STEPS, **values})
    out, _, images = run_batch(spec, setting, pipe, {"model": pipe.unet}, T2I, 0, range(len(prompts)),
                               (4, 8, 8), "cpu", prompts)
    assert images is not None and images.shape == (len(prompts), 16, 16, 3)  # decoded by the pipeline's VAE
    return out


def test_trajectory_is_the_pipelines_ddim_step(pipe):
    scheduler = ddim_scheduler(pipe.scheduler)
    trajectory = trajectory_of(scheduler, STEPS)
    assert trajectory.timesteps.tolist() == scheduler.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for i, t in enumerate(scheduler.timesteps):
        expected = scheduler.step(eps, t, x).prev_sample
        ours = trajectory.a[i] * x.double() + trajectory.b[i] * eps.double()
        torch.testing.assert_close(ours.float(), expected, rtol=1e-5, atol=1e-5)
    assert trajectory.c.eq(0).all()  # eta = 0, as the script's default


def test_parataa_converges_to_the_sequential_pipeline_sample(pipe):
    sequential = run(pipe, "sequential_sd")
    assert sequential.model_steps == {"model": STEPS}
    out = run(pipe, "parataa_sd", window=STEPS, order=5, memory=2)  # tolerances 1e-3 (the script's)
    iterations = out.per_image["parallel_iterations"]
    assert out.per_image["converged"].all() and (iterations < STEPS).all()
    assert out.model_steps["model"] == iterations.max()  # one batched U-Net call per iteration
    assert (out.samples - sequential.samples).abs().max() < 1e-2


@pytest.mark.slow
def test_zero_tolerance_reproduces_sequential_to_float_rounding(pipe):
    sequential = run(pipe, "sequential_sd").samples
    scale = sequential.abs().max()
    for method, values in [("parataa_sd", {"window": STEPS, "order": 5, "memory": 2}),
                           ("parataa_sd", {"window": 4, "order": 4, "memory": 1}),
                           ("picard_sd", {"window": STEPS})]:
        tolerances = {"tolerance": 0.0, **({"relative_tolerance": 0.0} if method == "parataa_sd" else {})}
        out = run(pipe, method, **values, **tolerances)
        assert out.per_image["converged"].all()
        # float32 pipeline steps against the solver's float64: rounding, not a different image
        assert (out.samples - sequential).abs().max() <= 1e-5 * scale, (method, values)
    # Picard at ParaDiGMS' tolerance stops earlier, a little off the sequential sample
    loose = run(pipe, "picard_sd", window=STEPS, tolerance=0.1)
    assert (loose.per_image["parallel_iterations"] < STEPS).all()


@pytest.mark.slow
def test_variation_solves_only_the_last_steps(pipe):
    k = 3
    sequential = run(pipe, "sequential_sd").samples
    # prompt 1's trajectory for every image; image 0 IS prompt 1, so its last k steps are
    # already solved: it must stay its sequential sample; image 1 becomes a variation of it
    out = run(pipe, "parataa_sd", window=STEPS, order=5, memory=2, variation_steps=k,
              source_prompt=PROMPTS[0])
    iterations, nfe = out.per_image["parallel_iterations"], out.per_image["network_evaluations"]
    assert (iterations <= k).all() and (nfe <= k * iterations).all()  # windows over the last k only
    assert iterations[0] == 1
    assert (out.samples[0] - sequential[0]).abs().max() <= 1e-5 * sequential.abs().max()
    assert (out.samples[1] - sequential[1]).abs().max() > 0.1  # not image 1's own sample
    assert out.given_s > 0  # the source trajectory is given, not timed


def test_config_errors_are_clear(pipe):
    spec = get_method("parataa_sd")
    with pytest.raises(ValueError, match="source_prompt"):
        spec.make_setting({"steps": 10, "window": 10, "source_prompt": " "})
    with pytest.raises(ValueError, match="variation_steps must be in 0..steps-1"):
        spec.make_setting({"steps": 10, "window": 10, "variation_steps": 10})
    # a prompt list has no "next class": the source prompt must be named
    with pytest.raises(ValueError, match="need a source_prompt"):
        run(pipe, "parataa_sd", window=STEPS, variation_steps=2)
    assert spec.make_setting({"steps": 10, "window": 10}).reference() == ("sequential_sd", {"steps": 10})
    assert "src-a-cute-dog" in spec.setting_id(spec.make_setting({"steps": 10, "window": 10, "warm_start": True,
                                                                  "source_prompt": "a cute dog"}))


def test_sdxl_pipelines_are_refused():
    from diffrepro.t2i.parallel import prompt_denoiser

    with pytest.raises(ValueError, match="SD-1.x pipelines"):
        prompt_denoiser(sdxl_pipeline(sdxl_unet(0, layers=1)), PROMPTS, 4.0)


def test_paper_config_errors_name_key_and_fix():
    import copy
    from pathlib import Path

    import yaml

    from diffrepro.config import check_config
    from diffrepro.validation import ConfigError, apply_schema

    paper = yaml.safe_load((Path(__file__).parents[1] / "config/paper/parataa_sd.yaml").read_text())
    for mutate, expected in [
        (lambda c: c["methods"]["parataa_sd"]["grid"][1].pop("source_prompt"),
         r"methods.parataa_sd.grid: .*add source_prompt"),
        (lambda c: c["methods"]["sequential_sd"]["grid"].update(steps=[25]),
         r"add it to methods.sequential_sd.grid"),
        (lambda c: c["methods"]["parataa_sd"]["grid"][0].update(window=[60]),
         r"window must be in 1..steps, got 60")]:
        config = copy.deepcopy(paper)
        mutate(config)
        with pytest.raises(ConfigError, match=expected):
            apply_schema(config)
            check_config(config)
