"""CLIP score (BK-SDM's open_clip cosine) with tiny models built from config dicts, offline."""

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from diffrepro import clip_score as cs  # noqa: E402
from diffrepro.io import sha256_file  # noqa: E402

TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
    # vocab_size must be the SimpleTokenizer's 49408; a short context keeps it fast.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red square", "a photo of a cat", "blue sky over the sea", "two dogs",
           "an empty room", "a green field", "a very long prompt " * 20]


def _tiny_state_dict(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CONFIG)
    with torch.no_grad():  # larger than the init so that features differ visibly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("clip") / "tiny_open_clip.safetensors"
    save_file(_tiny_state_dict(), str(path))
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def tiny_clip(tiny_weights):
    path, digest = tiny_weights
    spec = cs.ClipSpec(model="tiny-test", config=TINY_CONFIG, path=str(path), sha256=digest)
    return cs.load_clip(spec)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(len(PROMPTS), 32, 32, 3), dtype=np.uint8)


def _by_hand(model, images_u8, prompts):
    """Independent computation: normalise pixels by hand (32x32 images need no resize or
    crop), encode, L2-normalise, full cosine matrix [image, prompt]."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    pixels = (pixels - mean) / std
    tokens = open_clip.tokenize(prompts, context_length=TINY_CONFIG["text_cfg"]["context_length"])
    with torch.no_grad():
        img = model.encode_image(pixels).double()
        txt = model.encode_text(tokens).double()
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img @ txt.T).numpy()


def test_scores_match_independent_computation(tiny_clip, tiny_weights, images):
    model, preprocess, tokenizer = tiny_clip
    scores = cs.clip_scores(model, preprocess, tokenizer, images, PROMPTS, batch_size=3)
    cosine = _by_hand(model, images, PROMPTS)
    assert scores.shape == (len(PROMPTS),) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, np.diag(cosine), atol=1e-5)
    assert np.all(np.abs(scores) <= 1.0 + 1e-6)
    # pairing: scoring image i with prompt j gives the (i, j) cosine, so a mismatched caption
    # scores differently from the matching one (random weights: no semantics, but no mix-ups)
    shifted = PROMPTS[1:] + PROMPTS[:1]
    off = cs.clip_scores(model, preprocess, tokenizer, images, shifted, batch_size=4)
    np.testing.assert_allclose(off, [cosine[i, (i + 1) % len(PROMPTS)] for i in range(len(PROMPTS))],
                               atol=1e-5)
    assert np.max(np.abs(off - scores)) > 1e-3
    # a loaded model reproduces the saved weights exactly
    from safetensors.torch import load_file

    saved = load_file(str(tiny_weights[0]))
    for key, value in model.state_dict().items():
        if key in saved:
            assert torch.equal(value, saved[key]), key


def test_preprocess_is_open_clips_pil_transform(tiny_clip):
    """Non-square, larger images go through open_clip's resize + centre crop on PIL images."""
    from PIL import Image

    model, preprocess, tokenizer = tiny_clip
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(2, 48, 40, 3), dtype=np.uint8)
    pixels = torch.stack([preprocess(Image.fromarray(im)) for im in imgs])
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        img = model.encode_image(pixels)
        txt = model.encode_text(tokenizer(PROMPTS[:2]))
    expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1).numpy()
    got = cs.clip_scores(model, preprocess, tokenizer, imgs, PROMPTS[:2])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # grayscale input is converted to RGB by the transform, as for a PIL "L" image
    gray = imgs[..., :1]
    assert cs.clip_scores(model, preprocess, tokenizer, gray, PROMPTS[:2]).shape == (2,)


def test_batch_size_invariance_and_determinism(tiny_clip, images):
    model, preprocess, tokenizer = tiny_clip
    runs = [cs.clip_scores(model, preprocess, tokenizer, images, PROMPTS, batch_size=b)
            for b in (1, 2, 5, 64)]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-6)
    again = cs.clip_scores(model, preprocess, tokenizer, images, PROMPTS, batch_size=2)
    np.testing.assert_array_equal(again, runs[1])
    assert not model.training
    with pytest.raises(ValueError, match="prompts"):
        cs.clip_scores(model, preprocess, tokenizer, images, PROMPTS[:-1])
    with pytest.raises(ValueError, match="uint8"):
        cs.clip_scores(model, preprocess, tokenizer, images.astype(np.float32), PROMPTS)


