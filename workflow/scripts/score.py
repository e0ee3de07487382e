"""Rule `score`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.jobs import score_setting
from diffrepro.provenance import job_config
from diffrepro.snakejob import job

with job(snakemake) as log:
    score_setting(shards=list(snakemake.input.shards), classifier_path=snakemake.input.get("classifier"),
                  reference_path=snakemake.input.reference, scoring=json.loads(snakemake.params.scoring),
                  config=job_config(snakemake.config, "compute", "downloads", "clip", "allow_downloads"), output=snakemake.output.scores,
                  features_output=snakemake.output.features,
                  reference_run=json.loads(snakemake.params.reference_run),
                  reference_shards=list(snakemake.input.get("reference_shards", [])),
                  reference_features=snakemake.input.get("reference_features"),
                  inception_weights=snakemake.input.get("inception_weights"),
                  clip_weights=snakemake.input.get("clip_weights"), prompts_path=snakemake.input.get("prompts"),
                  log=log)
