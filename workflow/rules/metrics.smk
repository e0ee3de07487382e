# The metric network of the embedded suite and the real data's feature statistics.
rule train_classifier:
    output:
        checkpoint=f"{CHECKPOINTS}/digits_cnn.safetensors",
        checksum=f"{CHECKPOINTS}/digits_cnn.safetensors.sha256",
        info=f"{CHECKPOINTS}/digits_cnn.json",
    params:
        classifier=as_param(config.get("classifier")),
    threads: config["threads"]
    resources:
        **job_resources("train_classifier"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_classifier.log",
    script:
        "../scripts/train_classifier.py"


rule reference_stats:
    input:
        classifier=f"{CHECKPOINTS}/digits_cnn.safetensors",
    output:
        f"{RESULTS}/reference/digits_stats.npz",
    threads: config["threads"]
    resources:
        **job_resources("reference_stats"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/reference_stats.log",
    script:
        "../scripts/reference_stats.py"


# The embedded suite's CLIP (a tiny open_clip model trained on the digits and class prompts),
# for the CLIP score of text-to-image samples; paper configs name a pretrained CLIP instead.
rule train_clip:
    output:
        checkpoint=f"{CHECKPOINTS}/clip.safetensors",
        checksum=f"{CHECKPOINTS}/clip.safetensors.sha256",
        summary=f"{CHECKPOINTS}/clip.json",
    params:
        clip=as_param(config.get("clip")),
    threads: config["threads"]
    resources:
        **job_resources("train_clip"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_clip.log",
    script:
        "../scripts/train_clip.py"
