"""U-Net sizes for the BK-SDM table: the configured models' (at their own input size) and
SD-v1.4's with its three students (at 512 px), all counted from configs with no weights."""

from __future__ import annotations

from ..config import model_config


def bksdm_models(config: dict, methods: list[str]) -> dict[str, dict]:
    """method -> {model, variant, params_m, gmacs} for the methods of a BK-SDM table."""
    from ..models.bksdm import unet_size

    out = {}
    for method in methods:
        model = config["methods"][method]["models"]["model"]
        entry, unet = config["models"][model], model_config(config, model)
        tokens = config["t2i"]["text_encoder"]["max_length"]
        size = unet_size(unet, latent_size=unet["sample_size"], text_tokens=tokens)
        out[method] = {"model": model, "variant": entry["distil"]["variant"] if "distil" in entry else "teacher",
                       "params_m": size["params_m"], "gmacs": size["gmacs"]}
    return out


def sd14_size_rows() -> list[dict]:
    from ..models.bksdm import size_table

    return size_table()
