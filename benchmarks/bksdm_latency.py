"""U-Net step latency of SD-v1.4 and its BK-SDM Base / Small / Tiny students (random weights:
latency does not depend on them) at 512 px: one guided step = a batch of 2 latents (conditional
and unconditional) of 4x64x64 with 77 text tokens of width 768.

    .venv/bin/python benchmarks/bksdm_latency.py [--device cuda] [--dtype fp16] [--repeats 20]

Run it alone on the machine. The four models are timed round-robin (warm-up first, device
synchronised), so slow drifts hit every model alike; it prints median ms per step and the
ratio to SD-v1.4 beside the published MACs ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffrepro.models.bksdm import SD14_UNET_CONFIG, VARIANTS, student_config
from diffrepro.models.bksdm_config import PUBLISHED_SIZES
from diffrepro.t2i.components import build_unet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp16 on GPU, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    configs = {"sd-v1.4": SD14_UNET_CONFIG, **{v: student_config(SD14_UNET_CONFIG, v) for v in VARIANTS}}
    models = {name: build_unet(cfg).to(device, dtype).eval() for name, cfg in configs.items()}
    x = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    context = torch.randn(2, 77, 768, device=device, dtype=dtype)
    t = torch.tensor([500, 500], device=device)

    def step(model) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        model(x, t, encoder_hidden_states=context)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for model in models.values():
                step(model)
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(step(model))
    base = statistics.median(times["sd-v1.4"])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"U-Net step (batch 2 = guidance), 512 px, {str(dtype).removeprefix('torch.')}, {gpu}, "
          f"median of {args.repeats}")
    print("| model | ms per step | vs SD-v1.4 | published GMACs | GMACs vs SD-v1.4 |")
    print("|---|---|---|---|---|")
    for name in models:
        ms = 1000 * statistics.median(times[name])
        macs = PUBLISHED_SIZES[name][1]
        print(f"| {name} | {ms:.1f} | {ms / (1000 * base):.3f} | {macs:.1f} | "
              f"{macs / PUBLISHED_SIZES['sd-v1.4'][1]:.3f} |")


if __name__ == "__main__":
    main()
