"""Rule `convert_checkpoint`: see workflow/rules/models.smk."""

import json

from diffrepro.models.official import convert_official_checkpoint
from diffrepro.snakejob import job

with job(snakemake) as log:
    digest = convert_official_checkpoint(snakemake.input[0], json.loads(snakemake.params.model_config),
                                         snakemake.output.checkpoint, url=snakemake.params.url,
                                         lock_path=snakemake.params.lock, log=log)
    log(f"{snakemake.input[0]} -> {snakemake.output.checkpoint} (sha256 {digest})")
