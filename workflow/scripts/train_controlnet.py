"""Rule `train_controlnet`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.t2i.controlnet_training import train_controlnet_job

with job(snakemake) as log:
    summary = train_controlnet_job(unet_path=snakemake.input.unet, unet_config=json.loads(snakemake.params.unet_config),
                                   entry=json.loads(snakemake.params.controlnet), t2i=json.loads(snakemake.params.t2i),
                                   output=snakemake.output.checkpoint, log=log)
    write_json(snakemake.output.summary, summary)
