# FID / IS / class accuracy of one setting's samples, with provenance.
rule score:
    input:
        unpack(score_inputs),
    output:
        scores=f"{RESULTS}/scores/{{method}}/{{setting}}.json",
        features=f"{RESULTS}/scores/{{method}}/{{setting}}.features.npz",
    params:
        scoring=as_param(config["scoring"]),
        reference_run=lambda w: as_param(REFERENCES[w.method][w.setting]),
        clip=lambda w: as_param(config.get("clip") if method_family(w.method) == "pipeline" else None),
    threads: config["threads"]
    resources:
        **job_resources("score"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/score/{{method}}/{{setting}}.log",
    script:
        "../scripts/score.py"
