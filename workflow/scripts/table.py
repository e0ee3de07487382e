"""Rule `table`: see workflow/rules/report.smk. The table's kind does the work (diffrepro.report.kinds)."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

import json

from diffrepro.report.tables import TableJob, as_dict, build_table
from diffrepro.snakejob import job

with job(snakemake, torch_threads=1):
    build_table(TableJob(name=snakemake.wildcards.table, entry=json.loads(snakemake.params.entry),
                         inputs=as_dict(snakemake.input), outputs=as_dict(snakemake.output),
                         setting_note=snakemake.params.setting_note, scoring=json.loads(snakemake.params.scoring),
                         context=json.loads(snakemake.params.context)))
