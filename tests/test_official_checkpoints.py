"""Published DiT checkpoints: the official key names and shapes (written out here from the DiT
architecture, independently of our model code) load into our DiT at the paper sizes, and the
conversion to safetensors keeps the weights and picks the EMA copy as DiT's find_model does."""

import argparse

import pytest
import torch

from diffrepro.checkpoints import load_checkpoint
from diffrepro.models.dit import PAPER_SIZES, DiTConfig, build_dit
from diffrepro.models.official import check_state_dict, convert_official_checkpoint

# DiT paper Table 1 / T-Stitch dit/README parameter counts (millions)
PAPER_PARAMS_M = {"DiT-S/2": 33, "DiT-B/2": 130, "DiT-XL/2": 675}


def official_shapes(depth, hidden, heads, patch=2, latent=32, channels=4, classes=1000):
    """Key -> shape of facebookresearch/DiT's state dict (learn_sigma, 256 px, 1000 classes)."""
    out = channels * 2
    shapes = {
        "pos_embed": (1, (latent // patch) ** 2, hidden),
        "x_embedder.proj.weight": (hidden, channels, patch, patch),
        "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),
        "final_layer.linear.weight": (patch * patch * out, hidden),
        "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.qkv.weight": (3 * hidden, hidden), b + "attn.qkv.bias": (3 * hidden,),
            b + "attn.proj.weight": (hidden, hidden), b + "attn.proj.bias": (hidden,),
            b + "mlp.fc1.weight": (4 * hidden, hidden), b + "mlp.fc1.bias": (4 * hidden,),
            b + "mlp.fc2.weight": (hidden, 4 * hidden), b + "mlp.fc2.bias": (hidden,),
            b + "adaLN_modulation.1.weight": (6 * hidden, hidden), b + "adaLN_modulation.1.bias": (6 * hidden,),
        })
    return shapes


def paper_config(name):
    return DiTConfig(**PAPER_SIZES[name])


@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-B/2", "DiT-XL/2"])
def test_official_keys_and_shapes_load_at_paper_sizes(name):
    size = PAPER_SIZES[name]
    shapes = official_shapes(size["depth"], size["hidden_size"], size["num_heads"])
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    check_state_dict(state, paper_config(name), name)  # strict: names and shapes
    params = sum(torch.Size(s).numel() for k, s in shapes.items() if k != "pos_embed")
    assert round(params / 1e6) == pytest.approx(PAPER_PARAMS_M[name], abs=1)


def test_a_checkpoint_of_another_size_is_refused_naming_the_config():
    size = PAPER_SIZES["DiT-S/2"]
    state = {k: torch.empty(s, device="meta")
             for k, s in official_shapes(size["depth"], size["hidden_size"], size["num_heads"]).items()}
    with pytest.raises(ValueError, match=r"does not fit the configured DiT .*hidden_size"):
        check_state_dict(state, paper_config("DiT-B/2"), "dit_s.pt")


def random_official_state(name, seed=0):
    size = PAPER_SIZES[name]
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02
            for k, s in official_shapes(size["depth"], size["hidden_size"], size["num_heads"]).items()}


@pytest.mark.parametrize("layout", ["plain", "training"])
def test_conversion_keeps_the_official_weights(tmp_path, layout):
    """DiT-S/2 with random weights, saved as the DiT release (a plain state dict) or as the
    T-Stitch authors' training checkpoint ({model, ema, opt, args}: the EMA weights are used)."""
    ema = random_official_state("DiT-S/2", seed=1)
    if layout == "plain":
        obj = ema
    else:
        obj = {"model": random_official_state("DiT-S/2", seed=2), "ema": ema, "opt": {},
               "args": argparse.Namespace(model="DiT-S/2", image_size=256)}
    source = tmp_path / "dit_s_256.pt"
    torch.save(obj, source)
    out = tmp_path / "small.safetensors"
    convert_official_checkpoint(source, paper_config("DiT-S/2"), out, url="gdrive:x")
    loaded = load_checkpoint(out)  # verifies the sha256 sidecar
    assert set(loaded) == set(ema) and all(torch.equal(loaded[k], ema[k]) for k in ema)
    model = build_dit(paper_config("DiT-S/2"))
    model.load_state_dict(loaded, strict=True)
    x, t, y = torch.randn(2, 4, 32, 32), torch.tensor([10, 900]), torch.tensor([3, 1000])
    assert model(x, t, y).shape == (2, 8, 32, 32)


def test_a_hand_placed_checkpoint_must_match_the_lock(tmp_path):
    """Conversion checks the source against the download lock (pinning it if unpinned)."""
    from diffrepro.checkpoints import ChecksumMismatch

    source, lock = tmp_path / "dit_s_256.pt", tmp_path / "lock.json"
    torch.save(random_official_state("DiT-S/2"), source)
    convert_official_checkpoint(source, paper_config("DiT-S/2"), tmp_path / "a.safetensors",
                                url="gdrive:x", lock_path=lock, log=lambda m: None)
    assert "dit_s_256.pt" in lock.read_text()  # pinned on first use
    torch.save(random_official_state("DiT-S/2", seed=5), source)  # replaced by hand
    with pytest.raises(ChecksumMismatch, match=r"dit_s_256.pt[\s\S]*lock.json"):
        convert_official_checkpoint(source, paper_config("DiT-S/2"), tmp_path / "b.safetensors",
                                    url="gdrive:x", lock_path=lock, log=lambda m: None)
    assert not (tmp_path / "b.safetensors").exists()
