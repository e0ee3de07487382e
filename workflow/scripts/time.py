"""Rule `time`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.config import compute_settings
from diffrepro.jobs import job_device
from diffrepro.methods import get_method
from diffrepro.snakejob import job
from diffrepro.timing import time_setting

# The rule reserves every core so that nothing runs beside the measurement; torch itself
# uses the timing thread count of the config, recorded in the result.
timing = json.loads(snakemake.params.timing)
method = snakemake.wildcards.method
sampling = json.loads(snakemake.params.sampling)
device = compute_settings(snakemake.config)["device"]
with job(snakemake, torch_threads=min(timing["threads"], snakemake.threads)) as log:
    arguments = dict(method=method, setting_values=json.loads(snakemake.params.setting),
                     baseline=json.loads(snakemake.params.baseline),
                     checkpoints={role: path for role, path in snakemake.input.items() if role != "prompts"},
                     model_configs=json.loads(snakemake.params.model_configs), seed=snakemake.params.seed,
                     timing=timing, config=snakemake.config, output=snakemake.output[0], log=log)
    if get_method(method).family == "pipeline":
        from diffrepro.t2i.jobs import time_t2i_setting

        time_t2i_setting(t2i=sampling, device=job_device(sampling, device), prompts_path=snakemake.input.get("prompts"),
                         **arguments)
    else:
        time_setting(sampling=sampling, device=device, **arguments)
