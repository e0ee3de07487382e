"""The engine interface, checked the same way for every model family (one contract test over
the registry), and the import structure of the rule bodies."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrepro.checkpoints import save_checkpoint
from diffrepro.engines import ENGINES, engine_class, load_engine
from diffrepro.methods import get_method
from diffrepro.models.dit import build_dit
from diffrepro.models.ldm_unet import build_ldm_unet
from diffrepro.t2i.components import build_unet

DIT = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2,
           mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
SAMPLING = {"sampler": "ddim", "steps": 5, "cfg_scale": 1.5, "guided_channels": 1,
            "device": "cpu", "precision": "fp32", "tf32": False, "compile": False}
UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 8], layers_per_block=1,
            norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
T2I = {"scheduler": {"class": "DDIMScheduler", "config": {"num_train_timesteps": 1000, "beta_schedule": "linear"}},
       "steps": 5, "guidance_scale": 7.5, "precision": "fp32",
       "text_encoder": {"hidden_size": 16, "layers": 1, "heads": 2, "max_length": 32, "seed": 0}}
LDM_UNET = dict(image_size=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                attention_resolutions=[2], num_head_channels=8, context_dim=8, n_classes=10, norm_num_groups=4)
LDM = {"steps": 5, "eta": 1.0, "cfg_scale": 3.0, "linear_start": 0.0015, "linear_end": 0.0195,
       "device": "cpu", "precision": "fp32", "tf32": False, "compile": False}
# per family: a two-model method, its sampling section, a model config and a model builder
FAMILIES = {"denoiser": ("tstitch", SAMPLING, DIT, build_dit),
            "pipeline": ("tstitch_sd", T2I, UNET, build_unet),
            "ldm": ("tstitch_ldm", LDM, LDM_UNET, build_ldm_unet)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def loaded(request, tmp_path_factory):
    method, sampling, config, build = FAMILIES[request.param]
    root, checkpoints = tmp_path_factory.mktemp(request.param), {}
    for seed, role in enumerate(("small", "large")):
        torch.manual_seed(seed)
        model = build(config)
        for p in model.parameters():  # zero-initialised output layers: give every layer an effect
            p.data.add_(0.05 * torch.randn_like(p))
        checkpoints[role] = str(root / f"{role}.safetensors")
        save_checkpoint(checkpoints[role], model.state_dict())
    engine = load_engine(method, checkpoints=checkpoints, model_configs={"small": config, "large": config},
                         sampling=sampling, device="cpu")
    return request.param, method, engine


def test_every_family_has_an_engine_and_unknown_ones_are_named():
    assert set(ENGINES) == set(FAMILIES)
    with pytest.raises(KeyError, match="no engine for method family 'other'"):
        engine_class("other")


def test_engine_contract(loaded):
    """run_batch: uint8 images, labels, steps per role, samples; per-image noise (a batch of
    images is those images one by one); prepare() runs the same computation; one forward
    pass per role."""
    family, method, engine = loaded
    spec = get_method(method)
    setting = spec.make_setting({"ratio": 0.4})
    assert engine.family == family and set(engine.roles) == {"small", "large"}
    batch = engine.run_batch(spec, setting, 3, [0, 1, 2])
    assert batch.images.dtype == np.uint8 and batch.images.shape[:1] == (3,) and batch.images.ndim == 4
    assert len(batch.labels) == 3 and batch.extras["samples"].shape[0] == 3
    assert len(batch.nonfinite) == 0  # images whose float output held NaN or inf: none here
    assert set(batch.model_steps) == {"small", "large"} and sum(batch.model_steps.values()) > 0
    assert batch.model_steps["small"] > 0 and batch.model_steps["large"] > 0
    alone = engine.run_batch(spec, setting, 3, [2])
    np.testing.assert_allclose(alone.extras["samples"], batch.extras["samples"][2:], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        out = engine.prepare(spec, setting, 3, [0, 1, 2])()
        np.testing.assert_allclose(out.samples.float().numpy(), batch.extras["samples"], rtol=1e-5, atol=1e-5)
        assert out.steps_by_role(engine.roles) == batch.model_steps
        for role in engine.roles:
            assert engine.forward_pass(role, 2, 0)() is not None
    assert {"window", "window_batch"} <= set(engine.extra_costs(spec, setting, 0, 2, 1, True))
    assert "decoder" in engine.meta()


def test_pipeline_engine_passes_parallel_diagnostics_and_window_cost(loaded):
    """A method that runs its own loop in the pipeline (parataa_sd) gets its per-image
    diagnostics into the shard extras and a window-sized U-Net pass timed."""
    family, _, engine = loaded
    if family != "pipeline":
        pytest.skip("pipeline engine only")
    spec = get_method("parataa_sd")
    setting = spec.make_setting({"steps": 4, "window": 3, "order": 2})
    batch = engine.run_batch(spec, setting, 3, [0, 1])
    assert batch.extras["per_image__parallel_iterations"].shape == (2,)
    assert batch.extras["per_image__converged"].all() and batch.extras["trace__residual"].shape[0] == 2
    costs = engine.extra_costs(spec, setting, 0, 2, 1, False)
    assert costs["window"] == 3 and costs["window_batch"] > 0


RULE_BODIES = ("jobs", "timing", "engines", "engines.denoiser", "engines.pipeline", "engines.ldm", "engines.clock")


def _imports(path: Path, package: str) -> set[str]:
    """The diffrepro modules a file imports, at any depth of the file (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n.removeprefix("diffrepro.") for n in found if n.startswith("diffrepro")}


