"""BK-SDM block removal: sizes against the paper, student init and the distillation loss."""

import re

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from diffrepro.models.bksdm_config import PUBLISHED_SIZES
from diffrepro.models.bksdm import (
    SD14_UNET_CONFIG,
    VARIANTS,
    FeatureKD,
    bksdm_loss,
    build_student,
    feature_kd_layers,
    size_table,
    student_config,
    unet_size,
)

CA_DOWN, DOWN, CA_UP, UP = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"

# SD-1.x shaped, tiny: 4 stages (8x8 latent -> 1x1) and a 3-stage one.
TINY4 = dict(block_out_channels=[8, 16, 16, 16], down_block_types=[CA_DOWN, CA_DOWN, CA_DOWN, DOWN],
             up_block_types=[UP, CA_UP, CA_UP, CA_UP], layers_per_block=2, cross_attention_dim=8,
             attention_head_dim=2, norm_num_groups=4, sample_size=8, in_channels=4, out_channels=4)
TINY3 = dict(TINY4, block_out_channels=[8, 16, 16], down_block_types=[CA_DOWN, CA_DOWN, DOWN],
             up_block_types=[UP, CA_UP, CA_UP])

# copy_weight_from_teacher in Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py, written out for
# SD-1.4 (student prefix -> teacher prefix, first match; other keys copy by name).
BKSDM_CONNECT = {
    "base": {f"up_blocks.{i}.{m}.1.": f"up_blocks.{i}.{m}.2."
             for i in range(4) for m in ("resnets", "attentions") if (i, m) != (0, "attentions")},
    "tiny": {f"up_blocks.{j}.{m}": f"up_blocks.{j + 1}.{t}" for j in range(3)
             for m, t in [("resnets.0.", "resnets.0."), ("attentions.0.", "attentions.0."),
                          ("resnets.1.", "resnets.2."), ("attentions.1.", "attentions.2."),
                          ("upsamplers.", "upsamplers.")] if not (j == 2 and m == "upsamplers.")},
}
BKSDM_CONNECT["small"] = BKSDM_CONNECT["base"]


def bksdm_teacher_key(key, variant):
    for s, t in BKSDM_CONNECT[variant].items():
        if key.startswith(s):
            return t + key[len(s):]
    return key


def random_unet(config, seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    with torch.no_grad():  # no zero-initialised tensors, so every copy is visible
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return unet.eval()


def inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.tensor([10, 700][:batch]),
            torch.randn(batch, 5, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g))


def test_published_sizes():
    rows = {r["name"]: r for r in size_table(SD14_UNET_CONFIG)}
    assert list(rows) == ["sd-v1.4", *VARIANTS]
    for name, (params_m, gmacs) in PUBLISHED_SIZES.items():
        assert round(rows[name]["params_m"], 1) == params_m, name
        assert round(rows[name]["gmacs"], 1) == gmacs, name
    assert rows["sd-v1.4"]["params_ratio"] == 1.0
    assert rows["tiny"]["gmacs_ratio"] == pytest.approx(205.0 / 338.7, abs=1e-3)
    # thop convention: conv + linear + LayerNorm only (attention matmuls are not counted).
    parts = unet_size(SD14_UNET_CONFIG, breakdown=True)["by_type"]
    assert set(parts) == {"Conv2d", "Linear", "LayerNorm"}
    assert unet_size(SD14_UNET_CONFIG, batch=2)["gmacs"] == pytest.approx(rows["sd-v1.4"]["gmacs"])


def test_student_configs_are_bksdm_jsons():
    teacher = dict(SD14_UNET_CONFIG)
    base, small, tiny = (student_config(teacher, v) for v in VARIANTS)
    assert teacher == SD14_UNET_CONFIG  # not mutated
    assert base == {**SD14_UNET_CONFIG, "layers_per_block": 1}
    assert small == {**base, "mid_block_type": None}
    assert tiny == {**small, "block_out_channels": [320, 640, 1280], "down_block_types": [CA_DOWN] * 3,
                    "up_block_types": [CA_UP] * 3}


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_mapping_matches_bksdm_for_sd14(variant):
    from diffrepro.models.bksdm import _teacher_key, weight_mapping

    with torch.device("meta"):
        teacher = UNet2DConditionModel.from_config(SD14_UNET_CONFIG).state_dict()
        student = UNet2DConditionModel.from_config(student_config(SD14_UNET_CONFIG, variant)).state_dict()
    rules = weight_mapping(4, variant)
    for key, value in student.items():
        assert _teacher_key(key, rules) == bksdm_teacher_key(key, variant), key
        assert teacher[bksdm_teacher_key(key, variant)].shape == value.shape, key


