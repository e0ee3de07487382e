# Training-method runs: one DiT trained from scratch per (method, seed), scored at every
# snapshot; the cost of each method per iteration (their tables: rule `table`, report.smk).
rule train_method:
    output:
        checkpoints=[
            PLAN.training_snapshot("{method}", "{seed}", it) for it in PLAN.training.get("snapshots", [])
        ],
        summary=f"{PLAN.training_checkpoints}/{{method}}/seed{{seed}}/train.json",
    params:
        components=PLAN.training_components,
        model_config=as_param(PLAN.training.get("model")),
        train=as_param(PLAN.training.get("train")),
        snapshots=as_param(PLAN.training.get("snapshots")),
        validation=as_param(PLAN.training.get("validation")),
    threads: PLAN.training_threads()
    resources:
        **PLAN.job_resources("train_method"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_method/{{method}}/seed{{seed}}.log",
    script:
        "../scripts/train_method.py"


rule score_training:
    input:
        unpack(PLAN.training_score_inputs),
    output:
        f"{RESULTS}/training/scores/{{method}}.json",
    params:
        components=PLAN.training_components,
        model_config=as_param(PLAN.training.get("model")),
        seeds=as_param(PLAN.training.get("seeds")),
        snapshots=as_param(PLAN.training.get("snapshots")),
        evaluation=as_param(PLAN.training.get("evaluation")),
        validation=as_param(PLAN.training.get("validation")),
        scoring=PLAN.scoring_param(),
    threads: PLAN.training_threads()
    resources:
        **PLAN.job_resources("score_training"),
    group:
        "score"
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/score_training/{{method}}.log",
    script:
        "../scripts/score_training.py"


# The cost per iteration of every method the tables report. Timing runs alone: it reserves
# every core locally (like rule `time`).
rule time_training:
    output:
        f"{RESULTS}/training/timing.json",
    params:
        methods=lambda w: PLAN.training_timing_methods(),
        baseline=lambda w: PLAN.training_timing_baseline(),
        model_config=as_param(PLAN.training.get("model")),
        train=as_param(PLAN.training.get("train")),
        timing=as_param(PLAN.training.get("timing")),
    threads: TIMING_THREADS
    resources:
        **PLAN.job_resources("time_training"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/time_training.log",
    script:
        "../scripts/time_training.py"
