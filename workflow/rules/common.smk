import json
import os
import re
from types import SimpleNamespace

from diffrepro.config import (compute_settings, model_config, paper_file, method_num_samples, method_num_shards,
                              method_timing, reference_run)
from diffrepro.report.kinds import kind_of, table_targets
from diffrepro.report.notes import setting_note
from diffrepro.methods import get_method
from diffrepro.report.paper import paper_short_name, paper_timing_batch
# Paths and parameter helpers shared by the rule files.
SUITE = config["suite"]
CHECKPOINTS = f"resources/checkpoints/{SUITE}"
RESULTS = f"results/{SUITE}"
REPORTS = f"reports/{SUITE}"
LOGS = f"logs/{SUITE}"
SETTINGS = {method: method_settings(config, method) for method in config["methods"]}
# The run each setting is measured against: {"method", "params"} (check_config made sure
# it is configured), and its setting id.
REFERENCES = {
    method: {sid: reference_run(config, method, values) for sid, values in settings.items()}
    for method, settings in SETTINGS.items()
}


def reference_id(method, setting):
    run = REFERENCES[method][setting]
    return run["method"], next(s for s, v in SETTINGS[run["method"]].items() if v == run["params"])


wildcard_constraints:
    model="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    setting="[A-Za-z0-9_.+-]+",
    shard="[0-9]+",
    table="[A-Za-z0-9_]+",
    seed="[0-9]+",


def as_param(value):
    """Canonical JSON for a params value: Snakemake reruns a job when the text of its
    params changes, and this keeps mere key order (e.g. a re-saved YAML) from counting."""
    return json.dumps(value, sort_keys=True)


# What one job asks a scheduler for: built-in defaults, then the config's `resources.default`,
# then its entry for the rule. profiles/slurm submits these as sbatch options; a local run
# only counts `gpu` (profiles/default allows one GPU job at a time).
DEFAULT_JOB_RESOURCES = {"mem_mb": 4000, "runtime": 60, "gpu": 0}


def job_resources(rule):
    configured = config.get("resources", {})
    return {
        **DEFAULT_JOB_RESOURCES,
        **configured.get("default", {}),
        **configured.get(rule, {}),
        "cpus_per_task": lambda wildcards, threads: threads,
    }


def timing_threads():
    """Cores a timing job reserves. Locally all of them, so nothing runs beside it; on a
    cluster it asks for the job's own threads, and the profile asks for a whole node
    (--exclusive). Called per job: while the Snakefile is parsed the executor is not known
    yet. (Inside the SLURM job the value is the node's cores; time.py uses timing.threads.)"""
    return workflow.cores if workflow.local_exec else config["threads"]


def checkpoint_path(model):
    """What a job loads a model from: its checkpoint, or for a hub model the fetch record."""
    if "hub" in config["models"][model]:
        return f"{CHECKPOINTS}/{model}.hub.json"
    return f"{CHECKPOINTS}/{model}.safetensors"


def pipeline_inputs(wildcards):
    """The method's checkpoints and, for a text-to-image method with a prompt list, the prompts."""
    inputs = method_checkpoints(wildcards)
    if method_family(wildcards.method) == "pipeline" and PROMPTS is not None:
        inputs["prompts"] = PROMPTS
    return inputs


def method_checkpoints(wildcards):
    roles = config["methods"][wildcards.method]["models"]
    return {role: checkpoint_path(model) for role, model in roles.items()}


def method_model_configs(wildcards):
    roles = config["methods"][wildcards.method]["models"]
    return as_param({role: model_config(config, model) for role, model in roles.items()})


def setting_values(wildcards):
    try:
        return as_param(SETTINGS[wildcards.method][wildcards.setting])
    except KeyError:
        raise ValueError(
            f"{wildcards.method}/{wildcards.setting} is not in the config's grid; "
            f"configured settings: {sorted(SETTINGS.get(wildcards.method, {}))}"
        )


