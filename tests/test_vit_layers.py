"""Our copies of timm's PatchEmbed, Attention and Mlp equal timm's: same state-dict keys, same
seeded initial weights, same outputs (bitwise), so DiT's numbers do not change."""

import pytest
import torch
import torch.nn as nn

from diffrepro.models import vit_layers

timm_layers = pytest.importorskip("timm.layers")


def gelu_tanh():
    return nn.GELU(approximate="tanh")


@pytest.mark.parametrize("ours, theirs, x", [
    (lambda: vit_layers.PatchEmbed(8, 2, 3, 16, bias=True),
     lambda: timm_layers.PatchEmbed(8, 2, 3, 16, bias=True), torch.randn(3, 3, 8, 8)),
    (lambda: vit_layers.Attention(16, num_heads=4, qkv_bias=True),
     lambda: timm_layers.Attention(16, num_heads=4, qkv_bias=True), torch.randn(3, 5, 16)),
    (lambda: vit_layers.Mlp(16, 64, act_layer=gelu_tanh),
     lambda: timm_layers.Mlp(in_features=16, hidden_features=64, act_layer=gelu_tanh, drop=0), torch.randn(3, 5, 16)),
])
def test_a_layer_equals_timms(ours, theirs, x):
    torch.manual_seed(0)
    a = ours()
    torch.manual_seed(0)
    b = theirs()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # seeded init consumed the same random numbers
    assert torch.equal(a(x), b(x))


def test_dit_imports_neither_timm_nor_torchvision():
    import subprocess
    import sys

    code = ("import sys; import diffrepro.jobs, diffrepro.timing; "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
