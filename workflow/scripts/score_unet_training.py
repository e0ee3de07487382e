"""Rule `score_unet_training`: see workflow/rules/unet_train.smk. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.io import read_json
from diffrepro.provenance import job_config
from diffrepro.snakejob import job
from diffrepro.unet_training_config import is_latent_study
from diffrepro.unet_training_study import score_unet_runs

with job(snakemake) as log:
    seeds = snakemake.config["unet_training"]["seeds"]
    runs = {seed: {int(it): path for it, path in read_json(summary)["snapshots"].items()}
            for seed, summary in zip(seeds, snakemake.input.summaries)}  # ordered seed by seed
    if is_latent_study(snakemake.config):  # paper scale: Inception FID of the hub pipeline's samples
        from diffrepro.jobs import job_device, verify_downloads
        from diffrepro.unet_latent_study import score_latent_runs

        inputs, scoring = json.loads(snakemake.params.t2i), json.loads(snakemake.params.scoring)
        weights = snakemake.input.get("inception_weights")
        if isinstance(scoring.get("inception_weights"), dict):
            verify_downloads({"inception_weights": weights}, scoring, snakemake.config["downloads"]["lock"], log)
        score_latent_runs(method=snakemake.wildcards.method, components=json.loads(snakemake.params.components),
                          record_path=snakemake.input.hub, data=inputs["data"], runs=runs,
                          evaluation=json.loads(snakemake.params.evaluation),
                          validation=json.loads(snakemake.params.validation), scoring=scoring,
                          reference_path=snakemake.input.reference, inception_weights=weights,
                          device=job_device(inputs["compute"]), precision=inputs["compute"]["precision"],
                          config=job_config(snakemake.config), output=snakemake.output[0], log=log)
    else:
        score_unet_runs(method=snakemake.wildcards.method, components=json.loads(snakemake.params.components),
                        model_config=json.loads(snakemake.params.model_config), t2i=json.loads(snakemake.params.t2i),
                        runs=runs, evaluation=json.loads(snakemake.params.evaluation),
                        validation=json.loads(snakemake.params.validation),
                        scoring=json.loads(snakemake.params.scoring), classifier_path=snakemake.input.classifier,
                        reference_path=snakemake.input.reference, config=job_config(snakemake.config),
                        output=snakemake.output[0], log=log)
