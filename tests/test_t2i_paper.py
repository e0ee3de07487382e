"""The text-to-image paper path on tiny models and a fake MS-COCO: prompts from the captions
archive, the ADM-layout reference batch of the real images, hub pipelines sampled and timed
from their fetch records (decoded, resized to the scoring size), CLIP against each prompt."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from diffrepro import adm_metrics
from diffrepro.io import read_json, write_json
from diffrepro.jobs import read_shard_extras, read_shards
from diffrepro.t2i import coco
from diffrepro.t2i.components import unet_step_inputs
from diffrepro.t2i.hub import HubModelUnavailable, fetch_hub_model
from diffrepro.engines.pipeline import fid_images
from diffrepro.jobs import sample_shard
from diffrepro.timing import time_setting
from t2i_tiny import sd_pipeline, sd_unet, sdxl_unet

CAPTIONS = {
    "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (5, 9, 2, 7)],
    "annotations": [
        {"id": 1, "image_id": 5, "caption": "A cat  on a mat."}, {"id": 2, "image_id": 5, "caption": "A cat."},
        {"id": 3, "image_id": 9, "caption": "Two dogs\nrunning."}, {"id": 4, "image_id": 2, "caption": "A red bus."},
        {"id": 5, "image_id": 7, "caption": "A kite in the sky."}, {"id": 6, "image_id": 7, "caption": "Kite."},
    ],
}


def write_fake_coco(directory, sizes=((40, 30), (30, 50), (64, 64), (33, 20))):
    """annotations_trainval2014.zip and val2014.zip laid out as MS-COCO's (random JPEGs)."""
    from PIL import Image

    annotations = directory / "annotations_trainval2014.zip"
    with zipfile.ZipFile(annotations, "w") as archive:
        archive.writestr(coco.CAPTIONS_MEMBER, json.dumps(CAPTIONS))
    images = directory / "val2014.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(images, "w") as archive:
        for image, (w, h) in zip(CAPTIONS["images"], sizes):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            archive.writestr(f"val2014/{image['file_name']}", buffer.getvalue())
    return annotations, images


def test_prompts_are_one_caption_per_image_and_reproducible(tmp_path):
    annotations, _ = write_fake_coco(tmp_path)
    captions = coco.read_captions(annotations)
    first, again = coco.select_prompts(captions, 3, seed=0), coco.select_prompts(captions, 3, seed=0)
    assert first == again and [p["index"] for p in first] == [0, 1, 2]
    assert len({p["image_id"] for p in first}) == 3
    texts = {i: {" ".join(a["caption"].split()) for a in CAPTIONS["annotations"] if a["image_id"] == i}
             for i in (5, 9, 2, 7)}
    assert all(p["caption"] in texts[p["image_id"]] for p in first)  # whitespace normalised
    assert {p["image_id"] for p in coco.select_prompts(captions, None, seed=0)} == {5, 9, 2, 7}
    assert coco.select_prompts(captions, None, seed=0) != coco.select_prompts(captions, None, seed=1)
    with pytest.raises(ValueError, match="count is 5, but the captions cover only 4 images"):
        coco.select_prompts(captions, 5, seed=0)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("x.json", "{}")
    with pytest.raises(ValueError, match="has no annotations/captions_val2014.json"):
        coco.read_captions(tmp_path / "other.zip")


