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

from diffrepro.config import check_config

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


# reproduce_all, then one target per table (reproduce_<table>_table) and the table kinds' group
# targets (reproduce_tstitch_pairs, reproduce_speedit_curve, ...): diffrepro.report.kinds.
# Targets run beside Snakemake itself, not in a cluster queue.
rule reproduce_all:
    input:
        [PLAN.table_outputs(name) for name in PLAN.tables],
    default_target: True
    localrule: True


for target, tables in table_targets(PLAN.tables).items():

    rule:
        name:
            target
        input:
            [path for name in tables for path in PLAN.table_outputs(name)],
        localrule: True
