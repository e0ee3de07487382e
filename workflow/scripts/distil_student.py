"""Rule `distil_student`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.io import write_json
from diffrepro.snakejob import job
from diffrepro.t2i.training import distil_student_job

with job(snakemake) as log:
    summary = distil_student_job(teacher_path=snakemake.input.teacher,
                                 teacher_config=json.loads(snakemake.params.teacher_config),
                                 distil=json.loads(snakemake.params.distil), t2i=json.loads(snakemake.params.t2i),
                                 output=snakemake.output.checkpoint, log=log)
    write_json(snakemake.output.summary, summary)
