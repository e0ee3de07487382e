#!/usr/bin/env python
"""Print the BK-SDM U-Net size table (SD-v1.4 and its Base/Small/Tiny students) as markdown.

Sizes are computed from the diffusers configs on the meta device (no weights, CPU, seconds) at
512 px: a 64x64 latent and 77 text tokens of dim 768, batch 1. MACs follow BK-SDM's
src/count_macs_params.py (thop): Conv2d + Linear + LayerNorm modules only, so the attention
matmuls are not included. "paper" is the published value, "ours" the recomputed one.
"""

from diffrepro.models.bksdm import SD14_UNET_CONFIG, size_table
from diffrepro.models.bksdm_config import PUBLISHED_SIZES

NAMES = {"sd-v1.4": "SD-v1.4", "base": "BK-SDM-Base", "small": "BK-SDM-Small", "tiny": "BK-SDM-Tiny"}


def main() -> None:
    print("| U-Net | params (M), paper | params (M), ours | GMACs, paper | GMACs, ours "
          "| params vs SD-v1.4 | GMACs vs SD-v1.4 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in size_table(SD14_UNET_CONFIG):
        params_m, gmacs = PUBLISHED_SIZES[row["name"]]
        print(f"| {NAMES[row['name']]} | {params_m:.1f} | {row['params_m']:.1f} | {gmacs:.1f} "
              f"| {row['gmacs']:.1f} | {row['params_ratio']:.1%} | {row['gmacs_ratio']:.1%} |")


if __name__ == "__main__":
    main()
