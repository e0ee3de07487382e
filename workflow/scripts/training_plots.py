"""Rule `training_plots`: see workflow/rules/train.smk. The work is done in the diffrepro library."""

import json

from diffrepro.diffusion.schedule import alphas_cumprod
from diffrepro.io import read_json
from diffrepro.report import training, training_plots
from diffrepro.snakejob import job
from diffrepro.training_methods import build_training_method

with job(snakemake, uses_torch=False):
    entry = json.loads(snakemake.params.entry)
    scores = training.load_scores(snakemake.input.scores)
    out, title = snakemake.output, snakemake.params.title
    training_plots.curves_plot(scores, entry["methods"], entry["baseline"], out.curves, out.curves_svg,
                               title=title, fid_label=read_json(snakemake.input.scores[0])["labels"]["fid"])
    components = json.loads(snakemake.params.components)
    batch_size = json.loads(snakemake.params.train)["batch_size"]
    schedules = {}
    for method in entry["methods"]:  # the table's order (params JSON has sorted keys)
        built = build_training_method(components[method], alphas_cumprod())
        schedules[method] = (built.timesteps.marginal(batch_size), built.weighting.weights)
    training_plots.schedules_plot(schedules, out.schedules, out.schedules_svg, title=title)
    training_plots.cost_plot(read_json(snakemake.input.timing), entry["methods"], out.cost, out.cost_svg,
                             title=title)
