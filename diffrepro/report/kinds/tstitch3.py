"""Three-model T-Stitch (small -> medium -> large): every allocation, its Pareto frontier."""

from __future__ import annotations

from . import register_table_kind


def build(job) -> None:
    from .. import tstitch3

    table = tstitch3.build_table(job.records)
    tstitch3.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                           labels=job.labels(), setting_note=job.setting_note)


def pareto(job) -> None:
    from .. import tstitch3

    tstitch3.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


register_table_kind(
    "tstitch3",
    summary="T-Stitch with three models: every allocation of the trajectory, with the Pareto frontier",
    build=build,
    figures={"pareto": pareto},
    paper="tstitch3",
    one_method=True,
    targets={"reproduce_tstitch3_table": lambda table: True},
)
