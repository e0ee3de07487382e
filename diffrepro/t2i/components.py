"""Text-to-image components built from configs: U-Nets, CLIP text encoders and a
character-level CLIP tokenizer, all with no download. The embedded suite's class-prompt
models and the tests' tiny SD / SDXL / LCM pipelines use them, so both run diffusers' real
pipelines offline.
"""

from __future__ import annotations

import string

import torch

# The embedded suite's prompts: one per digit class; "" is the unconditional prompt.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_prompt(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


def char_tokenizer(max_length: int = 32):
    """CLIP's tokenizer (lower-casing, word splitting, </w> word ends, start/end tokens) over
    a vocabulary of single letters and digits with no merges: every word is spelled out. A
    real CLIPTokenizer, built without the 49k-entry vocabulary file of the hub."""
    from transformers import CLIPTokenizer

    symbols = string.ascii_lowercase + string.digits
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[],
                         model_max_length=max_length)


def text_encoder_config(tokenizer, *, hidden_size: int = 32, layers: int = 2, heads: int = 2,
                        projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=projection_dim or hidden_size)


def build_text_encoder(tokenizer, seed: int, *, with_projection: bool = False, **config):
    """A CLIP text encoder with seeded random weights (frozen: like SD's, it is not trained)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    torch.manual_seed(seed)
    return cls(text_encoder_config(tokenizer, **config)).eval().requires_grad_(False)


def build_unet(config: dict):
    """A diffusers UNet2DConditionModel from its config dict (random weights)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts) -> torch.Tensor:
    """Per-token hidden states as SD's pipeline computes them (padded to max length)."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def unet_step_inputs(unet, *, batch: int, shape, tokens: int, guided: bool = True, seed: int = 0,
                     device="cpu", dtype=torch.float32) -> dict:
    """Inputs of one denoising step of `unet` as its pipeline calls it, for timing: random
    values of the right shapes (the time of a pass does not depend on them). guided: the
    unconditional and conditional halves in one batch (CFG); LCM-SDXL runs unguided with a
    guidance embedding (time_cond_proj_dim). SDXL's added conditioning is included."""
    config = unet.config
    generator = torch.Generator().manual_seed(seed)
    rows = 2 * batch if guided else batch

    def randn(*size):
        return torch.randn(size, generator=generator).to(device, dtype)

    inputs = {"sample": randn(rows, *shape), "timestep": torch.tensor(500, device=device),
              "encoder_hidden_states": randn(rows, tokens, config.cross_attention_dim)}
    if config.get("addition_embed_type") == "text_time":
        time_ids = 6  # SDXL: original size, crop corner, target size
        pooled = config.projection_class_embeddings_input_dim - time_ids * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": randn(rows, pooled), "time_ids": randn(rows, time_ids)}
    if config.get("time_cond_proj_dim") is not None:
        inputs["timestep_cond"] = randn(rows, config.time_cond_proj_dim)
    return inputs


# --- SDXL-shaped class-prompt U-Nets (addition_embed_type "text_time") ------------------------
# The embedded suite runs them in diffusers' StableDiffusionXLPipeline with one text encoder,
# the projecting second one (as SDXL's refiner does): prompt embeddings are its penultimate
# hidden states, the pooled text its projection, and a dropped prompt is all zeros (SDXL's
# force_zeros_for_empty_prompt), as the pipeline's encode_prompt computes them.

def is_sdxl_shaped(unet_config) -> bool:
    return unet_config.get("addition_embed_type") == "text_time"


@torch.no_grad()
def encode_prompts_sdxl(tokenizer, text_encoder, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states, pooled projection) as StableDiffusionXLPipeline.encode_prompt;
    the pooled projection is None for an encoder without one (SDXL's first, CLIPTextModel)."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    out = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    return out.hidden_states[-2], getattr(out, "text_embeds", None)


def embedded_time_ids(unet_config) -> torch.Tensor:
    """SDXL's (original size, crop corner, target size) as the pipeline fills them in for a
    pipeline with no VAE: height = width = sample_size x 8 (diffusers' vae_scale_factor then)."""
    size = float(unet_config["sample_size"] * 8)
    return torch.tensor([size, size, 0.0, 0.0, size, size])
