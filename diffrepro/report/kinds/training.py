"""Training-acceleration tables (SpeeD, Immiscible Diffusion): one row per training method,
FID against iterations over seeds, the speed-up to the baseline's final FID with its bootstrap
interval, the cost per iteration; figures: FID curves, p(t) and w(t), cost."""

from __future__ import annotations

from . import register_table_kind


def context(config: dict, entry: dict) -> dict:
    """The methods' training components and batch size (the schedules figure draws p(t), w(t))."""
    training = config["training"]
    return {"components": {m: training["methods"][m] for m in entry["methods"]},
            "batch_size": training["train"]["batch_size"]}


def build(job) -> None:
    from ...integrity import read_verified_json
    from .. import training

    entry, scoring = job.entry, job.scoring
    scores = training.load_scores(job.inputs["scores"])
    table = training.build_table(scores, read_verified_json(job.inputs["timing"]), entry["methods"], entry["baseline"],
                                 job.published(), reps=max(1000, scoring["bootstrap_reps"]), seed=scoring["seed"])
    training.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                           title=f"{job.name}: training speed-up against {entry['baseline']}",
                           setting_note=job.setting_note,
                           paper_note=training.paper_note(job.inputs["paper"], entry["paper"]),
                           baseline=entry["baseline"], paper_yaml=job.inputs["paper"])


def curves(job) -> None:
    from ...integrity import read_verified_json
    from .. import training, training_plots

    scores = training.load_scores(job.inputs["scores"])
    training_plots.curves_plot(scores, job.entry["methods"], job.entry["baseline"], job.png, job.svg,
                               title=job.title, fid_label=read_verified_json(job.inputs["scores"][0])["labels"]["fid"])


def schedules(job) -> None:
    from ...diffusion.schedule import alphas_cumprod
    from ...training_methods import build_training_method
    from .. import training_plots

    curves_of = {}
    for method in job.entry["methods"]:  # the table's order
        built = build_training_method(job.context["components"][method], alphas_cumprod())
        curves_of[method] = (built.timesteps.marginal(job.context["batch_size"]), built.weighting.weights)
    training_plots.schedules_plot(curves_of, job.png, job.svg, title=job.title)


def cost(job) -> None:
    from ...integrity import read_verified_json
    from .. import training_plots

    training_plots.cost_plot(read_verified_json(job.inputs["timing"]), job.entry["methods"], job.png, job.svg,
                             title=job.title)


FIGURES = {"curves": curves, "schedules": schedules, "cost": cost}
CAPTIONS = {
    "curves": ("Training curves of ``{table}``: FID (suite features) of every method's EMA weights against "
               "training iterations (line: seed mean; band: min-max over seeds), the baseline's final FID as "
               "the target the speed-up is measured at, and each method's validation loss per timestep bin "
               "at the last checkpoint."),
    "schedules": ("What each method of ``{table}`` changes: the distribution of a batch element's timestep "
                  "p(t) (SpeeD's reflected half included) and the weight w(t) on the epsilon-MSE, against t."),
    "cost": ("Cost per iteration of each method of ``{table}``: time to prepare a batch (timesteps, noise "
             "pairing such as Immiscible's linear assignment, weights) against batch size, and one whole "
             "training iteration at the training batch size."),
}

for name, paper, target, summary in (
    ("speedit", "speedit", "reproduce_speedit_curve",
     "SpeeD and its baselines (P2, Min-SNR, logit-normal): FID against iterations, speed-up to the baseline's FID"),
    ("immiscible", "immiscible", "reproduce_immiscible_table",
     "Immiscible Diffusion (noise assignment, KNN): FID against iterations, speed-up to the baseline's FID"),
):
    register_table_kind(name, summary=summary, build=build, figures=FIGURES, paper=paper, stage="training",
                        targets={target: lambda table: True}, context=context, captions=CAPTIONS,
                        groups=dict.fromkeys(FIGURES, "Training curves"))
