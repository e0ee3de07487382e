"""The prepared GPU check (benchmarks/gpu_check.py): random weights at the papers' sizes, a few
minutes on one GPU, one JSON and one Markdown file. Speed does not depend on the weights, so
the timing-side claims can be checked on any GPU without downloads:

- tstitch: DiT-S/2 -> DiT-XL/2 T-Stitch (our DiT, 256 px = 32x32 latents), 8 images, DDIM-100,
  CFG 1.5, all 11 ratios, against the ideal r * T_S + (1 - r) * T_XL (T_S, T_XL: the r = 1 and
  r = 0 runs of the same rounds), beside the paper's RTX 3090 curve (reports/paper/tstitch.yaml);
- bksdm: SD-1.4 and BK-SDM Base / Small / Tiny U-Net step latency (diffusers U-Nets built from
  their configs on the device), 512 px, batch 1 with guidance (2 rows), 77 tokens;
- parataa: ParaTAA on DiT-XL/2 (one image, DDIM-25, window 25): its time against parallel
  iterations x the time of one window batch, and against sequential DDIM with the same steps;
- cache: the DiT cache baselines (diffusers' PAB and TaylorSeer hooks through
  DiTTransformer2DModel) at off and the embedded table's knobs, and any method named cache*,
  against their own off and sequential DDIM on DiT-XL/2 (skipped, with the reason, where none
  is registered).

Every part is timed round-robin (warm-up first, device synchronised) within its share of the
budget, and records FLOPs of the calls it made (engines.flops) where it runs a method.
`tiny=True` runs the same code on tiny models in seconds (the CI test).
"""

from __future__ import annotations

import platform
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .diffusion.guidance import GuidedDenoiser
from .dit_caches import GPU_CHECK_SETTINGS
from .diffusion.samplers import make_sampler
from .diffusion.sampling import initial_noise_and_labels
from .engines.clock import sync, timed
from .engines.flops import count_call
from .methods import get_method, load_plugins
from .models.bksdm import SD14_UNET_CONFIG, VARIANTS, student_config
from .models.dit import PAPER_SIZES, DiT, DiTConfig
from .provenance import git_state
from .report.gpu_check import runs_of

AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
RATIOS = tuple(round(0.1 * i, 1) for i in range(11))
IDEAL_TARGET = 0.03  # the target: measured within 3 % of r * T_S + (1 - r) * T_XL
# share of the budget each part may use, in run order (a part finishing early leaves its rest to the next)
SHARES = {"tstitch": 0.4, "bksdm": 0.2, "parataa": 0.25, "cache": 0.15}


@dataclass(frozen=True)
class Sizes:
    """What the check runs: the papers' sizes, or tiny ones (same code, seconds on a CPU)."""
    dit_small: dict
    dit_large: dict
    images: int             # T-Stitch's timed batch (the paper: 8)
    steps: int              # T-Stitch's DDIM steps (the paper: 100)
    cfg_scale: float
    unets: dict             # name -> diffusers UNet2DConditionModel config
    unet_latent: int        # latent side (512 px / 8)
    tokens: int
    parataa_steps: int
    cache_steps: int
    max_rounds: int
    labels: dict = field(default_factory=dict)  # published names of the models


def paper_sizes() -> Sizes:
    unets = {"sd-v1.4": SD14_UNET_CONFIG, **{v: student_config(SD14_UNET_CONFIG, v) for v in VARIANTS}}
    return Sizes(dit_small={"input_size": 32, "in_channels": 4, "num_classes": 1000, **PAPER_SIZES["DiT-S/2"]},
                 dit_large={"input_size": 32, "in_channels": 4, "num_classes": 1000, **PAPER_SIZES["DiT-XL/2"]},
                 images=8, steps=100, cfg_scale=1.5, unets=unets, unet_latent=64, tokens=77, parataa_steps=25,
                 cache_steps=50, max_rounds=7, labels={"small": "DiT-S/2", "large": "DiT-XL/2"})


