"""Seeded, resumable denoiser training and checksum-verified checkpoints."""

import pytest
import torch

from diffrepro.checkpoints import ChecksumMismatch, load_checkpoint
from diffrepro.data import load_digits_tensors
from diffrepro.diffusion.losses import HybridLoss
from diffrepro.models.dit import DiTConfig
from diffrepro.training import TrainConfig, resume_path, train_dit

CONFIG = DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=1,
                   num_heads=2, num_classes=10)
TRAIN = TrainConfig(iterations=6, batch_size=8, lr=1e-3, warmup=2, seed=3, checkpoint_every=2,
                    log_every=2)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_tensors()
    return images[:64], labels[:64]


def test_killed_run_resumes_to_identical_weights(tmp_path, digits):
    straight = tmp_path / "straight.safetensors"
    train_dit(CONFIG, TRAIN, *digits, straight, log=lambda m: None)

    resumed = tmp_path / "resumed.safetensors"
    train_dit(CONFIG, TRAIN, *digits, resumed, log=lambda m: None, stop_after=3)
    assert not resumed.exists() and resume_path(resumed).exists()
    messages = []
    train_dit(CONFIG, TRAIN, *digits, resumed, log=messages.append)
    assert any("resuming" in m and "iteration 2" in m for m in messages)
    assert not resume_path(resumed).exists()

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_file_of_another_config_is_not_reused(tmp_path, digits):
    from dataclasses import replace

    path = tmp_path / "model.safetensors"
    train_dit(CONFIG, TRAIN, *digits, path, log=lambda m: None, stop_after=3)
    fresh = tmp_path / "fresh.safetensors"
    changed = replace(TRAIN, lr=5e-4)
    train_dit(CONFIG, changed, *digits, fresh, log=lambda m: None)
    messages = []
    train_dit(CONFIG, changed, *digits, path, log=messages.append)  # the stale file is from lr 1e-3
    assert not any("resuming" in m for m in messages)
    a, b = load_checkpoint(fresh), load_checkpoint(path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupted_checkpoint_is_refused(tmp_path, digits):
    path = tmp_path / "model.safetensors"
    train_dit(CONFIG, TRAIN, *digits, path, log=lambda m: None)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=r"model.safetensors is damaged: its sha256 [\s\S]*--force \S*model.safetensors"):
        load_checkpoint(path)


def test_hybrid_loss_trains_variance_only_through_vb():
    loss_fn = HybridLoss()
    x0 = torch.zeros(4, 1, 8, 8)
    noise = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    x_t = loss_fn.q_sample(x0, t, noise)
    out = torch.cat([noise.clone(), torch.zeros(4, 1, 8, 8)], 1).requires_grad_(True)
    loss, parts = loss_fn(out, x0, x_t, t, noise)
    loss.backward()
    assert parts["mse"] == 0.0
    assert torch.all(out.grad[:, :1] == 0)  # a perfect epsilon gets no gradient from the VB
    assert out.grad[:, 1:].abs().sum() > 0
