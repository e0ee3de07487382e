"""Rule `unet_training_reference`: see workflow/rules/unet_train.smk. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.jobs import job_device, verify_downloads
from diffrepro.snakejob import job
from diffrepro.unet_latent_study import reference_job

with job(snakemake) as log:
    inputs, scoring = json.loads(snakemake.params.t2i), snakemake.config["scoring"]
    weights = snakemake.input.get("inception_weights")
    if isinstance(scoring.get("inception_weights"), dict):
        verify_downloads({"inception_weights": weights}, scoring, snakemake.config["downloads"]["lock"], log)
    # Inception features in full float32, as in the score jobs (TF32 would change them)
    device = job_device({"device": inputs["compute"]["device"], "tf32": False})
    reference_job(data=inputs["data"], inception_weights=weights, device=device, output=snakemake.output[0], log=log)