def test_summary():
    s = cs.clip_score_summary([0.2, 0.3, 0.4])
    assert s["n"] == 3 and math.isclose(s["mean"], 0.3)
    assert math.isclose(s["sd"], 0.1) and math.isclose(s["se"], 0.1 / math.sqrt(3))
    one = cs.clip_score_summary(np.array([0.25]))
    assert one["mean"] == 0.25 and math.isnan(one["sd"]) and one["n"] == 1
    with pytest.raises(ValueError):
        cs.clip_score_summary([])


def test_provenance(tiny_clip, tiny_weights):
    model = tiny_clip[0]
    record = cs.provenance(model)
    assert record["model"] == "tiny-test" and record["pretrained"] is None
    assert record["weights_sha256"] == tiny_weights[1]
    assert record["weights_path"] == os.path.abspath(tiny_weights[0])
    assert record["weights_source"] == "local path"
    assert record["open_clip_version"] == open_clip.__version__
    assert record["implementation"] == "cosine, not x100"
    assert record["preprocess"]["size"] == [32, 32] and record["context_length"] == 16
    with pytest.raises(cs.ClipError):
        cs.provenance(torch.nn.Linear(1, 1))


def test_wrong_sha256_names_both_hashes(tiny_weights):
    path, digest = tiny_weights
    wrong = "0" * 64
    spec = cs.ClipSpec(model="tiny-test", config=TINY_CONFIG, path=str(path), sha256=wrong)
    with pytest.raises(cs.ClipChecksumMismatch) as err:
        cs.load_clip(spec)
    assert wrong in str(err.value) and digest in str(err.value)


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "weights.pt"
    torch.save({"visual.proj": torch.zeros(2), "x": Payload()}, bad)
    with open(bad, "rb") as f:  # the payload really runs under unrestricted unpickling
        assert b"touch" in f.read()
    spec = cs.ClipSpec(model="tiny-test", config=TINY_CONFIG, path=str(bad))
    with pytest.raises(cs.UnsafeCheckpointError, match="weights_only"):
        cs.load_clip(spec)
    assert not marker.exists()
    # a plain tensor pickle (.bin) loads fine weights-only
    good = tmp_path / "weights.bin"
    torch.save(_tiny_state_dict(), good)
    model, _, _ = cs.load_clip(cs.ClipSpec(model="tiny-test", config=TINY_CONFIG, path=str(good)))
    assert cs.provenance(model)["weights_sha256"] == sha256_file(good)


def _empty_hf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download or build the model")

    import huggingface_hub
    import open_clip.pretrained

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_network)
    monkeypatch.setattr(open_clip, "download_pretrained", no_network)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_network)


