"""Rule `convert_checkpoint`: see workflow/rules/models.smk."""

import json
from pathlib import Path

from diffrepro.download import RemoteFile, fetch
from diffrepro.models.official import convert_official_checkpoint
from diffrepro.snakejob import job

with job(snakemake) as log:
    source = snakemake.input[0]
    # A file placed by hand never went through rule `download`: verify (or pin) it here.
    fetch(RemoteFile(Path(source).name, snakemake.params.url), source, snakemake.params.lock,
          allow_downloads=False, log=log)
    digest = convert_official_checkpoint(source, json.loads(snakemake.params.model_config),
                                         snakemake.output.checkpoint, url=snakemake.params.url)
    log(f"{source} -> {snakemake.output.checkpoint} (sha256 {digest})")
