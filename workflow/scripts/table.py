"""Rule `table`: see workflow/rules. The work is done in the diffrepro library."""

import json

from diffrepro.io import write_text
from diffrepro.jobs import attach_paired_fid_se, bootstrap_distance, merge_records
from diffrepro.report import bksdm, paper, parataa, tstitch, tstitch3, tstitch_samplers
from diffrepro.snakejob import job

with job(snakemake, torch_threads=1):
    scoring = json.loads(snakemake.params.scoring)
    records = merge_records(snakemake.input.scores, snakemake.input.timings)
    # Every setting shares its reference run's noise and labels (T-Stitch: r = 0, large
    # only; a parallel sampler: the sequential sampler with the same steps).
    # Score jobs compute it; this fills in score files written before they did.
    attach_paired_fid_se(records, snakemake.input.features, snakemake.input.reference,
                         reps=scoring["bootstrap_reps"], seed=scoring["seed"],
                         distance=bootstrap_distance(scoring))
    note = snakemake.params.setting_note
    labels = tstitch.labels_from_records(records)
    out = snakemake.output
    source = paper.paper_source(snakemake.input.paper, snakemake.params.paper_table)
    paper_note = f"{source['description']} ({source['source']})"
    if snakemake.params.kind == "tstitch_samplers":
        published = paper.load_paper_table(snakemake.input.paper, snakemake.params.paper_table)
        table = tstitch_samplers.build_table(records, published)
        tstitch_samplers.write_outputs(table, out.csv, out.md, out.claims, labels=labels,
                                       setting_note=note, paper_note=paper_note)
    elif snakemake.params.kind == "tstitch3":
        table = tstitch3.build_table(records)
        tstitch3.write_outputs(table, out.csv, out.md, out.claims, labels=labels, setting_note=note)
    elif snakemake.params.kind == "bksdm":
        from diffrepro.t2i.sizes import bksdm_models, sd14_size_rows

        published = paper.load_paper_table(snakemake.input.paper, snakemake.params.paper_table)
        # hub models: their U-Net configs come from the fetched repositories
        records_of = {name.removeprefix("hub_"): path for name, path in snakemake.input.items()
                      if name.startswith("hub_")}
        models = bksdm_models(snakemake.config, [r["method"] for r in records], records_of)
        table = bksdm.build_table(records, models, published)
        bksdm.write_outputs(table, out.csv, out.md, out.claims, labels=labels, setting_note=note,
                            paper_note=paper_note, size_rows=sd14_size_rows(), paper_df=published)
    elif snakemake.params.kind == "parataa":
        table = parataa.build_table(records)
        parataa.write_table(table, out.csv, out.md, setting_note=note, labels=labels)
        write_text(out.claims, parataa.claims_markdown(table, note))
    else:
        published = paper.load_paper_table(snakemake.input.paper, snakemake.params.paper_table)
        table = tstitch.build_table(records, published, timing_batch=paper.paper_timing_batch(
            snakemake.input.paper, snakemake.params.paper_table))
        tstitch.write_table(table, out.csv, out.md, labels=labels, setting_note=note,
                            paper_note=paper_note)
        write_text(out.claims, tstitch.claims_markdown(table, note, paper_note))
