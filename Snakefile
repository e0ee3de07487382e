# diffrepro: checkpoints -> samples -> timing -> scores -> tables and Pareto plots; and
# training-method runs -> checkpoint scores -> training curves and speed-up tables.
# Thin on purpose: config and its validation, the rule files, and the reproduce_* targets.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/default.yaml"


report: "workflow/report/workflow.rst"


# `gpu` counts per submitted job: locally the whole run is one job (profiles/default allows
# one GPU job at a time); on a cluster each SLURM job gets its own GPUs.
resource_scopes:
    gpu="local",


# A config marked `standalone: true` (config/paper/*.yaml) is complete on its own. Snakemake
# would merge it into config/default.yaml key by key, so the embedded suite's models, methods
# and tables would leak into a paper run; keep only what the command line gave.
if config.get("standalone"):
    import copy

    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))

validate(config, "workflow/schemas/config.schema.yaml")

from diffrepro.config import check_config, method_settings

check_config(config)

include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/time.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/train.smk"


# On a cluster, every partition the jobs ask for must exist before anything is submitted.
onstart:
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        from diffrepro.cluster import check_slurm_partitions

        check_slurm_partitions(workflow.dag.needrun_jobs())


# Tables, plots and targets take seconds: on a cluster they run beside Snakemake itself
# rather than wait in the queue.
localrules:
    table,
    table_page,
    plot,
    convergence_plot,
    reproduce_all,
    reproduce_tstitch_table,
    reproduce_tstitch_pairs,
    reproduce_tstitch3_table,
    reproduce_tstitch_samplers,
    reproduce_tstitch_sd_table,
    reproduce_bksdm_table,
    reproduce_parataa_table,
    reproduce_speedit_curve,
    reproduce_immiscible_table,
    training_table,
    training_plots,


rule reproduce_all:
    input:
        [table_outputs(name) for name in config["tables"]],
    default_target: True


# The main T-Stitch table (DiT-S -> DiT-XL in a paper config), then the other model pairs and
# the three-model allocations.
rule reproduce_tstitch_table:
    input:
        table_outputs("tstitch") if "tstitch" in config["tables"] else [],


rule reproduce_tstitch_pairs:
    input:
        [path for name, entry in config["tables"].items()
         if name != "tstitch" and table_kind(entry) == "tstitch" for path in table_outputs(name)],


rule reproduce_tstitch3_table:
    input:
        tables_of_kind("tstitch3"),


rule reproduce_tstitch_samplers:
    input:
        tables_of_kind("tstitch_samplers"),


# T-Stitch on a diffusers text-to-image pipeline (SD family); embedded: class-prompt U-Nets.
rule reproduce_tstitch_sd_table:
    input:
        tables_of_kind("tstitch_sd"),


# BK-SDM: the teacher and its distilled block-removed students, size beside quality and speed.
rule reproduce_bksdm_table:
    input:
        tables_of_kind("bksdm"),


rule reproduce_parataa_table:
    input:
        tables_of_kind("parataa"),


rule reproduce_speedit_curve:
    input:
        tables_of_kind("speedit"),


rule reproduce_immiscible_table:
    input:
        tables_of_kind("immiscible"),
