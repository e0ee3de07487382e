# Timing apart from sampling-for-FID: one job per table of sampling settings times all of
# them and their reference runs round-robin (diffrepro.timing), the paper's batch, warm-up,
# median of the rounds. Locally the job reserves every core so nothing runs beside it (on a
# cluster the profile gives it a whole node); torch uses config["timing"]["threads"].
rule time_table:
    input:
        unpack(PLAN.timing_inputs),
    output:
        f"{RESULTS}/timing/{{table}}.json",
    params:
        settings=lambda w: as_param(PLAN.timing_settings(w.table)),
        methods=PLAN.timing_params,
        seed=config["seed"],
    wildcard_constraints:
        table=names_pattern(PLAN.sampling_tables),
    threads: TIMING_THREADS
    resources:
        # the config's resources.time (e.g. a GPU) apply to it
        **PLAN.job_resources("time"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/time/{{table}}.log",
    script:
        "../scripts/time.py"
