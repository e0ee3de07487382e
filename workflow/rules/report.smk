# Paper-vs-reproduced tables, claims and Pareto plots.
rule table:
    input:
        unpack(table_inputs),
    output:
        csv=f"{REPORTS}/{{table}}_table.csv",
        md=f"{REPORTS}/{{table}}_table.md",
        claims=f"{REPORTS}/{{table}}_claims.md",
    wildcard_constraints:
        table=names_pattern(SAMPLE_TABLES),
    params:
        kind=lambda w: table_kind(config["tables"][w.table]),
        paper_table=lambda w: config["tables"][w.table]["paper"],
        setting_note=setting_note,
        scoring=as_param(config["scoring"]),
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
               category=report_category, subcategory="Tables",
               labels={"table": "{table}", "content": "paper vs ours, claims"}),
    params:
        title=lambda w: f"{w.table}: paper vs ours",
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/table_page/{{table}}.log",
    script:
        "../scripts/table_page.py"


rule plot:
    input:
        unpack(plot_inputs),
    output:
        png=report(f"{REPORTS}/{{table}}_pareto.png", caption="../report/pareto.rst",
                   category=report_category, subcategory="Pareto plots",
                   labels={"table": "{table}", "plot": "Pareto"}),
        svg=f"{REPORTS}/{{table}}_pareto.svg",
    params:
        kind=lambda w: table_kind(config["tables"][w.table]),
        title=lambda w: f"{w.table}: {setting_note(w)}",
        timing_batch=lambda w: paper_timing_batch(paper_file(table_kind(config["tables"][w.table])),
                                                  config["tables"][w.table]["paper"]),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/plot/{{table}}.log",
    script:
        "../scripts/plot.py"


# Parallel samplers: residual against parallel iteration, per method and memory size.
rule convergence_plot:
    input:
        scores=lambda w: table_inputs(w)["scores"],
    output:
        png=report(f"{REPORTS}/{{table}}_convergence.png", caption="../report/convergence.rst",
                   category=report_category, subcategory="Convergence",
                   labels={"table": "{table}", "plot": "convergence"}),
        svg=f"{REPORTS}/{{table}}_convergence.svg",
    params:
        title=lambda w: f"{w.table}: {setting_note(w)}",
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/convergence_plot/{{table}}.log",
    script:
        "../scripts/convergence_plot.py"
