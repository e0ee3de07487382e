"""SD-family models from a local directory or the cache; offline errors name the model id."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch

from diffrepro.t2i.hub import (HubModelChanged, HubModelUnavailable, fetch_hub_model, load_from_record,
                                 load_pipeline, load_unet, resolve_model, verify_record)
from t2i_tiny import sd_pipeline, sd_unet, sdxl_pipeline, sdxl_unet


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


@pytest.mark.parametrize("var, value, off", [("HF_HUB_OFFLINE", "false", False), ("HF_HUB_OFFLINE", "0", False),
                                             ("HF_HUB_OFFLINE", "YES", True), ("TRANSFORMERS_OFFLINE", "1", True),
                                             ("DIFFREPRO_OFFLINE", "on", True)])
def test_offline_variables_are_read_as_huggingface_hub_reads_them(monkeypatch, tmp_path, var, value, off):
    """Hub models, the VAE and CLIP weights read the offline variables one way; a missing hub
    model's error names the variable that turned downloads off."""
    from diffrepro.download import HUB_OFFLINE_ENV, offline_reason

    for name in HUB_OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(var, value)
    assert (offline_reason(True, HUB_OFFLINE_ENV) == f"{var}={value}") is off
    assert offline_reason(False, HUB_OFFLINE_ENV) == "allow_downloads is false"
    if off:
        with pytest.raises(HubModelUnavailable, match=rf"downloads are off \({var}={value}\)"):
            resolve_model("someone/missing", config_key="models.x.hub.path", allow_downloads=True)


def test_a_bad_local_path_is_named(tmp_path):
    with pytest.raises(HubModelUnavailable, match="pipeline.path .* is not a directory"):
        resolve_model("stabilityai/stable-diffusion-xl-base-1.0", config_key="pipeline.path",
                      path=str(tmp_path / "missing"))


def test_a_saved_pipeline_and_unet_load_from_a_local_path(tmp_path, empty_cache):
    pipe = sd_pipeline(sd_unet(2, layers=2))
    pipe.save_pretrained(tmp_path / "large", safe_serialization=True)
    small = sd_unet(1, layers=1)
    small.save_pretrained(tmp_path / "small" / "unet", safe_serialization=True)
    loaded = load_pipeline({"id": "someone/large", "pipeline": "StableDiffusionPipeline",
                            "path": str(tmp_path / "large")}, config_key="pipeline")
    unet = load_unet({"id": "someone/small", "path": str(tmp_path / "small")}, config_key="models.small")
    for a, b in zip(pipe.unet.state_dict().values(), loaded.unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), unet.state_dict().values()))
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    run = lambda p: p(["a digit"], num_inference_steps=3, latents=latents, output_type="np").images  # noqa: E731
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(pipe), run(loaded))


def test_the_record_pins_every_weight_file_and_a_changed_file_is_caught(tmp_path, empty_cache):
    pipe = sd_pipeline(sd_unet(2, layers=1))
    pipe.save_pretrained(tmp_path / "large", safe_serialization=True)
    record = fetch_hub_model({"id": "someone/large", "pipeline": "StableDiffusionPipeline",
                              "path": str(tmp_path / "large")}, config_key="models.large.hub", as_pipeline=True)
    assert sorted(record["base"]["files"]) == ["text_encoder/model.safetensors",
                                               "unet/diffusion_pytorch_model.safetensors",
                                               "vae/diffusion_pytorch_model.safetensors"]
    verify_record(record, "large.hub.json")
    unet_file = tmp_path / "large" / "unet" / "diffusion_pytorch_model.safetensors"
    unet_file.write_bytes(unet_file.read_bytes()[:-1] + b" ")
    with pytest.raises(HubModelChanged, match=r"diffusion_pytorch_model.safetensors \(someone/large\) changed.*"
                                              r"Delete large.hub.json"):
        verify_record(record, "large.hub.json")


@pytest.mark.parametrize("missing, named", [("vae", "vae has no config.json"),
                                             ("tokenizer", "the CLIPTokenizer that model_index.json names")])
