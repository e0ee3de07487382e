"""Checkpoints: byte-identical files for identical weights and metadata."""

from __future__ import annotations

import subprocess
import sys

from diffrepro.checkpoints import read_metadata


def test_identical_weights_and_metadata_give_identical_files(tmp_path):
    """safetensors orders several metadata keys at random; save_checkpoint stores one."""
    script = ("import sys, torch; from diffrepro.checkpoints import save_checkpoint; "
              "print(save_checkpoint(sys.argv[1], {'w': torch.arange(6.0)}, "
              "{'alpha': '1', 'beta': '2', 'gamma': '3', 'delta': '4', 'epsilon': '5'}))")
    digests = {subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{k}.safetensors")], check=True,
                              capture_output=True, text=True).stdout.strip() for k in range(3)}
    assert len(digests) == 1
    assert read_metadata(tmp_path / "0.safetensors") == {"alpha": "1", "beta": "2", "gamma": "3", "delta": "4",
                                                          "epsilon": "5"}
