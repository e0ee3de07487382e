"""Rule `convert_checkpoint`: see workflow/rules/models.smk."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.snakejob import job

with job(snakemake) as log:
    if snakemake.params.arch == "ldm_unet":  # a CompVis LDM .ckpt (T-Stitch's LDM / LDM-S)
        from diffrepro.models.ldm_unet import convert_official_ldm_checkpoint as convert
    else:
        from diffrepro.models.official import convert_official_checkpoint as convert
    digest = convert(snakemake.input[0], json.loads(snakemake.params.model_config), snakemake.output.checkpoint,
                     url=snakemake.params.url, lock_path=snakemake.params.lock, log=log)
    log(f"{snakemake.input[0]} -> {snakemake.output.checkpoint} (sha256 {digest})")
