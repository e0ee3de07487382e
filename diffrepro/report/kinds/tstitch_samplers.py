"""T-Stitch across samplers and step counts (the paper's samplers x steps figure)."""

from __future__ import annotations

from . import register_table_kind


def build(job) -> None:
    from .. import tstitch_samplers

    table = tstitch_samplers.build_table(job.records, job.published())
    tstitch_samplers.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                                   labels=job.labels(), setting_note=job.setting_note,
                                   paper_note=job.paper_note())


def pareto(job) -> None:
    from .. import tstitch_samplers

    tstitch_samplers.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


register_table_kind(
    "tstitch_samplers",
    summary="T-Stitch for DDPM, DDIM and DPM-Solver++ at several step counts, every ratio, beside the paper's figure",
    build=build,
    figures={"pareto": pareto},
    paper="tstitch",
    one_method=True,
    targets={"reproduce_tstitch_samplers": lambda table: True},
)
