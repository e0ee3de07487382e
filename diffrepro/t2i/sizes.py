"""U-Net sizes for the BK-SDM table: the configured models' (at their own input size) and
SD-v1.4's with its three students (at 512 px), all counted from configs with no weights."""

from __future__ import annotations

from ..config import model_config
from ..io import read_json

CLIP_TOKENS = 77  # the SD text encoders' context length


def _structure(unet: dict) -> tuple:
    """What block removal changes: the U-Net's stages, blocks per stage and mid block."""
    return (unet.get("layers_per_block"), unet.get("mid_block_type", "UNetMidBlock2DCrossAttn"),
            tuple(unet.get("block_out_channels", ())), tuple(unet.get("down_block_types", ())),
            tuple(unet.get("up_block_types", ())))


def infer_variant(unet: dict, others: list[dict]) -> str:
    """"base" / "small" / "tiny" if `unet` is that BK-SDM student of one of `others` (the same
    blocks as block removal gives), else "teacher": how a hub model (e.g. nota-ai/bk-sdm-small)
    is placed in the table without a config key saying so."""
    from ..models.bksdm_config import VARIANTS, student_config

    for other in others:
        for variant in VARIANTS:
            try:
                if _structure(student_config(other, variant)) == _structure(unet):
                    return variant
            except ValueError:  # not an SD-1.x-shaped teacher
                continue
    return "teacher"


def _table_unets(config: dict, methods: list[str], hub_records: dict[str, str] | None):
    """method -> model, and model -> U-Net config (a hub model's from its fetched repository)."""
    from .hub import unet_config

    models = {method: config["methods"][method]["models"]["model"] for method in methods}
    unets = {model: unet_config(read_json(hub_records[model])) if "hub" in config["models"][model]
             else model_config(config, model) for model in models.values()}
    return models, unets


def _size(config: dict, unet: dict) -> dict:
    """params_m and gmacs at the U-Net's own sample size and the suite's prompt length."""
    from ..models.bksdm import unet_size

    tokens = config["t2i"]["text_encoder"]["max_length"] if "text_encoder" in config["t2i"] else CLIP_TOKENS
    size = unet_size(unet, latent_size=unet["sample_size"], text_tokens=tokens)
    return {"params_m": size["params_m"], "gmacs": size["gmacs"]}


def bksdm_models(config: dict, methods: list[str], hub_records: dict[str, str] | None = None) -> dict[str, dict]:
    """method -> {model, variant, params_m, gmacs} for the methods of a BK-SDM table; a hub
    model's U-Net config is read from its fetched repository (hub_records: model -> record)."""
    models, unets = _table_unets(config, methods, hub_records)
    out = {}
    for method, model in models.items():
        entry, unet = config["models"][model], unets[model]
        if "distil" in entry:
            variant = entry["distil"]["variant"]
        else:
            variant = infer_variant(unet, [u for m, u in unets.items() if m != model])
        out[method] = {"model": model, "variant": variant, **_size(config, unet)}
    return out


def sd14_size_rows() -> list[dict]:
    from ..models.bksdm import size_table

    return size_table()


def distill_sdxl_models(config: dict, methods: list[str], hub_records: dict[str, str] | None = None) -> dict[str, dict]:
    """method -> {model, variant, params_m, gmacs} for a Distill SD XL table: a distilled model's
    variant from its config key, a hub model's (e.g. takuoko/tiny_sd_xl_pokemon_blip) from its
    blocks (small_sd_xl / tiny_sd_xl of another model of the table), else "teacher"."""
    from ..models.distill_sdxl_config import VARIANTS, student_config

    models, unets = _table_unets(config, methods, hub_records)
    out = {}
    for method, model in models.items():
        entry, unet = config["models"][model], unets[model]
        variant = entry["distil"]["variant"] if "distil" in entry else "teacher"
        others = [u for m, u in unets.items() if m != model] if "distil" not in entry else []
        for other, candidate in ((o, v) for o in others for v in VARIANTS):
            try:
                if _structure(student_config(other, candidate)) == _structure(unet):
                    variant = candidate
            except ValueError:  # not an SDXL-shaped teacher
                continue
        out[method] = {"model": model, "variant": variant, **_size(config, unet)}
    return out
