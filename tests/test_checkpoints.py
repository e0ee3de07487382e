"""Checkpoints: byte-identical files for identical weights and metadata."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffrepro.checkpoints import read_metadata


@pytest.mark.slow  # three fresh interpreters importing torch: ~5 s
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
