"""Rule `train_classifier`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.jobs import train_classifier_job
from diffrepro.snakejob import job

with job(snakemake) as log:
    train_classifier_job(classifier=json.loads(snakemake.params.classifier),
                         output=snakemake.output.checkpoint, info_output=snakemake.output.info,
                         run_output=snakemake.output.run, log=log)
