"""NaN and inf are never sampled into a shard, scored, tabulated or trained on: each stage
stops with an error naming what and where, and leaves nothing (or the last finite file)."""

import json
import math

import numpy as np
import pytest
import torch

from diffrepro import jobs
from diffrepro.checkpoints import load_checkpoint
from diffrepro.data import load_digits_tensors, real_digits_uint8
from diffrepro.engines.denoiser import DenoiserEngine
from diffrepro.finite import NonFiniteError
from diffrepro.integrity import write_hashed_json as write_json, write_hashed_npz as write_npz
from diffrepro.methods import get_method
from diffrepro.models.dit import DiTConfig
from diffrepro.report.tables import FigureJob
from diffrepro.training import TrainConfig, resume_path, save_resume, train_dit

SAMPLING = {"sampler": "ddim", "steps": 6, "device": "cpu"}


class NaNForSomeImages:
    """A denoiser that returns NaN for some rows of the batch in the second half of the steps
    (as a model overflowing at small t would)."""

    def __init__(self, inner, rows):
        self.inner, self.rows = inner, rows

    def __call__(self, x, t, y):
        out = self.inner(x, t, y).clone()
        if int(torch.as_tensor(t).flatten()[0]) < 500:
            out[self.rows] = float("nan")
        return out

    def unguided(self):
        return self


def test_a_denoiser_returning_nan_stops_sampling_and_writes_no_shard(tmp_path, monkeypatch, tiny_denoisers):
    broken = {role: NaNForSomeImages(d, [1, 4]) for role, d in tiny_denoisers.items()}
    monkeypatch.setattr(jobs, "load_engine", lambda method, **kw: DenoiserEngine(broken, (1, 8, 8), 10, SAMPLING))
    out = tmp_path / "shard0.npz"
    with pytest.raises(NonFiniteError) as err:
        jobs.sample_shard(method="tstitch", setting_values={"ratio": 0.5}, checkpoints={}, model_configs={},
                          sampling=SAMPLING, seed=0, batch_size=6, output=str(out), num_samples=6,
                          log=lambda m: None)
    spec = get_method("tstitch")
    setting_id = spec.setting_id(spec.make_setting({"ratio": 0.5}))
    message = str(err.value)
    assert message.startswith(f"tstitch {setting_id}: 2 of 6 images (indices 1, 4)")
    assert str(out) in message and "nothing written" in message
    assert list(tmp_path.iterdir()) == []  # no shard, no temporary file


def test_a_denoiser_returning_nan_is_not_timed(monkeypatch, tiny_denoisers):
    from diffrepro import timing

    broken = {role: NaNForSomeImages(d, [1]) for role, d in tiny_denoisers.items()}
    monkeypatch.setattr(timing, "load_engine", lambda method, **kw: DenoiserEngine(broken, (1, 8, 8), 10, SAMPLING))
    with pytest.raises(NonFiniteError, match=r"timing tstitch r0\.\d: 1 of 2 images \(indices 1\) of the timing "
                                             r"batch came out NaN or inf; not timed"):
        timing.time_setting(method="tstitch", setting_values={"ratio": 0.5},
                            baseline={"method": "tstitch", "params": {"ratio": 0.0}}, checkpoints={}, model_configs={},
                            sampling=SAMPLING, seed=0, config={}, log=lambda *a: None,
                            timing={"batch_size": 2, "warmup": 0, "repeats": 1, "forward_repeats": 1, "threads": 1})


def test_the_batch_images_before_the_cast_are_checked_not_the_black_uint8(tiny_denoisers):
    """A NaN pixel becomes 0 (black) in uint8: the engine reports it from the float samples."""
    engine = DenoiserEngine({r: NaNForSomeImages(d, [2]) for r, d in tiny_denoisers.items()}, (1, 8, 8), 10,
                            SAMPLING)
    spec = get_method("tstitch")
    batch = engine.run_batch(spec, spec.make_setting({"ratio": 0.5}), 0, [7, 8, 9])
    assert batch.images.dtype == np.uint8 and list(batch.nonfinite) == [2]
    fine = DenoiserEngine(tiny_denoisers, (1, 8, 8), 10, SAMPLING).run_batch(spec, spec.make_setting({"ratio": 0.5}),
                                                                             0, [7, 8, 9])
    assert len(fine.nonfinite) == 0


