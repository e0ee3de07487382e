"""Immiscible Diffusion, Stable Diffusion version (the seed's own tables): the class-prompt
U-Net trained from scratch or fine-tuned, vanilla vs linear assignment vs KNN; FID against
iterations over seeds, the speed-up to the baseline's final FID with its bootstrap interval,
the cost per step and how often the float16 assignment is an exact optimum. One table per
regime (unet_training.regimes); the report code is the DiT training tables'."""

from __future__ import annotations

from . import register_table_kind


def check(config: dict, table: str, entry: dict) -> None:
    from ...unet_training_config import check_unet_training_table

    check_unet_training_table(config, table, entry)


def context(config: dict, entry: dict) -> dict:
    section = config["unet_training"]
    return {"regime": entry["regime"], "components": {m: section["methods"][m] for m in entry["methods"]},
            # paper scale (a hub pipeline on an image folder); absent for the embedded suite
            **({"paper_scale": True} if "data" in section else {})}


def agreement_note(timing: dict, methods, unit: str = "digits") -> str:
    """The float16-vs-exact agreement of each assignment method, in words."""
    parts = []
    for method in methods:
        for a in timing["methods"][method].get("assignment_agreement", []):
            parts.append(f"{method} with {a['distance_dtype']} distances: an exact (float64) optimum in "
                         f"{a['optimal']:.1%} and the exact optimum's own permutation in {a['same_permutation']:.1%} "
                         f"of {a['batches']} batches of {a['batch_size']} {unit} ({a['same_pairs']:.1%} of pairs; "
                         f"mean excess total distance {a['excess_total_distance']:.1e})")
    return ("\n- **assignment precision**: " + "; ".join(parts)) if parts else ""


def build(job) -> None:
    from ...integrity import read_verified_json as read_json
    from .. import training

    entry, scoring = job.entry, job.scoring
    paper_scale = bool(job.context.get("paper_scale"))
    timing = read_json(job.inputs["timing"])
    scores = training.load_scores(job.inputs["scores"])
    table = training.build_table(scores, timing, entry["methods"], entry["baseline"], job.published(),
                                 reps=max(1000, scoring["bootstrap_reps"]), seed=scoring["seed"])
    training.write_outputs(table, job.outputs["csv"], job.outputs["md"], job.outputs["claims"],
                           title=f"{job.name}: Immiscible Diffusion on the class-prompt U-Net "
                                 f"({entry['regime']}), speed-up against {entry['baseline']}",
                           setting_note=job.setting_note + agreement_note(
                               timing, entry["methods"], "images' latents" if paper_scale else "digits"),
                           paper_note=training.paper_note(job.inputs["paper"], entry["paper"]),
                           baseline=entry["baseline"], paper_yaml=job.inputs["paper"],
                           small_scale_note=PAPER_SCALE_NOTE if paper_scale else SMALL_SCALE_NOTE)


SMALL_SCALE_NOTE = (
    "Limits of this test: a class-prompt U-Net of ~0.55M parameters on the 8x8 digits' pixels (no VAE: "
    "64-dimensional 'latents', where k = 64 nearest noises bias the noise far more than in SD's 4x32x32 "
    "latents), a few hundred iterations, FID in a digits-CNN feature space, a handful of seeds. The paper "
    "trains SD (860M U-Net) on ImageNet VAE latents for 5K-20K steps at batch 512-2048. Check the class "
    "accuracy column: near 0.1 the models have not yet learned the classes, and the FIDs compare noise.")

PAPER_SCALE_NOTE = (
    "At paper scale (config/paper/immiscible_sd.yaml): SD-v1.4's pipeline trained on the image folder's VAE "
    "latents with the seed's recipe, one process (the global batch assigned whole, run in micro-batches), FID "
    "with torch-fidelity's TF-Inception port against the configured reference images; class accuracy is not "
    "measured (—). See the config's header for every difference from the seed's code.")


def curves(job) -> None:
    from ...integrity import read_verified_json as read_json
    from .. import training, training_plots

    scores = training.load_scores(job.inputs["scores"])
    training_plots.curves_plot(scores, job.entry["methods"], job.entry["baseline"], job.png, job.svg,
                               title=job.title, fid_label=read_json(job.inputs["scores"][0])["labels"]["fid"])


def cost(job) -> None:
    from ...integrity import read_verified_json as read_json
    from .. import training_plots

    training_plots.cost_plot(read_json(job.inputs["timing"]), job.entry["methods"], job.png, job.svg,
                             title=job.title)


FIGURES = {"curves": curves, "cost": cost}
CAPTIONS = {
    "curves": ("FID-vs-steps curves of ``{table}``: FID (suite features) of each method's EMA U-Net against "
               "training iterations (line: seed mean; band: min-max over seeds), the baseline's final FID as "
               "the target the speed-up is measured at, and the validation loss per timestep bin."),
    "cost": ("The assignment's cost in ``{table}``: noise pairing (linear assignment or KNN) against batch "
             "size, and one whole U-Net training step at the training batch size."),
}

register_table_kind("immiscible_sd", paper="immiscible_sd", stage="unet_training", build=build, figures=FIGURES,
                    summary="Immiscible Diffusion on the SD-style U-Net (scratch / fine-tune): FID against "
                            "iterations, speed-up to vanilla's FID, assignment cost and float16 agreement",
                    targets={"reproduce_immiscible_sd_table": lambda table: True}, check=check,
                    context=context, captions=CAPTIONS, groups=dict.fromkeys(FIGURES, "Training curves"))
