"""Distill SD XL (diffengine DistillSDXL): an SDXL-shaped teacher and its small_sd_xl /
tiny_sd_xl students: U-Net size beside step time, FID and CLIP score."""

from __future__ import annotations

from . import register_table_kind


def context(config: dict, entry: dict) -> dict:
    """The sizes are counted from the U-Net configs: the methods' models and the t2i section."""
    methods = {m: config["methods"][m] for m in entry["methods"]}
    return {"methods": methods, "models": config["models"], "t2i": config["t2i"]}


def build(job) -> None:
    from ...models.distill_sdxl import size_table
    from ...t2i.sizes import distill_sdxl_models
    from .. import distill_sdxl

    hub_records = {name.removeprefix("hub_"): path for name, path in job.inputs.items()
                   if name.startswith("hub_")}
    models = distill_sdxl_models(job.context, [r["method"] for r in job.records], hub_records)
    published = job.published()
    table = distill_sdxl.build_table(job.records, models, published)
    distill_sdxl.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                               labels=job.labels(), setting_note=job.setting_note, paper_note=job.paper_note(),
                               size_rows=size_table(), paper_df=published)


def pareto(job) -> None:
    from .. import distill_sdxl

    distill_sdxl.pareto_plot(job.table(), job.png, job.svg, labels=job.labels(), title=job.title)


register_table_kind(
    "distill_sdxl",
    summary="Distill SD XL students (small_sd_xl, tiny_sd_xl) beside their SDXL-shaped teacher: "
            "U-Net parameters, MACs, step time, FID, CLIP score",
    build=build,
    figures={"pareto": pareto},
    paper="distill_sdxl",
    targets={"reproduce_distill_sdxl_table": lambda table: True},
    context=context,
)