@pytest.mark.parametrize("offline_env", [True, False])
def test_offline_error_names_repo_and_config_key(monkeypatch, tmp_path, offline_env):
    _empty_hf_cache(monkeypatch, tmp_path)
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        for var in ("HF_HUB_OFFLINE", "DIFFREPRO_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(cs.ClipWeightsUnavailable) as err:
        # with HF_HUB_OFFLINE even allow_downloads=True must not fetch
        cs.load_clip(cs.ClipSpec(), allow_downloads=offline_env)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "laion/CLIP-ViT-g-14-laion2B-s34B-b88K" in message
    assert "clip.path" in message
    assert "hf download laion/CLIP-ViT-g-14-laion2B-s34B-b88K" in message
    assert "huggingface-cli download laion/CLIP-ViT-g-14-laion2B-s34B-b88K" in message
    assert ("HF_HUB_OFFLINE=1" if offline_env else "allow_downloads is false") in message


def test_weights_found_in_hf_cache_offline(monkeypatch, tmp_path):
    """A file already in the hub cache is used without any network access."""
    _empty_hf_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hf_home" / "hub" / "models--laion--CLIP-ViT-g-14-laion2B-s34B-b88K"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"not really weights")
    found = cs.resolve_weights(cs.ClipSpec())
    assert found.source == "hugging face cache"
    assert found.hf_repo_id == "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"
    assert Path(found.path).name == "open_clip_pytorch_model.bin"
    # the safetensors file wins when both are cached
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    assert Path(cs.resolve_weights(cs.ClipSpec()).path).name == "open_clip_model.safetensors"


def test_spec_validation(tiny_weights):
    path = str(tiny_weights[0])
    assert cs.ClipSpec().model == "ViT-g-14" and cs.ClipSpec().pretrained == "laion2b_s34b_b88k"
    assert cs.ClipSpec(model="tiny-test", config=TINY_CONFIG, path=path).pretrained is None
    with pytest.raises(ValueError, match="clip.path"):
        cs.ClipSpec(model="tiny-test", config=TINY_CONFIG)
    with pytest.raises(ValueError, match="sha256"):
        cs.ClipSpec(path=path, sha256="abc")
    with pytest.raises(ValueError, match="unknown clip config keys"):
        cs.ClipSpec.from_config({"model": "ViT-g-14", "pth": path})
    assert cs.ClipSpec.from_config({"path": path}).path == path
    with pytest.raises(cs.ClipError, match="no pretrained tag"):
        cs.load_clip(cs.ClipSpec(model="ViT-g-14", pretrained="nope", path=path))
    with pytest.raises(cs.ClipError, match="replace open_clip"):
        cs.load_clip(cs.ClipSpec(model="ViT-B-32", config=TINY_CONFIG, path=path))


def test_fetch_clip_fails_at_once_offline(monkeypatch, tmp_path):
    """Rule fetch_clip: a pretrained CLIP is found before any sampling and pinned; the score
    job then loads exactly that file (and refuses it if it changed)."""
    _empty_hf_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(cs.ClipWeightsUnavailable, match="laion/CLIP-ViT-g-14-laion2B-s34B-b88K"):
        cs.fetch_clip_job(clip={"model": "ViT-g-14", "pretrained": "laion2b_s34b_b88k", "path": None},
                          allow_downloads=True, output=str(tmp_path / "missing.json"), log=lambda *_: None)
    assert not (tmp_path / "missing.json").exists()


def test_score_jobs_load_the_pinned_clip(tmp_path, tiny_weights, images):
    from diffrepro.io import read_json
    from diffrepro.jobs import _clip_scores

    path, digest = tiny_weights
    clip = {"model": "tiny-test", "config": TINY_CONFIG, "path": str(path)}
    cs.fetch_clip_job(clip=clip, allow_downloads=False, output=str(tmp_path / "clip.json"), log=lambda *_: None)
    assert read_json(tmp_path / "clip.json")["sha256"] == digest
    config = {"clip": {"model": "tiny-test", "config": TINY_CONFIG}}
    record = _clip_scores(images, np.arange(len(images)), config, str(tmp_path / "clip.json"), PROMPTS[:len(images)])
    assert record["provenance"]["weights_sha256"] == digest
    changed = json.loads((tmp_path / "clip.json").read_text())
    changed["sha256"] = "0" * 64
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(cs.ClipChecksumMismatch):
        _clip_scores(images, np.arange(len(images)), config, str(tmp_path / "changed.json"), PROMPTS[:len(images)])


def test_a_custom_config_stays_registered_and_leaves_no_folder(monkeypatch, tmp_path):
    import tempfile

    import open_clip

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where TemporaryDirectory makes its folder
    other = {**TINY_CONFIG, "embed_dim": TINY_CONFIG["embed_dim"] * 2}
    cs._register_config("tiny-test-a", TINY_CONFIG)
    cs._register_config("tiny-test-b", other)  # a second registration rescans every config path
    assert open_clip.get_model_config("tiny-test-a") == TINY_CONFIG
    assert open_clip.get_model_config("tiny-test-b") == other
    assert list(tmp_path.iterdir()) == []
