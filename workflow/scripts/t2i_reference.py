"""Rule `t2i_reference`: see workflow/rules/metrics.smk."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.config import compute_settings
from diffrepro.jobs import job_device
from diffrepro.snakejob import job
from diffrepro.t2i.coco import reference_job

with job(snakemake) as log:
    # Inception features in full float32, as in the score jobs (TF32 would change them)
    device = job_device({"device": compute_settings(snakemake.config)["device"], "tf32": False})
    reference_job(images=snakemake.input.images, reference=json.loads(snakemake.params.reference),
                  lock=snakemake.params.lock, output=snakemake.output[0],
                  inception_weights=snakemake.input.get("inception_weights"),
                  prompts_path=snakemake.input.get("prompts"), device=device, log=log)
