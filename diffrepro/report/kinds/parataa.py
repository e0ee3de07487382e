"""ParaTAA and Picard iteration against the sequential sampler: iterations, NFE, deviation from
the sequential samples, wall clock; a convergence plot of the residuals."""

from __future__ import annotations

from . import register_table_kind


def build(job) -> None:
    from ...io import write_text
    from .. import parataa

    table = parataa.build_table(job.records)
    parataa.write_table(table, job.outputs["csv"], job.outputs["md"], setting_note=job.setting_note,
                        labels=job.labels(), published=job.inputs["paper"])
    write_text(job.outputs["claims"], parataa.claims_markdown(table, job.setting_note,
                                                              published=job.inputs["paper"]))


def pareto(job) -> None:
    from .. import parataa

    parataa.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


def convergence(job) -> None:
    from .. import parataa

    parataa.convergence_plot(job.score_records(), job.png, job.svg, title=job.title)


register_table_kind(
    "parataa",
    summary="Parallel-in-time samplers (ParaTAA, Picard) against the sequential sampler: iterations, NFE, error, time",
    build=build,
    figures={"pareto": pareto, "convergence": convergence},
    paper="parataa",
    targets={"reproduce_parataa_table": lambda table: True},
    captions={"convergence": ("Convergence of the parallel samplers of ``{table}``: median largest-step "
                              "residual against parallel iteration, per method and memory size, one panel "
                              "per step count.")},
    groups={"convergence": "Convergence"},
)
