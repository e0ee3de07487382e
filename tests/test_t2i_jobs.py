"""The text-to-image rule bodies on tiny class-prompt U-Nets: training resumes exactly, shards
are seeded per image, T-Stitch's step counts and timing records, the table at batch 1."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from diffrepro.checkpoints import load_checkpoint, save_checkpoint
from diffrepro.data import load_digits_tensors
from diffrepro.finite import NonFiniteError
from diffrepro.report import tstitch
from diffrepro.t2i.components import build_unet
from diffrepro.jobs import sample_shard
from diffrepro.timing import time_setting
from diffrepro.t2i.training import train_t2i_unet
from diffrepro.training import TrainConfig, resume_path

T2I = {"scheduler": {"class": "PNDMScheduler",
                     "config": {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                                "beta_schedule": "linear", "skip_prk_steps": True,
                                "set_alpha_to_one": False, "steps_offset": 1}},
       "steps": 5, "guidance_scale": 7.5,
       "text_encoder": {"hidden_size": 16, "layers": 1, "heads": 2, "max_length": 32, "seed": 0}}


def unet_config(channels, layers):
    return dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=channels,
                layers_per_block=layers, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])


CONFIGS = {"small": unet_config([8, 16], 1), "large": unet_config([16, 16], 1)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    paths = {}
    for seed, (role, config) in enumerate(CONFIGS.items()):
        torch.manual_seed(seed)
        paths[role] = str(root / f"{role}.safetensors")
        save_checkpoint(paths[role], build_unet(config).state_dict())
    return paths


def test_training_resumes_to_identical_weights(tmp_path):
    images, labels = load_digits_tensors()
    train = TrainConfig(iterations=4, batch_size=8, lr=1e-3, warmup=2, seed=0, checkpoint_every=2, log_every=2)
    config = CONFIGS["small"]
    whole = train_t2i_unet(config, train, T2I, images, labels, tmp_path / "whole.safetensors", log=lambda *a: None)
    assert train_t2i_unet(config, train, T2I, images, labels, tmp_path / "cut.safetensors",
                          log=lambda *a: None, stop_after=2) == {"stopped_at": 2}
    resumed = train_t2i_unet(config, train, T2I, images, labels, tmp_path / "cut.safetensors", log=lambda *a: None)
    a, b = load_checkpoint(tmp_path / "whole.safetensors"), load_checkpoint(tmp_path / "cut.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # (not the files' sha256: safetensors writes its metadata keys in a random order)
    assert len(whole["text_encoder_sha256"]) == 64 and whole["text_encoder_sha256"] == resumed["text_encoder_sha256"]
    assert np.isfinite(whole["final_loss"])


def test_a_nan_learning_rate_stops_training_before_nan_weights_are_saved(tmp_path):
    """lr inf: the first update turns the weights NaN or inf (its loss was finite), the second
    iteration's loss is not finite; a save right after the first update is refused instead."""
    images, labels = load_digits_tensors()
    out = tmp_path / "nan.safetensors"
    train = TrainConfig(iterations=4, batch_size=8, lr=float("inf"), warmup=1, seed=0, checkpoint_every=2)
    with pytest.raises(NonFiniteError, match=rf"training {out}: the loss is (nan|inf) at iteration 2; stopped before its "
                                             rf"update. Nothing was saved."):
        train_t2i_unet(CONFIGS["small"], train, T2I, images, labels, out, log=lambda *a: None)
    assert not out.exists() and not resume_path(out).exists()
    with pytest.raises(NonFiniteError, match=rf"{resume_path(out)}: not saved at iteration 1, weights model\."):
        train_t2i_unet(CONFIGS["small"], dataclasses.replace(train, checkpoint_every=1), T2I, images, labels, out,
                       log=lambda *a: None)
    assert not resume_path(out).exists()


def sample(checkpoints, tmp_path, ratio, indices, name, batch_size=8):
    out = tmp_path / f"{name}.npz"
    sample_shard(method="tstitch_sd", setting_values={"ratio": ratio}, checkpoints=checkpoints,
                 model_configs=CONFIGS, sampling=T2I, seed=3, indices=indices, batch_size=batch_size,
                 output=str(out), log=lambda *a: None)
    return np.load(out)


def test_shards_are_per_image_and_count_steps(checkpoints, tmp_path):
    whole = sample(checkpoints, tmp_path, 0.5, range(6), "whole")
    first, second = sample(checkpoints, tmp_path, 0.5, range(3), "a", 2), sample(checkpoints, tmp_path, 0.5, range(3, 6), "b", 2)
    np.testing.assert_allclose(np.concatenate([first["samples"], second["samples"]]), whole["samples"], rtol=1e-4, atol=1e-4)  # batch-size float noise
    np.testing.assert_array_equal(np.concatenate([first["labels"], second["labels"]]), whole["labels"])
    meta = json.loads(str(whole["meta"]))
    assert meta["model_steps"] == {"small": 3, "large": 3}  # PNDM 5 steps: 6 timesteps
    assert whole["images"].shape == (6, 8, 8, 1) and whole["images"].dtype == np.uint8
    large_only = sample(checkpoints, tmp_path, 0.0, range(6), "large")
    assert json.loads(str(large_only["meta"]))["model_steps"] == {"small": 0, "large": 6}
    assert not np.allclose(large_only["samples"], whole["samples"])


