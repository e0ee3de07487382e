"""Invalid configs fail before any job, naming the key and the allowed values."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from diffrepro.config import ConfigError, check_config, method_settings
from diffrepro.validation import apply_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config/default.yaml").read_text())


def full_check(config):
    apply_schema(config)
    check_config(config)


def test_shipped_configs_are_valid():
    for name in ("default.yaml", "smoke.yaml", "paper/tstitch_dit.yaml", "paper/tstitch_sd.yaml",
                 "paper/tstitch_sdxl.yaml", "paper/tstitch_lcm.yaml", "paper/bksdm.yaml",
                 "paper/distill_sdxl.yaml", "paper/parataa_sd.yaml", "paper/tstitch_controlnet_sdxl.yaml"):
        full_check(yaml.safe_load((ROOT / "config" / name).read_text()))


def test_dit_methods_need_the_dit_sampling_keys(config):
    config["sampling"].pop("steps")
    with pytest.raises(ConfigError, match=r"method 'tstitch' samples with the suite's DiT and needs sampling.steps"):
        full_check(config)


@pytest.fixture
def paper_t2i():
    return yaml.safe_load((ROOT / "config/paper/tstitch_lcm.yaml").read_text())


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["t2i"].pop("prompts"), r"t2i.prompts: hub model 'lcm_sdxl' generates from captions"),
    (lambda c: c["compute"].update(compile=True), r"config key compute: text-to-image methods .* without torch.compile"),
    (lambda c: c["models"].update(ssd_1b_lcm_lora={"arch": "sd_unet", "config": {"cross_attention_dim": 8},
                                                   "train": {"iterations": 1, "batch_size": 1, "lr": 1.0}}),
     r"methods.tstitch_sd.models: mixes hub models with models the workflow trains"),
    (lambda c: c["scoring"]["reference_images"].update(size=128), r"reference_images.size: 128 px, but samples "
                                                                  r"are scored at t2i.fid_size 256 px"),
    (lambda c: c["scoring"].update(reference_batch={"file": "x.npz", "url": "https://x/x.npz"}),
     r"set reference_batch or reference_images, not both"),
    (lambda c: c["t2i"].pop("fid_size"), r"t2i.fid_size: samples are scored against real images resized to 256 px"),
    (lambda c: c["sampling"].update(num_samples=6000),
     r"t2i.prompts.count: 5000 prompts, but methods.tstitch_sd samples 6000 images"),
])
def test_paper_text_to_image_config_errors(paper_t2i, mutate, expected):
    mutate(paper_t2i)
    with pytest.raises(ConfigError, match=expected):
        full_check(paper_t2i)


def test_a_hub_model_cannot_be_distilled(paper_t2i):
    paper_t2i["models"]["student"] = {"arch": "sd_unet", "distil": {"teacher": "lcm_sdxl", "variant": "tiny",
                                                                    "iterations": 1, "batch_size": 1, "lr": 1.0}}
    with pytest.raises(ConfigError, match=r"distil.teacher: 'lcm_sdxl' must be an sd_unet model of this config "
                                          r"that the workflow trains"):
        full_check(paper_t2i)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["sampling"].update(sampler="euler"),
     r"sampling.sampler = 'euler'\n  allowed: one of ddim, ddpm, dpmsolver\+\+"),
    (lambda c: c["sampling"].update(num_samples=-5),
     r"sampling.num_samples = -5\n  allowed: a number >= 1"),
    (lambda c: c.pop("timing"), r"timing = '\(missing\)'\n  allowed: \(top level\) needs"),
])
def test_schema_errors_name_key_and_allowed_values(config, mutate, expected):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError, match=expected):
        full_check(bad)


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_a_ratio_outside_the_unit_interval_names_the_grid_key(config, value):
    config["methods"]["tstitch"]["grid"]["ratio"].append(value)
    with pytest.raises(ConfigError, match=rf"methods.tstitch.grid: tstitch ratio must be in \[0, 1\], got {value}"):
        full_check(config)


def test_a_samplers_by_steps_grid_is_measured_against_r0_with_the_same_sampler(config):
    from diffrepro.config import reference_run

    config["methods"]["tstitch"]["grid"] = [
        {"sampler": ["ddpm", "dpmsolver++"], "steps": [10, 20], "ratio": [0.0, 0.4]},
        {"sampler": ["ddim"], "steps": [100], "ratio": [0.0, 0.4]}]
    full_check(config)
    settings = method_settings(config, "tstitch")
    assert "dpmsolver++20-r0.4" in settings and "ddim100-r0" in settings
    assert reference_run(config, "tstitch", settings["dpmsolver++20-r0.4"]) == {
        "method": "tstitch", "params": {"sampler": "dpmsolver++", "steps": 20, "ratio": 0.0}}
    config["methods"]["tstitch"]["grid"][0]["ratio"] = [0.4]
    with pytest.raises(ConfigError, match=r"methods.tstitch.baseline: setting .*'ddpm'.* is "
                                          r"measured against .*not a point of the grid"):
        full_check(config)


def test_a_method_entry_may_run_a_plugin_under_its_own_name(config):
    """T-Stitch once per model pair: `plugin: tstitch` under another name."""
    from diffrepro.methods import get_method

    config["methods"]["tstitch_large_small"] = {
        "plugin": "tstitch", "models": {"small": "large", "large": "small"},
        "baseline": {"ratio": 0.0}, "grid": {"ratio": [0.0, 0.5]}}
    config["tables"]["pair"] = {"method": "tstitch_large_small", "paper": "dit_xl_b"}
    full_check(config)
    spec = get_method("tstitch_large_small")
    assert spec.name == "tstitch_large_small" and spec.run is get_method("tstitch").run
    config["methods"]["tstitch_large_small"]["plugin"] = "tstich"
    with pytest.raises(ConfigError, match=r"methods.tstitch_large_small.plugin: unknown method 'tstich'"):
        full_check(config)


def test_the_paper_config_is_valid_and_standalone():
    paper = yaml.safe_load((ROOT / "config/paper/tstitch_dit.yaml").read_text())
    full_check(paper)
    assert paper["standalone"] and paper["scoring"]["backend"] == "adm"
    assert {m["source"]["url"] for m in paper["models"].values()} == {
        "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
        "gdrive:1YOSNrFbP36vHlPQPBosqZKbPLokymRuO", "gdrive:1HTqZSYXh6LJGLooko4LPFsCuwL2Wjg6r"}


def test_digits_scoring_needs_the_classifier_and_adm_scoring_a_reference_batch(config):
    bad = copy.deepcopy(config)
    bad.pop("classifier")
    with pytest.raises(ConfigError, match=r"config key classifier: the digits scoring backend"):
        full_check(bad)
    config["scoring"]["backend"] = "adm"
    with pytest.raises(ConfigError, match=r"scoring.reference_batch: the adm scoring backend"):
        full_check(config)


def test_unknown_method_lists_available_methods(config):
    config["methods"]["fastest_ever"] = copy.deepcopy(config["methods"]["tstitch"])
    with pytest.raises(ConfigError, match=r"methods.fastest_ever: unknown method .*'tstitch'"):
        full_check(config)


def test_model_roles_must_match_the_method(config):
    config["methods"]["tstitch"]["models"] = {"small": "small", "huge": "large"}
    with pytest.raises(ConfigError, match=r"needs models for roles \['large', 'small'\]"):
        full_check(config)
    config["methods"]["tstitch"]["models"] = {"small": "small", "large": "xl"}
    with pytest.raises(ConfigError, match=r"model 'xl' is not defined under models"):
        full_check(config)


def test_table_must_name_a_published_table(config):
    config["tables"]["tstitch"]["paper"] = "no_such_table"
    with pytest.raises(ConfigError, match=r"tables.tstitch.paper: .*available tables"):
        full_check(config)


def test_grid_expands_to_setting_ids(config):
    settings = method_settings(config, "tstitch")
    assert list(settings)[:3] == ["r0", "r0.1", "r0.2"]
    assert settings["r0.4"] == {"ratio": 0.4}


def test_baseline_must_be_a_point_of_the_grid(config):
    config["methods"]["tstitch"]["baseline"] = {"ratio": 0.05}
    with pytest.raises(ConfigError, match=r"methods.tstitch.baseline: .* is not a point of the grid"):
        full_check(config)


def test_grid_may_be_a_list_of_products(config):
    settings = method_settings(config, "parataa")
    assert "n25-w25-k25-m1-tol0.001-rtol0.001-it25" in settings
    assert settings["n100-w100-k100-m2-tol0.001-rtol0.001-it100-warm"]["warm_start"] is True
    assert not any(k.startswith("n25-w100") for k in settings)  # blocks do not mix
    assert settings["n100-w25-k25-m3-tol0.001-rtol0.001-it100-initrelease"]["window_init"] == "release"
    assert settings["n50-w50-k50-m2-tol0.001-rtol0.001-it50-var30"]["variation_steps"] == 30
    assert len(settings) == 26


def test_a_window_longer_than_the_trajectory_is_rejected(config):
    config["methods"]["parataa"]["grid"][0]["window"] = [50]
    with pytest.raises(ConfigError, match=r"window must be in 1..steps, got 50"):
        full_check(config)


def test_parallel_methods_need_their_sequential_reference(config):
    config["methods"]["sequential"]["grid"]["steps"] = [25, 50]
    with pytest.raises(ConfigError, match=r"add it to methods.sequential.grid"):
        full_check(config)
    del config["methods"]["sequential"]
    with pytest.raises(ConfigError, match=r"add methods.sequential with that setting"):
        full_check(config)


def test_parallel_methods_compare_equal_sample_counts(config):
    config["methods"]["parataa"]["num_samples"] = 100
    with pytest.raises(ConfigError, match=r"methods.parataa.num_samples: must equal"):
        full_check(config)


def test_parallel_methods_reject_a_sampler_they_cannot_solve(config):
    config["sampling"]["sampler"] = "ddpm"
    with pytest.raises(ConfigError, match=r"method 'picard' supports \['ddim'\], not 'ddpm'"):
        full_check(config)


def test_a_parataa_table_needs_its_methods_and_their_references(config):
    del config["tables"]["parataa"]["methods"]
    with pytest.raises(ConfigError, match=r"a parataa table needs 'methods'"):
        full_check(config)
    config["tables"]["parataa"]["methods"] = ["parataa"]
    with pytest.raises(ConfigError, match=r"list sequential in the table too"):
        full_check(config)


def test_a_method_may_override_the_shard_count():
    from diffrepro.config import method_num_shards

    config = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    assert method_num_shards(config, "tstitch") == config["sampling"]["num_shards"] == 2
    assert method_num_shards(config, "parataa") == 1


def test_reading_the_config_imports_no_torch():
    """Snakemake imports every plugin to read the config (twice per cluster job); torch
    would add seconds to each start."""
    import subprocess
    import sys

    code = ("import sys; from diffrepro.config import check_config, load_plugins; "
            "from diffrepro.validation import apply_schema; load_plugins(); import yaml; "
            "check_config(apply_schema(yaml.safe_load(open('config/default.yaml')))); "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["training"]["methods"].update(bad=["speed_v1", "p2"]),
     r"training.methods.bad: components 'speed_v1' and 'p2' both define the weighting part"),
    (lambda c: c["training"]["methods"].update(bad=["speeed"]),
     r"training.methods.bad: unknown training component 'speeed'; available: .*speed_v1"),
    (lambda c: c["training"]["methods"].update(bad=[{"speed_v3": {"tau": 0}}]),
     r"training.methods.bad: speed_v3 needs 0 < tau <= 1000"),
    (lambda c: c["training"].update(snapshots=[500, 1000]),
     r"training.snapshots: \[500, 1000\] must be ascending and end at training.train.iterations \(3000\)"),
    (lambda c: c["tables"]["speedit"]["methods"].append("adam_magic"),
     r"tables.speedit.methods: 'adam_magic' is not under training.methods"),
    (lambda c: c["tables"]["immiscible"].update(baseline="p2"),
     r"tables.immiscible.baseline: 'p2' must be one of the table's methods"),
    (lambda c: c["tables"]["speedit"].update(paper="speedit_nope"),
     r"tables.speedit.paper: no table 'speedit_nope' in .*speedit.yaml; available tables: speedit_curve"),
])
def test_training_config_errors_name_the_key(config, mutate, expected):
    mutate(config)
    with pytest.raises(ConfigError, match=expected):
        full_check(config)


def test_text_to_image_methods_need_sd_unets_and_the_t2i_section(config):
    bad = copy.deepcopy(config)
    bad["methods"]["tstitch_sd"]["models"]["small"] = "small"
    with pytest.raises(ConfigError, match=r"methods.tstitch_sd.models.small: method 'tstitch_sd' needs a model "
                                          r"with arch 'sd_unet'; 'small' is 'dit'"):
        full_check(bad)
    bad = copy.deepcopy(config)
    bad.pop("t2i")
    with pytest.raises(ConfigError, match=r"config key t2i: method 'tstitch_sd' runs a text-to-image pipeline"):
        full_check(bad)


def test_bksdm_students_derive_their_config_from_the_teacher(config):
    from diffrepro.config import model_config

    tiny = model_config(config, "bk_tiny")
    teacher = config["models"]["sd_large"]["config"]
    assert tiny["block_out_channels"] == teacher["block_out_channels"][:-1]
    assert tiny["layers_per_block"] == 1 and tiny["mid_block_type"] is None
    bad = copy.deepcopy(config)
    bad["models"]["bk_tiny"]["distil"]["teacher"] = "large"
    with pytest.raises(ConfigError, match=r"models.bk_tiny.distil.teacher: 'large' must be an sd_unet model"):
        full_check(bad)
    bad = copy.deepcopy(config)
    bad["models"]["sd_large"]["config"]["layers_per_block"] = 1
    with pytest.raises(ConfigError, match=r"models.bk_base.distil: BK-SDM 'base' cannot be built .* layers_per_block must be 2"):
        full_check(bad)
    bad = copy.deepcopy(config)
    bad["models"]["bk_tiny"]["config"] = teacher
    with pytest.raises(ConfigError, match=r"models.bk_tiny = [\s\S]*allowed: exactly one of: trained by the workflow"):
        full_check(bad)


@pytest.mark.parametrize("mutate, expected", [
    (lambda m: m["config"].update(layer_per_block=2),
     r"models.sd_small.config: not a UNet2DConditionModel config: unknown keys \['layer_per_block'\]"),
    (lambda m: m["config"].update(up_block_types=["UpBlock2D"]),
     r"models.sd_small.config: .*up_block_types has 1 entries for 2 down blocks"),
    (lambda m: m["config"].update(block_out_channels=[16, 36]),
     r"block_out_channels \[16, 36\] are not all divisible by norm_num_groups 8"),
])
def test_a_trained_unet_config_is_checked_before_any_job(config, mutate, expected):
    mutate(config["models"]["sd_small"])
    with pytest.raises(ConfigError, match=expected):
        full_check(config)


def test_unet_config_checks_agree_with_diffusers(config):
    """The key list is diffusers' own signature, and every problem named would fail the build."""
    import inspect

    import torch
    from diffusers import UNet2DConditionModel

    from diffrepro.models.unet_config import UNET_CONFIG_KEYS, unet_config_problems

    assert UNET_CONFIG_KEYS == set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    good = config["models"]["sd_large"]["config"]
    for bad in ({**good, "layer_per_block": 2}, {**good, "up_block_types": good["up_block_types"][:2]},
                {**good, "attention_head_dim": [4, 4]}, {**good, "block_out_channels": [16, 32, 36]}):
        assert unet_config_problems(bad)
        with pytest.raises((TypeError, ValueError)), torch.device("meta"):
            UNet2DConditionModel(**bad)
    assert unet_config_problems(good) == []


