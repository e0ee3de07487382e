"""Rule `train_denoiser`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.data import load_digits_tensors
from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.training import TrainConfig

model = snakemake.config["models"][snakemake.wildcards.model]
with job(snakemake) as log:
    images, labels = load_digits_tensors()
    model_config = json.loads(snakemake.params.model_config)
    train = TrainConfig(**json.loads(snakemake.params.train))
    if model["arch"] == "sd_unet":  # a class-prompt U-Net for the text-to-image methods
        from diffrepro.t2i.training import train_t2i_unet

        summary = train_t2i_unet(model_config, train, json.loads(snakemake.params.t2i), images, labels,
                                 snakemake.output.checkpoint, log=log)
    else:
        from diffrepro.models.dit import DiTConfig
        from diffrepro.training import train_dit

        summary = train_dit(DiTConfig(**model_config), train, images, labels,
                            snakemake.output.checkpoint, log=log)
    write_json(snakemake.output.summary, summary)
