"""Rule `time_table`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.config import compute_settings
from diffrepro.provenance import job_config
from diffrepro.plan import TIMING_LOCK
from diffrepro.snakejob import job

# The rule reserves every core so that nothing runs beside the measurement; torch itself
# uses the timing thread count of the config, recorded in the result. The lock keeps other
# runs' timing jobs off the machine meanwhile.
methods = json.loads(snakemake.params.methods)
threads = min(min(entry["timing"]["threads"] for entry in methods.values()), snakemake.threads)
with job(snakemake, torch_threads=threads, exclusive=TIMING_LOCK) as log:
    from diffrepro.timing import time_table_settings  # torch: after the lock, so a refusal is quick

    time_table_settings(settings=json.loads(snakemake.params.settings), methods=methods,
                        seed=snakemake.params.seed, config=job_config(snakemake.config), output=snakemake.output[0],
                        device=compute_settings(snakemake.config)["device"],
                        prompts_path=snakemake.input.get("prompts"), log=log)
