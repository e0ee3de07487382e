"""config/paper/immiscible_sd.yaml: valid, the seed's recipe, its DAG plans, and configs mixing
the embedded suite's keys with paper scale's are refused naming the key."""

import copy
from pathlib import Path

import pytest
import yaml

from diffrepro.config import ConfigError, check_config
from diffrepro.unet_training_config import check_unet_training
from diffrepro.validation import apply_schema

ROOT = Path(__file__).resolve().parents[1]


def full_check(config):
    apply_schema(config)
    check_config(config)


@pytest.fixture
def paper():
    return yaml.safe_load((ROOT / "config/paper/immiscible_sd.yaml").read_text())


@pytest.fixture
def embedded():
    return yaml.safe_load((ROOT / "config/default.yaml").read_text())


def test_the_paper_config_is_valid_standalone_and_the_seeds_recipe(paper):
    full_check(paper)
    u = paper["unet_training"]
    assert paper["standalone"] and paper["models"][u["model"]]["hub"]["id"] == "CompVis/stable-diffusion-v1-4"
    scratch, finetune = u["regimes"]["scratch"], u["regimes"]["finetune"]
    # train_scratch.sh / train_ft.sh: 20K steps at 8 x 256, 5K steps at 4 x 128, lr 1e-4 / 1e-5
    assert scratch["init"] is None and finetune["init"] == u["model"]
    assert (scratch["train"]["iterations"], scratch["train"]["batch_size"], scratch["train"]["lr"]) == (20000, 2048, 1e-4)
    assert (finetune["train"]["iterations"], finetune["train"]["batch_size"], finetune["train"]["lr"]) == (5000, 512, 1e-5)
    assert u["methods"]["lsa"] == [{"immiscible": {"distance_dtype": "float16", "scale": 0.1}}]
    assert u["methods"]["knn"] == [{"immiscible_knn": {"k": 64, "distance_dtype": "float16"}}]
    assert u["evaluation"]["steps"] == 20 and u["evaluation"]["guidance_scale"] == 7.5
    assert u["evaluation"]["num_samples"] == 50000 and u["data"]["resolution"] == 256
    assert paper["compute"]["precision"] == "fp16" and paper["methods"] == {}


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["unet_training"].pop("data"), r"unet_training.data: missing; a hub model is trained on class images"),
    (lambda c: c["unet_training"]["validation"].pop("images"), r"unet_training.validation.images: missing"),
    (lambda c: c["compute"].update(device="cpu"), r"compute.precision: fp16 with compute.device: cpu"),
    (lambda c: c["scoring"].update(backend="digits"), r"scoring.backend: unet_training with a hub model"),
    (lambda c: c["unet_training"]["data"].update(resolution=100), r"unet_training.data.resolution"),
    (lambda c: c["unet_training"]["regimes"]["finetune"].update(init="other"), r"finetune.init: fine-tuning starts"),
])
def test_paper_config_errors_name_the_key(paper, mutate, expected):
    mutate(paper)
    with pytest.raises(ConfigError, match=expected):
        full_check(paper)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["unet_training"].update(data={"images": "x"}), r"unet_training.data: set, but unet_training.model"),
    (lambda c: c["unet_training"]["validation"].pop("fraction"), r"unet_training.validation.fraction: missing"),
    (lambda c: c["unet_training"]["regimes"]["scratch"]["train"].update(micro_batch_size=8),
     r"regimes.scratch.train.micro_batch_size: applies at paper scale only"),
    (lambda c: c.update(methods={}), r"methods = \{\}"),  # a sampling config still needs a method
])
def test_the_embedded_suite_keeps_its_checks(embedded, mutate, expected):
    config = copy.deepcopy(embedded)
    if "methods = " in expected:  # without the U-Net study, an empty methods section is refused
        config.pop("unet_training")
        config["tables"] = {k: v for k, v in config["tables"].items() if not k.startswith("immiscible_sd")}
    mutate(config)
    with pytest.raises(ConfigError, match=expected):
        if "methods = " in expected:
            full_check(config)
        else:  # the U-Net study's own check (check_config runs it for its tables; this is faster)
            check_unet_training(apply_schema(config))


def test_the_plan_fetches_the_whole_pipeline_and_gives_jobs_the_folder(paper, embedded):
    from types import SimpleNamespace

    from diffrepro.plan import Plan

    full_check(paper)
    plan = Plan(paper)
    assert plan.used_as_pipeline("sd_v1_4")  # VAE, text encoder, tokenizer, scheduler: not the U-Net alone
    w = SimpleNamespace(regime="scratch", method="lsa")
    assert plan.unet_training_init(w) == {"hub": "resources/checkpoints/imagenet_immiscible_sd/sd_v1_4.hub.json"}
    inputs = plan.unet_training_score_inputs(w)
    assert inputs["reference"] == plan.unet_training_reference and "classifier" not in inputs
    assert plan.unet_training_t2i("train")["data"]["images"] == paper["unet_training"]["data"]["images"]
    from diffrepro.methods import register_aliases

    register_aliases(embedded["methods"])  # what check_config does first (the whole check takes a second)
    before = Plan(apply_schema(embedded))  # the embedded suite's params are what they were
    assert before.unet_training_t2i("train") == before.t2i_training_inputs("sd_large")
    assert before.unet_training_t2i() == embedded["t2i"] and before.unet_training_hub() == {}


@pytest.mark.slow
def test_the_paper_dag_plans_every_run_with_the_pipeline(workdir):
    from diffrepro.snakejob import job_counts
    from workflow_run import snakemake

    result = snakemake(workdir, "-n", "-p", "reproduce_immiscible_sd_table", "--configfile",
                       "config/paper/immiscible_sd.yaml")
    planned = job_counts(result.stdout)
    # 2 regimes x 3 methods x 1 seed, one reference, one timing, the hub pipeline, the Inception weights
    assert planned["train_unet_method"] == 6 and planned["score_unet_training"] == 6, planned
    assert planned["unet_training_reference"] == planned["time_unet_training"] == planned["fetch_hub_model"] == 1
    assert "train_classifier" not in planned and "train_denoiser" not in planned  # nothing of the embedded suite
