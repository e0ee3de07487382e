"""Rule `reference_stats`: see workflow/rules. The work is done in the diffrepro library."""

from diffrepro.forkserver import delegate

delegate(snakemake, __file__)  # a local run: in the fork server, torch already imported (diffrepro.forkserver)

from diffrepro.jobs import reference_stats_job
from diffrepro.snakejob import job

with job(snakemake):
    reference_stats_job(classifier_path=snakemake.input.classifier, output=snakemake.output[0])