def sampling_params(wildcards):
    """What changes the samples (batch size does not: noise is drawn per image), with the
    compute options: precision, TF32 and compile change the numbers, so they are part of it.
    A text-to-image method's samples depend on the t2i section instead (scheduler, steps,
    guidance, text encoder)."""
    compute = {k: v for k, v in compute_settings(config).items() if k != "device"}
    if method_family(wildcards.method) == "pipeline":
        return as_param({**config["t2i"], **compute})
    s = config["sampling"]
    return as_param({**{k: s[k] for k in ("sampler", "steps", "cfg_scale", "guided_channels")},
                     **compute})


def t2i_training_inputs(model):
    """What in the t2i section a model's training depends on (None for a DiT)."""
    if config["models"][model]["arch"] != "sd_unet":
        return None
    return {key: config["t2i"][key] for key in ("scheduler", "text_encoder")}


def method_family(method):
    return get_method(method).family


def inception_weights_input():
    """The ADM backend's Inception weights (a download or a local path); None: the default."""
    weights = config["scoring"].get("inception_weights")
    if weights is None:
        return None
    return f"{DOWNLOADS}/{weights['file']}" if isinstance(weights, dict) else weights


def used_as_pipeline(model):
    """Whether some method builds its pipeline around this model (the large or only role)."""
    return any(entry["models"].get("large", entry["models"].get("model")) == model
               for entry in config["methods"].values())


def job_device_name():
    """Where sampling and timing jobs run; not a param: like the batch size, it does not
    change what is computed (it is recorded with every result)."""
    return compute_settings(config)["device"]


# Files the DAG downloads (the download rule), published checkpoints and reference batches.
DOWNLOADS = "resources/downloads"
SCORING_REMOTE = {key: config["scoring"][key] for key in ("reference_batch", "inception_weights")
                  if isinstance(config["scoring"].get(key), dict)}
# MS-COCO for the text-to-image paper configs: the captions (prompts) and the real images
# (the FID reference batch, computed by rule t2i_reference).
T2I_PROMPTS = config.get("t2i", {}).get("prompts")
REFERENCE_IMAGES = config["scoring"].get("reference_images")
PROMPTS = f"{RESULTS}/prompts.json" if T2I_PROMPTS else None
# the prompts' source file: MS-COCO's annotations zip, or a fixed list (BK-SDM's metadata.csv)
PROMPTS_SOURCE = (T2I_PROMPTS.get("metadata_csv") or T2I_PROMPTS["annotations"]) if T2I_PROMPTS else None
REMOTE_FILES = {
    **{m["source"]["file"]: m["source"] for m in config["models"].values() if "source" in m},
    **{entry["file"]: entry for entry in SCORING_REMOTE.values()},
    **({PROMPTS_SOURCE["file"]: PROMPTS_SOURCE} if PROMPTS_SOURCE else {}),
    **({REFERENCE_IMAGES["archive"]["file"]: REFERENCE_IMAGES["archive"]} if REFERENCE_IMAGES else {}),
}
TRAINED_MODELS = [name for name, m in config["models"].items() if "train" in m]
PUBLISHED_MODELS = [name for name, m in config["models"].items() if "source" in m]
DISTILLED_MODELS = [name for name, m in config["models"].items() if "distil" in m]
HUB_MODELS = [name for name, m in config["models"].items() if "hub" in m]
SCORING_BACKEND = config["scoring"].get("backend", "digits")


def downloads_lock():
    return config.get("downloads", {}).get("lock", "config/paper/downloads.lock.json")


def reference_statistics_path():
    """Real-data feature statistics (mu, sigma): the ADM reference batch (downloaded, or for
    text-to-image computed from the real images), or the digits'."""
    if REFERENCE_IMAGES is not None:
        return f"{RESULTS}/reference/t2i_reference.npz"
    if SCORING_BACKEND == "adm":
        return f"{DOWNLOADS}/{config['scoring']['reference_batch']['file']}"
    return f"{RESULTS}/reference/digits_stats.npz"


