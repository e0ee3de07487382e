"""Sample and score jobs run with one torch thread each in the embedded default
(config/default.yaml: sampling.threads, scoring.threads), which is only sound if a forward pass
gives the same bits with 1 and 2 threads. Checked on every embedded model family at the embedded
sizes and batch sizes: the DiT, the class-prompt U-Net (diffusers), the LDM U-Net, the digits
CNN that scores. (Training is not invariant: its weights depend on the thread count, so the
training jobs keep the suite's threads.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = yaml.safe_load((ROOT / "config/default.yaml").read_text())["models"]


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero weights everywhere (zero-initialised output layers would make the check vacuous)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def dit():
    from diffrepro.models.dit import build_dit

    model = randomised(build_dit(MODELS["large"]["config"]))
    x, y = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(500) % 10
    return lambda: model(x, torch.full((500,), 500), y)


def sd_unet():
    from diffrepro.t2i.components import build_unet

    model = randomised(build_unet(MODELS["sd_large"]["config"]))
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(256, 1, 8, 8, generator=g), torch.randn(256, 12, 32, generator=g)
    return lambda: model(x, torch.full((256,), 500), encoder_hidden_states=text).sample


def ldm_unet():
    from diffrepro.models.ldm_unet import build_ldm_unet

    model = randomised(build_ldm_unet(MODELS["ldm_large"]["config"]))
    x, y = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.arange(256) % 10
    return lambda: model(x, torch.full((256,), 500), y)


def digits_cnn():
    from diffrepro.models.classifier import DigitsCNN

    model = randomised(DigitsCNN())
    x = torch.rand(800, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    return lambda: torch.cat([model.features(x), model(x)], dim=1)


@pytest.mark.parametrize("make", [dit, sd_unet, ldm_unet, digits_cnn], ids=lambda f: f.__name__)
def test_a_forward_pass_gives_the_same_bits_with_one_and_two_threads(make):
    before = torch.get_num_threads()
    try:
        run = make()
        outputs = {}
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outputs.setdefault(threads, []).append(run())
    finally:
        torch.set_num_threads(before)
    one, two = outputs[1][0], outputs[2][0]
    assert torch.isfinite(one).all() and one.abs().max() > 0
    assert torch.equal(one, outputs[1][1])  # the check itself is deterministic
    assert torch.equal(one, two)


def test_parataa_iterates_the_same_with_one_and_two_threads():
    """The parallel solver's own arithmetic (residuals, the Anderson least squares) on the CPU."""
    from diffrepro.diffusion.guidance import GuidedDenoiser
    from diffrepro.diffusion.samplers import make_sampler
    from diffrepro.diffusion.sampling import initial_noise_and_labels
    from diffrepro.methods import get_method, load_plugins
    from diffrepro.models.dit import build_dit

    load_plugins()
    torch.manual_seed(0)
    model = GuidedDenoiser(randomised(build_dit(MODELS["large"]["config"])), 1.5, 1)
    for p in model.model.parameters():
        p.data.mul_(0.2)  # small weights: a solver that converges in a few iterations
    spec = get_method("parataa")
    setting = spec.make_setting({"steps": 25, "window": 25, "order": 25, "memory": 3})
    noise, labels, generators = initial_noise_and_labels(0, range(16), (1, 8, 8), 10)
    before, runs = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out = spec.run({"model": model}, make_sampler("ddim", 25), noise, labels, generators, setting)
            runs[threads] = (out.samples, out.steps_by_role({"model": None}))
    finally:
        torch.set_num_threads(before)
    assert runs[1][1] == runs[2][1] and 1 < runs[1][1]["model"]
    assert torch.equal(runs[1][0], runs[2][0])