def test_a_unet_producing_nan_stops_sampling_and_writes_no_shard(checkpoints, tmp_path):
    broken = load_checkpoint(checkpoints["large"])
    broken = {k: v.clone().fill_(float("nan")) if k.startswith("conv_out") else v for k, v in broken.items()}
    paths = {**checkpoints, "large": str(tmp_path / "nan.safetensors")}
    save_checkpoint(paths["large"], broken)
    with pytest.raises(NonFiniteError, match=r"tstitch_sd r0\.5: 4 of 4 images \(indices 0, 1, 2, 3\) in the batch of "
                                             rf"images 0..3 for shard {tmp_path / 'nan.npz'} came out NaN or inf"):
        sample(paths, tmp_path, 0.5, range(4), "nan")
    assert not (tmp_path / "nan.npz").exists()


def test_timing_record_has_what_the_table_reads(checkpoints, tmp_path):
    timing = {"batch_size": 1, "warmup": 0, "repeats": 2, "forward_repeats": 2, "threads": 1}
    result = time_setting(method="tstitch_sd", setting_values={"ratio": 0.4},
                          baseline={"method": "tstitch_sd", "params": {"ratio": 0.0}},
                          checkpoints=checkpoints, model_configs=CONFIGS, sampling=T2I, seed=0, timing=timing,
                          config={"seed": 0}, output=str(tmp_path / "t.json"), log=lambda *a: None)
    assert result["model_steps"] == {"small": 2, "large": 4}  # (i + 1) / 6 <= 0.4
    assert result["batch_size"] == 1 and len(result["speedup_pairs"]) == 2
    assert result["ideal_s"] > 0 and result["median_s"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["setting"] == "r0.4"


def record(ratio, fid, seconds, speedup, batch=1):
    return {"params": {"ratio": ratio}, "metrics": {"fid": fid, "fid_bootstrap_se": 0.1, "fid_diff_se": 0.1},
            "model_steps": {"small": 0, "large": 26}, "labels": {},
            "timing": {"median_s": seconds, "batch_size": batch, "speedup_vs_baseline": speedup}}


def test_sd_table_compares_per_image_times_with_the_papers():
    paper = pd.DataFrame([[0.0, 3.1], [0.4, 2.6], [1.0, 1.9]], columns=["ratio", "time_s"])
    records = [record(0.0, 10.0, 0.5, 1.0), record(0.4, 10.5, 0.4, 1.25), record(1.0, 20.0, 0.3, 1.6)]
    table = tstitch.build_table(records, paper, timing_batch=1)
    assert table.loc[1, "paper_speedup"] == pytest.approx(3.1 / 2.6)
    assert table["paper_fid"].isna().all()
    markdown = tstitch.table_markdown(table, labels={}, setting_note="note", paper_note="SD figure")
    assert "ours: time, 1 image (s)" in markdown and "8 images" not in markdown
    with pytest.raises(ValueError, match="the table compares time for 8 images"):
        tstitch.build_table(records, paper)


SD_SHAPED = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16, 16],
                 layers_per_block=2, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])


