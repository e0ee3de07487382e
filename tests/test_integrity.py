"""Damaged result files are refused with the command that rebuilds them, and identical runs
write identical bytes.

A module fixture runs the jobs of one T-Stitch row directly (no Snakemake): the digits CNN,
its reference statistics, two tiny DiTs, a sample shard, its score, the timing and the table.
The Snakemake side (the command in the message, followed) is tests/test_damaged_results.py.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from diffrepro.checkpoints import ChecksumMismatch, load_checkpoint, save_checkpoint
from diffrepro.integrity import (CONFIGFILES_ENV, DamagedResult, read_verified_json, rebuild_command,
                                 write_hashed_json)
from diffrepro.jobs import reference_stats_job, sample_shard, score_setting, train_classifier_job
from diffrepro.models.dit import build_dit
from diffrepro.report.tables import FigureJob, TableJob, build_table
from diffrepro.timing import time_table_settings
from workflow_run import ROOT

DIT = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2,
           mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
SAMPLING = {"sampler": "ddim", "steps": 4, "cfg_scale": 1.5, "guided_channels": 1,
            "device": "cpu", "precision": "fp32", "tf32": False, "compile": False}
SCORING = {"backend": "digits", "is_splits": 2, "bootstrap_reps": 2, "seed": 0}
R0 = {"method": "tstitch", "params": {"ratio": 0.0}}
QUIET = dict(log=lambda *a: None)


def run_jobs(root: Path) -> Path:
    """The jobs of one table row, in `root`, as the workflow chains them (relative paths, as
    Snakemake gives them: the shards record their checkpoints' paths)."""
    root.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(root)
    try:
        _run_jobs(Path("checkpoints"), Path("results"))
        build_table(table_job(root))
    finally:
        os.chdir(here)
    return root


def _run_jobs(ck: Path, res: Path) -> None:
    train_classifier_job(classifier={"seed": 0, "epochs": 1}, output=str(ck / "digits_cnn.safetensors"),
                         info_output=str(ck / "digits_cnn.json"), run_output=str(ck / "digits_cnn.run.json"), **QUIET)
    reference_stats_job(classifier_path=str(ck / "digits_cnn.safetensors"), output=str(res / "stats.npz"))
    checkpoints = {}
    for seed, role in enumerate(("small", "large")):
        torch.manual_seed(seed)
        checkpoints[role] = str(ck / f"{role}.safetensors")
        save_checkpoint(checkpoints[role], build_dit(DIT).state_dict())
    sample_shard(method="tstitch", setting_values={"ratio": 0.0}, checkpoints=checkpoints,
                 model_configs={"small": DIT, "large": DIT}, sampling=SAMPLING, seed=0, batch_size=8,
                 num_samples=8, output=str(res / "shard-0.npz"), **QUIET)
    score_setting(shards=[str(res / "shard-0.npz")], classifier_path=str(ck / "digits_cnn.safetensors"),
                  reference_path=str(res / "stats.npz"), scoring=SCORING, config={"seed": 0, "compute": {"device": "cpu"}},
                  output=str(res / "r0.json"), features_output=str(res / "r0.features.npz"),
                  reference_run=R0, **QUIET)
    entry = {"checkpoints": checkpoints, "model_configs": {"small": DIT, "large": DIT}, "sampling": SAMPLING,
             "timing": {"batch_size": 8, "warmup": 0, "repeats": 1, "forward_repeats": 1, "threads": 1}}
    time_table_settings(settings=[{**R0, "baseline": R0}], methods={"tstitch": entry}, seed=0,
                        config={"seed": 0}, output=str(res / "timing.json"), **QUIET)


def table_job(root: Path) -> TableJob:
    res, reports = root / "results", root / "reports"
    return TableJob(name="tstitch", entry={"method": "tstitch", "paper": "dit_s_xl_ddim100"},
                    inputs={"scores": [str(res / "r0.json")], "timings": [str(res / "timing.json")],
                            "features": [str(res / "r0.features.npz")], "reference": str(res / "stats.npz"),
                            "paper": str(ROOT / "reports/paper/tstitch.yaml")},
                    outputs={"csv": str(reports / "t.csv"), "md": str(reports / "t.md"),
                             "claims": str(reports / "c.md")}, scoring=SCORING)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return run_jobs(tmp_path_factory.mktemp("made"))


@pytest.fixture
def copy(made, tmp_path):
    """A copy of the module's results to damage (the table job reads paths under it)."""
    return Path(shutil.copytree(made, tmp_path / "copy"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_runs_write_identical_bytes(made, tmp_path):
    """Checkpoints, shards, scores, features and statistics: byte for byte. Only the run's
    own record (the training time) and what holds measured times may differ."""
    again = run_jobs(tmp_path / "again")
    timing = {"checkpoints/digits_cnn.run.json", "results/timing.json", "reports/t.csv", "reports/t.csv.sha256",
              "reports/t.md", "reports/c.md"}
    files = sorted(str(p.relative_to(made)) for p in made.rglob("*") if p.is_file())
    assert "checkpoints/digits_cnn.safetensors" in files and "results/shard-0.npz" in files
    assert {f: sha256(made / f) for f in files if f not in timing} == \
           {f: sha256(again / f) for f in files if f not in timing}
    assert "train_seconds" in json.loads((made / "checkpoints/digits_cnn.run.json").read_text())


def test_the_table_builds_from_intact_results(copy):
    build_table(table_job(copy))
    assert (copy / "reports/t.csv.sha256").read_text().split()[0] == sha256(copy / "reports/t.csv")


def test_a_truncated_score_file_names_itself_and_the_rebuild_command(copy, monkeypatch):
    monkeypatch.setenv(CONFIGFILES_ENV, "config/smoke.yaml")
    score = copy / "results/r0.json"
    score.write_text(score.read_text()[:200])
    with pytest.raises(DamagedResult) as err:
        build_table(table_job(copy))
    assert str(err.value) == (f"{score} is damaged: not valid JSON (truncated or corrupted). Rebuild it with "
                              f"`snakemake --cores all --configfile config/smoke.yaml --force {score}`, "
                              f"then rerun your snakemake command.")
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no JSONDecodeError chained in


def test_a_hand_edited_score_is_refused(copy):
    score = copy / "results/r0.json"
    record = json.loads(score.read_text())
    record["metrics"]["fid"] = 1.0  # a better FID, content_sha256 left as it was
    score.write_text(json.dumps(record, indent=2))
    with pytest.raises(DamagedResult, match=r"r0.json is damaged: its content does not match its recorded sha256"):
        build_table(table_job(copy))
    del record["content_sha256"]  # or its hash removed
    score.write_text(json.dumps(record, indent=2))
    with pytest.raises(DamagedResult, match=r"r0.json is damaged: it records no content_sha256"):
        build_table(table_job(copy))


def test_a_damaged_timing_file_is_refused(copy):
    timing = copy / "results/timing.json"
    timing.write_text(timing.read_text().replace('"repeats": 1', '"repeats": 2'))
    with pytest.raises(DamagedResult, match=r"timing.json is damaged: its content does not match"):
        build_table(table_job(copy))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_the_score_job_refuses_a_damaged_shard(copy, damage):
    import numpy as np

    shard = copy / "results/shard-0.npz"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:  # one bit of one pixel (zip's CRC catches it)
        with np.load(shard) as arrays:
            data[data.find(arrays["images"].tobytes()) + 5] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DamagedResult, match=rf"{shard} is damaged: not a readable .npz[\s\S]*--force {shard}`"):
        score_setting(shards=[str(shard)], classifier_path=str(copy / "checkpoints/digits_cnn.safetensors"),
                      reference_path=str(copy / "results/stats.npz"), scoring=SCORING, config={"seed": 0, "compute": {"device": "cpu"}},
                      output=str(copy / "results/again.json"), features_output=str(copy / "results/again.npz"),
                      reference_run=R0, **QUIET)


def test_a_rewritten_shard_without_its_hash_is_refused(copy):
    import numpy as np

    from diffrepro.jobs import read_shards

    shard = copy / "results/shard-0.npz"
    with np.load(shard) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["labels"] = np.zeros_like(arrays["labels"])
    np.savez(shard, **arrays)  # edited and saved with its old hash: the arrays no longer match it
    with pytest.raises(DamagedResult, match=r"shard-0.npz is damaged: its arrays do not match"):
        read_shards([str(shard)])


def test_a_figure_refuses_an_edited_table_csv(copy):
    build_table(table_job(copy))
    csv = copy / "reports/t.csv"
    csv.write_text(csv.read_text().replace("9.2", "1.2"))
    job = FigureJob(name="tstitch", figure="pareto", entry={"method": "tstitch"}, csv=str(csv),
                    inputs={}, png="", svg="")
    with pytest.raises(ChecksumMismatch, match=r"t.csv is damaged: its sha256 \w{12}\.\.\. is not the recorded"):
        job.table()


def test_a_corrupted_checkpoint_names_the_rebuild_command(copy, monkeypatch):
    monkeypatch.setenv(CONFIGFILES_ENV, "config/smoke.yaml")
    checkpoint = copy / "checkpoints/digits_cnn.safetensors"
    data = bytearray(checkpoint.read_bytes())
    data[-10] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch) as err:
        load_checkpoint(checkpoint)
    assert str(err.value).startswith(f"{checkpoint} is damaged: its sha256 ")
    assert str(err.value).endswith(f"Rebuild it with `snakemake --cores all --configfile config/smoke.yaml "
                                   f"--force {checkpoint}`, then rerun your snakemake command.")
    (copy / "checkpoints/digits_cnn.safetensors.sha256").unlink()
    with pytest.raises(DamagedResult, match=r"checksum file \S+.sha256 is missing"):
        load_checkpoint(checkpoint)


def test_hashing_keeps_every_value(tmp_path):
    import numpy as np

    record = {"fid": 0.1 + 0.2, "tiny": 5e-324, "nan": float("nan"), "int": 3, "np": np.float32(0.3),
              "keys": {8: 1, 32: 2}, "nested": [1.0, [2, 3]]}
    write_hashed_json(tmp_path / "r.json", record)
    back = read_verified_json(tmp_path / "r.json")
    plain = json.loads(json.dumps(record, default=lambda o: o.item()))
    assert json.dumps(back, sort_keys=True) == json.dumps(plain, sort_keys=True)


def test_the_rebuild_command_quotes_paths_and_names_the_run_config(monkeypatch):
    monkeypatch.delenv(CONFIGFILES_ENV, raising=False)
    assert rebuild_command("results/a b.json") == "snakemake --cores all --force 'results/a b.json'"
    monkeypatch.setenv(CONFIGFILES_ENV, "config/default.yaml config/mine.yaml")
    assert rebuild_command("x.json") == \
        "snakemake --cores all --configfile config/default.yaml config/mine.yaml --force x.json"
