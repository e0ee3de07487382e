# diffrepro: checkpoints -> samples -> timing -> scores -> tables and Pareto plots.
# Thin on purpose: config and its validation, the rule files, and the reproduce_* targets.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/default.yaml"


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


rule reproduce_all:
    input:
        [table_outputs(name) for name in config["tables"]],
    default_target: True


rule reproduce_tstitch_table:
    input:
        table_outputs("tstitch"),


rule reproduce_parataa_table:
    input:
        table_outputs("parataa"),
