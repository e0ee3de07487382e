#!/usr/bin/env python
"""Check that the parallel samplers' existing settings give the same tensors at two git revisions.

    python scripts/compare_parallel_revisions.py main HEAD

Each revision is exported with `git archive` to a temporary folder and run in its own Python
process: ParaTAA and Picard settings (windows 1 to 20, memory 2 to 4, warm start, eta 0.5) on a
tiny random DiT, four images each. Samples, per-image iterations and NFE, residual traces,
network calls and setting ids must be bitwise equal; the script exits 1 and names what differs
otherwise. Used when ParaTAA's rule options were added (their defaults must keep old outputs).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Settings every revision since the solvers were written accepts (no newer fields).
CASES = {
    "taa_w5_m3": ("parataa", dict(steps=20, window=5, order=3, memory=3), 0.0),
    "taa_w8_m4_tol": ("parataa", dict(steps=20, window=8, order=8, memory=4, tolerance=1e-2,
                                      relative_tolerance=0.0), 0.0),
    "taa_w20_m2": ("parataa", dict(steps=20, window=20, order=20, memory=2), 0.0),
    "taa_w6_m3_warm": ("parataa", dict(steps=20, window=6, order=2, memory=3, warm_start=True), 0.0),
    "taa_w1_m2": ("parataa", dict(steps=10, window=1, order=1, memory=2), 0.0),
    "taa_eta": ("parataa", dict(steps=12, window=4, order=2, memory=3), 0.5),
    "picard_w5": ("picard", dict(steps=20, window=5, tolerance=0.05), 0.0),
}

DUMP = '''
import sys
import numpy as np
import torch
from diffrepro.diffusion.guidance import GuidedDenoiser
from diffrepro.diffusion.samplers import DDIMSampler
from diffrepro.diffusion.sampling import initial_noise_and_labels
from diffrepro.methods import get_method
from diffrepro.models.dit import DiTConfig, build_dit

torch.set_num_threads(1)
torch.manual_seed(2)
model = build_dit(DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2,
                            num_heads=2, num_classes=10))
with torch.no_grad():
    for p in model.parameters():
        if p.requires_grad:
            p.normal_(0, 0.05)  # DiT zero-inits its output layer: every sampler would agree
denoiser = GuidedDenoiser(model.eval(), cfg_scale=1.5)
out = {}
for name, (method, values, eta) in CASES.items():
    spec = get_method(method)
    setting = spec.make_setting(values)
    noise, y, generators = initial_noise_and_labels(0, range(4), (1, 8, 8), 10)
    run = spec.run({"model": denoiser}, DDIMSampler(setting.steps, eta=eta), noise, y, generators, setting)
    out[name + "/samples"] = run.samples.numpy()
    out.update({f"{name}/{k}": np.asarray(v) for k, v in {**run.per_image, **run.traces}.items()})
    out[name + "/calls"] = np.array(run.model_steps["model"])
    out[name + "/id"] = np.array(spec.setting_id(setting))
np.savez(sys.argv[1], **out)
'''


def outputs(revision: str, folder: Path) -> dict[str, np.ndarray]:
    tree = folder / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    script = f"CASES = {CASES!r}\n{DUMP}"
    subprocess.run([sys.executable, "-c", script, str(folder / "out.npz")], cwd=tree, check=True,
                   env={"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    with np.load(folder / "out.npz") as data:
        return dict(data)


def main(old: str, new: str) -> int:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        before, after = outputs(old, Path(a)), outputs(new, Path(b))
    keys = sorted(set(before) | set(after))
    differ = [k for k in keys if k not in before or k not in after or not np.array_equal(
        before[k], after[k], equal_nan=before[k].dtype.kind == "f")]
    print(f"{len(keys)} arrays from {len(CASES)} settings, {old} vs {new}: "
          + ("all bitwise equal" if not differ else f"{len(differ)} differ: {differ}"))
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
