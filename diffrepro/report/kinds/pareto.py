"""The generic Pareto kind: any sampling methods on one pair of axes, with no code of their own.

    tables:
      mine: {kind: pareto, methods: [tstitch, my_method]}
"""

from __future__ import annotations

from . import register_table_kind


def _title(job_name: str, methods: list[str]) -> str:
    return f"{job_name}: {', '.join(methods)} on one set of axes"


def build(job) -> None:
    from .. import pareto

    table = pareto.build_table(job.records, job.methods)
    pareto.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                         title=_title(job.name, job.methods), labels=job.labels(), setting_note=job.setting_note)


def figure(job) -> None:
    from .. import pareto

    pareto.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


def check(config: dict, table: str, entry: dict) -> None:
    """Times share one axis only at one batch size."""
    from ...config import ConfigError, method_timing

    batches = {m: method_timing(config, m)["batch_size"] for m in entry["methods"]}
    if len(set(batches.values())) > 1:
        raise ConfigError(f"config key tables.{table}.methods: their timing batch sizes differ ({batches}); "
                          f"set the same timing.batch_size for each (methods.<name>.timing.batch_size)")


register_table_kind(
    "pareto",
    summary="Any sampling methods on common axes: quality, time, speed-up, NFE per model, the Pareto frontier",
    build=build,
    figures={"pareto": figure},
    check=check,
)
