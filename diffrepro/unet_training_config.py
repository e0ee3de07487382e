"""Checks of the `unet_training` section (Immiscible Diffusion on the class-prompt U-Net) and
of the tables reporting it, beyond the schema's. No torch: the workflow reads it."""

from __future__ import annotations

from .config import ConfigError

PAIRING_ONLY = "U-Net training methods take noise-pairing components only (SD trains with uniform t, unweighted MSE)"


def check_unet_training(config: dict) -> None:
    from .training_methods import check_components, training_components

    section = config["unet_training"]
    model = config["models"].get(section["model"])
    if model is None or model.get("arch") != "sd_unet" or not ("train" in model or "hub" in model):
        raise ConfigError(f"config key unet_training.model: {section['model']!r} must be a trained sd_unet model "
                          f"under models (its config is the U-Net trained; fine-tuning starts from its weights), "
                          f"or at paper scale an sd_unet hub pipeline (e.g. CompVis/stable-diffusion-v1-4)")
    _check_path_keys(section, latent="hub" in model)
    compute = config.get("compute", {})
    if "hub" in model and compute.get("precision", "fp32") != "fp32" and compute.get("device") == "cpu":
        raise ConfigError(f"config key compute.precision: {compute['precision']} with compute.device: cpu; the "
                          f"U-Net study trains SD in half precision on a GPU only. Set compute.device: auto "
                          f"or cuda (with GPU jobs), or compute.precision: fp32")
    registry = training_components()
    for name, components in section["methods"].items():
        try:
            parsed = check_components(components)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key unet_training.methods.{name}: {err}") from err
        for component, _ in parsed:
            if set(registry[component].parts) != {"pairing"}:
                raise ConfigError(f"config key unet_training.methods.{name}: {component!r} changes "
                                  f"{list(registry[component].parts)}; {PAIRING_ONLY}")
    for regime, spec in section["regimes"].items():
        iterations, snapshots = spec["train"]["iterations"], spec["snapshots"]
        if max(snapshots) != iterations or sorted(snapshots) != list(snapshots):
            raise ConfigError(f"config key unet_training.regimes.{regime}.snapshots: {snapshots} must be "
                              f"ascending and end at train.iterations ({iterations})")
        init = spec.get("init")
        if init is not None and init != section["model"]:
            raise ConfigError(f"config key unet_training.regimes.{regime}.init: fine-tuning starts from "
                              f"unet_training.model ({section['model']!r}), not {init!r}")


def is_latent_study(config: dict) -> bool:
    """Paper scale: the U-Net is a hub pipeline's, trained on VAE latents of an image folder."""
    section = config.get("unet_training")
    return bool(section) and "hub" in config["models"].get(section["model"], {})


def _check_path_keys(section: dict, *, latent: bool) -> None:
    """The keys of one path only: the embedded suite's digits split, or paper scale's data."""
    validation = section["validation"]
    if latent:
        if "data" not in section:
            raise ConfigError("config key unet_training.data: missing; a hub model is trained on class images "
                              "from a local folder: add data: {images: <folder of class folders>}")
        if "images" not in validation:
            raise ConfigError("config key unet_training.validation.images: missing; with a hub model, the held-out "
                              "loss is over this many reference images (e.g. 1000)")
        return
    if "data" in section:
        raise ConfigError(f"config key unet_training.data: set, but unet_training.model ({section['model']!r}) is "
                          f"trained by the workflow on the digits; data is for a hub model (paper scale): remove it")
    for key in ("fraction", "split_seed"):
        if key not in validation:
            raise ConfigError(f"config key unet_training.validation.{key}: missing; the embedded suite holds "
                              f"digits out of training (e.g. fraction: 0.2, split_seed: 0)")
    for regime, spec in section["regimes"].items():
        extra = sorted(set(spec["train"]) & LATENT_ONLY_TRAIN_KEYS)
        if extra:
            raise ConfigError(f"config key unet_training.regimes.{regime}.train.{extra[0]}: applies at paper scale "
                              f"only (a hub unet_training.model); remove it")


LATENT_ONLY_TRAIN_KEYS = {"micro_batch_size", "weight_decay", "max_grad_norm", "prompt_dropout",
                          "gradient_checkpointing"}


def check_unet_training_table(config: dict, table: str, entry: dict) -> None:
    where = f"tables.{table}"
    if "unet_training" not in config:
        raise ConfigError(f"config key {where}: a {entry['kind']} table needs a unet_training section")
    check_unet_training(config)
    section = config["unet_training"]
    for key in ("regime", "baseline"):
        if key not in entry:
            raise ConfigError(f"config key {where}: a {entry['kind']} table needs '{key}'")
    if entry["regime"] not in section["regimes"]:
        raise ConfigError(f"config key {where}.regime: {entry['regime']!r} is not under unet_training.regimes; "
                          f"configured: {sorted(section['regimes'])}")
    for method in entry["methods"]:
        if method not in section["methods"]:
            raise ConfigError(f"config key {where}.methods: {method!r} is not under unet_training.methods; "
                              f"configured: {sorted(section['methods'])}")
    if entry["baseline"] not in entry["methods"]:
        raise ConfigError(f"config key {where}.baseline: {entry['baseline']!r} must be one of the table's "
                          f"methods {entry['methods']}")
