"""Rule `train_clip`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.data import real_digits_uint8
from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.t2i.clip_training import ClipTrainConfig, train_clip

clip = json.loads(snakemake.params.clip)
with job(snakemake) as log:
    images, labels = real_digits_uint8()
    summary = train_clip(clip["model"], clip["config"], ClipTrainConfig(**clip["train"]), images, labels,
                         snakemake.output.checkpoint, log=log)
    write_json(snakemake.output.summary, summary)
