import json

# Paths and parameter helpers shared by the rule files.
SUITE = config["suite"]
CHECKPOINTS = f"resources/checkpoints/{SUITE}"
RESULTS = f"results/{SUITE}"
REPORTS = f"reports/{SUITE}"
LOGS = f"logs/{SUITE}"
PAPER_YAML = "reports/paper/tstitch.yaml"
SETTINGS = {method: method_settings(config, method) for method in config["methods"]}


wildcard_constraints:
    model="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    setting="[A-Za-z0-9_.+-]+",
    shard="[0-9]+",
    table="[A-Za-z0-9_]+",


def as_param(value):
    """Canonical JSON for a params value: Snakemake reruns a job when the text of its
    params changes, and this keeps mere key order (e.g. a re-saved YAML) from counting."""
    return json.dumps(value, sort_keys=True)


def checkpoint_path(model):
    return f"{CHECKPOINTS}/{model}.safetensors"


def method_checkpoints(wildcards):
    roles = config["methods"][wildcards.method]["models"]
    return {role: checkpoint_path(model) for role, model in roles.items()}


def method_model_configs(wildcards):
    roles = config["methods"][wildcards.method]["models"]
    return as_param({role: config["models"][model]["config"] for role, model in roles.items()})


def setting_values(wildcards):
    try:
        return as_param(SETTINGS[wildcards.method][wildcards.setting])
    except KeyError:
        raise ValueError(
            f"{wildcards.method}/{wildcards.setting} is not in the config's grid; "
            f"configured settings: {sorted(SETTINGS.get(wildcards.method, {}))}"
        )


def sampling_params():
    """What changes the samples (batch size does not: noise is drawn per image)."""
    s = config["sampling"]
    return as_param({k: s[k] for k in ("sampler", "steps", "cfg_scale", "guided_channels")})


def shard_paths(wildcards):
    n = config["sampling"]["num_shards"]
    return [
        f"{RESULTS}/samples/{wildcards.method}/{wildcards.setting}/shard-{k}.npz"
        for k in range(n)
    ]


def table_outputs(name):
    return [
        f"{REPORTS}/{name}_table.csv",
        f"{REPORTS}/{name}_table.md",
        f"{REPORTS}/{name}_claims.md",
        f"{REPORTS}/{name}_pareto.png",
        f"{REPORTS}/{name}_pareto.svg",
    ]


def table_method(wildcards):
    return config["tables"][wildcards.table]["method"]


def table_inputs(wildcards):
    method = table_method(wildcards)
    return {
        "scores": [f"{RESULTS}/scores/{method}/{s}.json" for s in SETTINGS[method]],
        "timings": [f"{RESULTS}/timing/{method}/{s}.json" for s in SETTINGS[method]],
        "features": [f"{RESULTS}/scores/{method}/{s}.features.npz" for s in SETTINGS[method]],
        "reference": f"{RESULTS}/reference/digits_stats.npz",
        "paper": PAPER_YAML,
    }


def plot_inputs(wildcards):
    return {
        "csv": f"{REPORTS}/{wildcards.table}_table.csv",
        "scores": table_inputs(wildcards)["scores"],
    }


def setting_note(wildcards):
    s = config["sampling"]
    roles = config["methods"][table_method(wildcards)]["models"]
    models = ", ".join(f"{role}={model}" for role, model in roles.items())
    return (
        f"suite {SUITE}: {s['sampler'].upper()}-{s['steps']}, CFG {s['cfg_scale']}, "
        f"{s['num_samples']} samples per setting, models {models}"
    )
