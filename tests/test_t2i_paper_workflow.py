"""A text-to-image paper config's DAG end to end, offline: MS-COCO-layout archives served from
127.0.0.1, two tiny SD pipelines saved as on the hub (a teacher and its BK-SDM-Tiny student)
given by local path, random Inception weights and a tiny CLIP.

Every rule of a BK-SDM / T-Stitch-SD paper run executes: download (pinned in the lock) ->
fetch_hub_model, coco_prompts, t2i_reference -> sample (decoded, resized) -> time -> score
(ADM metrics against the computed reference, CLIP against each caption) -> table (U-Net sizes
read from the repositories' configs), plot.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from diffrepro.io import read_json, sha256_file
from test_clip_score import TINY_CONFIG, _tiny_state_dict
from test_t2i_paper import write_fake_coco
from t2i_tiny import sd_pipeline
from workflow_run import copy_repository, snakemake

pytestmark = pytest.mark.slow

CA_DOWN, DOWN, CA_UP, UP = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
# SD-1.x shaped (3 stages), reading the tiny pipelines' 32-wide text encoder
TEACHER = dict(block_out_channels=[8, 16, 16], down_block_types=[CA_DOWN, CA_DOWN, DOWN],
               up_block_types=[UP, CA_UP, CA_UP], layers_per_block=2, cross_attention_dim=32,
               attention_head_dim=2, norm_num_groups=4, sample_size=8, in_channels=4, out_channels=4)


def write_hub_models(directory):
    from diffrepro.models.bksdm import build_student
    from diffrepro.t2i.components import build_unet

    torch.manual_seed(0)
    teacher = build_unet(TEACHER).eval()
    student = build_student(teacher, "tiny").eval()
    paths = {}
    for name, unet in (("teacher", teacher), ("student", student)):
        paths[name] = directory / name
        sd_pipeline(unet).save_pretrained(paths[name], safe_serialization=True)
    return paths


def t2i_config(url, models, weights, clip_path) -> dict:
    text_to_image = {"plugin": "text_to_image", "baseline": {}, "grid": {"steps": [None]}}
    return {
        "standalone": True, "suite": "t2i_smoke", "seed": 0, "threads": 1, "allow_downloads": True,
        "compute": {"device": "cpu", "precision": "fp32", "tf32": False, "compile": False},
        "models": {name: {"arch": "sd_unet", "hub": {"id": f"someone/{name}", "path": str(path)}}
                   for name, path in models.items()},
        "t2i": {"scheduler": {"class": "PNDMScheduler"}, "steps": 4, "guidance_scale": 7.5, "fid_size": 8,
                "prompts": {"annotations": {"file": "annotations_trainval2014.zip",
                                            "url": f"{url}/annotations_trainval2014.zip"}, "count": 4, "seed": 0}},
        "clip": {"model": "tiny-test", "config": TINY_CONFIG, "path": str(clip_path)},
        "sampling": {"num_samples": 4, "num_shards": 1, "batch_size": 4},
        "timing": {"batch_size": 1, "warmup": 0, "repeats": 2, "forward_repeats": 2, "threads": 1},
        "scoring": {"backend": "adm", "inception_weights": str(weights), "is_splits": 2, "is_protocol": "torch_fidelity",
                    "fid_method": "factored",
                    "bootstrap_reps": 2, "seed": 0,
                    "reference_images": {"archive": {"file": "val2014.zip", "url": f"{url}/val2014.zip"},
                                         "size": 8, "keep": 4}},
        "downloads": {"lock": "downloads.lock.json", "retries": 1},
        "resources": {"default": {"mem_mb": 1000, "runtime": 10}},
        "methods": {"bksdm_teacher": {**text_to_image, "models": {"model": "teacher"}},
                    "bksdm_tiny": {**text_to_image, "models": {"model": "student"}}},
        "tables": {"bksdm": {"kind": "bksdm", "methods": ["bksdm_teacher", "bksdm_tiny"], "paper": "coco_zero_shot"}},
    }


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory, file_server):
    from safetensors.torch import save_file
    from test_adm_metrics import write_random_inception_weights

    served, url = file_server
    assets = tmp_path_factory.mktemp("t2i_assets")
    write_fake_coco(served)
    weights = write_random_inception_weights(assets / "inception.pth")
    clip_path = assets / "clip.safetensors"
    save_file(_tiny_state_dict(), str(clip_path))
    models = write_hub_models(assets)
    work = copy_repository(tmp_path_factory.mktemp("t2i_workflow"))
    (work / "t2i_smoke.yaml").write_text(yaml.safe_dump(t2i_config(url, models, weights, clip_path)))
    snakemake(work, "--cores", "2", "reproduce_bksdm_table", "--configfile", "t2i_smoke.yaml")
    return work, served, models


def test_the_coco_archives_are_downloaded_pinned_and_used(t2i_run):
    work, served, _ = t2i_run
    lock = json.loads((work / "downloads.lock.json").read_text())
    for name in ("annotations_trainval2014.zip", "val2014.zip"):
        assert lock[name]["sha256"] == sha256_file(served / name)
    results = work / "results/t2i_smoke"
    prompts = read_json(results / "prompts.json")
    assert len(prompts) == 4 and all(p["caption"] for p in prompts)
    with np.load(results / "reference/t2i_reference.npz") as reference:
        assert int(reference["num_images"]) == 4 and reference["arr_0"].shape == (4, 8, 8, 3)


def test_hub_models_are_pinned_and_scored_with_their_captions(t2i_run):
    work, _, models = t2i_run
    record = read_json(work / "resources/checkpoints/t2i_smoke/student.hub.json")
    assert record["base"]["files"]["unet/diffusion_pytorch_model.safetensors"] == sha256_file(
        models["student"] / "unet/diffusion_pytorch_model.safetensors")
    scores = read_json(work / "results/t2i_smoke/scores/bksdm_tiny/default.json")
    assert scores["num_samples"] == 4
    for metric in ("fid", "sfid", "inception_score", "precision", "recall", "clip_score"):
        assert np.isfinite(scores["metrics"][metric]), metric
    assert scores["provenance"]["adm"]["reference"]["num_images"] == 4  # the computed reference batch
    # BK-SDM's IS: torch-fidelity's splits, not the ADM evaluator's
    assert scores["provenance"]["adm"]["is_protocol"].startswith("torch-fidelity isc: 2 splits")
    assert scores["provenance"]["adm"]["is_split_size"] is None  # not the ADM evaluator's splits
    assert scores["labels"]["inception_score"] == "IS (Inception, torch-fidelity)"
    assert np.isfinite(scores["metrics"]["inception_score_std"])
    assert scores["provenance"]["clip"]["model"] == "tiny-test"
    with np.load(work / "results/t2i_smoke/samples/bksdm_tiny/default/shard-0.npz") as shard:
        assert shard["images"].shape == (4, 8, 8, 3)  # 16 px decoded, resized to fid_size
        np.testing.assert_array_equal(shard["labels"], np.arange(4))


def test_the_bksdm_table_reads_sizes_from_the_repositories(t2i_run):
    import pandas as pd

    from diffrepro.models.bksdm import student_config, unet_size

    work, _, _ = t2i_run
    table = pd.read_csv(work / "reports/t2i_smoke/bksdm_table.csv")
    assert list(table["variant"]) == ["teacher", "tiny"]  # the student's blocks say it is Tiny
    expected = [unet_size(TEACHER, latent_size=8, text_tokens=77)["params_m"],
                unet_size(student_config(TEACHER, "tiny"), latent_size=8, text_tokens=77)["params_m"]]
    np.testing.assert_allclose(table["ours_params_m"], expected)
    note = (work / "reports/t2i_smoke/bksdm_claims.md").read_text()
    assert "MS-COCO captions" in note and "bksdm_tiny=student" in note
