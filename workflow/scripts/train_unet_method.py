"""Rule `train_unet_method`: see workflow/rules/unet_train.smk. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json
from pathlib import Path

from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.unet_training_config import is_latent_study
from diffrepro.unet_training_study import snapshot_path, train_unet_run

with job(snakemake) as log:
    directory = Path(snakemake.output.summary).parent
    regime = json.loads(snakemake.params.regime)
    if is_latent_study(snakemake.config):  # paper scale: a hub pipeline, the image folder's latents
        from diffrepro.jobs import job_device
        from diffrepro.unet_latent_study import train_latent_run

        inputs = json.loads(snakemake.params.t2i)
        summary = train_latent_run(record_path=snakemake.input.hub, data=inputs["data"], regime=regime,
                                   components=json.loads(snakemake.params.components),
                                   seed=int(snakemake.wildcards.seed), directory=str(directory),
                                   device=job_device(inputs["compute"]), precision=inputs["compute"]["precision"],
                                   processes=max(1, int(snakemake.resources.get("gpu", 1))), log=log)
    else:
        summary = train_unet_run(components=json.loads(snakemake.params.components),
                                 model_config=json.loads(snakemake.params.model_config),
                                 t2i=json.loads(snakemake.params.t2i), train=regime["train"],
                                 seed=int(snakemake.wildcards.seed), snapshots=regime["snapshots"],
                                 validation=json.loads(snakemake.params.validation), directory=str(directory),
                                 init_path=snakemake.input.get("init"), log=log)
    summary["snapshots"] = {str(it): str(snapshot_path(directory, it)) for it in regime["snapshots"]}
    write_json(snakemake.output.summary, summary)