def test_trained_unets_must_predict_the_noise(config):
    config["t2i"]["scheduler"]["config"]["prediction_type"] = "v_prediction"
    with pytest.raises(ConfigError, match=r"t2i.scheduler.config.prediction_type: 'v_prediction', but model "
                                          r"'sd_small' is trained here to predict the noise"):
        full_check(config)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy-2 notice, per timestep
def test_scheduler_classes_are_those_the_sd_pipelines_accept():
    """The schema's list is diffusers' own: the SD pipelines' compatibles and LCM's / TCD's."""
    import diffusers
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    allowed = set(schema["properties"]["t2i"]["properties"]["scheduler"]["properties"]["class"]["enum"])
    karras = {s.name for s in KarrasDiffusionSchedulers}
    assert allowed == karras - {"DPMSolverSDEScheduler", "EDMEulerScheduler"} | {"LCMScheduler", "TCDScheduler"}
    for name in allowed:  # each takes SD's DDPM betas, which the U-Nets were trained on
        scheduler = getattr(diffusers, name)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        assert scheduler.config.num_train_timesteps == 1000 and hasattr(scheduler, "set_timesteps")


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["t2i"]["scheduler"].update({"class": "PNDMSchedular"}), r"t2i.scheduler.class = 'PNDMSchedular'\n  allowed: one of DDIMScheduler[\s\S]*fix: did you mean PNDMScheduler"),
    (lambda c: c["t2i"].update(image_size=1020), r"t2i.image_size = 1020\n  allowed: a multiple of 8"),
])
def test_text_to_image_schema_errors(paper_t2i, mutate, expected):
    mutate(paper_t2i)
    with pytest.raises(ConfigError, match=expected):
        full_check(paper_t2i)


