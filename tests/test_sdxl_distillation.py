"""Distill SD XL at paper scale (diffrepro/t2i/sdxl_distillation.py) on a tiny SDXL pipeline and
a tiny captioned image folder: diffengine's data transforms and time_ids, its text encoding,
the student initialised from the teacher and trained with loss_sd + loss_kd + loss_features,
Adafactor, resumable, saved as a diffusers U-Net."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffrepro.t2i.sdxl_distillation import (CaptionedImagesMissing, encode_captions, iterations_for, prepare_image,
                                             scan_captioned_images, train_sdxl_student)
from t2i_tiny import sdxl_pipeline, sdxl_unet, tiny_vae

RESOLUTION = 16  # the tiny VAE halves it: 8 x 8 latents, the tiny U-Net's sample_size


def write_folder(root, sizes=((20, 24), (24, 16), (16, 16), (30, 20), (18, 18))):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"a pokemon number {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_the_folder_and_its_errors(tmp_path):
    images = scan_captioned_images(write_folder(tmp_path / "data"), key="k")
    assert [i.path.name for i in images] == [f"{i:02d}.png" for i in range(5)] and images[3].text == "a pokemon number 3"
    with pytest.raises(CaptionedImagesMissing, match="k: .* has no metadata.jsonl"):
        scan_captioned_images(tmp_path, key="k")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "t"}\n')
    with pytest.raises(CaptionedImagesMissing, match="line 1 names .*x.png, which does not exist"):
        scan_captioned_images(tmp_path / "bad", key="k")


def test_crop_flip_and_time_ids_as_diffengine(tmp_path):
    """Resize the shorter side, crop at a random corner, flip: time_ids = original size + the
    crop corner (its left edge mirrored as width - right edge after a flip) + target size."""
    folder = write_folder(tmp_path / "data", sizes=((20, 40),))
    path = folder / "00.png"
    seen = set()
    for seed in range(12):
        pixels, ids = prepare_image(path, 10, torch.Generator().manual_seed(seed), random_flip=True)
        assert pixels.shape == (3, 10, 10) and float(pixels.min()) >= -1 and float(pixels.max()) <= 1
        top, left = ids[2], ids[3]
        assert ids[:2] == [20, 40] and ids[4:] == [10, 10] and top == 0  # resized to 10 x 20
        g = torch.Generator().manual_seed(seed)
        torch.randint(1, (1,), generator=g)  # the crop's top (one row only)
        crop_left = int(torch.randint(11, (1,), generator=g))
        flipped = bool(torch.rand(1, generator=g) < 0.5)
        seen.add(flipped)
        # diffengine evaluates the flipped image's width after the crop: 10 - (left + 10)
        assert left == (-crop_left if flipped else crop_left)
        unflipped, _ = prepare_image(path, 10, torch.Generator().manual_seed(seed), random_flip=False)
        assert torch.equal(pixels, unflipped.flip(-1) if flipped else unflipped)
    assert seen == {True, False}


def test_captions_are_encoded_as_the_sdxl_pipeline_does():
    pipe = sdxl_pipeline(sdxl_unet(0, 2))
    embeds, pooled = encode_captions(pipe, ["a pokemon", "another"])
    ours = pipe.encode_prompt(["a pokemon", "another"], device="cpu", num_images_per_prompt=1,
                              do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds, ours[0])
    torch.testing.assert_close(pooled, ours[2])


@pytest.mark.slow  # a few Adafactor steps of a tiny teacher and student, twice (resume)
@pytest.mark.parametrize("variant", ["small_sd_xl", "tiny_sd_xl"])
def test_distil_resume_and_save(tmp_path, variant):
    from diffusers import UNet2DConditionModel

    images = scan_captioned_images(write_folder(tmp_path / "data"), key="k")
    train = {"epochs": 2, "batch_size": 2, "lr": 1e-3, "resolution": RESOLUTION, "gradient_checkpointing": False,
             "checkpoint_every": 1, "log_every": 1}
    assert iterations_for(2, len(images), 2) == 5
    pipe = sdxl_pipeline(sdxl_unet(0, 2))
    teacher_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    summary = train_sdxl_student(pipe, tiny_vae(), images, variant=variant, train=train, seed=0,
                                 output_dir=tmp_path / "straight", log=lambda *_: None)
    assert summary["iterations"] == 5 and len(summary["history"]) == 5
    assert {"loss_sd", "loss_kd", "loss_features"} <= set(summary["history"][0])
    assert all(torch.equal(v, teacher_before[k]) for k, v in pipe.unet.state_dict().items())  # teacher frozen
    student = UNet2DConditionModel.from_pretrained(tmp_path / "straight", use_safetensors=True)
    assert student.config.layers_per_block == 1 and (student.mid_block is None) == (variant == "tiny_sd_xl")
    # killed after 2 iterations, resumed: the same weights as the unbroken run
    pipe2 = sdxl_pipeline(sdxl_unet(0, 2))
    assert train_sdxl_student(pipe2, tiny_vae(), images, variant=variant, train=train, seed=0,
                              output_dir=tmp_path / "resumed", log=lambda *_: None, stop_after=2) == {"stopped_at": 2}
    train_sdxl_student(pipe2, tiny_vae(), images, variant=variant, train=train, seed=0,
                       output_dir=tmp_path / "resumed", log=lambda *_: None)
    resumed = UNet2DConditionModel.from_pretrained(tmp_path / "resumed", use_safetensors=True)
    init = {k: v for k, v in student.state_dict().items()}
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in init.items())
    from diffrepro.models.distill_sdxl import build_student

    start = build_student(sdxl_unet(0, 2), variant).state_dict()
    assert any(not torch.equal(start[k], init[k]) for k in start)  # training moved the student


@pytest.mark.slow  # a Snakemake dry run and a refused config (a few seconds each)
def test_the_paper_config_plans_our_students_and_refuses_a_bad_teacher(tmp_path):
    import yaml
    from workflow_run import copy_repository, snakemake

    from diffrepro.snakejob import job_counts

    work = copy_repository(tmp_path / "work")
    result = snakemake(work, "-n", "reproduce_distill_sdxl_table", "--configfile", "config/paper/distill_sdxl.yaml")
    planned = job_counts(result.stdout)
    # sdxl, the released tiny and our two students' pipelines; our students distilled first
    assert planned["distil_hub_student"] == 2 and planned["fetch_hub_model"] == 4, planned
    paper = yaml.safe_load((work / "config/paper/distill_sdxl.yaml").read_text())
    paper["models"]["tiny_sd_xl_ours"]["distil_hub"]["teacher"] = "small_sd_xl_ours"
    (work / "bad.yaml").write_text(yaml.safe_dump(paper))
    refused = snakemake(work, "-n", "reproduce_distill_sdxl_table", "--configfile", "bad.yaml", check=False)
    assert refused.returncode != 0
    assert "models.tiny_sd_xl_ours.distil_hub.teacher: 'small_sd_xl_ours' must be a hub sd_unet" in refused.stdout + refused.stderr


@pytest.mark.slow  # the rules' library path on a tiny SDXL "hub" pipeline: distil, pin, load
def test_distil_hub_student_job_to_a_pinned_pipeline(tmp_path):
    from diffrepro.io import read_json, write_json
    from diffrepro.t2i.hub import fetch_hub_model, load_from_record
    from diffrepro.t2i.sdxl_distillation import distil_hub_student_job

    sdxl_pipeline(sdxl_unet(0, 2)).save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    tiny_vae().save_pretrained(tmp_path / "vae", safe_serialization=True)
    hub = {"id": "someone/tiny-sdxl", "pipeline": "StableDiffusionXLPipeline", "path": str(tmp_path / "sdxl")}
    write_json(tmp_path / "sdxl.hub.json", fetch_hub_model(hub, config_key="models.sdxl.hub", as_pipeline=True,
                                                           log=lambda *_: None))
    spec = {"teacher": "sdxl", "variant": "tiny_sd_xl", "data": {"images": str(write_folder(tmp_path / "data"))},
            "vae": {"id": "someone/vae", "path": str(tmp_path / "vae")}, "seed": 0,
            "train": {"epochs": 1, "batch_size": 2, "resolution": RESOLUTION, "gradient_checkpointing": False}}
    summary = distil_hub_student_job(model="tiny_ours", spec=spec, teacher_record=str(tmp_path / "sdxl.hub.json"),
                                     directory=str(tmp_path / "tiny_ours.student"),
                                     compute={"device": "cpu", "precision": "fp32"}, allow_downloads=False,
                                     output=str(tmp_path / "tiny_ours.student.json"), log=lambda *_: None)
    assert summary["iterations"] == 3 and read_json(tmp_path / "tiny_ours.student.json")["vae"]["id"] == "someone/vae"
    # rule fetch_hub_model's view of it (Plan.hub_spec): the teacher's pipeline around our U-Net
    ours = {**hub, "unet": {"id": "diffrepro:tiny_ours", "path": str(tmp_path / "tiny_ours.student"), "subfolder": None}}
    record = fetch_hub_model(ours, config_key="models.tiny_ours.hub", as_pipeline=True, log=lambda *_: None)
    pipe = load_from_record(record)
    assert pipe.unet.config.layers_per_block == 1 and pipe.unet.mid_block is None
    image = pipe("a pokemon", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, output_type="np").images
    assert image.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(image).all()
