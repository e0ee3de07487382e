"""Rule `time_unet_training`: see workflow/rules/unet_train.smk. The work is done in the diffrepro library."""

import json

from diffrepro.plan import TIMING_LOCK
from diffrepro.provenance import job_config
from diffrepro.snakejob import job

# Torch threads as the U-Net training jobs use them; the lock keeps other timing jobs off the machine.
threads = snakemake.config["unet_training"].get("threads", snakemake.config["threads"])
with job(snakemake, torch_threads=threads, exclusive=TIMING_LOCK) as log:
    from diffrepro.unet_training_study import time_unet_pairings  # torch: after the lock

    timing = json.loads(snakemake.params.timing)
    time_unet_pairings(methods=json.loads(snakemake.params.methods), baseline=snakemake.params.baseline,
                       model_config=json.loads(snakemake.params.model_config), t2i=json.loads(snakemake.params.t2i),
                       train=json.loads(snakemake.params.train), batch_sizes=timing["batch_sizes"],
                       repeats=timing["repeats"], agreement_batches=timing["agreement_batches"],
                       threads=threads, config=job_config(snakemake.config), output=snakemake.output[0], log=log)
