"""Rule `download`: see workflow/rules/models.smk. The work is done in diffrepro.download."""

from diffrepro.download import RemoteFile, fetch
from diffrepro.snakejob import job

with job(snakemake, uses_torch=False) as log:
    fetch(RemoteFile(snakemake.wildcards.file, snakemake.params.url), snakemake.output[0],
          snakemake.params.lock, allow_downloads=snakemake.config["allow_downloads"],
          retries=snakemake.params.retries, log=log)
