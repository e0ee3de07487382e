"""Rule `train_unet_method`: see workflow/rules/unet_train.smk. The work is done in the diffrepro library."""

import json
from pathlib import Path

from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.unet_training_study import snapshot_path, train_unet_run

with job(snakemake) as log:
    directory = Path(snakemake.output.summary).parent
    regime = json.loads(snakemake.params.regime)
    summary = train_unet_run(components=json.loads(snakemake.params.components),
                             model_config=json.loads(snakemake.params.model_config),
                             t2i=json.loads(snakemake.params.t2i), train=regime["train"],
                             seed=int(snakemake.wildcards.seed), snapshots=regime["snapshots"],
                             validation=json.loads(snakemake.params.validation), directory=str(directory),
                             init_path=snakemake.input.get("init"), log=log)
    summary["snapshots"] = {str(it): str(snapshot_path(directory, it)) for it in regime["snapshots"]}
    write_json(snakemake.output.summary, summary)
