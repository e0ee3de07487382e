"""Rule `train_denoiser`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.data import load_digits_tensors
from diffrepro.io import write_json
from diffrepro.models.dit import DiTConfig
from diffrepro.snakejob import job
from diffrepro.training import TrainConfig, train_dit

with job(snakemake) as log:
    images, labels = load_digits_tensors()
    summary = train_dit(DiTConfig(**json.loads(snakemake.params.model_config)),
                        TrainConfig(**json.loads(snakemake.params.train)), images, labels,
                        snakemake.output.checkpoint, log=log)
    write_json(snakemake.output.summary, summary)
