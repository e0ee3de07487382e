"""Rule `time`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.config import compute_settings
from diffrepro.timing import time_setting
from diffrepro.snakejob import job

# The rule reserves every core so that nothing runs beside the measurement; torch itself
# uses the timing thread count of the config, recorded in the result.
timing = json.loads(snakemake.params.timing)
with job(snakemake, torch_threads=min(timing["threads"], snakemake.threads)) as log:
    time_setting(method=snakemake.wildcards.method, setting_values=json.loads(snakemake.params.setting),
                 baseline=json.loads(snakemake.params.baseline),
                 checkpoints=dict(snakemake.input), model_configs=json.loads(snakemake.params.model_configs),
                 sampling=json.loads(snakemake.params.sampling), seed=snakemake.params.seed,
                 timing=timing, config=snakemake.config,
                 device=compute_settings(snakemake.config)["device"],
                 output=snakemake.output[0], log=log)
