# Training-method runs: one DiT trained from scratch per (method, seed), scored at every
# snapshot; the cost of each method per iteration (their tables: rule `table`, report.smk).
rule train_method:
    output:
        checkpoints=[
            training_snapshot("{method}", "{seed}", it) for it in TRAINING.get("snapshots", [])
        ],
        summary=f"{TRAINING_CHECKPOINTS}/{{method}}/seed{{seed}}/train.json",
    params:
        components=training_method_components,
        model_config=as_param(TRAINING.get("model")),
        train=as_param(TRAINING.get("train")),
        snapshots=as_param(TRAINING.get("snapshots")),
        validation=as_param(TRAINING.get("validation")),
    threads: training_threads()
    resources:
        **job_resources("train_method"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_method/{{method}}/seed{{seed}}.log",
    script:
        "../scripts/train_method.py"


rule score_training:
    input:
        unpack(training_score_inputs),
    output:
        f"{RESULTS}/training/scores/{{method}}.json",
    params:
        components=training_method_components,
        model_config=as_param(TRAINING.get("model")),
        seeds=as_param(TRAINING.get("seeds")),
        snapshots=as_param(TRAINING.get("snapshots")),
        evaluation=as_param(TRAINING.get("evaluation")),
        validation=as_param(TRAINING.get("validation")),
        scoring=as_param(config["scoring"]),
    threads: training_threads()
    resources:
        **job_resources("score_training"),
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
        methods=lambda w: training_timing_methods(),
        baseline=lambda w: training_timing_baseline(),
        model_config=as_param(TRAINING.get("model")),
        train=as_param(TRAINING.get("train")),
        timing=as_param(TRAINING.get("timing")),
    threads: lambda w: timing_threads()
    resources:
        **job_resources("time_training"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/time_training.log",
    script:
        "../scripts/time_training.py"
