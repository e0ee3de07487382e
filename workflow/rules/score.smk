# FID / IS / class accuracy of one setting's samples, with provenance.
rule score:
    input:
        shards=shard_paths,
        classifier=f"{CHECKPOINTS}/digits_cnn.safetensors",
        reference=f"{RESULTS}/reference/digits_stats.npz",
    output:
        scores=f"{RESULTS}/scores/{{method}}/{{setting}}.json",
        features=f"{RESULTS}/scores/{{method}}/{{setting}}.features.npz",
    params:
        scoring=as_param(config["scoring"]),
    threads: config["threads"]
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/score/{{method}}/{{setting}}.log",
    script:
        "../scripts/score.py"
