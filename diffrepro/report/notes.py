"""The one-line description of how a table's numbers were made, printed under every table and
figure ("suite digits: DDIM-100, CFG 1.5, 800 samples per setting, ...")."""

from __future__ import annotations

from ..config import compute_settings, method_num_samples, method_timing
from ..methods import get_method
from .kinds import kind_of


def setting_note(config: dict, table: str) -> str:
    entry = config["tables"][table]
    kind = kind_of(entry)
    if kind.stage == "training":
        return training_setting_note(config)
    if kind.stage == "unet_training":
        return unet_training_setting_note(config, entry["regime"])
    methods = kind.methods(entry)
    s = config["sampling"]
    method = methods[-1]
    roles = config["methods"][method]["models"]
    models = ", ".join(f"{role}={model}" for role, model in roles.items())
    if len(methods) > 1 and all(len(config["methods"][m]["models"]) == 1 for m in methods):
        models = ", ".join(f"{m}={next(iter(config['methods'][m]['models'].values()))}" for m in methods)
    pipeline_family = get_method(method).family == "pipeline"
    ldm_family = get_method(method).family == "ldm"
    if kind.name == "tstitch_samplers":
        sampler = "sampler and steps per row"
    elif pipeline_family:
        t2i = config["t2i"]
        large = config["models"][roles.get("large", roles.get("model"))]
        pipeline = large["hub"]["pipeline"] if "hub" in large else "StableDiffusionPipeline"
        size = f", {t2i['image_size']} px scored at {t2i.get('fid_size') or t2i['image_size']} px" if t2i.get("image_size") else ""
        prompts = (f", {t2i['prompts']['count'] or 'all'} MS-COCO captions" if t2i.get("prompts")
                   else ", class prompts")
        sampler = (f"diffusers {pipeline}, {t2i['scheduler']['class']}-{t2i['steps']}, "
                   f"guidance {t2i['guidance_scale']}{size}{prompts}")
    elif ldm_family:
        ldm = config["ldm"]
        sampler = (f"LDM's DDIM-{ldm['steps']} (eta {ldm['eta']}), guidance {ldm['cfg_scale']} against a "
                   f"uniform random context")
    else:
        sampler = s["sampler"].upper() + ("" if kind.name == "parataa" else f"-{s['steps']}")
    timing = method_timing(config, method)
    compute = compute_settings(config)
    precision = (f"{compute['precision']}{', TF32' if compute['tf32'] else ''}"
                 f"{', torch.compile' if compute['compile'] else ''}")
    cfg = "" if pipeline_family or ldm_family else f", CFG {s['cfg_scale']}"
    return (
        f"suite {config['suite']}: {sampler}{cfg}, "
        f"{method_num_samples(config, method)} samples per setting, models {models}, "
        f"precision {precision}; timing: batch of {timing['batch_size']}, median of {timing['repeats']}"
    )


def training_setting_note(config: dict) -> str:
    t = config["training"]
    e = t["evaluation"]
    m = t["model"]
    return (f"suite {config['suite']}: DiT (hidden {m['hidden_size']}, depth {m['depth']}) trained from "
            f"scratch per method and seed ({len(t['seeds'])} seeds), {t['train']['iterations']} "
            f"iterations of batch {t['train']['batch_size']}, lr {t['train']['lr']}, EMA weights "
            f"scored at iterations {t['snapshots']} with {e['num_samples']} samples "
            f"({e['sampler'].upper()}-{e['steps']}, CFG {e['cfg_scale']}); held-out "
            f"{t['validation']['fraction']:.0%} of the digits for the validation loss")


def unet_training_setting_note(config: dict, regime: str) -> str:
    u = config["unet_training"]
    spec, e = u["regimes"][regime], u["evaluation"]
    if "data" in u:  # paper scale: a hub pipeline's U-Net on an image folder's VAE latents
        return latent_unet_training_setting_note(config, regime)
    start = f"fine-tuned from the trained {spec['init']}" if spec.get("init") else "trained from scratch"
    return (f"suite {config['suite']}: the class-prompt U-Net {u['model']} (no VAE: the digits' pixels are "
            f"the latents) {start} per method and seed ({len(u['seeds'])} seeds), "
            f"{spec['train']['iterations']} iterations of batch {spec['train']['batch_size']}, lr "
            f"{spec['train']['lr']}; EMA weights scored at iterations {spec['snapshots']} with "
            f"{e['num_samples']} samples ({config['t2i']['scheduler']['class']}-{e['steps']}, guidance "
            f"{e['guidance_scale']}, class prompts round-robin); held-out {u['validation']['fraction']:.0%} "
            f"of the digits for the validation loss")


def latent_unet_training_setting_note(config: dict, regime: str) -> str:
    u = config["unet_training"]
    spec, e, data = u["regimes"][regime], u["evaluation"], u["data"]
    hub = config["models"][u["model"]]["hub"]["id"]
    start = f"fine-tuned from {hub}" if spec.get("init") else f"{hub}'s U-Net re-initialised, trained from scratch"
    t = spec["train"]
    return (f"suite {config['suite']}: {start}, on VAE latents of {data['images']} at "
            f"{data.get('resolution', 256)} px, per method and seed ({len(u['seeds'])} seeds), {t['iterations']} "
            f"iterations of batch {t['batch_size']}, lr {t['lr']}, {compute_settings(config)['precision']}; EMA "
            f"weights scored at iterations {spec['snapshots']} with {e['num_samples']} samples (the pipeline's "
            f"scheduler, {e['steps']} steps, guidance {e['guidance_scale']}, class names round-robin), Inception "
            f"FID; held-out loss on {u['validation']['images']} reference images")
