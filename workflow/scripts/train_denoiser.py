"""Rule `train_denoiser`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.snakejob import job
from diffrepro.training import train_denoiser_job

with job(snakemake) as log:
    train_denoiser_job(model_config=json.loads(snakemake.params.model_config),
                       train=json.loads(snakemake.params.train), t2i=json.loads(snakemake.params.t2i),
                       ldm=json.loads(snakemake.params.ldm),
                       checkpoint=snakemake.output.checkpoint, summary=snakemake.output.summary, log=log)