def test_no_rule_body_module_imports_one_that_imports_it_back():
    root = Path(__file__).resolve().parents[1] / "diffrepro"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = "diffrepro." + (name if path.name == "__init__.py" else name.rpartition(".")[0])
        modules[name] = _imports(path, package.rstrip("."))
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in graph[start])

    for module in RULE_BODIES:
        assert not reaches(module, module), f"diffrepro.{module} imports itself through a circle"


def test_flops_are_counted_on_the_denoiser_calls_made(loaded):
    """Every family: forward FLOPs of the calls a method made, by model, only the denoisers (a
    pipeline's text encoder is not counted); each call ran on the whole batch, so a model's
    FLOPs are its calls x one forward pass of it, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffrepro.engines.flops import count_call

    family, method, engine = loaded
    spec = get_method(method)
    setting = spec.make_setting({"ratio": 0.4})
    counter = count_call(engine.prepare(spec, setting, 3, [0, 1, 2]), engine.flop_modules())
    with torch.no_grad():
        steps = engine.prepare(spec, setting, 3, [0, 1, 2])().steps_by_role(engine.roles)
    assert dict(counter.calls) == steps
    for role, module in engine.flop_modules().items():
        one = count_call(engine.forward_pass(role, 1, 0), {role: module}).total
        assert one > 0 and counter.flops[role] == steps[role] * 3 * one
    assert any("mm" in op for op in counter.by_op)
    with torch.no_grad(), FlopCounterMode(display=False) as everything:
        engine.prepare(spec, setting, 3, [0, 1, 2])()
    if family == "pipeline":  # its text encoder's matmuls are outside the count
        assert everything.get_total_flops() > counter.total
    else:
        assert everything.get_total_flops() == counter.total


@pytest.mark.slow  # importing torch._dynamo: seconds
def test_flops_are_counted_on_the_eager_model_of_a_compiled_one(loaded):
    """compute.compile: the count runs the eager DiT (torch.compile wraps it lazily; nothing is
    compiled here), then the compiled one is back in place."""
    from diffrepro.engines.flops import count_call

    family, method, engine = loaded
    if family != "denoiser":
        pytest.skip("pipelines run eager")
    spec = get_method(method)
    setting = spec.make_setting({"ratio": 0.4})
    with engine.counting():
        eager = count_call(engine.prepare(spec, setting, 3, [0]), engine.flop_modules())
    originals = {role: d.model for role, d in engine.roles.items()}
    try:
        for d in engine.roles.values():
            d.model = torch.compile(d.model)
        compiled = {role: d.model for role, d in engine.roles.items()}
        call = engine.prepare(spec, setting, 3, [0])
        with engine.counting():
            assert {role: d.model for role, d in engine.roles.items()} == originals
            counted = count_call(call, engine.flop_modules())
        assert {role: d.model for role, d in engine.roles.items()} == compiled
        assert dict(counted.flops) == dict(eager.flops) and counted.total > 0
    finally:
        for role, d in engine.roles.items():
            d.model = originals[role]