def test_an_incomplete_pipeline_is_refused_naming_the_missing_component(tmp_path, empty_cache, missing, named):
    """A partial cache or copy must not be recorded without a component (the job would fail
    later inside diffusers, with no word of the model or the fix)."""
    import shutil

    sd_pipeline(sd_unet(2, layers=1)).save_pretrained(tmp_path / "large", safe_serialization=True)
    shutil.rmtree(tmp_path / "large" / missing)
    with pytest.raises(HubModelUnavailable, match=rf"'someone/large' is not available: .*{named}.*incomplete "
                                                  rf"download[\s\S]*huggingface-cli download someone/large"):
        fetch_hub_model({"id": "someone/large", "pipeline": "StableDiffusionPipeline",
                         "path": str(tmp_path / "large")}, config_key="models.large.hub", as_pipeline=True)


def test_a_pipeline_with_a_unet_from_another_repository(tmp_path, empty_cache):
    """LCM-SDXL: SDXL's pipeline around latent-consistency/lcm-sdxl's U-Net."""
    base = sdxl_pipeline(sdxl_unet(0, layers=1))
    base.save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    lcm_unet = sdxl_unet(5, layers=1, time_cond_proj_dim=8)
    lcm_unet.save_pretrained(tmp_path / "lcm", safe_serialization=True)  # a bare U-Net repository
    spec = {"id": "someone/sdxl", "pipeline": "StableDiffusionXLPipeline", "path": str(tmp_path / "sdxl"),
            "unet": {"id": "someone/lcm", "subfolder": None, "path": str(tmp_path / "lcm")}}
    record = fetch_hub_model(spec, config_key="models.lcm_sdxl.hub", as_pipeline=True)
    pipeline = load_from_record(record)
    assert pipeline.unet.config.time_cond_proj_dim == 8
    for a, b in zip(lcm_unet.state_dict().values(), pipeline.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_a_pipeline_with_a_vae_from_another_repository(tmp_path, empty_cache):
    """The T-Stitch SDXL scripts' madebyollin/sdxl-vae-fp16-fix in SDXL-base's pipeline: the
    pipeline's own VAE is neither fetched nor pinned, the other one is, and it decodes."""
    import shutil

    from t2i_tiny import tiny_vae

    base = sdxl_pipeline(sdxl_unet(0, layers=1))
    base.save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    shutil.rmtree(tmp_path / "sdxl" / "vae")  # not needed: a partial copy without it is complete here
    torch.manual_seed(7)
    fixed = tiny_vae()
    for p in fixed.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    fixed.save_pretrained(tmp_path / "fix", safe_serialization=True)  # a bare VAE repository
    spec = {"id": "someone/sdxl", "pipeline": "StableDiffusionXLPipeline", "path": str(tmp_path / "sdxl"),
            "vae": {"id": "someone/vae-fix", "path": str(tmp_path / "fix")}}
    record = fetch_hub_model(spec, config_key="models.sdxl.hub", as_pipeline=True)
    assert not any(name.startswith("vae/") for name in record["base"]["files"])
    assert list(record["vae"]["files"]) == ["diffusion_pytorch_model.safetensors"]
    pipeline = load_from_record(record)
    assert all(torch.equal(a, b) for a, b in zip(fixed.state_dict().values(), pipeline.vae.state_dict().values()))
    verify_record(record, "sdxl.hub.json")
    weights = tmp_path / "fix" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    with pytest.raises(HubModelChanged, match=r"someone/vae-fix"):
        verify_record(record, "sdxl.hub.json")


def test_a_fused_lora_equals_the_active_adapter(tmp_path, empty_cache):
    """The LCM-LoRA path: a LoRA saved as diffusers saves one, fused into a U-Net by its pipeline
    class's loader, gives the adapter's outputs with no adapter layers left."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base = sdxl_unet(3, layers=1)
    base.save_pretrained(tmp_path / "ssd" / "unet", safe_serialization=True)
    adapted = sdxl_unet(3, layers=1)
    adapted.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # zero-initialised: make the LoRA do something
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(adapted))
    spec = {"id": "someone/ssd", "pipeline": "StableDiffusionXLPipeline", "path": str(tmp_path / "ssd"),
            "lora": {"id": "someone/lcm-lora", "path": str(tmp_path / "lora")}}
    record = fetch_hub_model(spec, config_key="models.small.hub", as_pipeline=False)
    fused = load_from_record(record)
    assert not any("lora" in name for name, _ in fused.named_parameters())
    torch.manual_seed(2)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        expected = adapted(x, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
        plain = base(x, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
        out = fused(x, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert (out - plain).abs().max() > 1e-2


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    from fake_hub import FakeHub

    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield hub
    hub.close()


def test_a_pipeline_is_downloaded_with_only_what_it_loads_then_found_offline(tmp_path, fake_hub, monkeypatch):
    """From a hub on 127.0.0.1: the configured variant of the components model_index.json
    names, not the safety checker, other variants, .bin pickles or the single-file checkpoint."""
    pipe = sd_pipeline(sd_unet(2, layers=1))
    pipe.save_pretrained(tmp_path / "repo", safe_serialization=True)
    fp16 = sd_pipeline(sd_unet(2, layers=1)).to(torch.float16)
    fp16.save_pretrained(tmp_path / "repo16", safe_serialization=True, variant="fp16")
    variants = {str(p.relative_to(tmp_path / "repo16")): p.read_bytes()
                for p in (tmp_path / "repo16").rglob("*.fp16.safetensors")}
    index = json.loads((tmp_path / "repo" / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    extra = {"model_index.json": json.dumps(index).encode(), "v1-5.ckpt": b"pickle", **variants,
             "safety_checker/config.json": b"{}", "safety_checker/model.safetensors": b"nsfw",
             "unet/diffusion_pytorch_model.bin": b"pickle"}
    fake_hub.add("someone/sd", tmp_path / "repo", extra)
    spec = {"id": "someone/sd", "pipeline": "StableDiffusionPipeline"}
    record = fetch_hub_model(spec, config_key="models.sd.hub", as_pipeline=True, allow_downloads=True,
                             log=lambda *_: None)
    weights = {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
               "vae/diffusion_pytorch_model.safetensors"}
    assert set(record["base"]["files"]) == weights
    assert {f for f in fake_hub.downloaded() if not f.endswith((".json", ".txt"))} == weights
    loaded = load_from_record(record)
    for a, b in zip(pipe.unet.state_dict().values(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b)
    # the fp16 variant of the same repository: its files only
    record16 = fetch_hub_model({**spec, "variant": "fp16"}, config_key="models.sd.hub", as_pipeline=True,
                               allow_downloads=True, log=lambda *_: None)
    assert set(record16["base"]["files"]) == set(variants) and len(variants) == 3
    # a LoRA repository: only its weight file
    fake_hub.repos["someone/lora"] = {"pytorch_lora_weights.safetensors": b"lora", "README.md": b"#",
                                      "pytorch_lora_weights.bin": b"pickle"}
    unet_only = fetch_hub_model({**spec, "lora": {"id": "someone/lora"}}, config_key="models.small.hub",
                                as_pipeline=False, allow_downloads=True, log=lambda *_: None)
    assert unet_only["lora"]["files"] == {"pytorch_lora_weights.safetensors": hashlib.sha256(b"lora").hexdigest()}
    assert "pytorch_lora_weights.bin" not in fake_hub.downloaded() and "README.md" not in fake_hub.downloaded()
    # then offline, from the cache, with no request
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = fetch_hub_model(spec, config_key="models.sd.hub", as_pipeline=True, allow_downloads=True,
                            log=lambda *_: None)
    assert again["base"]["files"] == record["base"]["files"] and fake_hub.requests == []


def test_a_failing_hub_is_named_with_the_fix(fake_hub):
    fake_hub.failing = True
    with pytest.raises(HubModelUnavailable, match=r"'someone/sd' is not available: the download failed [\s\S]*"
                                                  r"503[\s\S]*huggingface-cli download someone/sd --local-dir DIR "
                                                  r"--include 'model_index.json' --include '\*/\*.json'"):
        fetch_hub_model({"id": "someone/sd"}, config_key="models.sd.hub", as_pipeline=True, allow_downloads=True,
                        log=lambda *_: None)
    fake_hub.failing = False
    with pytest.raises(HubModelUnavailable, match="'someone/missing' is not available"):
        fetch_hub_model({"id": "someone/missing"}, config_key="models.sd.hub", as_pipeline=False,
                        allow_downloads=True, log=lambda *_: None)
