"""Control images for T-Stitch with ControlNet at paper scale (diffrepro.t2i.control_images):
the T-Stitch SDXL scripts' preprocessors on tiny random models, the rule's zip (byte-identical,
verified by its reader), and the method steering captions with them in a tiny ControlNet
pipeline exactly as the plain pipeline called with the same images."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffrepro.t2i.control_images import (ControlImages, ControlImagesChanged, canny, control_images_job,
                                          dpt_depth, openpose, openpose_detector)


def photo(seed: int, size=(56, 40)) -> Image.Image:
    """A picture with edges: blocks of colour on noise."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 60).astype(np.uint8)
    pixels[5:25, 8:30] = rng.integers(120, 255, 3)
    return Image.fromarray(pixels)


def coco_like(tmp_path, count=3):
    """A val2014-like zip of JPEGs and the prompts of rule coco_prompts naming them."""
    archive = tmp_path / "val2014.zip"
    prompts = []
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(count):
            name = f"COCO_val2014_{i:012d}.jpg"
            buffer = io.BytesIO()
            photo(i).save(buffer, format="JPEG", quality=95)
            z.writestr(f"val2014/{name}", buffer.getvalue())
            prompts.append({"index": i, "image_id": i, "file_name": name, "caption": f"caption {i}"})
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    return archive, tmp_path / "prompts.json"


def test_canny_is_the_scripts_edges_at_the_images_own_size():
    import cv2

    image = photo(0)
    edges = canny(image, 100, 200)
    assert edges.size == image.size and edges.mode == "RGB"
    pixels = np.asarray(edges)
    assert set(np.unique(pixels)) <= {0, 255} and (pixels == 255).any()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], cv2.Canny(np.asarray(image), 100, 200))
    assert not np.array_equal(np.asarray(canny(image, 10, 20)), pixels)  # the thresholds are used


def tiny_dpt():
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    return DPTForDepthEstimation(config).eval(), DPTImageProcessor(size={"height": 32, "width": 32})


def test_dpt_depth_is_min_max_normalised_per_image_and_independent_of_its_batch():
    estimator, processor = tiny_dpt()
    images = [photo(0), photo(1, size=(40, 64))]
    maps = dpt_depth(images, estimator, processor, 48, "cpu")
    assert [m.size for m in maps] == [(48, 48)] * 2
    for m in maps:
        pixels = np.asarray(m)
        assert pixels.dtype == np.uint8 and pixels.shape == (48, 48, 3)
        assert pixels.min() == 0 and pixels.max() == 255  # min-max per image, as get_depth_map
    alone = dpt_depth(images[1:], estimator, processor, 48, "cpu")[0]
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(maps[1]))


def body_weights(path):
    """Random weights of controlnet_aux's body model in its checkpoint's key layout."""
    from controlnet_aux.open_pose.body import bodypose_model

    torch.manual_seed(0)
    model = bodypose_model()
    torch.save({".".join(k.split(".")[1:]): v for k, v in model.state_dict().items()}, path)
    return path