@pytest.mark.parametrize("variant", ["base", "tiny"])
def test_distillation_starts_from_the_teacher_and_resumes_exactly(tmp_path, variant):
    from diffrepro.models.bksdm import build_student
    from diffrepro.models.bksdm_config import student_config

    images, labels = load_digits_tensors()
    torch.manual_seed(0)
    teacher = build_unet(SD_SHAPED).eval()
    config = student_config(SD_SHAPED, variant)
    train = TrainConfig(iterations=3, batch_size=8, lr=1e-3, warmup=1, seed=0, checkpoint_every=1, log_every=1)
    distil = {"teacher": teacher, "variant": variant}
    run = lambda out, **kw: train_t2i_unet(config, train, T2I, images, labels, tmp_path / out,  # noqa: E731
                                           log=lambda *a: None, distil=distil, **kw)
    whole = run("whole.safetensors")
    run("cut.safetensors", stop_after=1)
    run("cut.safetensors")
    a, b = load_checkpoint(tmp_path / "whole.safetensors"), load_checkpoint(tmp_path / "cut.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(whole["history"][0]) == {"iteration", "loss", "task", "out_kd", "feat_kd"}
    assert whole["distil"] == {"variant": variant, "weights": [1.0, 1.0, 1.0], "max_grad_norm": None}
    # one step of lr 1e-3 from the teacher-initialised student: still close to it, not random
    start = build_student(teacher, variant).state_dict()
    first = train_t2i_unet(config, TrainConfig(iterations=1, batch_size=8, lr=1e-3, warmup=1, seed=0),
                           T2I, images, labels, tmp_path / "one.safetensors", log=lambda *a: None, distil=distil)
    one = load_checkpoint(tmp_path / "one.safetensors")
    assert first["final_loss"] > 0
    assert max((one[k] - start[k]).abs().max().item() for k in start) < 0.01


def test_distillation_clips_the_gradient_norm_when_asked(tmp_path):
    """BK-SDM's kd_train.sh clips at 1: a bound far above the norm changes nothing, a tight one
    changes the weights, and a resume file made with another bound is not resumed."""
    from diffrepro.models.bksdm_config import student_config

    images, labels = load_digits_tensors()
    torch.manual_seed(0)
    teacher = build_unet(SD_SHAPED).eval()
    train = TrainConfig(iterations=2, batch_size=8, lr=1e-3, warmup=1, seed=0, checkpoint_every=1, log_every=1)

    def run(out, clip, **kw):
        return train_t2i_unet(student_config(SD_SHAPED, "small"), train, T2I, images, labels, tmp_path / out,
                              log=lambda *a: None, distil={"teacher": teacher, "variant": "small",
                                                           "max_grad_norm": clip}, **kw)

    for name, clip in (("none", None), ("loose", 1e9), ("tight", 1e-4)):
        run(f"{name}.safetensors", clip)
    none, loose, tight = (load_checkpoint(tmp_path / f"{n}.safetensors") for n in ("none", "loose", "tight"))
    assert all(torch.equal(none[k], loose[k]) for k in none)
    assert not all(torch.equal(none[k], tight[k]) for k in none)
    assert run("tight.safetensors", 1e-4)["distil"]["max_grad_norm"] == 1e-4
    run("switch.safetensors", 1e-4, stop_after=1)
    run("switch.safetensors", None)  # another bound: starts over, does not resume the clipped run
    switched = load_checkpoint(tmp_path / "switch.safetensors")
    assert all(torch.equal(none[k], switched[k]) for k in none)


@pytest.mark.slow  # about 4-8 s on 2 cores (the fast tier stays near 2 minutes)
def test_the_embedded_clip_learns_to_match_digits_to_their_prompts(tmp_path):
    """A short training run already ranks the right prompt above a wrong one (the score the
    CLIP-score column reports), through the same loader the score job uses."""
    from diffrepro.clip_score import ClipSpec, clip_scores, load_clip
    from diffrepro.data import real_digits_uint8
    from diffrepro.t2i.clip_training import ClipTrainConfig, train_clip
    from diffrepro.t2i.components import digit_prompt

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 8, "patch_size": 2, "width": 32, "layers": 1,
                                              "head_width": 16, "mlp_ratio": 2.0},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    images, labels = real_digits_uint8()
    summary = train_clip("test-digits-clip", config, ClipTrainConfig(iterations=300, batch_size=64, lr=2e-3),
                         images, labels, str(tmp_path / "clip.safetensors"), log=lambda *a: None)
    model, preprocess, tokenizer = load_clip(ClipSpec(model="test-digits-clip", pretrained=None, config=config,
                                                      path=str(tmp_path / "clip.safetensors"), sha256=summary["sha256"]))
    right = clip_scores(model, preprocess, tokenizer, images[:200], [digit_prompt(y) for y in labels[:200]])
    wrong = clip_scores(model, preprocess, tokenizer, images[:200], [digit_prompt((y + 3) % 10) for y in labels[:200]])
    assert right.mean() > wrong.mean() + 0.1
    with pytest.raises(NonFiniteError, match=r"training CLIP .*clip-nan.safetensors: the loss is (nan|inf) at iteration 2"):
        train_clip("test-digits-clip", config, ClipTrainConfig(iterations=3, batch_size=64, lr=float("inf")),
                   images, labels, str(tmp_path / "clip-nan.safetensors"), log=lambda *a: None)
    assert not (tmp_path / "clip-nan.safetensors").exists()


def test_a_sampler_that_draws_noise_uses_the_per_image_generators(checkpoints, tmp_path):
    """DDPM draws fresh noise every step: shards must still match the whole run image by image."""
    ddpm = {**T2I, "scheduler": {"class": "DDPMScheduler", "config": {
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}}}

    def run(indices, name, batch_size):
        out = tmp_path / f"{name}.npz"
        sample_shard(method="tstitch_sd", setting_values={"ratio": 0.4}, checkpoints=checkpoints,
                     model_configs=CONFIGS, sampling=ddpm, seed=3, indices=indices, batch_size=batch_size,
                     output=str(out), log=lambda *a: None)
        return np.load(out)

    whole, first, second = run(range(4), "whole", 4), run(range(2), "a", 1), run(range(2, 4), "b", 2)
    np.testing.assert_allclose(np.concatenate([first["samples"], second["samples"]]), whole["samples"], rtol=1e-4, atol=1e-4)  # batch-size float noise
    assert json.loads(str(whole["meta"]))["model_steps"] == {"small": 2, "large": 3}  # DDPM: 5 timesteps