def sample_inputs(wildcards):
    """The method's checkpoints (and prompts) and, for a latent-space suite, the VAE record."""
    inputs = pipeline_inputs(wildcards)
    if "decoder" in config:
        inputs["vae_info"] = f"{CHECKPOINTS}/vae.json"
    return inputs


def shards_of(method, setting):
    n = method_num_shards(config, method)
    return [f"{RESULTS}/samples/{method}/{setting}/shard-{k}.npz" for k in range(n)]


def score_inputs(wildcards):
    """The setting's shards and, to compare image by image, its reference run's."""
    ref_method, ref_setting = reference_id(wildcards.method, wildcards.setting)
    inputs = {"shards": shards_of(wildcards.method, wildcards.setting),
              "reference": reference_statistics_path()}
    if SCORING_BACKEND == "digits":
        inputs["classifier"] = f"{CHECKPOINTS}/digits_cnn.safetensors"
    if SCORING_BACKEND == "adm" and inception_weights_input() is not None:
        # a DAG input: a missing file fails before any sampling, not after it
        inputs["inception_weights"] = inception_weights_input()
    if method_family(wildcards.method) == "pipeline" and PROMPTS is not None:
        inputs["prompts"] = PROMPTS  # the CLIP score compares each image with its prompt
    if "clip" in config and method_family(wildcards.method) == "pipeline":
        if "train" in config["clip"]:
            inputs["clip_weights"] = f"{CHECKPOINTS}/clip.safetensors"  # the embedded suite's own CLIP
        elif config["clip"].get("path"):
            inputs["clip_weights"] = config["clip"]["path"]  # a missing file stops the run before sampling
        else:
            inputs["clip_weights"] = f"{CHECKPOINTS}/clip_weights.json"  # rule fetch_clip, before sampling
    if (ref_method, ref_setting) != (wildcards.method, wildcards.setting):
        inputs["reference_shards"] = shards_of(ref_method, ref_setting)
        # the reference run's features, for the paired bootstrap SE of the FID difference
        inputs["reference_features"] = f"{RESULTS}/scores/{ref_method}/{ref_setting}.features.npz"
    return inputs


def t2i_reference_inputs(wildcards):
    """The real images (and the Inception weights, the prompts) the FID reference is computed from."""
    inputs = {"images": f"{DOWNLOADS}/{REFERENCE_IMAGES['archive']['file']}"}
    if inception_weights_input() is not None:
        inputs["inception_weights"] = inception_weights_input()
    if REFERENCE_IMAGES.get("images", "all") == "prompts":
        inputs["prompts"] = PROMPTS
    return inputs


def names_pattern(names):
    """A wildcard constraint matching exactly these names (none: a pattern nothing matches)."""
    return "|".join(names) if names else "(?!)"


# Tables: each kind is a plugin (diffrepro/report/kinds/); rules `table` and `figure` serve all.
TABLES = config["tables"]
KINDS = {name: kind_of(entry) for name, entry in TABLES.items()}
FIGURES = sorted({figure for kind in KINDS.values() for figure in kind.figures})


def table_outputs(name):
    outputs = [f"{REPORTS}/{name}_{part}" for part in ("table.csv", "table.md", "claims.md", "table.html")]
    return outputs + [f"{REPORTS}/{name}_{figure}.{ext}" for figure in KINDS[name].figures for ext in ("png", "svg")]


def report_category(wildcards):
    """The HTML report groups results by paper (the title up to its colon, "T-Stitch")."""
    kind = KINDS[wildcards.table]
    return "Comparisons" if kind.paper is None else paper_short_name(paper_file(kind.name))


