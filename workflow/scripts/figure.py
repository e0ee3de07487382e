"""Rule `figure`: see workflow/rules/report.smk. The table's kind draws it (diffrepro.report.kinds)."""

import json

from diffrepro.report.tables import FigureJob, as_dict, draw_figure
from diffrepro.snakejob import job

with job(snakemake, uses_torch=False):
    out = snakemake.output
    draw_figure(FigureJob(name=snakemake.wildcards.table, figure=snakemake.wildcards.figure,
                          entry=json.loads(snakemake.params.entry), csv=snakemake.input.csv,
                          inputs=as_dict(snakemake.input), png=out.png, svg=out.svg, title=snakemake.params.title,
                          timing_batch=snakemake.params.timing_batch, context=json.loads(snakemake.params.context)))