@pytest.mark.slow  # about 4-8 s on 2 cores (the fast tier stays near 2 minutes)
def test_the_reference_batch_has_the_adm_layout(tmp_path):
    from test_adm_metrics import write_random_inception_weights

    _, images = write_fake_coco(tmp_path)
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    output = tmp_path / "reference.npz"
    coco.reference_job(images=str(images), reference={"size": 32, "keep": 3, "resize": "center_crop"},
                       lock=str(tmp_path / "lock.json"),
                       output=str(output), inception_weights=str(weights), prompts_path=None, log=lambda *_: None)
    with np.load(output) as data:
        assert data["arr_0"].shape == (3, 32, 32, 3) and data["arr_0"].dtype == np.uint8
        assert int(data["num_images"]) == 4
        stats = {k: data[k] for k in ("mu", "sigma", "mu_s", "sigma_s")}
    extractor = adm_metrics.load_inception(weights)
    batches = list(coco.iter_reference_images(images, None, 32, "center_crop"))
    features = adm_metrics.inception_features(extractor, np.concatenate(batches))
    mu, sigma = adm_metrics.feature_statistics(features["pool"])
    np.testing.assert_allclose(stats["mu"], mu, rtol=1e-10)
    np.testing.assert_allclose(stats["sigma"], sigma, rtol=1e-8, atol=1e-12)
    assert adm_metrics.reference_statistics(output)["mu"].shape == (2048,)  # what the ADM backend reads
    # only the prompts' images
    prompts = tmp_path / "prompts.json"
    write_json(prompts, coco.select_prompts(CAPTIONS, 2, seed=0))
    coco.reference_job(images=str(images), reference={"size": 32, "keep": 10, "images": "prompts"},
                       lock=str(tmp_path / "lock.json"), output=str(output), inception_weights=str(weights),
                       prompts_path=str(prompts), log=lambda *_: None)
    with np.load(output) as data:
        assert int(data["num_images"]) == 2 and len(data["arr_0"]) == 2


def test_a_fixed_prompt_list_is_read_in_its_order(tmp_path):
    listing = tmp_path / "metadata.csv"
    listing.write_text('file_name,text\nCOCO_val2014_000000000009.jpg,"Two dogs, running."\nCOCO_val2014_000000000002.jpg,A red bus.\n')
    assert coco.read_metadata_csv(listing, None) == [
        {"index": 0, "file_name": "COCO_val2014_000000000009.jpg", "caption": "Two dogs, running."},
        {"index": 1, "file_name": "COCO_val2014_000000000002.jpg", "caption": "A red bus."}]
    assert len(coco.read_metadata_csv(listing, 1)) == 1
    with pytest.raises(ValueError, match="count is 3, but .* has only 2 prompts"):
        coco.read_metadata_csv(listing, 3)


def test_jpeg_storage_as_bksdm_stores_its_images():
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    lossless, jpeg = fid_images(images, 8), fid_images(images, 8, jpeg_quality=75)
    assert jpeg.shape == lossless.shape == (2, 8, 8, 3)
    assert 0 < np.abs(jpeg.astype(int) - lossless).mean() < 40
    assert not np.array_equal(fid_images(images, None, jpeg_quality=75), fid_images(images, None))


