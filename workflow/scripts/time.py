"""Rule `time_table`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.config import compute_settings
from diffrepro.snakejob import job
from diffrepro.timing import time_table_settings

# The rule reserves every core so that nothing runs beside the measurement; torch itself
# uses the timing thread count of the config, recorded in the result.
methods = json.loads(snakemake.params.methods)
threads = min(min(entry["timing"]["threads"] for entry in methods.values()), snakemake.threads)
with job(snakemake, torch_threads=threads) as log:
    time_table_settings(settings=json.loads(snakemake.params.settings), methods=methods,
                        seed=snakemake.params.seed, config=snakemake.config, output=snakemake.output[0],
                        device=compute_settings(snakemake.config)["device"],
                        prompts_path=snakemake.input.get("prompts"), log=log)
