"""T-Stitch's ratio sweep (README Figure 1 and the other model pairs): one row per stitch
ratio, ours beside the paper's FID and time, its claims and the two-panel Pareto plot."""

from __future__ import annotations

from . import register_table_kind
from .checks import check_paper_timing_batch


def build(job) -> None:
    from ...io import write_text
    from .. import tstitch

    table = tstitch.build_table(job.records, job.published(), timing_batch=job.timing_batch())
    note, paper_note = job.setting_note, job.paper_note()
    tstitch.write_table(table, job.outputs["csv"], job.outputs["md"], labels=job.labels(),
                        setting_note=note, paper_note=paper_note)
    # the bands sit beside the published table (reports/paper/tstitch.yaml, this table's overrides)
    bands_from = (job.inputs["paper"], job.entry["paper"]) if job.has_paper else ()
    write_text(job.outputs["claims"], tstitch.claims_markdown(table, note, paper_note, *bands_from))


def pareto(job) -> None:
    from .. import tstitch

    tstitch.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


register_table_kind(
    "tstitch",
    summary="T-Stitch stitch-ratio sweep of one model pair: FID, time and speed-up per ratio beside the paper's",
    build=build,
    figures={"pareto": pareto},
    paper="tstitch",
    one_method=True,
    # reproduce_tstitch_table is the per-table target of the table named `tstitch`; the pairs are
    # the other DiT pairs (the LDM U-Net pair, trained and sampled apart, has reproduce_tstitch_ldm_table)
    targets={"reproduce_tstitch_pairs": lambda table: table not in ("tstitch", "tstitch_ldm")},
    check=check_paper_timing_batch,
)