@pytest.mark.parametrize("variant", VARIANTS)
def test_student_init_copies_teacher(variant):
    teacher = random_unet(TINY4)
    student = build_student(teacher, variant)
    t_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, t_state[bksdm_teacher_key(key, variant)]), key
    s_state = student.state_dict()
    if variant == "tiny":  # outermost up stage: student 2 <- teacher 3, last pair <- teacher pair 2
        assert torch.equal(s_state["up_blocks.2.resnets.1.conv1.weight"], t_state["up_blocks.3.resnets.2.conv1.weight"])
        assert torch.equal(s_state["up_blocks.0.upsamplers.0.conv.weight"], t_state["up_blocks.1.upsamplers.0.conv.weight"])
    else:  # same shapes as teacher pair 1 here, so this tells pair 2 from pair 1
        w = s_state["up_blocks.3.resnets.1.conv1.weight"]
        assert torch.equal(w, t_state["up_blocks.3.resnets.2.conv1.weight"])
        assert not torch.equal(w, t_state["up_blocks.3.resnets.1.conv1.weight"])
    assert torch.equal(s_state["down_blocks.0.attentions.0.proj_in.weight"], t_state["down_blocks.0.attentions.0.proj_in.weight"])


@pytest.mark.parametrize("config", [TINY4, TINY3], ids=["4stage", "3stage"])
def test_student_structure_and_forward(config):
    teacher = random_unet(config)
    n = len(config["block_out_channels"])
    x, t, emb, _ = inputs()
    params = {}
    for variant in VARIANTS:
        student = build_student(teacher, variant)
        params[variant] = sum(p.numel() for p in student.parameters())
        assert (student.mid_block is None) == (variant != "base")
        stages = n - 1 if variant == "tiny" else n
        assert len(student.down_blocks) == len(student.up_blocks) == stages
        assert all(len(b.resnets) == 1 for b in student.down_blocks)
        assert all(len(b.resnets) == 2 for b in student.up_blocks)
        assert student.down_blocks[-1].downsamplers is None
        with torch.no_grad():
            assert student(x, t, emb).sample.shape == x.shape
    assert sum(p.numel() for p in teacher.parameters()) > params["base"] > params["small"] > params["tiny"]


def make_removed_blocks_identity(teacher, variant):
    """Zero the residual branches of every pair (and mid block) BK-SDM removes; the up-stage pair 1
    gets a 1x1 shortcut that passes the hidden state and drops the concatenated skip. The teacher
    then computes exactly what its student computes."""
    with torch.no_grad():
        for block in list(teacher.down_blocks) + list(teacher.up_blocks):
            resnet = block.resnets[1]
            resnet.conv2.weight.zero_(), resnet.conv2.bias.zero_()
            if resnet.conv_shortcut is not None:
                w = resnet.conv_shortcut.weight
                w.zero_(), resnet.conv_shortcut.bias.zero_()
                w[:, : w.shape[0], 0, 0] = torch.eye(w.shape[0])
            if getattr(block, "attentions", None):
                block.attentions[1].proj_out.weight.zero_(), block.attentions[1].proj_out.bias.zero_()
        if variant == "small":
            for resnet in teacher.mid_block.resnets:
                resnet.conv2.weight.zero_(), resnet.conv2.bias.zero_()
            teacher.mid_block.attentions[0].proj_out.weight.zero_()
            teacher.mid_block.attentions[0].proj_out.bias.zero_()


@pytest.mark.parametrize("variant", ["base", "small"])
def test_kd_loss_vanishes_for_equivalent_teacher(variant):
    teacher = random_unet(TINY4)
    make_removed_blocks_identity(teacher, variant)
    student = build_student(teacher, variant)
    x, t, emb, target = inputs()
    losses = bksdm_loss(teacher, student, variant, x, t, emb, target)
    assert losses["out_kd"].item() < 1e-12 and losses["feat_kd"].item() < 1e-12
    with torch.no_grad():
        expected_task = F.mse_loss(student(x, t, emb).sample, target)
    assert losses["task"].item() == pytest.approx(expected_task.item(), rel=1e-6)
    assert losses["total"].item() == pytest.approx(expected_task.item(), rel=1e-5)
    # A teacher that is not equivalent gives positive KD terms.
    other = bksdm_loss(random_unet(TINY4, seed=3), student, variant, x, t, emb, target)
    assert other["out_kd"] > 0 and other["feat_kd"] > 0


