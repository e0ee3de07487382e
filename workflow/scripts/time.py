"""Rule `time`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.jobs import time_setting
from diffrepro.snakejob import job

# The rule reserves every core so that nothing runs beside the measurement; torch itself
# uses the configured thread count, recorded in the result.
with job(snakemake, torch_threads=min(snakemake.config["threads"], snakemake.threads)) as log:
    time_setting(method=snakemake.wildcards.method, setting_values=json.loads(snakemake.params.setting),
                 checkpoints=dict(snakemake.input), model_configs=json.loads(snakemake.params.model_configs),
                 sampling=json.loads(snakemake.params.sampling), seed=snakemake.params.seed,
                 timing=json.loads(snakemake.params.timing), config=snakemake.config,
                 output=snakemake.output[0], log=log)
