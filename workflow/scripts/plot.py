"""Rule `plot`: see workflow/rules. The work is done in the diffrepro library."""

import pandas as pd

from diffrepro.io import read_json
from diffrepro.report import bksdm, parataa, tstitch, tstitch3, tstitch_samplers
from diffrepro.snakejob import job

with job(snakemake, torch_threads=1):
    table = pd.read_csv(snakemake.input.csv)
    table.attrs["timing_batch"] = snakemake.params.timing_batch
    labels = tstitch.labels_from_records([read_json(p) for p in snakemake.input.scores])
    report = {"parataa": parataa, "tstitch3": tstitch3, "tstitch_samplers": tstitch_samplers, "bksdm": bksdm}.get(snakemake.params.kind, tstitch)
    report.pareto_plot(table, snakemake.output.png, snakemake.output.svg, labels=labels,
                       title=snakemake.params.title)