def test_kd_loss_tiny_by_hand_and_gradients():
    teacher = random_unet(TINY4)
    student = build_student(teacher, "tiny")
    with torch.no_grad():  # move the student away from the teacher
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, emb, target = inputs()
    # BK-SDM's mapping_layers_tea/stu for bk_tiny
    tea_names = ["down_blocks.0", "down_blocks.1", "down_blocks.2.attentions.1.proj_out",
                 "up_blocks.1", "up_blocks.2", "up_blocks.3"]
    stu_names = ["down_blocks.0", "down_blocks.1", "down_blocks.2.attentions.0.proj_out",
                 "up_blocks.0", "up_blocks.1", "up_blocks.2"]
    assert feature_kd_layers(TINY4, "tiny") == list(zip(tea_names, stu_names))

    with FeatureKD(teacher, student, "tiny", w_task=0.5, w_out=2.0, w_feat=3.0) as kd:
        losses = kd(x, t, emb, target)
    assert all(len(m._forward_hooks) == 0 for net in (teacher, student) for m in net.modules())

    acts = {}
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda m, a, o, key=(side, n): acts.__setitem__(key, o[0] if isinstance(o, tuple) else o))
        for side, net, names in (("t", teacher, tea_names), ("s", student, stu_names)) for n in names]
    with torch.no_grad():
        pred_s, pred_t = student(x, t, emb).sample, teacher(x, t, emb).sample
    for h in hooks:
        h.remove()
    task = ((pred_s - target) ** 2).mean()
    out_kd = ((pred_s - pred_t) ** 2).mean()
    feat_kd = sum(((acts["s", s] - acts["t", tn]) ** 2).mean() for tn, s in zip(tea_names, stu_names))
    assert acts["s", "down_blocks.2.attentions.0.proj_out"].shape == acts["t", "down_blocks.2.attentions.1.proj_out"].shape
    for name, value in [("task", task), ("out_kd", out_kd), ("feat_kd", feat_kd)]:
        assert torch.isfinite(losses[name]) and losses[name] > 0
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert losses["total"].item() == pytest.approx((0.5 * task + 2 * out_kd + 3 * feat_kd).item(), rel=1e-5)

    losses["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())  # teacher ran under no_grad
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown BK-SDM variant 'huge'"):
        student_config(SD14_UNET_CONFIG, "huge")
    with pytest.raises(ValueError, match="unknown BK-SDM variant 'huge'"):
        feature_kd_layers(SD14_UNET_CONFIG, "huge")
    with pytest.raises(ValueError, match="'base'.*layers_per_block must be 2"):
        student_config({**SD14_UNET_CONFIG, "layers_per_block": 3}, "base")
    with pytest.raises(ValueError, match="'small'.*mid_block_type"):
        student_config({**SD14_UNET_CONFIG, "mid_block_type": None}, "small")
    with pytest.raises(ValueError, match="'tiny'.*equal widths"):
        student_config({**TINY4, "block_out_channels": [8, 16, 16, 32]}, "tiny")
    with pytest.raises(ValueError, match="'tiny'.*second-innermost down stage"):
        student_config({**TINY4, "down_block_types": [CA_DOWN, CA_DOWN, DOWN, DOWN],
                        "up_block_types": [UP, UP, CA_UP, CA_UP]}, "tiny")
    # Base/Small do not need attention there.
    student_config({**TINY4, "down_block_types": [CA_DOWN, CA_DOWN, DOWN, DOWN],
                    "up_block_types": [UP, UP, CA_UP, CA_UP]}, "small")


def test_size_claim_is_judged_against_the_papers_bands():
    """Sizes within ±0.05 of the printed table are within band; one a tenth off crosses the edge."""
    import pandas as pd

    from diffrepro.report import bksdm as report
    from diffrepro.report.paper import load_paper_table

    paper = load_paper_table(report.BKSDM_YAML, "coco_zero_shot")
    names = {"teacher": "sd-v1.4", "base": "base", "small": "small", "tiny": "tiny"}
    rows = [{"name": names[r["variant"]], "params_m": r["params_m"] + 0.04, "gmacs": r["gmacs"] - 0.04}
            for _, r in paper.iterrows()]
    assert report.size_claim(rows, paper)["verdict"] == "within band"
    rows[3]["gmacs"] += 0.2  # Tiny's MACs 0.16 G above the paper's: worse
    assert report.size_claim(rows, paper)["verdict"] == "worse"
    rows[3]["gmacs"] -= 0.4  # now 0.24 G below: better (smaller)
    assert report.size_claim(rows, paper)["verdict"] == "better"

    ours = pd.DataFrame({"ours_fid": [1.0, 2.0, 3.0, 4.0], "paper_fid": paper["fid"],
                         "ours_step_ms": [4.0, 3.0, 2.0, 1.0], "paper_gmacs": paper["gmacs"]})
    text = report.claims_markdown(ours, rows, paper, "synthetic")
    header = next(line for line in text.splitlines() if line.startswith("| claim"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "claim", "paper_value", "ours_value", "band", "verdict", "rule"]
    assert "printed to 0.1 M" in text and text.count("— (own rule)") == 2
    assert len(re.findall(r"\| holds +\|", text)) == 2  # the ordering and speed claims keep their own rule
