"""Rule `fetch_hub_model`: see workflow/rules/models.smk."""

import json

from diffrepro.snakejob import job
from diffrepro.t2i.hub import fetch_hub_model_job

with job(snakemake, uses_torch=False) as log:
    fetch_hub_model_job(spec=json.loads(snakemake.params.hub), model=snakemake.wildcards.model,
                        as_pipeline=snakemake.params.as_pipeline,
                        allow_downloads=snakemake.config["allow_downloads"],
                        output=snakemake.output[0], log=log)