def test_a_vae_decoding_to_nan_is_reported():
    from diffrepro.decoder import decode_to_uint8

    class Vae:
        device, dtype = torch.device("cpu"), torch.float32

        def decode(self, z):
            pixels = torch.zeros(len(z), 3, 4, 4)
            pixels[z[:, 0, 0, 0] < 0] = float("nan")
            return type("Out", (), {"sample": pixels})

    latents = torch.ones(5, 4, 2, 2)
    latents[[1, 3], 0, 0, 0] = -1
    images, nonfinite = decode_to_uint8(Vae(), latents, 1.0, chunk=2)
    assert images.shape == (5, 4, 4, 3) and list(nonfinite) == [1, 3]


def _shard(path, *, samples, num=4):
    meta = {"method": "tstitch", "params": {"ratio": 0.5}, "model_steps": {"small": 3, "large": 3}, "seed": 0,
            "sampling": SAMPLING, "checkpoints": {}, "device": "cpu"}
    write_npz(path, images=np.zeros((num, 8, 8, 3), np.uint8), labels=np.arange(num), indices=np.arange(num),
              meta=np.asarray(json.dumps(meta)), samples=samples)
    return str(path)


def test_a_shard_holding_nan_is_not_scored(tmp_path):
    samples = np.zeros((4, 1, 8, 8), np.float32)
    samples[2, 0, 3, 3] = np.nan
    shard = _shard(tmp_path / "shard.npz", samples=samples)
    with pytest.raises(NonFiniteError, match=rf"shard {shard}: 'samples' of 1 of 4 images \(indices 2\) holds NaN"):
        jobs.score_setting(shards=[shard], reference_path="unused", scoring={}, config={},
                           output=str(tmp_path / "score.json"), features_output=str(tmp_path / "f.npz"))
    assert not (tmp_path / "score.json").exists()


def test_a_nan_metric_is_not_written(tmp_path, monkeypatch):
    shard = _shard(tmp_path / "shard.npz", samples=np.zeros((4, 1, 8, 8), np.float32))

    def nan_fid(images, labels, **kw):
        scores = {"fid": math.nan, "fid_bootstrap_se": 0.1, "inception_score": 1.0, "num_samples": len(images)}
        return scores, {}, {}, {}, np.zeros((len(images), 2))

    monkeypatch.setattr(jobs, "_digits_scores", nan_fid)
    output = tmp_path / "score.json"
    with pytest.raises(NonFiniteError, match=rf"tstitch .*: metric fid = nan is not finite; {output} not written"):
        jobs.score_setting(shards=[shard], reference_path="unused", scoring={"seed": 0, "backend": "digits"},
                           config={"compute": {"device": "cpu"}},
                           output=str(output), features_output=str(tmp_path / "f.npz"), log=lambda m: None)
    assert not output.exists()


def test_a_score_file_with_a_nan_fid_builds_no_table(tmp_path):
    path = tmp_path / "score.json"
    write_json(path, {"method": "tstitch", "setting": "r0.5", "metrics": {"fid": math.nan, "fid_diff_se": None}})
    assert "NaN" in path.read_text()  # what json writes for nan, and reads back as nan
    with pytest.raises(NonFiniteError, match=rf"score file {path}: metric fid = nan is not finite; no table"):
        jobs.merge_records([str(path)], [])
    figure = FigureJob(name="t", figure="f", entry={}, csv="", inputs={"scores": [str(path)]}, png="", svg="")
    with pytest.raises(NonFiniteError, match="no table is built"):
        figure.labels()


def test_a_training_score_file_with_a_nan_row_builds_no_table(tmp_path):
    from diffrepro.report.training import load_scores

    path = tmp_path / "scores.json"
    write_json(path, {"method": "speed", "rows": [{"seed": 0, "iteration": 10, "fid": 3.0},
                                                  {"seed": 0, "iteration": 20, "fid": math.inf}]})
    with pytest.raises(NonFiniteError, match=r"\(seed 0, iteration 20\): metric fid = inf is not finite"):
        load_scores([str(path)])


