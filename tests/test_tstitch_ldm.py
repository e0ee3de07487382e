"""T-Stitch on LDM U-Nets: the strict switch rule, LDM's DDIM with eta = 1, guidance against a
uniform random context, the CompVis checkpoint layout, config errors."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from diffrepro.diffusion.ldm_ddim import LDMDDIMSampler, ldm_ddim_timesteps, ldm_linear_betas
from diffrepro.diffusion.random_context_guidance import (RandomContextGuidedDenoiser, draw_context_seeds,
                                                         uniform_contexts)
from diffrepro.diffusion.sampling import initial_noise_and_labels, sample_loop
from diffrepro.methods import get_method
from diffrepro.models.ldm_unet import (LDMUNetConfig, build_ldm_unet, compvis_layout,
                                       convert_ldm_state_dict)

TINY = dict(image_size=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
            attention_resolutions=[2], num_head_channels=8, context_dim=8, n_classes=10, norm_num_groups=4)


def tiny_model(seed, **overrides):
    torch.manual_seed(seed)
    return build_ldm_unet({**TINY, **overrides}).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def ldm_pair():
    return {"small": RandomContextGuidedDenoiser(tiny_model(0), 3.0),
            "large": RandomContextGuidedDenoiser(tiny_model(1, model_channels=16, context_dim=16), 3.0)}


def run(models, ratio, sampler, n=3, seed=0):
    noise, y, generators = initial_noise_and_labels(seed, range(n), (1, 8, 8), 10)
    spec = get_method("tstitch_ldm")
    return spec.run(models, sampler, noise, y, generators, spec.make_setting({"ratio": ratio}))


def alone(denoiser, sampler, n=3, seed=0):
    """One model through the whole loop, its contexts seeded as the method seeds them."""
    noise, y, generators = initial_noise_and_labels(seed, range(n), (1, 8, 8), 10)
    bound = denoiser.with_contexts(draw_context_seeds(generators))
    return sample_loop(sampler, lambda i, t: ("only", bound), noise, y, generators)[0]


def test_endpoints_are_each_model_alone_bit_for_bit(ldm_pair):
    sampler = LDMDDIMSampler(10)
    r0, r1 = run(ldm_pair, 0.0, sampler), run(ldm_pair, 1.0, sampler)
    assert dict(r0.model_steps) == {"large": 10} and dict(r1.model_steps) == {"small": 10}
    assert torch.equal(r0.samples, alone(ldm_pair["large"], sampler))
    assert torch.equal(r1.samples, alone(ldm_pair["small"], sampler))
    mid = run(ldm_pair, 0.5, sampler)
    assert not torch.equal(mid.samples, r0.samples) and not torch.equal(mid.samples, r1.samples)


class Recorder:
    """A stand-in denoiser that records the timesteps it is called at."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(int(t))
        return torch.zeros_like(x)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_the_switch_is_where_the_strict_rule_puts_it(ratio):
    sampler = LDMDDIMSampler(100)
    models = {"small": Recorder(), "large": Recorder()}
    out = run(models, ratio, sampler, n=1)
    small_ts = [t for t in sampler.timesteps if ratio == 1.0 or t / 1000 > 1 - ratio]
    assert models["small"].calls == small_ts and models["small"].calls == sampler.timesteps[:len(small_ts)]
    assert models["large"].calls == sampler.timesteps[len(small_ts):]
    assert out.model_steps == Counter({"small": len(small_ts), "large": 100 - len(small_ts)}) - Counter()
    # on LDM's grid (991, 981, ..., 1) the small model takes 100 * r steps
    assert len(small_ts) == round(100 * ratio)


def test_the_rule_is_strict_where_dits_is_not():
    from methods.tstitch import uses_small_model
    from methods.tstitch_ldm import uses_small_unet

    assert uses_small_model(500, 0.5) and not uses_small_unet(500, 0.5)   # t / 1000 == 1 - r
    assert uses_small_unet(501, 0.5) and not uses_small_unet(0, 0.99) and uses_small_unet(0, 1.0)


