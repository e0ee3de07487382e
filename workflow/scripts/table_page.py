"""Rule `table_page`: see workflow/rules/report.smk."""

from pathlib import Path

from diffrepro.io import write_text
from diffrepro.report.html import table_page
from diffrepro.snakejob import job

with job(snakemake, uses_torch=False):
    texts = [Path(path).read_text() for path in (snakemake.input.table, snakemake.input.claims)]
    write_text(snakemake.output[0], table_page(snakemake.params.title, *texts))
