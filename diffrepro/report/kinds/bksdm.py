"""BK-SDM: the teacher and its block-removed students, U-Net size beside quality and step time,
and the paper's zero-shot MS-COCO table."""

from __future__ import annotations

from . import register_table_kind


def context(config: dict, entry: dict) -> dict:
    """The sizes are counted from the U-Net configs: the methods' models and the t2i section."""
    methods = {m: config["methods"][m] for m in entry["methods"]}
    return {"methods": methods, "models": config["models"], "t2i": config["t2i"]}


def build(job) -> None:
    from ...t2i.sizes import bksdm_models, sd14_size_rows
    from .. import bksdm

    published = job.published()
    # hub models: their U-Net configs come from the fetched repositories
    hub_records = {name.removeprefix("hub_"): path for name, path in job.inputs.items()
                   if name.startswith("hub_")}
    models = bksdm_models(job.context, [r["method"] for r in job.records], hub_records)
    table = bksdm.build_table(job.records, models, published)
    bksdm.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                        labels=job.labels(), setting_note=job.setting_note, paper_note=job.paper_note(),
                        size_rows=sd14_size_rows(), paper_df=published)


def pareto(job) -> None:
    from .. import bksdm

    bksdm.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


register_table_kind(
    "bksdm",
    summary="BK-SDM students beside their teacher: U-Net parameters, MACs, step time, FID, IS, CLIP score",
    build=build,
    figures={"pareto": pareto},
    paper="bksdm",
    targets={"reproduce_bksdm_table": lambda table: True},
    context=context,
)
