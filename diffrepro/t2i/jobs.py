"""The text-to-image pipeline helpers moved to diffrepro.engines.pipeline (the engine of the
"pipeline" family); the shared rule bodies are diffrepro.jobs.sample_shard and
diffrepro.timing. These names stay importable here for diffrepro.t2i.training."""

from ..engines.pipeline import (NUM_PROMPT_CLASSES, embedded_text_encoder, load_unet, make_scheduler,
                                state_dict_sha256)

__all__ = ["NUM_PROMPT_CLASSES", "embedded_text_encoder", "load_unet", "make_scheduler", "state_dict_sha256"]
