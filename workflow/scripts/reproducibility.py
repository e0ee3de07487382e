"""Rule `reproducibility`: see workflow/rules/report.smk. The work is done in diffrepro.report.reproducibility."""

import json

from diffrepro.io import write_text
from diffrepro.report.gpu_check import gpu_check_section
from diffrepro.report.kinds import kind_of
from diffrepro.report.reproducibility import render, sections
from diffrepro.snakejob import job

with job(snakemake, uses_torch=False):
    tables = snakemake.config["tables"]
    found = sections(tables, {name: kind_of(entry) for name, entry in tables.items()},
                     {name: f"reproduce_{name}_table" for name in tables}, json.loads(snakemake.params.files))
    write_text(snakemake.output[0], render(snakemake.input.template, suite=snakemake.config["suite"],
                                           config_file=snakemake.params.config_file, sections_=found,
                                           gpu_check=gpu_check_section(snakemake.params.gpu_check)))
