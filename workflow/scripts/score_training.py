"""Rule `score_training`: see workflow/rules/train.smk. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.provenance import job_config
from diffrepro.snakejob import job
from diffrepro.training_study import score_runs

with job(snakemake) as log:
    seeds, snapshots = json.loads(snakemake.params.seeds), json.loads(snakemake.params.snapshots)
    paths = iter(snakemake.input.checkpoints)  # ordered seed by seed, then by iteration
    runs = {seed: {it: next(paths) for it in snapshots} for seed in seeds}
    score_runs(method=snakemake.wildcards.method, components=json.loads(snakemake.params.components),
               model_config=json.loads(snakemake.params.model_config), runs=runs,
               evaluation=json.loads(snakemake.params.evaluation),
               validation=json.loads(snakemake.params.validation),
               scoring=json.loads(snakemake.params.scoring), classifier_path=snakemake.input.classifier,
               reference_path=snakemake.input.reference, config=job_config(snakemake.config),
               output=snakemake.output[0], log=log)
