"""The paper-suite DAG end to end, offline: published-format DiT checkpoints and an ADM-style
reference batch served from 127.0.0.1, a VAE from a local directory, random Inception weights.

Everything is tiny (8x8x4 latents, a 2-block VAE decoding to 16x16 images), but every rule of a
paper run executes: download (pinning sha256 in the lock file) -> convert_checkpoint ->
fetch_vae -> sample -> time -> score (ADM metrics) -> table, plot. (The three-model
and samplers tables share these rules; their reports are tested on synthetic records. Shards
merging to the same images: tests/test_paper_pipeline.py and the smoke run.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffrepro.io import sha256_file
from diffrepro.models.dit import build_dit
from workflow_run import copy_repository, snakemake

pytestmark = pytest.mark.slow

LATENT_DIT = dict(input_size=8, patch_size=2, in_channels=4, depth=1, num_heads=2, mlp_ratio=2.0,
                  class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
HIDDEN = {"dit_s": 16, "dit_xl": 32}


def write_published_checkpoints(directory: Path) -> dict[str, str]:
    """DiT-XL in the DiT release's layout (plain state dict), S as the T-Stitch authors'
    training checkpoints ({model, ema, opt, args})."""
    files = {}
    for seed, (name, hidden) in enumerate(HIDDEN.items()):
        torch.manual_seed(seed)
        model = build_dit({**LATENT_DIT, "hidden_size": hidden})
        for p in model.parameters():  # adaLN-Zero starts at zero: make every layer matter
            p.data.add_(0.05 * torch.randn_like(p))
        state = model.state_dict()
        obj = state if name == "dit_xl" else {
            "model": state, "ema": state, "opt": {}, "args": argparse.Namespace(model=name)}
        files[name] = f"{name}.pt"
        torch.save(obj, directory / files[name])
    return files


def write_tiny_vae(directory: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=4, sample_size=16).save_pretrained(directory)
    return directory


def write_reference_batch(path: Path, weights: Path) -> Path:
    from test_adm_metrics import write_fake_reference

    from diffrepro import adm_metrics

    images = np.random.default_rng(0).integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    feats = adm_metrics.inception_features(adm_metrics.load_inception(weights), images)
    return write_fake_reference(path, images, feats)


def paper_config(url: str, files: dict, vae: Path, weights: Path) -> dict:
    def model(name):
        return {"arch": "dit", "config": {**LATENT_DIT, "hidden_size": HIDDEN[name]},
                "source": {"file": files[name], "url": f"{url}/{files[name]}"}}

    return {
        "standalone": True, "suite": "paper_smoke", "seed": 0, "threads": 1, "allow_downloads": True,
        "compute": {"device": "cpu", "precision": "fp32", "tf32": False, "compile": False},
        "decoder": {"model": "stabilityai/sd-vae-ft-ema", "path": str(vae), "scale": 0.18215},
        "models": {name: model(name) for name in HIDDEN},
        "sampling": {"sampler": "ddim", "steps": 6, "cfg_scale": 1.5, "guided_channels": 3,
                     "num_samples": 6, "num_shards": 1, "batch_size": 3},
        "timing": {"batch_size": 8, "warmup": 0, "repeats": 2, "forward_repeats": 2, "threads": 1},
        # factored: the same FID as the evaluator's sqrtm, in a second rather than ~20 s per matrix
        "scoring": {"backend": "adm", "inception_weights": str(weights), "is_splits": 1,
                    "fid_method": "factored",
                    "bootstrap_reps": 2, "seed": 0,
                    "reference_batch": {"file": "VIRTUAL_tiny.npz", "url": f"{url}/VIRTUAL_tiny.npz"}},
        "downloads": {"lock": "downloads.lock.json", "retries": 1},
        "resources": {"default": {"mem_mb": 1000, "runtime": 10}},
        "methods": {
            "tstitch": {"models": {"small": "dit_s", "large": "dit_xl"}, "baseline": {"ratio": 0.0},
                        "grid": {"ratio": [0.0, 0.5]}},
        },
        "tables": {"tstitch": {"method": "tstitch", "paper": "dit_s_xl_ddim100"}},
    }


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, file_server):
    from test_adm_metrics import write_random_inception_weights

    served, url = file_server
    assets = tmp_path_factory.mktemp("assets")
    files = write_published_checkpoints(served)
    weights = write_random_inception_weights(assets / "inception.pth")
    write_reference_batch(served / "VIRTUAL_tiny.npz", weights)
    vae = write_tiny_vae(assets / "vae")
    work = copy_repository(tmp_path_factory.mktemp("paper_workflow"))
    config = paper_config(url, files, vae, weights)
    (work / "paper_smoke.yaml").write_text(yaml.safe_dump(config))
    snakemake(work, "--cores", "2", "reproduce_tstitch_table", "--configfile", "paper_smoke.yaml")
    return work, served, files, weights


def test_downloads_are_pinned_and_converted_with_official_keys(paper_run):
    work, served, files, _ = paper_run
    lock = json.loads((work / "downloads.lock.json").read_text())
    for name in [*files.values(), "VIRTUAL_tiny.npz"]:
        assert lock[name]["sha256"] == sha256_file(served / name)
        assert sha256_file(work / "resources/downloads" / name) == lock[name]["sha256"]
    # standalone: none of config/default.yaml's models or methods were merged in
    assert sorted(p.name for p in (work / "resources/checkpoints/paper_smoke").glob("*.safetensors")) == [
        "dit_s.safetensors", "dit_xl.safetensors"]
    assert not (work / "results/digits").exists()


def test_scores_follow_the_adm_protocol_with_provenance(paper_run):
    work, _, _, weights = paper_run
    score = json.loads((work / "results/paper_smoke/scores/tstitch/r0.5.json").read_text())
    assert set(score["metrics"]) >= {"fid", "sfid", "inception_score", "precision", "recall",
                                     "fid_bootstrap_se"}
    assert score["num_samples"] == 6 and score["model_steps"] == {"small": 3, "large": 3}
    prov = score["provenance"]
    assert prov["adm"]["weights_sha256"] == sha256_file(weights)
    assert prov["adm"]["num_samples"] == 6 and "torch-fidelity" in prov["fid_implementation"]
    assert prov["decoder"]["model"] == "stabilityai/sd-vae-ft-ema"
    assert score["sampling"]["precision"] == "fp32" and score["sampling"]["tf32"] is False
    table = (work / "reports/paper_smoke/tstitch_table.md").read_text()
    assert "FID-Inception (ADM evaluator protocol)" in table and "absolute FIDs are comparable" in table
