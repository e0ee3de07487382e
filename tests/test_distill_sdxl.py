"""Distill SD XL (diffengine DistillSDXL): SDXL-base sizes, the students' configs and weight
mapping, the feature taps, the loss and one optimisation step, on tiny SDXL-shaped U-Nets."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from diffrepro.models.distill_sdxl import (
    DistillSDXLLoss,
    build_student,
    feature_taps,
    min_snr_weights,
    size_table,
)
from diffrepro.models.distill_sdxl_config import (
    SDXL_BASE_PARAMS,
    SDXL_BASE_UNET_CONFIG,
    VARIANTS,
    student_config,
)

# SDXL-shaped, tiny: 3 stages (no attention in the outer one), transformer depth growing inwards,
# linear projections, SDXL's added conditioning (pooled text 8 + 6 ids x 4 = 32).
TINY_SDXL = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64, 64],
                 layers_per_block=2, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=[2, 4, 4],
                 transformer_layers_per_block=[1, 2, 3], use_linear_projection=True,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=32)
POOLED = 8

# distill_sd_xl.py _prepare_student, written out for 3 stages: which teacher modules the
# student drops (down: index 1; up: index 1, whose slot index 2 takes; tiny: the mid block).
DROPPED = ("down_blocks.0.resnets.1.", "down_blocks.1.resnets.1.", "down_blocks.1.attentions.1.",
           "down_blocks.2.resnets.1.", "down_blocks.2.attentions.1.",
           "up_blocks.0.resnets.1.", "up_blocks.0.attentions.1.", "up_blocks.1.resnets.1.",
           "up_blocks.1.attentions.1.", "up_blocks.2.resnets.1.")
MOVED = {f"up_blocks.{i}.{m}.1.": f"up_blocks.{i}.{m}.2." for i in range(3) for m in ("resnets", "attentions")}


def random_unet(config, seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    with torch.no_grad():  # no zero-initialised tensors, so every copy is visible
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def batch(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    added = {"text_embeds": torch.randn(n, POOLED, generator=g),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * n)}
    return (torch.randn(n, 4, 8, 8, generator=g), torch.tensor([10, 700][:n]),
            torch.randn(n, 5, 16, generator=g), torch.randn(n, 4, 8, 8, generator=g), added)


@pytest.fixture(scope="module")
def sdxl_sizes():
    return size_table()  # SDXL-base and its students on the meta device (~2 s)


@pytest.mark.slow  # about 4-8 s on 2 cores (the fast tier stays near 2 minutes)
def test_sdxl_base_sizes_confirm_the_issue_count(sdxl_sizes):
    """Counted on the meta device from SDXL-base's config (1024 px), BK-SDM's counter."""
    rows = {r["name"]: r for r in sdxl_sizes}
    assert list(rows) == ["sdxl-base", *VARIANTS]
    # the teacher: exactly the parameters of the published SDXL-base U-Net
    assert rows["sdxl-base"]["params_m"] * 1e6 == pytest.approx(SDXL_BASE_PARAMS, abs=0.5)
    # the issue's earlier count (2567 -> 1717.3 -> 1304.2 M), within its 0.1 M rounding
    assert rows["small_sd_xl"]["params_m"] == pytest.approx(1717.3, abs=0.05)
    assert rows["tiny_sd_xl"]["params_m"] == pytest.approx(1304.2, abs=0.05)
    assert rows["sdxl-base"]["gmacs"] > rows["small_sd_xl"]["gmacs"] > rows["tiny_sd_xl"]["gmacs"]


def test_student_configs():
    small, tiny = (student_config(SDXL_BASE_UNET_CONFIG, v) for v in VARIANTS)
    for cfg in (small, tiny):
        assert cfg["layers_per_block"] == 1
        # no stage removed, unlike BK-SDM Tiny; SDXL's transformer depth kept per stage
        assert cfg["block_out_channels"] == [320, 640, 1280]
        assert cfg["transformer_layers_per_block"] == [1, 2, 10]
    assert small["mid_block_type"] == "UNetMidBlock2DCrossAttn" and tiny["mid_block_type"] is None
    assert SDXL_BASE_UNET_CONFIG["layers_per_block"] == 2  # the teacher's config is not changed


@pytest.mark.parametrize("variant", VARIANTS)
def test_student_keys_map_onto_teacher_keys(variant):
    teacher = random_unet(TINY_SDXL)
    student = build_student(teacher, variant)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    used = set()
    for key, value in s_state.items():
        tkey = next((t + key[len(s):] for s, t in MOVED.items() if key.startswith(s)), key)
        assert torch.equal(value, t_state[tkey]), key
        used.add(tkey)
    dropped = DROPPED + (("mid_block.",) if variant == "tiny_sd_xl" else ())
    # every teacher tensor is either copied once or in a dropped module
    assert used == {k for k in t_state if not k.startswith(dropped)}
    assert any(k.startswith("mid_block.") for k in s_state) == (variant == "small_sd_xl")
    # SDXL's added-conditioning embedding is carried over
    assert torch.equal(s_state["add_embedding.linear_1.weight"], t_state["add_embedding.linear_1.weight"])


def test_forward_with_added_conditioning():
    teacher = random_unet(TINY_SDXL)
    x, t, text, _, added = batch()
    other = {**added, "text_embeds": added["text_embeds"] + 1.0}
    for unet in (teacher, *(build_student(teacher, v) for v in VARIANTS)):
        with torch.no_grad():
            out = unet(x, t, text, added_cond_kwargs=added).sample
            moved = unet(x, t, text, added_cond_kwargs=other).sample
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, moved)  # the pooled text reaches the network


def test_feature_taps_are_diffengines():
    assert [(t, s) for _, t, s in feature_taps(TINY_SDXL, "small_sd_xl")] == [
        ("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"), ("down_blocks.2", "down_blocks.2"),
        ("mid_block", "mid_block"),
        ("up_blocks.0", "up_blocks.0"), ("up_blocks.1", "up_blocks.1"), ("up_blocks.2", "up_blocks.2")]
    # tiny: teacher d2 not compared; the teacher's mid block against the student's d2
    assert [(t, s) for _, t, s in feature_taps(TINY_SDXL, "tiny_sd_xl")] == [
        ("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
        ("mid_block", "down_blocks.2"),
        ("up_blocks.0", "up_blocks.0"), ("up_blocks.1", "up_blocks.1"), ("up_blocks.2", "up_blocks.2")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_terms_by_hand(variant):
    teacher = random_unet(TINY_SDXL, seed=0)
    student = build_student(teacher, variant)
    with torch.no_grad():  # move the student off its init so every term is non-trivial
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t, text, target, added = batch()
    with DistillSDXLLoss(teacher, student, variant) as kd:
        terms = kd(x, t, text, target, added_cond_kwargs=added)
    # by hand: our own hooks at the documented modules, the nets called directly
    taps = feature_taps(TINY_SDXL, variant)
    acts = {}

    def keep(key):
        return lambda m, a, o: acts.__setitem__(key, o[0] if isinstance(o, tuple) else o)

    handles = [teacher.get_submodule(tn).register_forward_hook(keep(("t", name))) for name, tn, _ in taps]
    handles += [student.get_submodule(sn).register_forward_hook(keep(("s", name))) for name, _, sn in taps]
    with torch.no_grad():
        s_out = student(x, t, text, added_cond_kwargs=added).sample
        t_out = teacher(x, t, text, added_cond_kwargs=added).sample
    for h in handles:
        h.remove()
    assert acts[("t", "d0")].shape == (2, 32, 4, 4)  # a down block's hidden state, not its skips
    features = sum(F.mse_loss(acts[("s", n)], acts[("t", n)]) for n, _, _ in taps)
    assert terms["loss_sd"].item() == pytest.approx(F.mse_loss(s_out, target).item(), rel=1e-5)
    assert terms["loss_kd"].item() == pytest.approx(F.mse_loss(s_out, t_out).item(), rel=1e-5)
    assert terms["loss_features"].item() == pytest.approx(features.item(), rel=1e-5)
    assert terms["loss_kd"] > 0 and terms["loss_features"] > 0
    assert terms["total"].item() == pytest.approx(
        (terms["loss_sd"] + terms["loss_kd"] + terms["loss_features"]).item(), rel=1e-6)
    # the hooks were removed with the context
    assert not any(m._forward_hooks for m in student.modules())


def test_min_snr_weighting():
    alphas_cumprod = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor([0, 999])
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    assert torch.allclose(min_snr_weights(t, alphas_cumprod, 5.0), torch.clamp(snr, max=5.0) / snr)
    teacher = random_unet(TINY_SDXL)
    student = build_student(teacher, "tiny_sd_xl")
    x, _, text, target, added = batch()
    with DistillSDXLLoss(teacher, student, "tiny_sd_xl") as plain:
        p = plain(x, t, text, target, added_cond_kwargs=added)
    with DistillSDXLLoss(teacher, student, "tiny_sd_xl", snr_gamma=5.0, alphas_cumprod=alphas_cumprod) as snr_kd:
        w = snr_kd(x, t, text, target, added_cond_kwargs=added)
    with torch.no_grad():
        per_sample = F.mse_loss(student(x, t, text, added_cond_kwargs=added).sample, target,
                                reduction="none").mean(dim=(1, 2, 3))
    weights = torch.clamp(snr, max=5.0) / snr
    assert weights[0] < 1 and weights[1] == 1  # only the low-noise sample is down-weighted
    assert w["loss_sd"].item() == pytest.approx((per_sample * weights).mean().item(), rel=1e-5)
    assert w["loss_sd"].item() != pytest.approx(p["loss_sd"].item(), rel=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_reduces_the_loss(variant):
    teacher = random_unet(TINY_SDXL).requires_grad_(False)
    student = build_student(teacher, variant).train()
    x, t, text, target, added = batch()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    with DistillSDXLLoss(teacher, student, variant) as kd:
        before = kd(x, t, text, target, added_cond_kwargs=added)["total"]
        before.backward()
        assert all(p.grad is None for p in teacher.parameters())  # only the student learns
        optimizer.step()
        with torch.no_grad():
            after = kd(x, t, text, target, added_cond_kwargs=added)["total"]
    assert after < before


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="layers_per_block must be 2"):
        student_config({**TINY_SDXL, "layers_per_block": 1}, "small_sd_xl")
    with pytest.raises(ValueError, match="unknown Distill SD XL variant 'base'"):
        student_config(TINY_SDXL, "base")
    with pytest.raises(ValueError, match="mid_block_type"):
        student_config({**TINY_SDXL, "mid_block_type": None}, "tiny_sd_xl")


def test_embedded_sdxl_conditioning_is_the_pipelines():
    """Training conditions an SDXL-shaped class-prompt U-Net on what StableDiffusionXLPipeline
    (our embedded one: the projecting encoder only) gives it when sampling."""
    from diffrepro.engines.pipeline import embedded_pipeline
    from diffrepro.t2i.components import embedded_time_ids, encode_prompts_sdxl

    t2i = {"scheduler": {"class": "PNDMScheduler", "config": {"skip_prk_steps": True}},
           "text_encoder": {"hidden_size": 16, "layers": 2, "heads": 2, "max_length": 24, "seed": 0}}
    unet = random_unet({**TINY_SDXL, "projection_class_embeddings_input_dim": 24 + 16})
    pipe = embedded_pipeline(unet, t2i)
    cond, neg, pooled, neg_pooled = pipe.encode_prompt(["a handwritten digit one"], device="cpu",
                                                       do_classifier_free_guidance=True)
    ours, ours_pooled = encode_prompts_sdxl(pipe.tokenizer_2, pipe.text_encoder_2, ["a handwritten digit one"])
    assert torch.equal(cond, ours) and torch.equal(pooled, ours_pooled)
    assert not neg.any() and not neg_pooled.any()  # the dropped prompt trains on zeros
    ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(ids[0], embedded_time_ids(unet.config))


def test_table_places_models_and_checks_sizes(tmp_path, monkeypatch, sdxl_sizes):
    """The distill_sdxl table: variants from the config or, for a hub U-Net, from its blocks;
    sizes from the configs; the size claim against reports/paper/distill_sdxl.yaml."""
    import json

    import diffrepro.t2i.hub as hub
    from diffrepro.report import distill_sdxl as report
    from diffrepro.report.paper import load_paper_table
    from diffrepro.t2i.sizes import distill_sdxl_models

    tiny_cfg = student_config(TINY_SDXL, "tiny_sd_xl")
    record = tmp_path / "tiny.hub.json"
    record.write_text(json.dumps({"unet_config": tiny_cfg}))
    monkeypatch.setattr(hub, "unet_config", lambda rec: rec["unet_config"])
    config = {"models": {"teacher": {"arch": "sd_unet", "config": TINY_SDXL},
                         "small": {"arch": "sd_unet", "distil": {"teacher": "teacher", "variant": "small_sd_xl"}},
                         "released": {"arch": "sd_unet", "hub": {"id": "takuoko/tiny_sd_xl_pokemon_blip"}}},
              "methods": {m: {"models": {"model": m}} for m in ("teacher", "small", "released")},
              "t2i": {"text_encoder": {"max_length": 5}}}
    models = distill_sdxl_models(config, ["teacher", "small", "released"], {"released": str(record)})
    assert {m: v["variant"] for m, v in models.items()} == {
        "teacher": "teacher", "small": "small_sd_xl", "released": "tiny_sd_xl"}
    assert models["teacher"]["params_m"] > models["small"]["params_m"] > models["released"]["params_m"]

    def rec(method, fid, ms):
        return {"method": method, "metrics": {"fid": fid, "fid_bootstrap_se": 0.1, "clip_score": 0.2},
                "timing": {"per_step_forward_s": {"model": ms / 1000}, "median_s": 1.0}}

    paper = load_paper_table("reports/paper/distill_sdxl.yaml", "sdxl_sizes")
    df = report.build_table([rec("released", 9.0, 2.0), rec("teacher", 5.0, 4.0), rec("small", 7.0, 3.0)],
                            models, paper)
    assert list(df["variant"]) == ["teacher", "small_sd_xl", "tiny_sd_xl"]
    assert list(df["ours_fid_vs_teacher"]) == [0.0, 2.0, 4.0]
    assert df["paper_params_ratio"].iloc[2] == pytest.approx(1304.2 / 2567.5)
    claim = report.size_claim(sdxl_sizes, paper)
    assert claim["verdict"] == "within band", claim
    assert claim["band"].startswith("params_m: ±0.05: ")
    # the reference 1 M larger than our count: ours is smaller (better); 1 M smaller: worse
    larger = paper.assign(params_m=paper["params_m"] + [0.0, 0.0, 1.0])
    smaller = paper.assign(params_m=paper["params_m"] - [0.0, 0.0, 1.0])
    assert report.size_claim(sdxl_sizes, larger)["verdict"] == "better"
    assert report.size_claim(sdxl_sizes, smaller)["verdict"] == "worse"
