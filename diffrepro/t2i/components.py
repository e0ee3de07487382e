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
