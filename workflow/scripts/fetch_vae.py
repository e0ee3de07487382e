"""Rule `fetch_vae`: see workflow/rules/models.smk."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.decoder import fetch_vae_job
from diffrepro.snakejob import job

with job(snakemake) as log:
    fetch_vae_job(decoder=json.loads(snakemake.params.decoder),
                  allow_downloads=snakemake.config["allow_downloads"],
                  output=snakemake.output[0], source=snakemake.input.get("source") or None,
                  lock_path=snakemake.params.lock, log=log)
