"""Immiscible Diffusion's SD recipe on a tiny SD pipeline: class images from a folder, VAE
latents (x scaling_factor), the pairing on those latents (0.1 scale and float16 distances for
LSA), from scratch (re-initialised U-Net) and fine-tuning, micro-batches equal to the batch."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffrepro.t2i.class_images import ClassImagesMissing, batch_indices, scan_class_images
from diffrepro.t2i.latent_training import (RECIPE_DEFAULTS, build_trainable_unet, ema_decay_at, encode_latents,
                                           make_step, train_latent_unet)
from t2i_tiny import sd_pipeline, sd_unet

METHODS = {"vanilla": [], "lsa": [{"immiscible": {"distance_dtype": "float16", "scale": 0.1}}],
           "knn": [{"immiscible_knn": {"k": 4, "distance_dtype": "float16"}}]}
RESOLUTION = 16  # the tiny VAE halves it: 8 x 8 latents, the tiny U-Net's sample_size


def write_class_folder(root, classes=("n01", "n02", "n03"), per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    names = root.parent / f"{root.name}-classes.txt"
    names.write_text("".join(f"class {c}, a thing\n" for c in classes))
    return root, names


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("images") / "train")


def recipe(**kw):
    return {**RECIPE_DEFAULTS, "iterations": 2, "batch_size": 4, "lr": 1e-3, "random_flip": True, **kw}


def test_the_folder_gives_classes_prompts_and_clear_errors(folder, tmp_path):
    root, names = folder
    data = scan_class_images(root, key="unet_training.data.images", class_names=str(names))
    assert data.classes == ["n01", "n02", "n03"] and len(data) == 9
    assert data.prompts[1] == "class n02, a thing" and list(data.labels[:4]) == [0, 0, 0, 1]
    with pytest.raises(ClassImagesMissing, match="unet_training.data.images.*ImageFolder layout"):
        scan_class_images(tmp_path / "absent", key="unet_training.data.images")
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(ClassImagesMissing, match="class_names.*2 class names but .* 3 class folders"):
        scan_class_images(root, key="k", class_names=str(tmp_path / "two.txt"))


def test_batches_cover_each_epoch_once_and_resume_identically():
    batches = batch_indices(10, 4, seed=3, start=0, stop=5)
    assert sorted(sum(batches, [])[:10]) == list(range(10))  # epoch 0, shuffled
    assert batch_indices(10, 4, seed=3, start=3, stop=5) == batches[3:]


def test_latents_are_the_vae_sample_times_its_scaling_factor():
    vae = sd_pipeline(sd_unet(0, 1)).vae
    x = torch.rand(3, 3, RESOLUTION, RESOLUTION) * 2 - 1
    ours = encode_latents(vae, x, torch.Generator().manual_seed(5), micro=2)
    expected = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(5)) * 0.18215
    assert vae.config.scaling_factor == 0.18215
    torch.testing.assert_close(ours, expected)


def test_scratch_reinitialises_and_finetune_starts_from_the_pipeline():
    pipe = sd_pipeline(sd_unet(0, 1))
    hub = pipe.unet.state_dict()
    scratch, again = build_trainable_unet(pipe, True, seed=1), build_trainable_unet(pipe, True, seed=1)
    assert scratch.config == pipe.unet.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in scratch.state_dict().items())  # seeded
    random = [k for k, v in hub.items() if v.numel() > 1 and bool(v.std() > 0)]  # not a norm's ones / zeros
    assert len(random) > 100 and all(not torch.equal(scratch.state_dict()[k], hub[k]) for k in random)
    tuned = build_trainable_unet(pipe, False, seed=1)
    assert all(torch.equal(v, hub[k]) for k, v in tuned.state_dict().items())


def test_ema_warmup_is_diffusers():
    from diffusers.training_utils import EMAModel

    ema = EMAModel(torch.nn.Linear(1, 1).parameters(), decay=0.9999)
    assert [ema_decay_at(s, 0.9999) for s in range(1, 6)] == [ema.get_decay(s) for s in range(1, 6)]


def test_lsa_sees_the_latents_with_float16_and_0_1(folder, monkeypatch):
    import methods.immiscible as immiscible

    seen = []
    real = immiscible.pairwise_l2

    def spy(x0, noise, **kw):
        seen.append((x0, kw))
        return real(x0, noise, **kw)
    monkeypatch.setattr(immiscible, "pairwise_l2", spy)
    data = scan_class_images(folder[0], key="k")
    step = make_step(sd_pipeline(sd_unet(0, 1)), scratch=True, recipe=recipe(), components=METHODS["lsa"],
                     seed=0, prompts=data.prompts, device="cpu", precision="fp32")
    images = torch.randint(0, 256, (4, RESOLUTION, RESOLUTION, 3), dtype=torch.uint8)
    latents, _, noise = step.latents_and_noise(images, torch.tensor([0, 1, 2, 0]), torch.Generator().manual_seed(0))
    (x0, kw), = seen
    assert x0 is latents and kw == {"distance_dtype": "float16", "scale": 0.1}
    assert latents.shape == (4, 4, 8, 8) and noise.shape == latents.shape


def _one_step(folder, micro):
    data = scan_class_images(folder[0], key="k")
    step = make_step(sd_pipeline(sd_unet(0, 1)), scratch=False, recipe=recipe(micro_batch_size=micro),
                     components=METHODS["lsa"], seed=0, prompts=data.prompts, device="cpu", precision="fp32")
    images = torch.randint(0, 256, (4, RESOLUTION, RESOLUTION, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    loss = step(0, images, torch.tensor([0, 1, 2, 0]), torch.Generator().manual_seed(0))
    return loss, {name: p.grad for name, p in step.unet.named_parameters()}


@pytest.mark.slow
def test_micro_batches_give_the_whole_batch_gradient(folder):
    loss_whole, whole = _one_step(folder, None)
    loss_micro, micro = _one_step(folder, 2)
    assert loss_micro == pytest.approx(loss_whole, rel=1e-5)
    assert max(float(v.abs().max()) for v in whole.values()) > 1e-3  # gradients well above the tolerance
    for k, v in whole.items():
        torch.testing.assert_close(micro[k], v, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_a_few_steps_per_method(folder, tmp_path, method):
    data = scan_class_images(folder[0], key="k", class_names=str(folder[1]))
    pipe = sd_pipeline(sd_unet(0, 1))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    summary = train_latent_unet(pipe, data, scratch=False, train=recipe(micro_batch_size=2, log_every=1),
                                components=METHODS[method], seed=0, output=str(tmp_path / "final.safetensors"),
                                snapshots={1: str(tmp_path / "iter1.safetensors")}, resolution=RESOLUTION,
                                log=lambda *_: None)
    from diffrepro.checkpoints import load_checkpoint

    final = load_checkpoint(tmp_path / "final.safetensors")
    assert (tmp_path / "iter1.safetensors").exists() and summary["pairing"] == METHODS[method]
    assert len(summary["history"]) == 2 and all(np.isfinite(h["loss"]) for h in summary["history"])
    assert any(not torch.equal(final[k], before[k]) for k in before)  # the EMA moved


@pytest.fixture(scope="module")
def hub_record(tmp_path_factory):
    """A tiny SD pipeline saved as a hub repository, fetched and pinned as rule fetch_hub_model does."""
    from diffrepro.io import write_json
    from diffrepro.t2i.hub import fetch_hub_model

    assets = tmp_path_factory.mktemp("hub")
    sd_pipeline(sd_unet(0, 1)).save_pretrained(assets / "sd", safe_serialization=True)
    record = fetch_hub_model({"id": "someone/tiny-sd", "path": str(assets / "sd")}, config_key="models.sd.hub",
                             as_pipeline=True, log=lambda *_: None)
    write_json(assets / "sd.hub.json", record)
    return str(assets / "sd.hub.json")


@pytest.mark.slow
def test_train_sample_score_and_time_on_a_tiny_pipeline(folder, hub_record, tmp_path):
    """The paper path end to end in the library: LSA from scratch (2 steps, snapshots 1 and 2),
    the reference statistics of the folder, the snapshots scored with Inception FID, the timing."""
    from diffrepro.io import read_json
    from diffrepro.unet_latent_study import reference_job, score_latent_runs, time_latent_pairings, train_latent_run
    from test_adm_metrics import write_random_inception_weights

    data = {"images": str(folder[0]), "class_names": str(folder[1]), "resolution": RESOLUTION, "workers": 0}
    regime = {"init": None, "train": {"iterations": 2, "batch_size": 4, "lr": 1e-3, "micro_batch_size": 2,
                                      "log_every": 1}, "snapshots": [1, 2]}
    summary = train_latent_run(record_path=hub_record, data=data, regime=regime, components=METHODS["lsa"], seed=0,
                               directory=str(tmp_path), device="cpu", precision="fp32", log=lambda *_: None)
    assert summary["scratch"] and summary["init_sha256"] is None and summary["classes"] == 3
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    reference_job(data=data, inception_weights=str(weights), device="cpu", output=str(tmp_path / "ref.npz"),
                  log=lambda *_: None)
    with np.load(tmp_path / "ref.npz") as ref:
        assert int(ref["num_images"]) == 9 and ref["mu"].shape == (2048,)
    runs = {0: {1: str(tmp_path / "iter0000001.safetensors"), 2: str(tmp_path / "iter0000002.safetensors")}}
    evaluation = {"steps": 2, "guidance_scale": 7.5, "num_samples": 3, "batch_size": 3, "seed": 0}
    result = score_latent_runs(method="lsa", components=METHODS["lsa"], record_path=hub_record, data=data, runs=runs,
                               evaluation=evaluation, validation={"images": 4, "bins": 2, "noise_seed": 0},
                               scoring={"fid_method": "factored"}, reference_path=str(tmp_path / "ref.npz"),
                               inception_weights=str(weights), device="cpu", precision="fp32", config={},
                               output=str(tmp_path / "scores.json"), log=lambda *_: None)
    assert [(r["seed"], r["iteration"]) for r in result["rows"]] == [(0, 1), (0, 2)]
    for row in result["rows"]:
        assert np.isfinite(row["fid"]) and row["fid"] > 0 and np.isfinite(row["validation_loss"])
    assert result["rows"][0]["fid"] != result["rows"][1]["fid"]  # two snapshots, two sets of weights
    assert read_json(tmp_path / "scores.json")["labels"]["fid"].startswith("FID (Inception")
    timing = time_latent_pairings(methods={"vanilla": [], "lsa": METHODS["lsa"]}, baseline="vanilla",
                                  record_path=hub_record, data=data, regime=regime, batch_sizes=[2, 4], repeats=1,
                                  agreement_batches=2, device="cpu", precision="fp32", config={},
                                  output=str(tmp_path / "timing.json"), log=lambda *_: None)
    agreement = timing["methods"]["lsa"]["assignment_agreement"]
    assert [a["distance_dtype"] for a in agreement] == ["float16", "float32"] and agreement[0]["scale"] == 0.1
    assert timing["methods"]["vanilla"]["assignment_agreement"] == []


@pytest.mark.slow  # two spawned processes (gloo on the CPU), each loading torch: ~20 s
def test_data_parallel_training_equals_one_process(folder, hub_record, tmp_path):
    """Two processes, each encoding half the global batch: the latents are gathered, LSA assigns
    over the global batch, the gradients are summed; the weights equal one process's run with
    the same micro-batches (float summation order aside) and only rank 0 writes files."""
    from diffrepro.checkpoints import load_checkpoint
    from diffrepro.unet_latent_study import train_latent_run

    data = {"images": str(folder[0]), "class_names": str(folder[1]), "resolution": RESOLUTION, "workers": 0}
    regime = {"init": None, "train": {"iterations": 3, "batch_size": 4, "lr": 1e-3, "micro_batch_size": 1,
                                      "log_every": 1, "checkpoint_every": 1}, "snapshots": [2, 3]}
    runs = {}
    for processes in (1, 2):
        directory = tmp_path / f"p{processes}"
        runs[processes] = train_latent_run(record_path=hub_record, data=data, regime=regime,
                                           components=METHODS["lsa"], seed=0, directory=str(directory), device="cpu",
                                           precision="fp32", log=lambda *_: None, processes=processes)
    one, two = (load_checkpoint(tmp_path / f"p{p}" / "iter0000003.safetensors") for p in (1, 2))
    moved = load_checkpoint(tmp_path / "p1" / "iter0000002.safetensors")
    assert any(not torch.equal(one[k], moved[k]) for k in one)  # the last step changed the weights
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    assert [h["loss"] for h in runs[2]["history"]] == pytest.approx([h["loss"] for h in runs[1]["history"]], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == sorted(p.name for p in (tmp_path / "p1").iterdir())


def test_a_batch_that_does_not_split_over_the_processes_is_refused(folder):
    from diffrepro.t2i.data_parallel import World

    data = scan_class_images(folder[0], key="k")
    with pytest.raises(ValueError, match="batch_size 4 must split into 2 process.*micro-batches of 3"):
        train_latent_unet(None, data, scratch=True, train=recipe(micro_batch_size=3), components=[], seed=0,
                          output="unused", resolution=RESOLUTION, world=World(0, 2))
