"""The advice in a damaged-file error works when followed, with Snakemake itself.

A one-row T-Stitch table (tiny models, 8 samples) is built; then a checkpoint is corrupted and a
score file edited by hand. Each time the rerun fails naming the file and a command; running that
command, then the table target again, rebuilds the table, with the same numbers as before (the
classifier retrains to the same bytes).
"""

import json
import re

import pytest
import yaml

from workflow_run import copy_repository, snakemake

CONFIG = ("--configfile", "config/tiny.yaml")
TABLE = "reports/tiny/tstitch_table.csv"


def tiny_config(smoke: dict) -> dict:
    config = {**smoke, "suite": "tiny", "classifier": {**smoke["classifier"], "epochs": 1},
              "sampling": {**smoke["sampling"], "steps": 4, "num_samples": 8, "num_shards": 1, "batch_size": 8},
              "timing": {**smoke["timing"], "warmup": 0, "repeats": 1, "forward_repeats": 1},
              "scoring": {**smoke["scoring"], "bootstrap_reps": 2},
              "methods": {"tstitch": {**smoke["methods"]["tstitch"], "grid": {"ratio": [0.0]}}},
              "tables": {"tstitch": smoke["tables"]["tstitch"]}}
    for model in ("small", "large"):
        config["models"][model]["train"]["iterations"] = 10
    del config["training"]
    return config


def followed_advice(work, damaged: str) -> None:
    """Rerun the table (it fails naming `damaged` and a command), run the command, rerun the table."""
    failed = snakemake(work, "--cores", "2", TABLE, *CONFIG, check=False)
    assert failed.returncode != 0
    message = re.search(rf"{re.escape(damaged)} is damaged: .*?Rebuild it with `([^`]+)`, then rerun your "
                        rf"snakemake command\.", failed.stdout + failed.stderr)
    assert message, failed.stderr[-3000:]
    command = message.group(1).split()
    assert command[0] == "snakemake" and "JSONDecodeError" not in failed.stderr
    snakemake(work, *command[1:])
    snakemake(work, "--cores", "2", TABLE, *CONFIG)


@pytest.mark.slow
def test_the_rebuild_command_in_the_message_fixes_the_file(tmp_path):
    work = copy_repository(tmp_path)
    smoke = yaml.safe_load((work / "config/smoke.yaml").read_text())
    (work / "config/tiny.yaml").write_text(yaml.safe_dump(tiny_config(smoke)))
    snakemake(work, "--cores", "2", TABLE, *CONFIG)
    table = (work / TABLE).read_text()

    checkpoint = "resources/checkpoints/tiny/digits_cnn.safetensors"
    data = bytearray((work / checkpoint).read_bytes())
    data[-10] ^= 0xFF  # inside the weights
    (work / checkpoint).write_bytes(bytes(data))
    followed_advice(work, checkpoint)
    assert (work / TABLE).read_text() == table  # retrained to the same bytes, rescored to the same numbers

    score = work / "results/tiny/scores/tstitch/r0.json"
    record = json.loads(score.read_text())
    record["metrics"]["fid"] /= 2  # by hand, its content_sha256 kept
    score.write_text(json.dumps(record, indent=2, sort_keys=True))
    followed_advice(work, "results/tiny/scores/tstitch/r0.json")
    assert (work / TABLE).read_text() == table
    nothing = snakemake(work, "-n", TABLE, *CONFIG)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