def test_openpose_draws_at_the_image_resolution_and_refuses_a_pickle_with_code(tmp_path):
    detector = openpose_detector(body_weights(tmp_path / "body.pth"), "cpu")
    out = openpose(photo(0, size=(64, 64)), detector, detect_resolution=128, image_resolution=64)
    assert out.size == (64, 64) and out.mode == "RGB"

    class Payload:  # anything but tensors: torch.load(weights_only=True) must not run it
        def __reduce__(self):
            return (print, ("ran",))

    bad = tmp_path / "bad.pth"
    torch.save({"x": Payload()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        openpose_detector(bad, "cpu")


def test_the_rule_writes_byte_identical_zips_its_reader_verifies(tmp_path):
    archive, prompts = coco_like(tmp_path)
    spec = {"detector": "canny", "low_threshold": 100, "high_threshold": 200}
    for name in ("a.zip", "b.zip"):
        control_images_job(spec=spec, model="controlnet_canny", prompts=str(prompts), archive=str(archive),
                           allow_downloads=False, device="cpu", output=str(tmp_path / name), log=lambda *_: None)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    reader = ControlImages(tmp_path / "a.zip")
    assert len(reader) == 3 and reader.manifest["detector"] == "canny"
    got = reader([2, 0])
    with zipfile.ZipFile(archive) as z:
        source = Image.open(io.BytesIO(z.read("val2014/COCO_val2014_000000000002.jpg"))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(canny(source)))
    with pytest.raises(ValueError, match="no control image for prompt 7"):
        reader([7])
    # one flipped byte in an image: the reader refuses it, naming the fix
    raw = bytearray((tmp_path / "a.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        info = z.getinfo("1.png")
    raw[info.header_offset + 30 + len("1.png") + 40] ^= 0xFF
    (tmp_path / "a.zip").write_bytes(bytes(raw))
    with pytest.raises(ControlImagesChanged, match="control image 1 does not match .* delete"):
        ControlImages(tmp_path / "a.zip")([1])


def test_prompts_without_images_are_refused_before_any_work(tmp_path):
    archive, prompts = coco_like(tmp_path)
    (tmp_path / "bare.json").write_text(json.dumps([{"index": 0, "caption": "x"}]))
    with pytest.raises(ValueError, match="without file_name; models.cn.control_images needs"):
        control_images_job(spec={"detector": "canny"}, model="cn", prompts=str(tmp_path / "bare.json"),
                           archive=str(archive), allow_downloads=False, device="cpu", output=str(tmp_path / "x.zip"))
    assert not (tmp_path / "x.zip").exists()


def test_the_method_steers_each_caption_with_its_control_image(tmp_path):
    """Captions (no class prompts) with control images: r = 0 is the plain ControlNet pipeline
    given the same images resized to the generated size, with the negative prompt; r = 1 runs
    the small U-Net; a caption call without control images is refused."""
    from diffrepro.engines.pipeline import controlnet_pipeline, run_batch
    from diffrepro.methods import get_method, load_plugins
    from t2i_tiny import sd_pipeline, sd_unet
    from test_tstitch_controlnet_sd import light_sd_unet, trained_like_controlnet

    load_plugins()
    large, small = sd_unet(2, layers=2), light_sd_unet(1)
    pipe = controlnet_pipeline(sd_pipeline(large), trained_like_controlnet(large, 4))
    spec = get_method("tstitch_controlnet_sd")
    prompts = ["a red circle", "a tree", "a cat"]
    controls = [photo(i, size=(40, 30)) for i in range(3)]
    t2i = {"steps": 4, "guidance_scale": 5.0, "negative_prompt": "blur"}

    def method(ratio, control="own", **overrides):
        control = [controls[0], controls[2]] if control == "own" else control
        out, labels, images = run_batch(spec, spec.make_setting({"ratio": ratio, "scale": 0.5}), pipe,
                                        {"small": small, "large": large}, {**t2i, **overrides}, 0, [0, 2], (4, 8, 8),
                                        "cpu", prompts, control)
        return out, images

    out, images = method(0.0)
    counts = out.steps_by_role({"small": None, "large": None, "controlnet": None})
    steps = len(pipe.scheduler.timesteps)  # PNDM with skip_prk_steps: 4 + 1
    assert counts == {"small": 0, "large": steps, "controlnet": steps}
    from diffrepro.diffusion.sampling import initial_noise_and_labels

    noise = initial_noise_and_labels(0, [0, 2], (4, 8, 8), 10)[0]
    plain = pipe([prompts[0], prompts[2]], num_inference_steps=4, guidance_scale=5.0, latents=noise,
                 negative_prompt=["blur"] * 2, image=[controls[0].resize((16, 16)), controls[2].resize((16, 16))],
                 controlnet_conditioning_scale=0.5, output_type="np").images
    np.testing.assert_array_equal(images, plain)
    _, without_negative = method(0.0, negative_prompt=None)
    assert not np.array_equal(without_negative, images)
    _, other_images = method(0.0, control=[controls[1], controls[1]])
    assert not np.array_equal(other_images, images)  # the control images steer
    small_out, _ = method(1.0)
    assert small_out.steps_by_role({"small": None, "large": None, "controlnet": None})["small"] == steps
    with pytest.raises(ValueError, match="caption prompts need control images"):
        method(0.0, control=None)
