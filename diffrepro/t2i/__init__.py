"""Text-to-image pipelines (diffusers): T-Stitch for SD / SDXL / LCM, the embedded class-prompt
suite, hub resolution with offline errors."""