def test_center_crop_and_resize():
    from PIL import Image

    wide = Image.fromarray(np.concatenate([np.zeros((10, 10, 3), np.uint8), np.full((10, 20, 3), 255, np.uint8),
                                           np.zeros((10, 10, 3), np.uint8)], axis=1))
    cropped = np.asarray(coco.resize_square(wide, 5, "center_crop"))
    assert cropped.shape == (5, 5, 3) and cropped.min() > 200  # the white middle only
    assert np.asarray(coco.resize_square(wide, 5, "resize")).min() < 50
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    assert fid_images(images, 8).shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(fid_images(images, 16), (images * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def hub_sd(tmp_path_factory):
    """A tiny SD pipeline (large) and a U-Net repository (small), saved as on the hub, fetched."""
    root = tmp_path_factory.mktemp("hub")
    large = sd_pipeline(sd_unet(2, layers=2))
    large.save_pretrained(root / "large", safe_serialization=True)
    sd_unet(1, layers=1).save_pretrained(root / "small" / "unet", safe_serialization=True)
    records = {}
    for role, spec, as_pipeline in (("large", {"id": "someone/large", "path": str(root / "large")}, True),
                                    ("small", {"id": "someone/small", "path": str(root / "small")}, False)):
        records[role] = str(root / f"{role}.hub.json")
        write_json(records[role], fetch_hub_model(spec, config_key=f"models.{role}.hub", as_pipeline=as_pipeline,
                                                  log=lambda *_: None))
    prompts = root / "prompts.json"
    write_json(prompts, [{"caption": c} for c in ("a cat", "two dogs", "a red bus", "a kite", "a boat")])
    return root, records, str(prompts)


T2I = {"scheduler": {"class": "PNDMScheduler"}, "steps": 5, "guidance_scale": 7.5, "fid_size": 8,
       "precision": "fp32"}


def test_hub_pipelines_sample_decoded_images_from_their_records(hub_sd):
    root, records, prompts = hub_sd

    def shard(method, values, roles, indices, batch_size, name):
        out = root / f"{name}.npz"
        sample_shard(method=method, setting_values=values, checkpoints={r: records[r2] for r, r2 in roles.items()},
                     model_configs={}, sampling=T2I, seed=0, indices=indices, batch_size=batch_size, output=str(out),
                     prompts_path=prompts, log=lambda *_: None)
        return str(out)

    both = {"small": "small", "large": "large"}
    whole = shard("tstitch_sd", {"ratio": 0.4}, both, range(5), 5, "whole")
    parts = [shard("tstitch_sd", {"ratio": 0.4}, both, idx, 2, f"part{k}") for k, idx in enumerate((range(0, 3), range(3, 5)))]
    images, labels, meta = read_shards([whole])
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8  # decoded at 16 px, resized to fid_size
    np.testing.assert_array_equal(labels, np.arange(5))  # image i from prompt i
    assert meta["model_steps"] == {"small": 2, "large": 4}  # PNDM: 5 steps, 6 timesteps; r = 0.4
    np.testing.assert_array_equal(images, read_shards(parts)[0])  # shards and batch size change nothing
    latents = read_shard_extras([whole])["samples"]
    assert latents.shape == (5, 4, 8, 8) and latents.dtype == np.float16
    # r = 0 is the large pipeline as it is
    plain = shard("text_to_image", {}, {"model": "large"}, range(5), 5, "plain")
    stitched0 = shard("tstitch_sd", {"ratio": 0.0}, both, range(5), 5, "r0")
    np.testing.assert_array_equal(read_shards([plain])[0], read_shards([stitched0])[0])
    assert not np.array_equal(read_shards([plain])[0], images)


def test_hub_pipelines_are_timed_per_image(hub_sd, tmp_path):
    root, records, prompts = hub_sd
    timing = {"batch_size": 1, "warmup": 0, "repeats": 2, "forward_repeats": 2}
    result = time_setting(method="tstitch_sd", setting_values={"ratio": 0.4},
                          baseline={"method": "tstitch_sd", "params": {"ratio": 0.0}}, checkpoints=records,
                          model_configs={}, sampling=T2I, seed=0, timing=timing, config={},
                          output=str(tmp_path / "t.json"), prompts_path=prompts, log=lambda *_: None)
    assert result["batch_size"] == 1 and len(result["speedup_pairs"]) == 2
    assert set(result["per_step_forward_s"]) == {"small", "large"}
    assert result["provenance"]["text_encoder_sha256"] is None
    assert read_json(tmp_path / "t.json")["model_steps"] == {"small": 2, "large": 4}


@pytest.mark.parametrize("kind", ["sd", "sdxl", "lcm"])
def test_unet_step_inputs_run_each_architecture(kind):
    unet = {"sd": lambda: sd_unet(0, 1), "sdxl": lambda: sdxl_unet(0, 1),
            "lcm": lambda: sdxl_unet(0, 1, time_cond_proj_dim=8)}[kind]()
    guided = kind != "lcm"
    inputs = unet_step_inputs(unet, batch=3, shape=(4, 8, 8), tokens=5, guided=guided)
    with torch.no_grad():
        out = unet(**inputs).sample
    assert out.shape == (6 if guided else 3, 4, 8, 8)
    assert ("timestep_cond" in inputs) == (kind == "lcm")
    assert ("added_cond_kwargs" in inputs) == (kind != "sd")


def test_the_lcm_paper_path_sdxl_with_an_lcm_unet_and_a_lora_small(tmp_path):
    """LCM-SDXL (SDXL's pipeline around another repository's U-Net, LCMScheduler from the
    pipeline's config) with a LoRA-fused small U-Net, as config/paper/tstitch_lcm.yaml builds it."""
    from diffusers import LCMScheduler, StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from t2i_tiny import sdxl_pipeline

    sdxl_pipeline(sdxl_unet(0, layers=1)).save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    lcm_unet = sdxl_unet(5, layers=1, time_cond_proj_dim=8)
    lcm_unet.save_pretrained(tmp_path / "lcm", safe_serialization=True)
    sdxl_unet(3, layers=1).save_pretrained(tmp_path / "ssd" / "unet", safe_serialization=True)
    adapted = sdxl_unet(3, layers=1)
    adapted.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # zero-initialised: make the LoRA change the outputs
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(adapted))
    specs = {"large": ({"id": "x/sdxl", "pipeline": "StableDiffusionXLPipeline", "path": str(tmp_path / "sdxl"),
                        "unet": {"id": "x/lcm", "subfolder": None, "path": str(tmp_path / "lcm")}}, True),
             "small": ({"id": "x/ssd", "pipeline": "StableDiffusionXLPipeline", "path": str(tmp_path / "ssd"),
                        "lora": {"id": "x/lcm-lora", "path": str(tmp_path / "lora")}}, False)}
    records = {}
    for role, (spec, as_pipeline) in specs.items():
        records[role] = str(tmp_path / f"{role}.hub.json")
        write_json(records[role], fetch_hub_model(spec, config_key=f"models.{role}.hub", as_pipeline=as_pipeline,
                                                  log=lambda *_: None))
    prompts = tmp_path / "prompts.json"
    write_json(prompts, [{"caption": c} for c in ("a cat", "two dogs", "a red bus")])
    t2i = {"scheduler": {"class": "LCMScheduler"}, "steps": 4, "guidance_scale": 8.0, "image_size": 16,
           "fid_size": 16, "precision": "fp32"}

    def shard(values, name):
        sample_shard(method="tstitch_sd", setting_values=values, checkpoints=records, model_configs={}, sampling=t2i,
                     seed=0, indices=range(3), batch_size=3, output=str(tmp_path / name),
                     prompts_path=str(prompts), log=lambda *_: None)
        return read_shards([str(tmp_path / name)])

    images, _, meta = shard({"ratio": 0.5}, "half.npz")
    assert meta["model_steps"] == {"small": 2, "large": 2}
    # the LoRA is fused into the small U-Net: without it the stitched images differ
    plain_small = {**specs["small"][0]}
    plain_small.pop("lora")
    records["small"] = str(tmp_path / "small-plain.hub.json")
    write_json(records["small"], fetch_hub_model(plain_small, config_key="models.small.hub", as_pipeline=False,
                                                 log=lambda *_: None))
    assert not np.array_equal(shard({"ratio": 0.5}, "half-plain.npz")[0], images)
    r0, _, _ = shard({"ratio": 0.0}, "r0.npz")
    # r = 0 is plain LCM-SDXL, built by hand as diffusers' docs build it
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl", unet=lcm_unet)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    from diffrepro.diffusion.sampling import initial_noise_and_labels

    noise, _, generators = initial_noise_and_labels(0, [0, 1, 2], (4, 8, 8), 10)
    expected = pipe(["a cat", "two dogs", "a red bus"], num_inference_steps=4, guidance_scale=8.0, latents=noise,
                    generator=generators, height=16, width=16, output_type="np").images
    np.testing.assert_array_equal(r0, fid_images(expected, 16))
    assert not np.array_equal(images, r0)


# File lists of the real repositories (as the hub lists them), for the fetch patterns.
SDXL_BASE = ["model_index.json", "sd_xl_base_1.0.safetensors", "sd_xl_offset_example-lora_1.0.safetensors",
             "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
             "text_encoder/model.fp16.safetensors", "text_encoder/model.onnx", "text_encoder_2/config.json",
             "text_encoder_2/model.safetensors", "text_encoder_2/model.fp16.safetensors", "tokenizer/vocab.json",
             "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer_2/vocab.json",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_flax_model.msgpack",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
             "vae_1_0/config.json", "vae_1_0/diffusion_pytorch_model.fp16.safetensors"]
SD14 = ["model_index.json", "sd-v1-4.ckpt", "safety_checker/config.json", "safety_checker/model.safetensors",
        "safety_checker/pytorch_model.bin", "feature_extractor/preprocessor_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.bin", "text_encoder/config.json", "text_encoder/model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
SHARDED = ["model_index.json", "text_encoder/config.json", "text_encoder/model.safetensors.index.fp16.json",
           "text_encoder/model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16-00002-of-00002.safetensors",
           "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors"]


def _fetched(files, variant, scopes):
    from huggingface_hub.utils import filter_repo_objects

    from diffrepro.t2i.hub import _weight_patterns

    allow, ignore = _weight_patterns(variant, scopes)
    return sorted(f for f in filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore)
                  if f.endswith(".safetensors"))


def test_only_the_configured_variant_of_the_loaded_components_is_fetched():
    sdxl = ["scheduler/", "text_encoder/", "text_encoder_2/", "tokenizer/", "tokenizer_2/", "unet/", "vae/"]
    assert _fetched(SDXL_BASE, "fp16", sdxl) == ["text_encoder/model.fp16.safetensors",
                                                 "text_encoder_2/model.fp16.safetensors",
                                                 "unet/diffusion_pytorch_model.fp16.safetensors",
                                                 "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert _fetched(SDXL_BASE, "fp16", ["unet/"]) == ["unet/diffusion_pytorch_model.fp16.safetensors"]
    sd14 = ["text_encoder/", "unet/", "vae/"]  # safety_checker and feature_extractor are skipped
    assert _fetched(SD14, None, sd14) == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                          "vae/diffusion_pytorch_model.safetensors"]
    assert _fetched(SHARDED, "fp16", ["text_encoder/"]) == ["text_encoder/model.fp16-00001-of-00002.safetensors",
                                                            "text_encoder/model.fp16-00002-of-00002.safetensors"]
    assert _fetched(SHARDED, None, ["text_encoder/"]) == ["text_encoder/model-00001-of-00002.safetensors",
                                                          "text_encoder/model-00002-of-00002.safetensors"]
    lcm = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]
    assert _fetched(lcm, "fp16", [""]) == ["diffusion_pytorch_model.fp16.safetensors"]


