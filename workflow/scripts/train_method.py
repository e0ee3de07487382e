"""Rule `train_method`: see workflow/rules/train.smk. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json
from pathlib import Path

from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.training_study import train_run

with job(snakemake) as log:
    directory = Path(snakemake.output.checkpoints[0]).parent
    summary = train_run(components=json.loads(snakemake.params.components),
                        model_config=json.loads(snakemake.params.model_config),
                        train=json.loads(snakemake.params.train), seed=int(snakemake.wildcards.seed),
                        snapshots=json.loads(snakemake.params.snapshots),
                        validation=json.loads(snakemake.params.validation), directory=str(directory),
                        log=log)
    write_json(snakemake.output.summary, summary)
