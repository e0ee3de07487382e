"""The class-prompt U-Net training with Immiscible's noise pairing: off = today's run exactly,
on = the same images, prompts and timesteps with the noise permuted; fine-tuning from weights;
snapshots; a killed run resumes exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffrepro.checkpoints import load_checkpoint
from diffrepro.data import load_digits_tensors
from diffrepro.t2i import training as t2i_training
from diffrepro.t2i.components import build_unet
from diffrepro.t2i.training import train_t2i_unet
from diffrepro.training import TrainConfig
from test_t2i_jobs import T2I, unet_config

CONFIG = unet_config([8, 16], 1)
TRAIN = TrainConfig(iterations=3, batch_size=8, lr=1e-3, warmup=1, seed=0, checkpoint_every=1, log_every=1)
LSA = [{"immiscible": {"distance_dtype": "float16", "scale": 0.1}}]
QUIET = dict(log=lambda *a: None)


def _recorded(monkeypatch, tmp_path, name, **kwargs):
    """Train and record every step's (x0, noise, t) as handed to the forward process."""
    calls = []
    make = t2i_training.noise_schedule

    def recording(t2i):
        schedule = make(t2i)
        add_noise = schedule.add_noise
        schedule.add_noise = lambda x0, noise, t: (calls.append((x0.clone(), noise.clone(), t.clone())),
                                                   add_noise(x0, noise, t))[1]
        return schedule
    monkeypatch.setattr(t2i_training, "noise_schedule", recording)
    images, labels = load_digits_tensors()
    train_t2i_unet(CONFIG, TRAIN, T2I, images, labels, tmp_path / f"{name}.safetensors", **QUIET, **kwargs)
    return calls, load_checkpoint(tmp_path / f"{name}.safetensors")


def test_no_pairing_is_the_plain_run_and_lsa_permutes_its_noise(monkeypatch, tmp_path):
    plain, plain_weights = _recorded(monkeypatch, tmp_path, "plain")
    none, none_weights = _recorded(monkeypatch, tmp_path, "none", components=[])
    lsa, lsa_weights = _recorded(monkeypatch, tmp_path, "lsa", components=LSA)
    assert all(torch.equal(plain_weights[k], none_weights[k]) for k in plain_weights)
    permuted = 0
    for (x0, noise, t), (x0_n, noise_n, t_n), (x0_l, noise_l, t_l) in zip(plain, none, lsa):
        assert torch.equal(x0, x0_n) and torch.equal(noise, noise_n) and torch.equal(t, t_n)
        assert torch.equal(x0, x0_l) and torch.equal(t, t_l)  # same images, timesteps untouched
        rows = [int(torch.nonzero((noise == r).all(dim=(1, 2, 3)))[0]) for r in noise_l]
        assert sorted(rows) == list(range(len(noise)))  # the same noise, reordered
        permuted += rows != list(range(len(noise)))
    assert permuted > 0
    assert not all(torch.equal(plain_weights[k], lsa_weights[k]) for k in plain_weights)


def test_timestep_components_are_refused(tmp_path):
    images, labels = load_digits_tensors()
    with pytest.raises(ValueError, match="noise-pairing components only"):
        train_t2i_unet(CONFIG, TRAIN, T2I, images, labels, tmp_path / "x.safetensors", **QUIET,
                       components=["speed_v1"])


def test_fine_tuning_starts_from_the_given_weights(tmp_path):
    torch.manual_seed(123)
    start = build_unet(CONFIG).state_dict()
    images, labels = load_digits_tensors()
    frozen = dataclasses.replace(TRAIN, lr=0.0, iterations=2)
    summary = train_t2i_unet(CONFIG, frozen, T2I, images, labels, tmp_path / "ft.safetensors", **QUIET,
                             components=[{"immiscible_knn": {"k": 8, "distance_dtype": "float16"}}],
                             init={"state_dict": start, "sha256": "0" * 64})
    out = load_checkpoint(tmp_path / "ft.safetensors")
    assert all(torch.equal(out[k], start[k]) for k in start)  # lr 0: the init weights, unchanged
    assert summary["init_sha256"] == "0" * 64 and summary["pairing"][0]["immiscible_knn"]["k"] == 8


def test_paired_training_with_snapshots_resumes_exactly(tmp_path):
    images, labels = load_digits_tensors()
    train = dataclasses.replace(TRAIN, iterations=4, checkpoint_every=2)

    def run(name, **kw):
        snaps = {2: tmp_path / f"{name}-2.safetensors", 4: tmp_path / f"{name}-4.safetensors"}
        return train_t2i_unet(CONFIG, train, T2I, images, labels, tmp_path / f"{name}.safetensors", **QUIET,
                              components=LSA, snapshots=snaps, **kw)
    run("whole")
    assert run("cut", stop_after=2) == {"stopped_at": 2}
    run("cut")
    for suffix in ("", "-2", "-4"):
        a, b = (load_checkpoint(tmp_path / f"{n}{suffix}.safetensors") for n in ("whole", "cut"))
        assert all(torch.equal(a[k], b[k]) for k in a), suffix