def table_inputs(wildcards):
    name = wildcards.table
    entry, kind = TABLES[name], KINDS[name]
    methods = kind.methods(entry)
    paper = {"paper": paper_file(kind.name)} if kind.paper is not None else {}
    if kind.stage == "training":
        return {"scores": [f"{RESULTS}/training/scores/{m}.json" for m in methods],
                "timing": f"{RESULTS}/training/timing.json", **paper}
    rows = [(m, s) for m in methods for s in SETTINGS[m]]
    hub_models = {model for m in methods for model in config["methods"][m]["models"].values()
                  if "hub" in config["models"][model]}
    return {
        "scores": [f"{RESULTS}/scores/{m}/{s}.json" for m, s in rows],
        "timings": [f"{RESULTS}/timing/{wildcards.table}.json"],
        "features": [f"{RESULTS}/scores/{m}/{s}.features.npz" for m, s in rows],
        "reference": reference_statistics_path(),
        **paper,
        # the BK-SDM table counts a hub U-Net's size from the config in its repository
        **{f"hub_{model}": checkpoint_path(model) for model in sorted(hub_models)},
    }


# REPRODUCIBILITY.md (rule `reproducibility`): the tables this build regenerates, and their files.
REPRODUCIBILITY = config.get("reproducibility", {})
# the config files this run read (a standalone config is read alone: see the Snakefile)
CONFIG_FILES = [os.path.relpath(f) for f in (workflow.overwrite_configfiles if config.get("standalone")
                                             else workflow.configfiles)]
REPRODUCIBILITY_FILES = {
    name: {"table": f"{REPORTS}/{name}_table.md", "claims": f"{REPORTS}/{name}_claims.md",
           "scores": table_inputs(SimpleNamespace(table=name))["scores"]}
    for name in REPRODUCIBILITY.get("tables") or TABLES
}


def table_context(wildcards):
    kind = KINDS[wildcards.table]
    return as_param(kind.context(config, TABLES[wildcards.table]) if kind.context else {})


def timing_batch(wildcards):
    """The batch the paper's times are for (our time axis is for the same batch)."""
    entry, kind = TABLES[wildcards.table], KINDS[wildcards.table]
    return paper_timing_batch(paper_file(kind.name), entry["paper"]) if kind.paper else 8


# --------------------------------------------------------------------------------------
# Training-method runs (SpeeD, Immiscible and baselines): workflow/rules/train.smk
# --------------------------------------------------------------------------------------
TRAINING = config.get("training", {})
TRAINING_CHECKPOINTS = f"{CHECKPOINTS}/training"


def training_snapshot(method, seed, iteration):
    return f"{TRAINING_CHECKPOINTS}/{method}/seed{seed}/iter{int(iteration):07d}.safetensors"


def training_threads():
    return TRAINING.get("threads", config["threads"])


def training_method_components(wildcards):
    try:
        return as_param(TRAINING["methods"][wildcards.method])
    except KeyError:
        raise ValueError(f"training method {wildcards.method!r} is not under training.methods; "
                         f"configured: {sorted(TRAINING.get('methods', {}))}")


def training_score_inputs(wildcards):
    return {
        "checkpoints": [training_snapshot(wildcards.method, seed, it)
                        for seed in TRAINING["seeds"] for it in TRAINING["snapshots"]],
        "classifier": f"{CHECKPOINTS}/digits_cnn.safetensors",
        "reference": f"{RESULTS}/reference/digits_stats.npz",
    }


# The training methods some table reports, in table order. (Snakemake merges a --configfile
# into config/default.yaml key by key, so training.methods may also hold the default's.)
TRAINING_TABLES = [name for name, kind in KINDS.items() if kind.stage == "training"]
TRAINING_TABLE_METHODS = list(dict.fromkeys(m for t in TRAINING_TABLES for m in TABLES[t]["methods"]))


def training_timing_methods():
    return as_param({m: TRAINING["methods"][m] for m in TRAINING_TABLE_METHODS})


def training_timing_baseline():
    """The method per-iteration costs are relative to: the first training table's baseline."""
    for table in TRAINING_TABLES:
        return config["tables"][table]["baseline"]
    return next(iter(TRAINING["methods"]))
