# Timing apart from sampling-for-FID: the paper's batch of 8, warm-up, median of repeats.
# Locally the job reserves every core so nothing runs beside it (on a cluster the profile
# gives it a whole node); torch uses config["timing"]["threads"].
rule time:
    input:
        unpack(pipeline_inputs),
    output:
        f"{RESULTS}/timing/{{method}}/{{setting}}.json",
    params:
        setting=setting_values,
        baseline=lambda w: as_param(REFERENCES[w.method][w.setting]),
        model_configs=method_model_configs,
        sampling=sampling_params,
        seed=config["seed"],
        timing=lambda w: as_param(method_timing(config, w.method)),
    threads: lambda wildcards: timing_threads()
    resources:
        **job_resources("time"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/time/{{method}}/{{setting}}.log",
    script:
        "../scripts/time.py"
