"""Rule `sample`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.config import compute_settings
from diffrepro.jobs import job_device, sample_shard, shard_range
from diffrepro.methods import get_method
from diffrepro.snakejob import job

method = snakemake.wildcards.method
# not a param: the batch size does not change the samples (noise is per image)
batch_size = snakemake.config["methods"][method].get("batch_size", snakemake.config["sampling"]["batch_size"])
device = compute_settings(snakemake.config)["device"]
sampling = json.loads(snakemake.params.sampling)
with job(snakemake) as log:
    checkpoints = {role: path for role, path in snakemake.input.items() if role not in ("vae_info", "prompts")}
    if get_method(method).family == "pipeline":
        from diffrepro.t2i.jobs import sample_shard_t2i

        sample_shard_t2i(method=method, setting_values=json.loads(snakemake.params.setting),
                         checkpoints=checkpoints, model_configs=json.loads(snakemake.params.model_configs),
                         t2i=sampling, seed=snakemake.params.seed,
                         indices=shard_range(snakemake.params.num_samples, int(snakemake.wildcards.shard),
                                             snakemake.params.num_shards),
                         batch_size=batch_size, output=snakemake.output[0],
                         prompts_path=snakemake.input.get("prompts"), device=job_device(sampling, device), log=log)
    else:
        sample_shard(method=method, setting_values=json.loads(snakemake.params.setting),
                     checkpoints=checkpoints, vae_info=snakemake.input.get("vae_info"),
                     model_configs=json.loads(snakemake.params.model_configs), sampling=sampling,
                     seed=snakemake.params.seed, num_samples=snakemake.params.num_samples,
                     shard=int(snakemake.wildcards.shard), num_shards=snakemake.params.num_shards,
                     batch_size=batch_size, device=device, output=snakemake.output[0], log=log)
