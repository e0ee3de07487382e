# diffrepro: checkpoints -> samples -> timing -> scores -> tables and Pareto plots; and
# training-method runs -> checkpoint scores -> training curves and speed-up tables.
# Thin on purpose: config and its validation, the rule files, and the reproduce_* targets.
import sys

from snakemake.utils import min_version

min_version("9.0")

from diffrepro.config import ConfigError, prepare_config
from diffrepro.configfile import ConfigFileError, read_config_file

# Snakemake's own reading of a YAML file names neither the file nor the line of an error.
try:
    read_config_file("config/default.yaml")
except ConfigFileError as err:
    print(err, file=sys.stderr)
    sys.exit(1)


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

# Defaults from the schema, then every check, before any job: a short message naming the file,
# line, key, value and fix (diffrepro.config.prepare_config), not a traceback.
try:
    prepare_config(config, command_line=workflow.config_settings.config,
                   files=[*([] if config.get("standalone") else ["config/default.yaml"]),
                          *workflow.config_settings.configfiles])
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(1)

include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/time.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/unet_train.smk"


# On a cluster, every partition the jobs ask for must exist before anything is submitted. A
# local run starts the fork server: jobs then start without importing torch again (diffrepro.forkserver).
onstart:
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        from diffrepro.cluster import check_slurm_partitions

        check_slurm_partitions(workflow.dag.needrun_jobs())
    if workflow.local_exec and config["local_forkserver"]:
        from diffrepro import forkserver

        forkserver.start(workflow.workdir_init, log=f"{LOGS}/forkserver.log")


onsuccess:
    from diffrepro import forkserver

    forkserver.stop_all()


onerror:
    from diffrepro import forkserver

    forkserver.stop_all()


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