# -- training -------------------------------------------------------------------------------

CONFIG = DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2, num_classes=10)
TRAIN = TrainConfig(iterations=6, batch_size=8, lr=1e-3, warmup=2, seed=3, checkpoint_every=2, log_every=2)


def test_a_nan_loss_stops_training_and_keeps_the_last_finite_resume_file(tmp_path, monkeypatch):
    import diffrepro.training as training

    images, labels = load_digits_tensors()
    images, labels = images[:64], labels[:64]
    straight = tmp_path / "straight.safetensors"
    train_dit(CONFIG, TRAIN, images, labels, straight, log=lambda m: None)

    calls = []

    class NaNAtIteration5(training.HybridLoss):
        def __call__(self, *args):
            loss, parts = super().__call__(*args)
            calls.append(1)
            return (loss * math.nan if len(calls) == 5 else loss), parts

    monkeypatch.setattr(training, "HybridLoss", NaNAtIteration5)
    output = tmp_path / "run.safetensors"
    resume = resume_path(output)
    with pytest.raises(NonFiniteError) as err:
        train_dit(CONFIG, TRAIN, images, labels, output, log=lambda m: None)
    assert str(err.value).startswith(f"training {output}: the loss is nan at iteration 5; stopped before its "
                                     f"update. {resume} keeps the last finite state (iteration 4).")
    assert not output.exists()
    state = torch.load(resume, weights_only=True)
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # the kept file is a good one: the run resumes from it to the uninterrupted run's weights
    monkeypatch.undo()
    train_dit(CONFIG, TRAIN, images, labels, output, log=lambda m: None)
    a, b = load_checkpoint(straight), load_checkpoint(output)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_holding_nan_never_overwrite_the_resume_file(tmp_path):
    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.resume.pt"
    save_resume(path, 2, model, ema, optimizer, torch.Generator(), [])
    before = path.read_bytes()
    with torch.no_grad():
        ema.weight[0, 0] = math.inf
    with pytest.raises(NonFiniteError, match=rf"{path}: not saved at iteration 4, weights ema.weight hold NaN or inf"):
        save_resume(path, 4, model, ema, optimizer, torch.Generator(), [])
    assert path.read_bytes() == before


def test_a_nan_loss_stops_the_digits_classifier(monkeypatch):
    from diffrepro.models import classifier

    images, labels = real_digits_uint8()
    real = classifier.F.cross_entropy
    calls = []

    def nan_on_third(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (math.nan if len(calls) == 3 else 1.0)

    monkeypatch.setattr(classifier.F, "cross_entropy", nan_on_third)
    with pytest.raises(NonFiniteError, match="training the digits classifier: the loss is nan at iteration 3; "
                                             "stopped before its update. Nothing was saved."):
        classifier.train_digits_classifier(images[:300], labels[:300], epochs=1, batch_size=64)


def test_the_gradient_scalers_state_survives_a_resume(tmp_path):
    """fp16 training (latent_training on a GPU): the scale and its growth tracker are saved, so
    a resumed run skips the same overflowing steps as an unbroken one (issue 18)."""
    from diffrepro.training import load_resume

    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for value in (math.inf, 1.0, 1.0):  # one overflow halves the scale; two good steps count towards growth
        optimizer.zero_grad()
        scaler.scale(model(torch.full((1, 2), value)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 512.0
    path = tmp_path / "run.resume.pt"
    save_resume(path, 3, model, ema, optimizer, torch.Generator(), [], scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    load_resume(path, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.optim.SGD(model.parameters(), lr=0.1),
                torch.Generator(), scaler=fresh, log=lambda _: None)
    assert fresh.get_scale() == 512.0 and fresh.state_dict() == scaler.state_dict()
    # a disabled scaler (fp32, CPU) writes nothing and reads nothing
    save_resume(path, 3, model, ema, optimizer, torch.Generator(), [], scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert "scaler" not in torch.load(path, weights_only=True)
