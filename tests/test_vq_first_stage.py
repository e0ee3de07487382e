"""The VQ first stage of T-Stitch's LDMs (diffrepro/models/vq_first_stage.py): a taming-layout
autoencoder, written here from taming-transformers' module layout, converted to diffusers'
VQModel must decode exactly as the taming model does (quantize, post_quant_conv, decoder)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffrepro.models.vq_first_stage import (VQ_F8, build_vq_model, convert_first_stage,
                                             convert_taming_vq_state_dict, diffusers_vq_config)

TINY = {"embed_dim": 3, "n_embed": 24,
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3,
                     "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0}}


# --- the taming layout (taming/modules/diffusionmodules/model.py), as a reference -------------
def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


class Resnet(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q, k, v = (m(h).reshape(b, c, hh * ww) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c ** -0.5, dim=2)
        out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Level(nn.Module):
    pass


class Mid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = Resnet(c, c), Attn(c), Resnet(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class TamingVQ(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dd = cfg["ddconfig"]
        chs = [dd["ch"] * m for m in dd["ch_mult"]]
        n, res = len(chs), dd["resolution"]
        self.cfg = dd
        self.encoder = nn.Module()
        self.encoder.conv_in = nn.Conv2d(dd["in_channels"], dd["ch"], 3, padding=1)
        self.encoder.down = nn.ModuleList()
        cin = dd["ch"]
        for i, c in enumerate(chs):
            level = Level()
            level.block = nn.ModuleList([Resnet(cin if j == 0 else c, c) for j in range(dd["num_res_blocks"])])
            level.attn = nn.ModuleList([Attn(c) for _ in range(dd["num_res_blocks"])]
                                       if res // 2 ** i in dd["attn_resolutions"] else [])
            if i != n - 1:
                level.downsample = nn.Module()
                level.downsample.conv = nn.Conv2d(c, c, 3, stride=2)
            self.encoder.down.append(level)
            cin = c
        self.encoder.mid = Mid(chs[-1])
        self.encoder.norm_out, self.encoder.conv_out = norm(chs[-1]), nn.Conv2d(chs[-1], dd["z_channels"], 3, padding=1)
        self.quant_conv = nn.Conv2d(dd["z_channels"], cfg["embed_dim"], 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(cfg["n_embed"], cfg["embed_dim"])
        self.post_quant_conv = nn.Conv2d(cfg["embed_dim"], dd["z_channels"], 1)
        self.decoder = nn.Module()
        self.decoder.conv_in = nn.Conv2d(dd["z_channels"], chs[-1], 3, padding=1)
        self.decoder.mid = Mid(chs[-1])
        ups = [None] * n
        cin = chs[-1]
        for i in reversed(range(n)):
            c = chs[i]
            level = Level()
            level.block = nn.ModuleList([Resnet(cin if j == 0 else c, c) for j in range(dd["num_res_blocks"] + 1)])
            level.attn = nn.ModuleList([Attn(c) for _ in range(dd["num_res_blocks"] + 1)]
                                       if res // 2 ** i in dd["attn_resolutions"] else [])
            if i != 0:
                level.upsample = nn.Module()
                level.upsample.conv = nn.Conv2d(c, c, 3, padding=1)
            ups[i] = level
            cin = c
        self.decoder.up = nn.ModuleList(ups)
        self.decoder.norm_out, self.decoder.conv_out = norm(chs[0]), nn.Conv2d(chs[0], dd["out_ch"], 3, padding=1)

    def quantized(self, z):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.quantize.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        q = e[d.argmin(1)].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return z + (q - z)

    def decode(self, z):
        d = self.decoder
        h = d.mid(d.conv_in(self.post_quant_conv(self.quantized(z))))
        for i in reversed(range(len(d.up))):
            level = d.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return d.conv_out(F.silu(d.norm_out(h)))


def taming_model(seed=0):
    torch.manual_seed(seed)
    model = TamingVQ(TINY).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def test_config_of_vq_f8():
    config = diffusers_vq_config(VQ_F8)
    assert config["block_out_channels"] == (128, 256, 256, 512)
    # attention only at 32 px: the encoder's last level, the decoder's first
    assert config["down_block_types"][-1] == "AttnDownEncoderBlock2D" and config["up_block_types"][0] == "AttnUpDecoderBlock2D"
    assert sum("Attn" in t for t in config["down_block_types"] + config["up_block_types"]) == 2
    with pytest.raises(ValueError, match="double_z"):
        diffusers_vq_config({**VQ_F8, "ddconfig": {**VQ_F8["ddconfig"], "double_z": True}})


def test_converted_model_decodes_as_taming(tmp_path):
    taming = taming_model()
    state = {**taming.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2)}  # dropped
    converted = convert_taming_vq_state_dict(state, TINY)
    model = build_vq_model(TINY).eval()
    model.load_state_dict(converted, strict=True)
    z = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = taming.decode(z)
        ours = model.decode(z).sample
    assert ours.shape == (4, 3, 16, 16)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # the quantizer really snaps: a latent off the codebook decodes as its nearest entry
    code = model.quantize.embedding.weight[3].view(1, 3, 1, 1).expand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(code + 1e-4).sample, model.decode(code.clone()).sample)


def test_convert_first_stage_from_the_published_zip(tmp_path):
    taming = taming_model(1)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": taming.state_dict(), "global_step": 7}, ckpt)
    archive = tmp_path / "vq-f8.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(ckpt, "vq-f8/model.ckpt")
    out = convert_first_stage(archive, TINY, tmp_path / "first_stage")
    assert (out / "config.json").exists() and (out / "diffusion_pytorch_model.safetensors").exists()
    from diffusers import VQModel

    loaded = VQModel.from_pretrained(out, use_safetensors=True).eval()
    z = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z).sample, taming.decode(z), rtol=1e-4, atol=1e-4)
    # a checkpoint of another configuration is refused, naming the config key to check
    other = {**TINY, "n_embed": 25}
    with pytest.raises(ValueError, match="decoder.first_stage"):
        convert_first_stage(ckpt, other, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_ldm_uint8_rule_differs_from_dit():
    """LDM's samples: clamp((x + 1) / 2, 0, 1) * 255 truncated (T-Stitch's
    sample_imagenet_ddp_t_stitch.py); DiT's: clamp(127.5 x + 128, 0, 255) truncated."""
    from diffrepro.decoder import decode_to_uint8

    class Identity:
        device, dtype = torch.device("cpu"), torch.float32

        def decode(self, z):
            return type("Out", (), {"sample": z})()

    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6).expand(1, 3, 1, 6).contiguous()
    ldm, _ = decode_to_uint8(Identity(), x, 1.0, to_uint8="ldm")
    dit, _ = decode_to_uint8(Identity(), x, 1.0)
    np.testing.assert_array_equal(ldm[0, 0, :, 0], [0, 0, 127, 191, 255, 255])
    np.testing.assert_array_equal(dit[0, 0, :, 0], [0, 0, 128, 191, 255, 255])


