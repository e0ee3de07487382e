# Tables, claims and figures. A table kind (diffrepro/report/kinds/) decides what they hold;
# these rules serve every kind, of sampling settings and of training runs alike.
rule table:
    input:
        unpack(PLAN.table_inputs),
    output:
        csv=f"{REPORTS}/{{table}}_table.csv",
        csv_sha256=f"{REPORTS}/{{table}}_table.csv.sha256",  # checked by the figures that read the CSV
        md=f"{REPORTS}/{{table}}_table.md",
        claims=f"{REPORTS}/{{table}}_claims.md",
    wildcard_constraints:
        table=names_pattern(PLAN.tables),
    params:
        entry=lambda w: as_param(PLAN.tables[w.table]),
        setting_note=lambda w: setting_note(config, w.table),
        scoring=PLAN.scoring_param(),
        context=PLAN.table_context,
    localrule: True
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/table/{{table}}.log",
    script:
        "../scripts/table.py"


# The table and its claims as one HTML page: the report shows HTML inline, not Markdown.
rule table_page:
    input:
        table=f"{REPORTS}/{{table}}_table.md",
        claims=f"{REPORTS}/{{table}}_claims.md",
    output:
        report(f"{REPORTS}/{{table}}_table.html", caption="../report/table.rst",
               category=PLAN.report_category, subcategory="Tables",
               labels={"table": "{table}", "content": "paper vs ours, claims"}),
    wildcard_constraints:
        table=names_pattern(PLAN.tables),
    params:
        title=lambda w: f"{w.table}: paper vs ours",
    localrule: True
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/table_page/{{table}}.log",
    script:
        "../scripts/table_page.py"


rule figure:
    input:
        unpack(PLAN.table_inputs),
        csv=f"{REPORTS}/{{table}}_table.csv",
    output:
        png=report(f"{REPORTS}/{{table}}_{{figure}}.png", caption="../report/figure.rst",
                   category=PLAN.report_category, subcategory=lambda w: PLAN.kinds[w.table].group(w.figure),
                   labels={"table": "{table}", "figure": "{figure}"}),
        svg=f"{REPORTS}/{{table}}_{{figure}}.svg",
    wildcard_constraints:
        table=names_pattern(PLAN.tables),
        figure=names_pattern(PLAN.figures),
    params:
        entry=lambda w: as_param(PLAN.tables[w.table]),
        title=lambda w: f"{w.table}: {setting_note(config, w.table)}",
        timing_batch=PLAN.timing_batch,
        context=PLAN.table_context,
        caption=lambda w: PLAN.kinds[w.table].caption(w.figure, w.table),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/figure/{{table}}_{{figure}}.log",
    script:
        "../scripts/figure.py"


# REPRODUCIBILITY.md from the tables, claims and score provenance, with the prose of
# workflow/report/reproducibility.md.j2: `snakemake --cores all reproducibility`. reproducibility.tables
# limits which tables this build regenerates; the others are listed as not regenerated.
rule reproducibility:
    input:
        [path for made in PLAN.reproducibility_files().values()
         for path in (made["table"], made["claims"], *made["scores"])],
        template="workflow/report/reproducibility.md.j2",
        # the GPU check's result (benchmarks/gpu_check.py), when one was recorded here
        gpu_check=[GPU_CHECK_JSON] if os.path.exists(GPU_CHECK_JSON) else [],
    output:
        PLAN.reproducibility.get("output", f"{REPORTS}/REPRODUCIBILITY.md"),
    params:
        files=as_param(PLAN.reproducibility_files()),
        # the recorded check, else the path the section says is missing
        gpu_check=lambda w, input: input.gpu_check[0] if input.gpu_check else GPU_CHECK_JSON,
        config_file=", ".join(CONFIG_FILES),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/reproducibility.log",
    script:
        "../scripts/reproducibility.py"
