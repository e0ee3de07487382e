"""Rule `coco_prompts`: see workflow/rules/metrics.smk."""

import json

from diffrepro.snakejob import job
from diffrepro.t2i.coco import prompts_job

with job(snakemake, uses_torch=False) as log:
    prompts_job(annotations=snakemake.input.annotations, prompts=json.loads(snakemake.params.prompts),
                lock=snakemake.params.lock, output=snakemake.output[0],
                needed=snakemake.params.needed, log=log)