def test_eta1_ddim_step_matches_ldms_formula_by_hand():
    sampler = LDMDDIMSampler(10, eta=1.0)
    assert sampler.timesteps == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert ldm_ddim_timesteps(100)[:2] == [991, 981] and ldm_ddim_timesteps(100)[-1] == 1
    abar = np.cumprod(1 - ldm_linear_betas(0.0015, 0.0195))
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = 0.3 * x + 0.1
    for i in (0, 9):  # a middle step and the last, which goes to alphas_cumprod[0], not 1
        t = sampler.timesteps[i]
        a, a_prev = abar[t], abar[sampler.timesteps[i + 1]] if i < 9 else abar[0]
        sigma = math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
        z = torch.stack([torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
        x0 = (x.double() - math.sqrt(1 - a) * eps.double()) / math.sqrt(a)
        expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * eps.double() + sigma * z.double()
        got = sampler.step(i, eps, x, gens)
        assert sigma > 0 and torch.allclose(got.double(), expected, atol=1e-5, rtol=0)
    # eta = 0 draws nothing
    g = torch.Generator().manual_seed(1)
    LDMDDIMSampler(10, eta=0.0).step(0, eps, x, [g, g])
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())


def test_unconditional_contexts_are_uniform_seeded_per_image_and_guided(ldm_pair):
    _, _, generators = initial_noise_and_labels(0, range(4), (1, 8, 8), 10)
    seeds = draw_context_seeds(generators)
    _, _, again = initial_noise_and_labels(0, [2, 3], (1, 8, 8), 10)
    assert draw_context_seeds(again) == seeds[2:] and len(set(seeds)) == 4
    uc = uniform_contexts(seeds, (1, 16))
    assert uc.shape == (4, 1, 16) and 0 <= uc.min() and uc.max() < 1
    assert torch.equal(uniform_contexts(seeds[2:], (1, 16)), uc[2:]) and not torch.equal(uc[0], uc[1])
    # not a class: no row of the model's embedding
    denoiser = ldm_pair["large"]
    assert not any(torch.allclose(uc[0, 0], row) for row in denoiser.model.embedding.weight)
    # eps = eps(x, uc) + s * (eps(x, c) - eps(x, uc))
    x, y, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), torch.full((4,), 501)
    model = denoiser.model
    cond, uncond = model(x, t, context=model.context(y)), model(x, t, context=uc)
    got = denoiser.with_contexts(seeds)(x, 501, y)
    assert torch.allclose(got, uncond + 3.0 * (cond - uncond), atol=1e-5)
    assert torch.equal(denoiser.unguided()(x, 501, y), cond)


def test_the_compvis_checkpoint_converts_key_for_key():
    config = LDMUNetConfig(**{**TINY, "num_res_blocks": 2, "attention_resolutions": [1, 2]})
    layout = compvis_layout(config)
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(shape, generator=g) for k, shape in layout.items()}
    # LitEma's flattened EMA copy: the converter must take it, not the raw weights
    ema = {"model_ema." + k.removeprefix("model.").replace(".", ""): v + 1
           for k, v in official.items() if k.startswith("model.")}
    ours = convert_ldm_state_dict({**official, **ema}, config)
    model = build_ldm_unet(config)
    model.load_state_dict(ours, strict=True)       # every key and shape of ours is filled
    raw = convert_ldm_state_dict(official, config)
    # a bijection: each official tensor lands under exactly one key of ours, unchanged
    back = {id(v) for v in raw.values()}
    assert len(raw) == len(layout) == len(back) and back == {id(v) for v in official.values()}
    assert all(torch.equal(ours[k], raw[k] + (0 if k == "embedding.weight" else 1)) for k in raw)


