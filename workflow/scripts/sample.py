"""Rule `sample`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.config import compute_settings, method_batch_size
from diffrepro.jobs import sample_shard
from diffrepro.snakejob import job

method = snakemake.wildcards.method
# not a param: the batch size does not change the samples (noise is per image)
batch_size = method_batch_size(snakemake.config, method)
with job(snakemake) as log:
    sample_shard(method=method, setting_values=json.loads(snakemake.params.setting),
                 checkpoints={role: snakemake.input[role] for role in json.loads(snakemake.params.model_configs)},
                 model_configs=json.loads(snakemake.params.model_configs), sampling=json.loads(snakemake.params.sampling),
                 seed=snakemake.params.seed, num_samples=snakemake.params.num_samples,
                 shard=int(snakemake.wildcards.shard), num_shards=snakemake.params.num_shards,
                 batch_size=batch_size, device=compute_settings(snakemake.config)["device"],
                 vae_info=snakemake.input.get("vae_info"), prompts_path=snakemake.input.get("prompts"),
                 control_path=snakemake.input.get("control_images"),
                 output=snakemake.output[0], log=log)
