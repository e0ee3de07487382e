# Timing apart from sampling-for-FID: one job per table of sampling settings times all of
# them and their reference runs round-robin (diffrepro.timing), the paper's batch, warm-up,
# median of the rounds. Locally the job reserves every core so nothing runs beside it (on a
# cluster the profile gives it a whole node); torch uses config["timing"]["threads"].
from types import SimpleNamespace


def table_timing_settings(table):
    """The table's rows, each with the run it is measured against."""
    rows = table_settings(SimpleNamespace(table=table))
    return [{"method": m, "params": SETTINGS[m][s], "baseline": REFERENCES[m][s]} for m, s in rows]


def table_timing_methods(table):
    """Every method the table's timing runs (its rows' and their reference runs')."""
    settings = table_timing_settings(table)
    return list(dict.fromkeys([e["method"] for e in settings] + [e["baseline"]["method"] for e in settings]))


def table_timing_params(wildcards):
    """Per method: its checkpoints (by role), model configs, sampling section and timing section."""
    methods = {}
    for method in table_timing_methods(wildcards.table):
        w = SimpleNamespace(method=method)
        methods[method] = {"checkpoints": method_checkpoints(w), "model_configs": json.loads(method_model_configs(w)),
                           "sampling": json.loads(sampling_params(w)), "timing": method_timing(config, method)}
    return as_param(methods)


def table_timing_inputs(wildcards):
    """Every checkpoint the table's methods load and, for text-to-image, the prompts. (No
    VAE: timing stops at the samples, as the papers' timings of latent models do.)"""
    inputs = {"checkpoints": []}
    for method in table_timing_methods(wildcards.table):
        for role, path in pipeline_inputs(SimpleNamespace(method=method)).items():
            if role == "prompts":
                inputs["prompts"] = path
            elif path not in inputs["checkpoints"]:
                inputs["checkpoints"].append(path)
    return inputs


rule time_table:
    input:
        unpack(table_timing_inputs),
    output:
        f"{RESULTS}/timing/{{table}}.json",
    params:
        settings=lambda w: as_param(table_timing_settings(w.table)),
        methods=table_timing_params,
        seed=config["seed"],
    wildcard_constraints:
        table=names_pattern(SAMPLE_TABLES),
    threads: lambda wildcards: timing_threads()
    resources:
        # the config's resources.time (e.g. a GPU) apply to it
        **job_resources("time"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/time/{{table}}.log",
    script:
        "../scripts/time.py"