def test_half_precision_on_an_explicit_cpu_is_refused(paper_t2i):
    paper_t2i["compute"]["device"] = "cpu"
    with pytest.raises(ConfigError, match=r"compute.precision: fp16 with compute.device: cpu"):
        full_check(paper_t2i)


def test_the_is_protocol_is_the_adm_backends_and_needs_enough_samples(config, paper_t2i):
    config["scoring"]["is_protocol"] = "torch_fidelity"
    with pytest.raises(ConfigError, match=r"scoring.is_protocol: chooses the adm backend's Inception Score"):
        full_check(config)
    paper_t2i["scoring"].update(is_protocol="torch_fidelity", is_splits=10)
    paper_t2i["sampling"].update(num_samples=8, num_shards=1)
    with pytest.raises(ConfigError, match=r"scoring.is_splits: 10 splits, but methods.tstitch_sd scores 8 samples"):
        full_check(paper_t2i)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["tables"]["tstitch"].update(kind="nope"),
     "tables.tstitch.kind: unknown table kind 'nope'; available kinds: ["),
    (lambda c: c["tables"]["tstitch"].pop("paper"), "tables.tstitch.paper: a tstitch table prints published"),
    (lambda c: c["tables"].update(mine={"kind": "pareto", "methods": ["tstitch"], "paper": "dit_s_xl_ddim100"}),
     "tables.mine.paper: a pareto table has no published numbers; remove the key"),
    (lambda c: c["tables"].update(mine={"kind": "pareto", "methods": ["tstitch", "sequential"]}),
     "tables.mine.methods: their timing batch sizes differ"),
    (lambda c: c.update(reproducibility={"tables": ["tstich"]}),
     "reproducibility.tables: 'tstich' is not a configured table"),
])
def test_table_entries_are_checked_against_their_kind(config, mutate, expected):
    mutate(config)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        full_check(config)