@pytest.mark.parametrize("channels, context, published", [(64, 256, 25), (256, 512, 394)])
def test_the_layout_has_the_parameter_counts_of_t_stitchs_table(channels, context, published):
    # T-Stitch ldm/README: LDM-S 25 M, LDM 394 M (cin-ldm-vq-f8-t-stitch.yaml's two U-Nets);
    # the README counts the U-Net (whole millions), not the class table
    config = dict(image_size=32, in_channels=4, out_channels=4, model_channels=channels, channel_mult=[1, 2, 4],
                  num_res_blocks=2, attention_resolutions=[4, 2, 1], num_head_channels=32, context_dim=context)
    count = sum(math.prod(s) for s in compvis_layout(config).values())
    assert int((count - 1000 * context) / 1e6) == published


@pytest.mark.parametrize("overrides, message", [
    ({"num_head_channels": 3}, "not a multiple of num_head_channels 3"),
    ({"norm_num_groups": 3}, "not a multiple of norm_num_groups 3"),
    ({"attention_resolutions": [8]}, "attention_resolutions [8] are not downsampling factors"),
    ({"channel_mult": []}, "channel_mult = [] must be a non-empty list"),
])
def test_a_bad_unet_config_names_the_key_and_the_fix(overrides, message):
    with pytest.raises(ValueError, match="ldm_unet config: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        LDMUNetConfig(**{**TINY, **overrides})


@pytest.mark.slow  # each reads and checks the whole default config (1-3 s)
@pytest.mark.parametrize("text, expected", [
    ("ldm: {steps: 30}\n", "ldm.steps: 30 does not divide 1000"),
    ("models:\n  ldm_small:\n    config: {num_head_channels: 3}\n",
     "models.ldm_small.config: ldm_unet config: channels 8 (model_channels x channel_mult) are not a multiple"),
    ("methods:\n  tstitch_ldm:\n    models: {small: small}\n",
     "methods.tstitch_ldm.models.small: method 'tstitch_ldm' needs a model with arch 'ldm_unet'"),
])
def test_config_errors_are_refused_before_any_job(tmp_path, text, expected):
    from test_config_errors import refused

    assert expected in refused(tmp_path, text)


def test_an_ldm_ckpt_is_read_safely_converted_and_checked(tmp_path):
    from diffrepro.engines.ldm import load_ldm_unet
    from diffrepro.models.ldm_unet import convert_official_ldm_checkpoint

    layout = compvis_layout(TINY)
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=g) for k, shape in layout.items()}
    # a Lightning checkpoint: plain data beside the state dict
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, tmp_path / "ldm_s.ckpt")
    convert_official_ldm_checkpoint(tmp_path / "ldm_s.ckpt", TINY, tmp_path / "ldm_s.safetensors")
    model = load_ldm_unet(tmp_path / "ldm_s.safetensors", TINY)
    assert torch.equal(model.embedding.weight, state["cond_stage_model.embedding.weight"])
    assert torch.equal(model.unet.conv_in.weight, state["model.diffusion_model.input_blocks.0.0.weight"])
    with pytest.raises(ValueError, match="does not fit the configured ldm_unet"):
        convert_official_ldm_checkpoint(tmp_path / "ldm_s.ckpt", {**TINY, "context_dim": 16}, tmp_path / "x.safetensors")


@pytest.mark.slow  # two short trainings of a tiny U-Net (a few seconds)
def test_ldm_training_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from diffrepro.data import load_digits_tensors
    from diffrepro.ldm_training import train_ldm_unet
    from diffrepro.training import TrainConfig

    images, labels = load_digits_tensors()
    config, schedule = LDMUNetConfig(**TINY), {"linear_start": 0.0015, "linear_end": 0.0195}
    train = TrainConfig(iterations=4, batch_size=8, lr=1e-3, warmup=1, checkpoint_every=2, log_every=2)
    whole = train_ldm_unet(config, train, schedule, images, labels, tmp_path / "a.safetensors", log=lambda m: None)
    assert train_ldm_unet(config, train, schedule, images, labels, tmp_path / "b.safetensors",
                          log=lambda m: None, stop_after=2) == {"stopped_at": 2}
    resumed = train_ldm_unet(config, train, schedule, images, labels, tmp_path / "b.safetensors", log=lambda m: None)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole["sha256"] == resumed["sha256"] and len(whole["history"]) == 2
