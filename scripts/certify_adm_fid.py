#!/usr/bin/env python
"""Certify diffrepro.adm_metrics against a number the ADM authors published.

guided-diffusion's evaluations/README.md runs its TensorFlow evaluator on the ImageNet 256x256
reference batch VIRTUAL_imagenet256_labeled.npz and the sample batch
admnet_guided_upsampled_imagenet256.npz (ADM-G + ADM-U, 50,000 samples) and prints

    Inception Score: 215.8370361328125
    FID: 3.9425574129223264
    sFID: 6.140433703346162
    Precision: 0.8265
    Recall: 0.5309

This script scores the same two files with diffrepro.adm_metrics (torch-fidelity's TF-ported
Inception, no TensorFlow) and exits 0 only if |FID - 3.9425574129223264| <= --tolerance
(default 1e-3). The other four numbers are printed next to the published ones for information.

Why 1e-3 (absolute, 0.025 % of the FID): with the same converted weights and torch-fidelity's
TF1-exact bilinear resize, what is left is float32 rounding inside the network (different
kernels than TF's), float64 instead of float32 means, and scipy-version differences in sqrtm;
averaged over 50,000 samples these should move the FID by well under 1e-4. Protocol mistakes
are orders of magnitude larger: a different resize (PIL/antialiased), torchvision's Inception
weights, the wrong layer or NCHW flattening change the FID by 1e-2 to several units. So 1e-3
separates "same computation" from "different computation" with room on both sides; the
measured difference is printed so a tighter bound can be checked by eye.

Files are downloaded (urllib) into --cache-dir unless given with --reference / --samples; the
reference batch is ~1.6 GB and the sample batch ~9.8 GB. The Inception weights are never
downloaded: pass --weights or put them in the torch hub cache (the error says where).
The reference activations are cached beside the reference batch, so a second run skips them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
REFERENCE_NAME = "VIRTUAL_imagenet256_labeled.npz"
SAMPLES_NAME = "admnet_guided_upsampled_imagenet256.npz"
# guided-diffusion evaluations/README.md, "Run evaluations" example output
PUBLISHED = {
    "inception_score": 215.8370361328125,
    "fid": 3.9425574129223264,
    "sfid": 6.140433703346162,
    "precision": 0.8265,
    "recall": 0.5309,
}
DEFAULT_TOLERANCE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(f"Score ADM's {SAMPLES_NAME} against {REFERENCE_NAME} with "
                     "diffrepro.adm_metrics and check the FID against the published "
                     f"{PUBLISHED['fid']} (guided-diffusion evaluations/README.md)."),
        epilog="Exit status: 0 certified, 1 FID outside the tolerance, 2 missing input.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="directory to download the .npz batches into (and reuse from)")
    parser.add_argument("--reference", type=Path, default=None,
                        help=f"local {REFERENCE_NAME} (skips its download)")
    parser.add_argument("--samples", type=Path, default=None,
                        help=f"local {SAMPLES_NAME} (skips its download)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="torch-fidelity Inception weights (.pth); default: torch hub cache")
    parser.add_argument("--weights-sha256", default=None,
                        help="refuse weights whose sha256 differs from this")
    parser.add_argument("--device", default=None,
                        help="torch device for the Inception network (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest accepted |FID - {PUBLISHED['fid']}| "
                             f"(default {DEFAULT_TOLERANCE}; see the module docstring)")
    parser.add_argument("--fid-method", choices=("sqrtm", "factored"), default="sqrtm",
                        help="sqrtm = the evaluator's scipy sqrtm (default); factored = a "
                             "faster exact check")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the reference-activation cache")
    parser.add_argument("--output", type=Path, default=None, help="write the scores as JSON")
    return parser.parse_args(argv)


def download(url: str, dest: Path) -> Path:
    """Fetch `url` to `dest` unless it is there; atomically (temporary file, then rename)."""
    if dest.is_file():
        print(f"using {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url}\n         -> {dest}")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            while block := response.read(1 << 22):
                out.write(block)
                done += len(block)
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    pct = f" ({100 * done / total:.1f} %)" if total else ""
                    print(f"  {done / 2**20:,.0f} MiB{pct}", flush=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def resolve_input(given: Path | None, cache_dir: Path | None, name: str) -> Path:
    if given is not None:
        if not given.is_file():
            raise FileNotFoundError(f"{given} does not exist")
        return given
    if cache_dir is None:
        raise FileNotFoundError(f"{name}: pass its local path or --cache-dir to download it")
    return download(BASE_URL + name, cache_dir / name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch  # imported here so that --help stays fast

    from diffrepro import adm_metrics
    from diffrepro.io import write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    try:
        reference = resolve_input(args.reference, args.cache_dir, REFERENCE_NAME)
        samples = resolve_input(args.samples, args.cache_dir, SAMPLES_NAME)
        extractor = adm_metrics.load_inception(args.weights, device=device,
                                               expected_sha256=args.weights_sha256)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Inception weights {extractor.weights_path} sha256 {extractor.weights_sha256}")

    start = time.monotonic()
    scores = adm_metrics.adm_scores(samples, reference, extractor, batch_size=args.batch_size,
                                    cache=not args.no_cache, fid_method=args.fid_method)
    elapsed = time.monotonic() - start

    print(f"\n{'metric':<16}{'ours':>20}{'published':>20}{'difference':>14}")
    for key, published in PUBLISHED.items():
        ours = scores[key]
        print(f"{key:<16}{ours:>20.10g}{published:>20.10g}{ours - published:>+14.3g}")
    delta = abs(scores["fid"] - PUBLISHED["fid"])
    certified = math.isfinite(delta) and delta <= args.tolerance
    print(f"\n{scores['num_samples']} samples in {elapsed:.0f} s; |FID - published| = {delta:.3g} "
          f"{'<=' if certified else '>'} tolerance {args.tolerance:g}: "
          f"{'CERTIFIED' if certified else 'NOT CERTIFIED'}")
    if args.output is not None:
        write_json(args.output, {**scores, "published": PUBLISHED, "tolerance": args.tolerance,
                                 "fid_abs_difference": delta, "certified": certified,
                                 "seconds": elapsed})
        print(f"wrote {args.output}")
    return 0 if certified else 1


if __name__ == "__main__":
    sys.exit(main())