def test_distill_sdxl_options_are_checked(config):
    config["models"]["bk_small"]["distil"]["snr_gamma"] = 5.0
    with pytest.raises(ConfigError, match=r"models.bk_small.distil.snr_gamma: Min-SNR weighting is Distill SD XL's"):
        full_check(config)
    del config["models"]["bk_small"]["distil"]["snr_gamma"]
    config["models"]["dsdxl_teacher"]["config"]["projection_class_embeddings_input_dim"] = 40
    with pytest.raises(ConfigError, match=r"projection_class_embeddings_input_dim: 40 must be 6 x addition_time_embed_dim"):
        full_check(config)


@pytest.fixture
def paper_controlnet():
    return yaml.safe_load((ROOT / "config/paper/tstitch_controlnet_sdxl.yaml").read_text())


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["models"]["controlnet_depth_sdxl"].pop("control_images"),
     r"models.controlnet_depth_sdxl.control_images: method 'tstitch_controlnet_depth' steers captions with hub "
     r"ControlNet 'controlnet_depth_sdxl', which has no control images"),
    (lambda c: c["models"]["sdxl"].update(control_images={"detector": "canny"}),
     r"models.sdxl.control_images: control images are for a hub ControlNet"),
    (lambda c: (c["scoring"].pop("reference_images"),
                c["scoring"].update(reference_batch={"file": "ref.npz", "url": "https://x/ref.npz"})),
     r"models.controlnet_canny_sdxl.control_images: the captions' images come from scoring.reference_images.archive"),
    (lambda c: c["models"]["controlnet_pose_sdxl"]["control_images"].pop("model"),
     r"models.controlnet_pose_sdxl.control_images needs model"),
    (lambda c: c["models"]["controlnet_pose_sdxl"]["control_images"]["model"].pop("file"),
     r"control_images.model needs id, file"),
    (lambda c: c["models"]["controlnet_canny_sdxl"]["control_images"].update(detector="hed"),
     r"control_images.detector = 'hed'"),
])
def test_paper_controlnet_control_image_errors(paper_controlnet, mutate, expected):
    mutate(paper_controlnet)
    with pytest.raises(Exception, match=expected):  # ConfigError, or the schema's ValidationError
        full_check(paper_controlnet)
