"""Rule `time_unet_training`: see workflow/rules/unet_train.smk. The work is done in the diffrepro library."""

import json

from diffrepro.plan import TIMING_LOCK
from diffrepro.provenance import job_config
from diffrepro.snakejob import job
from diffrepro.unet_training_config import is_latent_study

# Torch threads as the U-Net training jobs use them; the lock keeps other timing jobs off the machine.
threads = snakemake.config["unet_training"].get("threads", snakemake.config["threads"])
with job(snakemake, torch_threads=threads, exclusive=TIMING_LOCK) as log:
    timing = json.loads(snakemake.params.timing)
    if is_latent_study(snakemake.config):  # paper scale: the hub U-Net on the image folder's latents
        from diffrepro.jobs import job_device
        from diffrepro.unet_latent_study import time_latent_pairings

        inputs = json.loads(snakemake.params.t2i)
        time_latent_pairings(methods=json.loads(snakemake.params.methods), baseline=snakemake.params.baseline,
                             record_path=snakemake.input.hub, data=inputs["data"],
                             regime={"train": json.loads(snakemake.params.train)},
                             batch_sizes=timing["batch_sizes"], repeats=timing["repeats"],
                             agreement_batches=timing["agreement_batches"], device=job_device(inputs["compute"]),
                             precision=inputs["compute"]["precision"], config=job_config(snakemake.config),
                             output=snakemake.output[0], log=log)
    else:
        from diffrepro.unet_training_study import time_unet_pairings  # torch: after the lock

        time_unet_pairings(methods=json.loads(snakemake.params.methods), baseline=snakemake.params.baseline,
                           model_config=json.loads(snakemake.params.model_config), t2i=json.loads(snakemake.params.t2i),
                           train=json.loads(snakemake.params.train), batch_sizes=timing["batch_sizes"],
                           repeats=timing["repeats"], agreement_batches=timing["agreement_batches"],
                           threads=threads, config=job_config(snakemake.config), output=snakemake.output[0], log=log)
