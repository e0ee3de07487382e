"""SD-family models from a local directory or the cache; offline errors name the model id."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from diffrepro.t2i.hub import HubModelUnavailable, load_pipeline, load_unet, resolve_model
from t2i_tiny import sd_pipeline, sd_unet


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_offline_missing_model_names_the_id_and_the_fix(empty_cache):
    began = time.perf_counter()
    with pytest.raises(HubModelUnavailable) as err:
        load_unet({"id": "nota-ai/bk-sdm-tiny", "subfolder": "unet"}, config_key="models.sd_small.hub",
                  allow_downloads=True)  # HF_HUB_OFFLINE wins over the config
    message = str(err.value)
    assert "'nota-ai/bk-sdm-tiny'" in message
    assert "huggingface-cli download nota-ai/bk-sdm-tiny" in message
    assert "models.sd_small.hub.path" in message and "HF_HUB_OFFLINE" in message
    assert time.perf_counter() - began < 5


def test_a_bad_local_path_is_named(tmp_path):
    with pytest.raises(HubModelUnavailable, match="pipeline.path .* is not a directory"):
        resolve_model("stabilityai/stable-diffusion-xl-base-1.0", config_key="pipeline.path",
                      path=str(tmp_path / "missing"))


def test_a_saved_pipeline_and_unet_load_from_a_local_path(tmp_path, empty_cache):
    pipe = sd_pipeline(sd_unet(2, layers=2))
    pipe.save_pretrained(tmp_path / "large", safe_serialization=True)
    small = sd_unet(1, layers=1)
    small.save_pretrained(tmp_path / "small" / "unet", safe_serialization=True)
    loaded = load_pipeline({"id": "someone/large", "class": "StableDiffusionPipeline",
                            "path": str(tmp_path / "large")}, config_key="pipeline")
    unet = load_unet({"id": "someone/small", "path": str(tmp_path / "small")}, config_key="models.small")
    for a, b in zip(pipe.unet.state_dict().values(), loaded.unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), unet.state_dict().values()))
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    run = lambda p: p(["a digit"], num_inference_steps=3, latents=latents, output_type="np").images  # noqa: E731
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(pipe), run(loaded))