def test_the_record_skips_the_safety_checker_and_a_replaced_unet(tmp_path):
    from diffrepro.t2i.hub import load_from_record

    sd_pipeline(sd_unet(2, layers=1)).save_pretrained(tmp_path / "sd", safe_serialization=True)
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]  # as SD-1.x repositories list it
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps(index))
    record = fetch_hub_model({"id": "x/sd", "path": str(tmp_path / "sd")}, config_key="models.sd.hub",
                             as_pipeline=True, log=lambda *_: None)
    assert record["base"]["components"] == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    pipeline = load_from_record(record)
    assert pipeline.safety_checker is None
    sd_unet(4, layers=1).save_pretrained(tmp_path / "other", safe_serialization=True)
    replaced = fetch_hub_model({"id": "x/sd", "path": str(tmp_path / "sd"),
                                "unet": {"id": "x/other", "subfolder": None, "path": str(tmp_path / "other")}},
                               config_key="models.sd.hub", as_pipeline=True, log=lambda *_: None)
    assert not any(name.startswith("unet/") for name in replaced["base"]["files"])
    (tmp_path / "sd" / "vae" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "sd" / "vae" / "x.bin")
    with pytest.raises(HubModelUnavailable, match=r"vae holds no safetensors weights .*never unpickles"):
        fetch_hub_model({"id": "x/sd", "path": str(tmp_path / "sd")}, config_key="models.sd.hub", as_pipeline=True,
                        log=lambda *_: None)
