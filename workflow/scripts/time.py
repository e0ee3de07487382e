"""Rule `time`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.config import compute_settings
from diffrepro.snakejob import job
from diffrepro.timing import time_setting

# The rule reserves every core so that nothing runs beside the measurement; torch itself
# uses the timing thread count of the config, recorded in the result.
timing = json.loads(snakemake.params.timing)
with job(snakemake, torch_threads=min(timing["threads"], snakemake.threads)) as log:
    time_setting(method=snakemake.wildcards.method, setting_values=json.loads(snakemake.params.setting),
                 baseline=json.loads(snakemake.params.baseline),
                 checkpoints={role: path for role, path in snakemake.input.items() if role != "prompts"},
                 model_configs=json.loads(snakemake.params.model_configs), sampling=json.loads(snakemake.params.sampling),
                 seed=snakemake.params.seed, timing=timing, config=snakemake.config, output=snakemake.output[0],
                 device=compute_settings(snakemake.config)["device"], prompts_path=snakemake.input.get("prompts"),
                 log=log)
