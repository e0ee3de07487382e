"""Rule `training_table`: see workflow/rules/train.smk. The work is done in the diffrepro library."""

import json

from diffrepro.io import read_json
from diffrepro.report import paper, training
from diffrepro.snakejob import job

with job(snakemake, uses_torch=False):
    entry = json.loads(snakemake.params.entry)
    scoring = json.loads(snakemake.params.scoring)
    scores = training.load_scores(snakemake.input.scores)
    table = training.build_table(scores, read_json(snakemake.input.timing), entry["methods"],
                                 entry["baseline"], paper.load_paper_table(snakemake.input.paper, entry["paper"]),
                                 reps=max(1000, scoring["bootstrap_reps"]), seed=scoring["seed"])
    training.write_outputs(table, snakemake.output.csv, snakemake.output.md, snakemake.output.claims,
                           title=f"{snakemake.wildcards.table}: training speed-up against {entry['baseline']}",
                           setting_note=snakemake.params.setting_note,
                           paper_note=training.paper_note(snakemake.input.paper, entry["paper"]),
                           baseline=entry["baseline"])