def test_fetch_vae_converts_the_pinned_first_stage_and_sampling_loads_it(tmp_path):
    """Rule fetch_vae for a decoder with a `source`: the download is checked against the lock,
    converted once, and recorded with its sha256 and uint8 rule; load_vae gives a VQModel."""
    from diffrepro.decoder import decode_to_uint8, fetch_vae_job, load_vae
    from diffrepro.download import ChecksumMismatch
    from diffrepro.io import sha256_file

    taming = taming_model(2)
    source = tmp_path / "downloads" / "vq-tiny.ckpt"
    source.parent.mkdir()
    torch.save({"state_dict": taming.state_dict()}, source)
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({"vq-tiny.ckpt": {"sha256": sha256_file(source)}}))
    decoder = {"model": "CompVis/vq-tiny", "path": None, "scale": 1.0, "to_uint8": "ldm",
               "source": {"file": "vq-tiny.ckpt", "url": "https://example.invalid/vq-tiny.ckpt"}, "first_stage": TINY}
    info = fetch_vae_job(decoder=decoder, allow_downloads=False, output=str(tmp_path / "ckpt" / "vae.json"),
                         source=str(source), lock_path=str(lock), log=lambda _: None)
    assert info["to_uint8"] == "ldm" and json.loads((tmp_path / "ckpt" / "vae.json").read_text()) == info
    vae = load_vae(info)
    assert type(vae).__name__ == "VQModel"
    z = torch.randn(2, 3, 8, 8)
    images, nonfinite = decode_to_uint8(vae, z, info["scale"], to_uint8=info["to_uint8"])
    with torch.no_grad():
        expected = (torch.clamp((taming.decode(z) + 1) / 2, 0, 1) * 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    assert images.shape == (2, 16, 16, 3) and len(nonfinite) == 0
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # float rounding at a truncation edge
    # a replaced download is refused before any conversion
    torch.save({"state_dict": taming_model(3).state_dict()}, source)
    with pytest.raises(ChecksumMismatch):
        fetch_vae_job(decoder=decoder, allow_downloads=False, output=str(tmp_path / "ckpt" / "vae.json"),
                      source=str(source), lock_path=str(lock), log=lambda _: None)


@pytest.mark.slow  # one Snakemake dry run (a few seconds)
def test_the_ldm_paper_config_downloads_and_converts_the_first_stage(tmp_path):
    from workflow_run import copy_repository, snakemake

    from diffrepro.snakejob import job_counts

    work = copy_repository(tmp_path)
    result = snakemake(work, "-n", "-p", "reproduce_tstitch_ldm_table", "--configfile", "config/paper/tstitch_ldm.yaml")
    planned = job_counts(result.stdout)
    assert planned["fetch_vae"] == 1, planned
    # the two U-Nets, the reference batch, the Inception weights and the first stage
    assert planned["download"] == 5 and "resources/downloads/vq-f8.zip" in result.stdout, planned
