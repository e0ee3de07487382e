# What the rule files share: the plan (diffrepro/plan.py: every input, param and path the rules
# use, from the validated config), the path roots of output templates, wildcard constraints,
# and what only the workflow knows (cores, the config files read).
import os

from diffrepro.integrity import CONFIGFILES_ENV
from diffrepro.plan import DOWNLOADS, Plan, as_param, names_pattern
from diffrepro.report.kinds import table_targets
from diffrepro.report.notes import setting_note
from diffrepro.report.gpu_check import GPU_CHECK_JSON

PLAN = Plan(config)
CHECKPOINTS, RESULTS, REPORTS, LOGS = PLAN.checkpoints, PLAN.results, PLAN.reports, PLAN.logs
# the config files this run read (a standalone config is read alone: see the Snakefile)
CONFIG_FILES = [os.path.relpath(f) for f in (workflow.overwrite_configfiles if config.get("standalone")
                                             else workflow.configfiles)]
# A job that finds a damaged result names the command that rebuilds it, with these config files
# (diffrepro.integrity.rebuild_command); jobs inherit the environment.
os.environ[CONFIGFILES_ENV] = " ".join(CONFIG_FILES)


wildcard_constraints:
    model="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    setting="[A-Za-z0-9_.+-]+",
    shard="[0-9]+",
    table="[A-Za-z0-9_]+",
    seed="[0-9]+",


# Cores a timing job reserves. Locally all of them, so nothing runs beside it; on a cluster the
# job's own threads, and the profile asks for a whole node (--exclusive). Evaluated per job:
# while the Snakefile is parsed the executor is not known yet. (Inside the SLURM job the value
# is the node's cores; the timing jobs use timing.threads.)
TIMING_THREADS = lambda wildcards: workflow.cores if workflow.local_exec else config["threads"]
