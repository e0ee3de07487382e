# Samples for scoring: one job per (method, setting, shard), per-image seeds.
rule sample:
    input:
        unpack(PLAN.sample_inputs),
    output:
        f"{RESULTS}/samples/{{method}}/{{setting}}/shard-{{shard}}.npz",
    params:
        setting=PLAN.setting_values,
        model_configs=PLAN.model_configs,
        sampling=PLAN.sampling_params,
        seed=config["seed"],
        num_samples=lambda w: PLAN.num_samples(w.method),
        num_shards=lambda w: PLAN.num_shards(w.method),
    threads: config["sampling"].get("threads", config["threads"])
    resources:
        **PLAN.job_resources("sample"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/sample/{{method}}/{{setting}}/shard-{{shard}}.log",
    script:
        "../scripts/sample.py"
