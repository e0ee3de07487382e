# Samples for scoring: one job per (method, setting, shard), per-image seeds.
rule sample:
    input:
        unpack(sample_inputs),
    output:
        f"{RESULTS}/samples/{{method}}/{{setting}}/shard-{{shard}}.npz",
    params:
        setting=setting_values,
        model_configs=method_model_configs,
        sampling=sampling_params,
        seed=config["seed"],
        num_samples=lambda w: method_num_samples(config, w.method),
        num_shards=lambda w: method_num_shards(config, w.method),
    threads: config["threads"]
    resources:
        **job_resources("sample"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/sample/{{method}}/{{setting}}/shard-{{shard}}.log",
    script:
        "../scripts/sample.py"
