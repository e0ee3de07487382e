# Training-method runs: one DiT trained from scratch per (method, seed), scored at every
# snapshot; the cost of each method per iteration; the SpeeD / Immiscible tables and plots.
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


rule training_table:
    input:
        unpack(training_table_inputs),
    output:
        csv=f"{REPORTS}/{{table}}_table.csv",
        md=f"{REPORTS}/{{table}}_table.md",
        claims=f"{REPORTS}/{{table}}_claims.md",
    wildcard_constraints:
        table=names_pattern(TRAINING_TABLES),
    params:
        entry=lambda w: as_param(config["tables"][w.table]),
        setting_note=training_setting_note,
        scoring=as_param(config["scoring"]),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/training_table/{{table}}.log",
    script:
        "../scripts/training_table.py"


rule training_plots:
    input:
        unpack(training_table_inputs),
    output:
        curves=report(f"{REPORTS}/{{table}}_curves.png", caption="../report/curves.rst",
                      category=report_category, subcategory="Training curves",
                      labels={"table": "{table}", "plot": "FID against iterations"}),
        curves_svg=f"{REPORTS}/{{table}}_curves.svg",
        schedules=report(f"{REPORTS}/{{table}}_schedules.png", caption="../report/schedules.rst",
                         category=report_category, subcategory="Training curves",
                         labels={"table": "{table}", "plot": "p(t) and w(t)"}),
        schedules_svg=f"{REPORTS}/{{table}}_schedules.svg",
        cost=report(f"{REPORTS}/{{table}}_cost.png", caption="../report/cost.rst",
                    category=report_category, subcategory="Training curves",
                    labels={"table": "{table}", "plot": "cost per iteration"}),
        cost_svg=f"{REPORTS}/{{table}}_cost.svg",
    wildcard_constraints:
        table=names_pattern(TRAINING_TABLES),
    params:
        entry=lambda w: as_param(config["tables"][w.table]),
        components=lambda w: as_param(
            {m: TRAINING["methods"][m] for m in config["tables"][w.table]["methods"]}
        ),
        train=as_param(TRAINING.get("train")),
        title=lambda w: f"{w.table}: {training_setting_note(w)}",
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/training_plots/{{table}}.log",
    script:
        "../scripts/training_plots.py"
