# FID / IS / class accuracy of one setting's samples, with provenance.
rule score:
    input:
        unpack(PLAN.score_inputs),
    output:
        scores=f"{RESULTS}/scores/{{method}}/{{setting}}.json",
        features=f"{RESULTS}/scores/{{method}}/{{setting}}.features.npz",
    params:
        scoring=PLAN.scoring_param(),
        reference_run=lambda w: as_param(PLAN.references[w.method][w.setting]),
        clip=PLAN.score_clip,
    threads: config["scoring"].get("threads", config["threads"])
    resources:
        **PLAN.job_resources("score"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/score/{{method}}/{{setting}}.log",
    script:
        "../scripts/score.py"
