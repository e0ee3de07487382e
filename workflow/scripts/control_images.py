"""Rule `control_images`: see workflow/rules/metrics.smk."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.config import compute_settings
from diffrepro.snakejob import job
from diffrepro.t2i.control_images import control_images_job

with job(snakemake) as log:
    control_images_job(spec=json.loads(snakemake.params.spec), model=snakemake.wildcards.model,
                       prompts=snakemake.input.prompts, archive=snakemake.input.archive,
                       allow_downloads=snakemake.config["allow_downloads"],
                       device=compute_settings(snakemake.config)["device"], output=snakemake.output[0], log=log)
