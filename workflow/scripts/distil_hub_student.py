"""Rule `distil_hub_student`: see workflow/rules/models.smk. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.config import compute_settings
from diffrepro.snakejob import job
from diffrepro.t2i.sdxl_distillation import distil_hub_student_job

with job(snakemake) as log:
    compute = compute_settings(snakemake.config)
    distil_hub_student_job(model=snakemake.wildcards.model, spec=json.loads(snakemake.params.spec),
                           teacher_record=snakemake.input.teacher, directory=snakemake.params.directory,
                           compute=compute, allow_downloads=snakemake.config["allow_downloads"],
                           output=snakemake.output[0], log=log)