def tiny_sizes() -> Sizes:
    teacher = dict(SD14_UNET_CONFIG, block_out_channels=[8, 16, 16, 16], cross_attention_dim=8,
                   attention_head_dim=2, norm_num_groups=4, sample_size=8)
    unets = {"sd-v1.4": teacher, **{v: student_config(teacher, v) for v in VARIANTS}}
    dit = {"input_size": 8, "in_channels": 4, "num_classes": 10, "patch_size": 2, "num_heads": 2}
    return Sizes(dit_small={**dit, "hidden_size": 16, "depth": 1}, dit_large={**dit, "hidden_size": 32, "depth": 2},
                 images=2, steps=10, cfg_scale=1.5, unets=unets, unet_latent=8, tokens=8, parataa_steps=5,
                 cache_steps=5, max_rounds=2, labels={"small": "tiny DiT (small)", "large": "tiny DiT (large)"})


class Budget:
    """Seconds left, and the deadline of each part: its share of the whole, cumulative."""

    def __init__(self, seconds: float):
        self.seconds, self.began = float(seconds), time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def deadline(self, part: str) -> float:
        """Seconds since the start by which `part` must end."""
        names = list(SHARES)
        return self.seconds * sum(SHARES[n] for n in names[: names.index(part) + 1])


def round_robin(units: dict[str, Callable[[], object]], device, budget: Budget, deadline: float,
                max_rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Times of each unit over rounds (each round every unit once, starting at another unit
    each time): warm-up rounds first, then at least one timed round, then more while the next
    one (as long as the last) fits before `deadline` (seconds since the budget began)."""
    names = list(units)
    for _ in range(warmup):
        for name in names:
            timed(units[name], device)
    times = {name: [] for name in names}
    for k in range(max_rounds):
        began = time.perf_counter()
        for name in names[k % len(names):] + names[: k % len(names)]:
            times[name].append(timed(units[name], device))
        if budget.elapsed() + (time.perf_counter() - began) > deadline:
            break
    return times


def random_dit(config: dict, device, seed: int) -> DiT:
    """Our DiT with random weights; DiT zero-initialises its modulation and output layers,
    which makes the output zero (every fixed-point solver then converges at once): those get
    small random values too."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = DiT(DiTConfig(**config))
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


def _median(values) -> float:
    return float(statistics.median(values))


def _dit_inputs(sizes: Sizes, config: dict, batch: int, device):
    shape = (config["in_channels"], config["input_size"], config["input_size"])
    noise, labels, generators = initial_noise_and_labels(0, range(batch), shape, config["num_classes"])
    return noise.to(device), labels.to(device), generators


def _forward_flops(denoiser: GuidedDenoiser, config: dict, device) -> float:
    """FLOPs of one guided forward pass on one image."""
    x, y, _ = _dit_inputs(None, config, 1, device)
    return float(count_call(lambda: denoiser(x, 500, y), {"model": denoiser.model}).total)


def part_tstitch(sizes: Sizes, device, dtype: str, budget: Budget, paper: dict | None) -> dict:
    spec = get_method("tstitch")
    models = {role: GuidedDenoiser(random_dit(cfg, device, seed), sizes.cfg_scale, 3, autocast=AUTOCAST[dtype])
              for seed, (role, cfg) in enumerate((("small", sizes.dit_small), ("large", sizes.dit_large)))}
    sampler = make_sampler("ddim", sizes.steps)
    noise, labels, generators = _dit_inputs(sizes, sizes.dit_large, sizes.images, device)
    steps, finite = {}, {}

    def unit(ratio):
        setting = spec.make_setting({"ratio": ratio})

        def run():
            out = spec.run(models, sampler, noise, labels, generators, setting)
            steps[ratio], finite[ratio] = out.steps_by_role(models), out.samples
        return run

    with torch.no_grad():
        times = round_robin({r: unit(r) for r in RATIOS}, device, budget, budget.deadline("tstitch"), sizes.max_rounds)
        per_forward = {role: _forward_flops(d, sizes.dit_small if role == "small" else sizes.dit_large, device)
                       for role, d in models.items()}
    rounds = len(times[0.0])
    rows = []
    for r in RATIOS:
        # the ideal from the same round's r = 1 and r = 0 runs, the deviation's median over rounds
        ratios = [t / (r * s + (1 - r) * xl) for t, s, xl in zip(times[r], times[1.0], times[0.0])]
        flops = sum(n * per_forward[role] for role, n in steps[r].items())
        rows.append({"ratio": r, "median_s": _median(times[r]), "times_s": times[r],
                     "ideal_s": r * _median(times[1.0]) + (1 - r) * _median(times[0.0]),
                     "vs_ideal": _median(ratios) - 1, "within_target": abs(_median(ratios) - 1) <= IDEAL_TARGET,
                     "model_steps": steps[r], "gflops_per_image": flops / 1e9,
                     "speedup": _median([x / t for x, t in zip(times[0.0], times[r])])})
    for row in rows:
        row["flops_speedup"] = rows[0]["gflops_per_image"] / row["gflops_per_image"]
    if paper is not None:
        published = dict(zip(paper["ratio"], paper["time_s"]))
        t0, t1 = published.get(0.0), published.get(1.0)
        for row in rows:
            p = published.get(row["ratio"])
            row["paper_time_s"] = p
            row["paper_speedup"] = None if p is None or t0 is None else t0 / p
            row["paper_vs_ideal"] = (None if None in (p, t0, t1)
                                     else p / (row["ratio"] * t1 + (1 - row["ratio"]) * t0) - 1)
    return {"models": sizes.labels, "images": sizes.images, "sampler": f"DDIM-{sizes.steps}",
            "cfg_scale": sizes.cfg_scale, "rounds": rounds, "target": IDEAL_TARGET, "rows": rows,
            "gflops_per_forward_per_image": {role: f / 1e9 for role, f in per_forward.items()},
            # random weights in half precision may overflow: a time of NaNs would still be a time
            "samples_finite": all(bool(torch.isfinite(x).all()) for x in finite.values()),
            "max_abs_vs_ideal": max(abs(row["vs_ideal"]) for row in rows)}


def part_bksdm(sizes: Sizes, device, dtype: str, budget: Budget) -> dict:
    from .t2i.components import build_unet

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    unets, units, flops = {}, {}, {}
    for name, config in sizes.unets.items():
        torch.manual_seed(0)
        with torch.device(device):  # built on the device: no copy of 860M parameters from the CPU
            unet = build_unet(config)
        unets[name] = (unet if torch_dtype == torch.float32 else unet.to(torch_dtype)).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    # one guided step of one image: the unconditional and conditional rows in one batch
    x = torch.randn(2, 4, sizes.unet_latent, sizes.unet_latent, generator=generator).to(device, torch_dtype)
    t = torch.tensor([500, 500], device=device)
    with torch.no_grad():
        for name, unet in unets.items():
            context = torch.randn(2, sizes.tokens, unet.config.cross_attention_dim,
                                  generator=generator).to(device, torch_dtype)
            units[name] = (lambda u, c: lambda: u(x, t, encoder_hidden_states=c))(unet, context)
            flops[name] = count_call(units[name], {name: unet}).total / 1e9
        times = round_robin(units, device, budget, budget.deadline("bksdm"), sizes.max_rounds * 3)
    base = _median(times["sd-v1.4"])
    rows = [{"model": name, "step_ms": 1000 * _median(times[name]), "vs_sd14": _median(times[name]) / base,
             "gflops_per_step": flops[name], "flops_vs_sd14": flops[name] / flops["sd-v1.4"],
             "params_m": sum(p.numel() for p in unets[name].parameters()) / 1e6}
            for name in unets]
    return {"resolution": 8 * sizes.unet_latent, "rows_per_step": 2, "tokens": sizes.tokens,
            "rounds": len(times["sd-v1.4"]), "rows": rows}


def _sequential_and(arms: dict[str, tuple], steps: int, sizes: Sizes, device, dtype: str, budget: Budget,
                    part: str, batch: int) -> dict:
    """Each arm (label -> (method spec, setting)) timed against sequential DDIM with `steps` on
    DiT-XL/2, round-robin: times, the last outputs, FLOPs per image of one run of each, the
    model and inputs."""
    model = GuidedDenoiser(random_dit(sizes.dit_large, device, 1), sizes.cfg_scale, 3, autocast=AUTOCAST[dtype])
    sequential = get_method("sequential")
    sampler = make_sampler("ddim", steps)
    noise, labels, generators = _dit_inputs(sizes, sizes.dit_large, batch, device)
    outputs = {}

    def unit(name, run_spec, run_setting, run_roles):
        def run():
            outputs[name] = run_spec.run(run_roles, sampler, noise, labels, generators, run_setting)
        return run

    units = {label: unit(label, spec, setting, {role: model for role in spec.roles})
             for label, (spec, setting) in arms.items()}
    units["sequential"] = unit("sequential", sequential, sequential.make_setting({"steps": steps}), {"model": model})
    with torch.no_grad():
        times = round_robin(units, device, budget, budget.deadline(part), sizes.max_rounds)
        flops = {name: count_call(units[name], {"model": model.model}).total / batch for name in units}
    return {"times": times, "outputs": outputs, "flops": flops, "model": model, "noise": noise, "labels": labels}


def part_parataa(sizes: Sizes, device, dtype: str, budget: Budget) -> dict:
    n = sizes.parataa_steps
    values = {"steps": n, "window": n, "order": n, "memory": 2}
    spec = get_method("parataa")
    got = _sequential_and({"parataa": (spec, spec.make_setting(values))}, n, sizes, device, dtype, budget,
                          "parataa", batch=1)
    times, model = got["times"], got["model"]
    x, y = got["noise"].repeat(n, 1, 1, 1), got["labels"].repeat(n)
    with torch.no_grad():
        window = _median([timed(lambda: model(x, 500, y), device) for _ in range(3)])
    iterations = int(got["outputs"]["parataa"].steps_by_role({"model": None})["model"])
    para, seq = _median(times["parataa"]), _median(times["sequential"])
    return {"model": sizes.labels["large"], "sampler": f"DDIM-{n}", "setting": values, "images": 1,
            "rounds": len(times["sequential"]), "iterations": iterations, "window_batch_s": window,
            "iterations_x_window_s": iterations * window, "parataa_s": para, "sequential_s": seq,
            "measured_vs_iterations_x_window": para / (iterations * window),
            "speedup_vs_sequential": _median([s / p for s, p in zip(times["sequential"], times["parataa"])]),
            "gflops_per_image": {k: v / 1e9 for k, v in got["flops"].items()},
            "samples_finite": all(bool(torch.isfinite(o.samples).all()) for o in got["outputs"].values()),
            "note": "random weights: the iteration count is not the trained model's; the check is the "
                    "cost model (time = iterations x one window batch) and the speed-up it implies"}


def cache_methods() -> list[str]:
    return sorted(name for name in load_plugins() if name.startswith("cache"))


def cache_arms() -> list[tuple[str, dict]]:
    """What the cache part times: (method, setting values). The DiT cache baselines (pab_dit,
    taylorseer_dit: diffusers' hooks through DiTTransformer2DModel) at their "off" and the
    embedded table's knob values, and any method named cache* at its default setting."""
    registry = load_plugins()
    arms = [(name, values) for name, grid in GPU_CHECK_SETTINGS.items() if name in registry for values in grid]
    return arms + [(name, {}) for name in cache_methods()]


def part_cache(sizes: Sizes, device, dtype: str, budget: Budget) -> dict:
    arms = cache_arms()
    if not arms:
        return {"skipped": "no cache method is registered (no DiT cache baseline, no method named cache*)"}
    rows, timed_arms, labels_of = [], {}, {}
    for method, values in arms:
        spec = get_method(method)
        try:
            setting = spec.make_setting(values)
        except Exception as error:  # noqa: BLE001 - the setting needs values the check cannot guess
            rows.append({"method": method, "skipped": f"its setting has no defaults: {error}"})
            continue
        label = f"{method} {setting.id()}" if hasattr(setting, "id") else method
        labels_of[label], timed_arms[label] = (method, values, spec), (spec, setting)
    got = _sequential_and(timed_arms, sizes.cache_steps, sizes, device, dtype, budget, "cache", batch=sizes.images)
    times, flops, outputs = got["times"], got["flops"], got["outputs"]

    offs = {}  # a DiT cache baseline's first arm is its off (GPU_CHECK_SETTINGS)
    for label, (method, values, spec) in labels_of.items():
        if method in GPU_CHECK_SETTINGS and values == GPU_CHECK_SETTINGS[method][0]:
            offs[method] = label
    for label, (method, values, spec) in labels_of.items():
        off = offs.get(method)
        row = {"method": method, "setting": values, "label": label, "steps": sizes.cache_steps,
               "median_s": _median(times[label]), "sequential_s": _median(times["sequential"]),
               "speedup": _median([s / c for s, c in zip(times["sequential"], times[label])]),
               "flops_speedup": flops["sequential"] / flops[label],
               "samples_finite": bool(torch.isfinite(outputs[label].samples).all()),
               "model_steps": outputs[label].steps_by_role({r: None for r in spec.roles})}
        if off is not None:
            row.update(off_s=_median(times[off]),
                       speedup_vs_off=_median([o / c for o, c in zip(times[off], times[label])]),
                       flops_speedup_vs_off=flops[off] / flops[label])
        rows.append(row)
    return {"model": sizes.labels["large"], "images": sizes.images, "rounds": len(times["sequential"]), "rows": rows,
            "note": "the DiT cache baselines run our DiT converted to diffusers' DiTTransformer2DModel; "
                    "their speed-up is against their own off (the converted DiT, no hook), as in the "
                    "embedded table, and against sequential DDIM on our DiT"}


def machine(device: torch.device, dtype: str) -> dict:
    info = {"device": str(device), "dtype": dtype, "torch": torch.__version__, "python": platform.python_version(),
            "dit_precision": f"autocast {dtype}, weights fp32" if AUTOCAST[dtype] else "fp32",
            "unet_precision": f"weights and activations {dtype}"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


PARTS = {"tstitch": part_tstitch, "bksdm": part_bksdm, "parataa": part_parataa, "cache": part_cache}


def run_check(*, device: str, dtype: str, budget_s: float, tiny: bool = False, paper: dict | None = None,
              parts: tuple[str, ...] = tuple(PARTS), log=print) -> dict:
    """Run the parts in order, each within its share of the budget; a part that fails or has
    no time left is recorded as such and the others still run."""
    device = torch.device(device)
    sizes, budget = (tiny_sizes() if tiny else paper_sizes()), Budget(budget_s)
    result = {"machine": machine(device, dtype), "tiny": tiny, "budget_s": budget_s,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    for name in parts:
        left = budget.seconds - budget.elapsed()
        if budget.elapsed() >= budget.deadline(name) or left < 0.05 * budget.seconds:
            result["parts"][name] = {"status": "skipped", "reason": f"budget: {left:.0f} s of {budget_s:.0f} s left"}
            log(f"{name}: skipped ({result['parts'][name]['reason']})")
            continue
        began = time.perf_counter()
        try:
            args = (sizes, device, dtype, budget) + ((paper,) if name == "tstitch" else ())
            found = PARTS[name](*args)
            status = "skipped" if "skipped" in found else "done"
            result["parts"][name] = {"status": status, **({"reason": found.pop("skipped")} if status == "skipped"
                                                          else {}), **found}
        except Exception as error:  # noqa: BLE001 - one failing part must not lose the others' numbers
            result["parts"][name] = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                     "traceback": traceback.format_exc(limit=5)}
        finally:
            sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["parts"][name]["seconds"] = time.perf_counter() - began
        log(f"{name}: {result['parts'][name]['status']} in {result['parts'][name]['seconds']:.1f} s")
    result["seconds"] = budget.elapsed()
    result["sizes"] = asdict(sizes)
    result["code"] = git_state()
    return result


# what must agree for two runs' parts to stand in one record
SAME_MACHINE = ("gpu", "torch", "dtype", "cuda")


def merge_runs(earlier: dict, later: dict) -> dict:
    """`earlier` with the parts that `later` ran replaced by later's, for a part re-run alone
    (after a failure, say) without spending the whole budget again. Each part keeps the run it
    came from (`runs`). Runs on another GPU, torch, CUDA or dtype, or of other sizes, are
    refused: their numbers do not belong in one table."""
    mine, theirs = earlier["machine"], later["machine"]
    differ = [k for k in SAME_MACHINE if mine.get(k) != theirs.get(k)]
    if differ or earlier["tiny"] != later["tiny"]:
        what = ", ".join(f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in differ) or "tiny vs paper sizes"
        raise ValueError(f"the runs differ ({what}): record them separately, or re-run every part")
    runs = [dict(run, parts=[p for p in run["parts"] if p not in later["parts"]]) for run in runs_of(earlier)]
    merged = {**earlier, "parts": {**earlier["parts"], **later["parts"]},
              "runs": [run for run in runs if run["parts"]] + runs_of(later)}
    merged["parts"] = {name: merged["parts"][name] for name in PARTS if name in merged["parts"]}
    return merged
