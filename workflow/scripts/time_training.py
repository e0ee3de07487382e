"""Rule `time_training`: see workflow/rules/train.smk. The work is done in the diffrepro library."""

import json

from diffrepro.config import training_threads
from diffrepro.plan import TIMING_LOCK
from diffrepro.provenance import job_config
from diffrepro.snakejob import job

# Torch threads as the training jobs use them (the rule reserves every core so nothing
# else runs beside the timing); the lock keeps other runs' timing jobs off the machine.
threads = training_threads(snakemake.config)
with job(snakemake, torch_threads=threads, exclusive=TIMING_LOCK) as log:
    from diffrepro.training_study import time_methods  # torch: after the lock, so a refusal is quick

    timing = json.loads(snakemake.params.timing)
    time_methods(methods=json.loads(snakemake.params.methods), baseline=snakemake.params.baseline,
                 model_config=json.loads(snakemake.params.model_config),
                 train=json.loads(snakemake.params.train), batch_sizes=timing["batch_sizes"],
                 repeats=timing["repeats"], threads=threads, config=job_config(snakemake.config),
                 output=snakemake.output[0], log=log)
