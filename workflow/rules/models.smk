# The checkpoint step of the embedded suite: train each denoiser (seeded, resumable).
rule train_denoiser:
    output:
        checkpoint=f"{CHECKPOINTS}/{{model}}.safetensors",
        checksum=f"{CHECKPOINTS}/{{model}}.safetensors.sha256",
        summary=f"{CHECKPOINTS}/{{model}}.train.json",
    params:
        model_config=lambda w: as_param(config["models"][w.model]["config"]),
        train=lambda w: as_param(config["models"][w.model]["train"]),
    threads: config["threads"]
    resources:
        **job_resources("train_denoiser"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_denoiser/{{model}}.log",
    script:
        "../scripts/train_denoiser.py"
