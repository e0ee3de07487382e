"""The pieces a paper suite adds to sampling: shards that merge to the same images for any
shard count, a VAE decoder resolved offline (or a clear error), and the job's device."""

import json

import numpy as np
import pytest
import torch

from diffrepro.checkpoints import save_checkpoint
from diffrepro.decoder import ModelUnavailable, fetch_vae_job, resolve_vae
from diffrepro.jobs import job_device, read_shard_extras, read_shards, sample_shard
from diffrepro.models.dit import build_dit

LATENT_DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2,
                  mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
SAMPLING = {"sampler": "ddpm", "steps": 6, "cfg_scale": 1.5, "guided_channels": 3,
            "device": "cpu", "precision": "fp32", "tf32": False, "compile": False}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for seed, role in enumerate(("small", "large")):
        torch.manual_seed(seed)
        model = build_dit(LATENT_DIT)
        for p in model.parameters():  # adaLN-Zero starts at zero: give every layer an effect
            p.data.add_(0.05 * torch.randn_like(p))
        paths[role] = str(root / f"{role}.safetensors")
        save_checkpoint(paths[role], model.state_dict())
    return paths


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                        norm_num_groups=4, sample_size=16)
    directory = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(directory, safe_serialization=True)
    return directory


def run_shards(tmp_path, checkpoints, num_shards, num_samples=7, vae_info=None):
    paths = []
    for shard in range(num_shards):
        out = tmp_path / f"{num_shards}-{shard}.npz"
        sample_shard(method="tstitch", setting_values={"ratio": 0.5}, checkpoints=checkpoints,
                     model_configs={"small": LATENT_DIT, "large": LATENT_DIT}, sampling=SAMPLING,
                     seed=3, num_samples=num_samples, shard=shard, num_shards=num_shards,
                     batch_size=2, output=str(out), log=lambda m: None, vae_info=vae_info)
        paths.append(str(out))
    return paths


def test_any_shard_count_gives_the_same_images(tmp_path, checkpoints, tiny_vae):
    """Per-image seeds: 1 or 3 shards (and batches of 2 inside them) merge to the same
    images, labels and latents, here decoded by a VAE as in a latent-space suite."""
    info = tmp_path / "vae.json"
    fetch_vae_job(decoder={"model": "tiny/vae", "path": str(tiny_vae), "scale": 0.18215},
                  allow_downloads=False, output=str(info), log=lambda m: None)
    one = run_shards(tmp_path, checkpoints, 1, vae_info=str(info))
    three = run_shards(tmp_path, checkpoints, 3, vae_info=str(info))
    images1, labels1, meta = read_shards(one)
    images3, labels3, _ = read_shards(list(reversed(three)))  # order of the files does not matter
    assert images1.shape == (7, 16, 16, 3) and images1.dtype == np.uint8
    assert np.array_equal(images1, images3) and np.array_equal(labels1, labels3)
    assert np.array_equal(read_shard_extras(one)["samples"], read_shard_extras(three)["samples"])
    assert meta["decoder"]["sha256"] == json.loads(info.read_text())["sha256"]
    assert meta["sampling"]["precision"] == "fp32" and meta["device"] == "cpu"


def test_a_replaced_vae_is_refused(tmp_path, checkpoints, tiny_vae):
    info = tmp_path / "vae.json"
    fetch_vae_job(decoder={"model": "tiny/vae", "path": str(tiny_vae), "scale": 0.18215},
                  allow_downloads=False, output=str(info), log=lambda m: None)
    record = json.loads(info.read_text())
    record["sha256"] = "0" * 64
    info.write_text(json.dumps(record))
    with pytest.raises(Exception, match="checksum mismatch"):
        run_shards(tmp_path, checkpoints, 1, num_samples=1, vae_info=str(info))


def test_a_missing_vae_offline_names_the_model_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelUnavailable, match=r"'stabilityai/sd-vae-ft-ema' is not available: it is "
                                               r"not in the Hugging Face cache[\s\S]*decoder.path"):
        resolve_vae({"model": "stabilityai/sd-vae-ft-ema", "scale": 0.18215}, allow_downloads=True)
    with pytest.raises(ModelUnavailable, match=r"decoder.path .*nowhere has no config.json"):
        resolve_vae({"model": "x/y", "path": str(tmp_path / "nowhere"), "scale": 1.0}, allow_downloads=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_asking_for_a_gpu_without_one_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"compute.device is 'cuda' but no GPU is visible"):
        job_device({"device": "cuda"})
    assert job_device({"device": "auto"}).type == "cpu"


def test_local_gpu_jobs_claim_different_gpus(tmp_path, monkeypatch):
    """With several visible GPUs, each job process locks its own; the lock goes with the process."""
    import subprocess
    import sys

    code = ("import sys; from diffrepro.devices import claim_gpu; "
            "print(claim_gpu(2, sys.argv[1]), flush=True); sys.stdin.read()")
    first = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "0"
    second = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "1"
    first.communicate("")  # the first job ends: GPU 0 is free again
    third = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert third.stdout.readline().strip() == "0"
    second.communicate("")
    third.communicate("")
