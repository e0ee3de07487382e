"""Checks of the `unet_training` section (Immiscible Diffusion on the class-prompt U-Net) and
of the tables reporting it, beyond the schema's. No torch: the workflow reads it."""

from __future__ import annotations

from .config import ConfigError

PAIRING_ONLY = "U-Net training methods take noise-pairing components only (SD trains with uniform t, unweighted MSE)"


def check_unet_training(config: dict) -> None:
    from .training_methods import check_components, training_components

    section = config["unet_training"]
    model = config["models"].get(section["model"])
    if model is None or model.get("arch") != "sd_unet" or "train" not in model:
        raise ConfigError(f"config key unet_training.model: {section['model']!r} must be a trained sd_unet model "
                          f"under models (its config is the U-Net trained; fine-tuning starts from its weights)")
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
