"""Rule `table`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.io import write_text
from diffrepro.jobs import attach_paired_fid_se, merge_records
from diffrepro.report import paper, tstitch
from diffrepro.snakejob import job

with job(snakemake, torch_threads=1):
    scoring = json.loads(snakemake.params.scoring)
    records = merge_records(snakemake.input.scores, snakemake.input.timings)
    # Every setting shares the baseline's noise and labels (T-Stitch: r = 0, large only).
    attach_paired_fid_se(records, snakemake.input.features, snakemake.input.reference,
                         json.loads(snakemake.params.baseline), reps=scoring["bootstrap_reps"],
                         seed=scoring["seed"])
    published = paper.load_paper_table(snakemake.input.paper, snakemake.params.paper_table)
    table = tstitch.build_table(records, published)
    note = snakemake.params.setting_note
    tstitch.write_table(table, snakemake.output.csv, snakemake.output.md,
                        labels=tstitch.labels_from_records(records), setting_note=note)
    write_text(snakemake.output.claims, tstitch.claims_markdown(table, note))
