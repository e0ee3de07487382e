"""The embedded suite's CLIP: a tiny open_clip model trained on the digits and their class
prompts, so text-to-image samples get a CLIP score offline (the paper configs use ViT-g-14).

Objective: each image against the 10 class prompts, softmax over the prompts (CLIP's
image-to-text half; the text-to-image half would treat the many same-class images of a batch
as negatives). The score is then CLIP's: cosine of image and prompt embeddings, computed by
diffrepro.clip_score with the model's own preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoints import save_checkpoint
from ..finite import LossGuard
from .components import DIGIT_WORDS, digit_prompt


@dataclass(frozen=True)
class ClipTrainConfig:
    iterations: int
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


def build_clip(model_name: str, model_config: dict):
    """(untrained model, inference preprocess, tokenizer) of a custom open_clip config."""
    import open_clip

    from ..clip_score import _register_config

    _register_config(model_name, model_config)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, precision="fp32")
    return model, preprocess, open_clip.get_tokenizer(model_name)


def train_clip(model_name: str, model_config: dict, train: ClipTrainConfig, images_u8: np.ndarray,
               labels: np.ndarray, output: str, log=print) -> dict:
    from ..clip_score import _to_pil

    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    model, preprocess, tokenizer = build_clip(model_name, model_config)
    pixels = torch.stack([preprocess(_to_pil(image)) for image in images_u8])  # once: fixed transform
    targets = torch.as_tensor(labels, dtype=torch.long)
    prompts = tokenizer([digit_prompt(c) for c in range(len(DIGIT_WORDS))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=0.0)
    model.train()
    history = []
    guard = LossGuard(f"CLIP {output}")  # no resume file: nothing is saved before the end
    for it in range(train.iterations):
        index = torch.randint(len(pixels), (train.batch_size,), generator=generator)
        image = torch.nn.functional.normalize(model.encode_image(pixels[index]), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(prompts), dim=-1)
        logits = model.logit_scale.exp() * image @ text.T
        loss = torch.nn.functional.cross_entropy(logits, targets[index])
        guard.check(loss, it + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))  # CLIP's clamp
        if (it + 1) % max(1, train.iterations // 10) == 0 or it + 1 == train.iterations:
            accuracy = (logits.argmax(1) == targets[index]).float().mean().item()
            history.append({"iteration": it + 1, "loss": loss.item(), "batch_accuracy": accuracy})
            log(f"iter {it + 1}/{train.iterations} loss {loss.item():.4f} accuracy {accuracy:.3f}")
    model.eval()
    sha = save_checkpoint(output, model.state_dict(), {"model": model_name, "config": json.dumps(model_config)})
    return {"model": model_name, "config": model_config, "history": history, "sha256": sha,
            "objective": "image-to-prompt cross-entropy over the 10 class prompts"}
