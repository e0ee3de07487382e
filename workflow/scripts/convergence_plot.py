"""Rule `convergence_plot`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.io import read_json
from diffrepro.report import parataa
from diffrepro.snakejob import job

with job(snakemake, torch_threads=1):
    parataa.convergence_plot([read_json(p) for p in snakemake.input.scores], snakemake.output.png,
                             snakemake.output.svg, title=snakemake.params.title)
