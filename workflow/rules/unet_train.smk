# Immiscible Diffusion on the class-prompt U-Net (the seed's Stable Diffusion tables): one U-Net
# per (regime, method, seed), from scratch or fine-tuned from a trained model, scored at every
# snapshot; the assignment's cost per step and float16 agreement (tables: rule `table`).
# A regime's snapshots differ per regime, so a run's output is its summary, which lists them.
# At paper scale (a hub unet_training.model) the U-Net is SD's, trained on VAE latents of the
# image folder unet_training.data and scored with Inception FID (diffrepro/unet_latent_study.py);
# param `t2i` then holds that path's inputs (data, compute), so embedded runs keep their params.
rule train_unet_method:
    input:
        unpack(PLAN.unet_training_init),
    output:
        summary=f"{PLAN.checkpoints}/unet_training/{{regime}}/{{method}}/seed{{seed}}/train.json",
    params:
        components=lambda w: as_param(PLAN.unet_training["methods"][w.method]),
        model_config=lambda w: PLAN.unet_training_model_config(),
        regime=lambda w: as_param(PLAN.unet_training_regime(w)),
        validation=lambda w: as_param(PLAN.unet_training["validation"]),
        t2i=lambda w: as_param(PLAN.unet_training_t2i("train")),
    threads: PLAN.unet_training_threads()
    resources:
        **PLAN.job_resources("train_unet_method"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_unet_method/{{regime}}/{{method}}/seed{{seed}}.log",
    script:
        "../scripts/train_unet_method.py"


rule score_unet_training:
    input:
        unpack(PLAN.unet_training_score_inputs),
    output:
        f"{RESULTS}/unet_training/{{regime}}/scores/{{method}}.json",
    params:
        components=lambda w: as_param(PLAN.unet_training["methods"][w.method]),
        model_config=lambda w: PLAN.unet_training_model_config(),
        t2i=lambda w: as_param(PLAN.unet_training_t2i()),
        evaluation=lambda w: as_param(PLAN.unet_training["evaluation"]),
        validation=lambda w: as_param(PLAN.unet_training["validation"]),
        scoring=PLAN.scoring_param(),
    threads: PLAN.unet_training_threads()
    resources:
        **PLAN.job_resources("score_unet_training"),
    group:
        "score"
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/score_unet_training/{{regime}}/{{method}}.log",
    script:
        "../scripts/score_unet_training.py"


# The cost per step of every method the U-Net tables report, and the assignment's float16
# agreement with the exact optimum. Timing runs alone (like rule `time_training`).
rule time_unet_training:
    input:
        unpack(PLAN.unet_training_hub),
    output:
        f"{RESULTS}/unet_training/timing.json",
    params:
        methods=lambda w: PLAN.unet_training_timing_methods(),
        baseline=lambda w: PLAN.unet_training_timing_baseline(),
        model_config=lambda w: PLAN.unet_training_model_config(),
        t2i=lambda w: as_param(PLAN.unet_training_t2i()),
        train=lambda w: as_param(next(iter(PLAN.unet_training["regimes"].values()))["train"]),
        timing=lambda w: as_param(PLAN.unet_training["timing"]),
    threads: TIMING_THREADS
    resources:
        **PLAN.job_resources("time_unet_training"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/time_unet_training.log",
    script:
        "../scripts/time_unet_training.py"


# Paper scale: Inception statistics of the reference images (unet_training.data.reference).
rule unet_training_reference:
    input:
        unpack(PLAN.unet_training_reference_inputs),
    output:
        PLAN.unet_training_reference,
    params:
        t2i=lambda w: as_param(PLAN.unet_training_t2i()),
    threads: config["threads"]
    resources:
        **PLAN.job_resources("unet_training_reference"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/unet_training_reference.log",
    script:
        "../scripts/unet_training_reference.py"
