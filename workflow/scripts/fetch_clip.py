"""Rule `fetch_clip`: see workflow/rules/metrics.smk."""

import json

from diffrepro.clip_score import fetch_clip_job
from diffrepro.snakejob import job

with job(snakemake, uses_torch=False) as log:
    fetch_clip_job(clip=json.loads(snakemake.params.clip), allow_downloads=snakemake.config["allow_downloads"],
                   output=snakemake.output[0], log=log)
