"""A mistyped config is refused before any job in at most 20 lines naming the file and line,
the key, the value, what is allowed and the fix; nothing a user wrote is replaced."""

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from diffrepro.config import MAX_SAMPLES, ConfigError, prepare_config
from diffrepro.configfile import ConfigFileError, read_config_file, typed_command_line
from diffrepro.engines.denoiser import steps_for
from diffrepro.methods import build_dataclass
from diffrepro.validation import schema_defaults
from workflow_run import copy_repository, snakemake

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config/default.yaml"


def load(*files: Path, command_line: dict | None = None) -> dict:
    """What the Snakefile does: Snakemake merges the files and --config, then prepare_config."""
    config: dict = {}
    for path in files:
        _merge(config, yaml.safe_load(path.read_text()))
    _merge(config, copy.deepcopy(command_line or {}))
    return prepare_config(config, files=list(files), command_line=command_line or {})


def _merge(into: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def refused(tmp_path, text: str, command_line: dict | None = None) -> str:
    user = tmp_path / "mine.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(DEFAULT, user, command_line=command_line)
    message = str(err.value)
    assert message.startswith("config error: ") and len(message.splitlines()) <= 20, message
    return message


def test_the_shipped_default_passes_and_gets_the_schemas_defaults():
    config = load(DEFAULT)
    assert config["compute"] == {**schema_defaults("compute"), "device": "cpu"}  # default.yaml sets the device
    assert config["downloads"]["retries"] == 5 and config["resources"]["default"]["mem_mb"] == 4000


def test_a_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  num_samples: 16\n  steps: [1, 2\nseed: 0\n")
    with pytest.raises(ConfigFileError, match=r"bad.yaml is not valid YAML\n  in: .*bad.yaml, line 4"):
        read_config_file(bad)


def test_a_key_given_twice_is_an_error(tmp_path):
    message = refused(tmp_path, "sampling:\n  num_samples: 16\n  batch_size: 8\n  num_samples: 32\n")
    assert "key sampling.num_samples is given twice" in message
    assert "mine.yaml, line 4 (first at line 2)" in message


def test_an_unknown_key_is_named_with_its_line_and_the_likely_name(tmp_path):
    message = refused(tmp_path, "seed: 0\nsampling:\n  num_sampels: 16\n")
    assert message.splitlines()[:2] == ["config error: sampling.num_sampels = 16",
                                        f"  in: {tmp_path / 'mine.yaml'}, line 3"]
    assert "did you mean 'num_samples'?" in message and len(message.splitlines()) == 4


def test_a_missing_key_is_named():
    config = yaml.safe_load(DEFAULT.read_text())
    del config["timing"]["repeats"]
    with pytest.raises(ConfigError, match=r"timing.repeats = '\(missing\)'\n  in: config/default.yaml, line \d+"):
        prepare_config(config, files=[DEFAULT], command_line={})


@pytest.mark.parametrize("text, expected", [
    ("sampling:\n  num_samples: lots\n", "sampling.num_samples = 'lots'\n  in: {f}, line 2\n  allowed: a value of type integer"),
    ("sampling:\n  num_samples: '16'\n", "fix: write num_samples: 16 without quotes"),
    ("methods:\n  tstitch:\n    grid: {ratio: ['0.5']}\n",
     "methods.tstitch.grid: method 'tstitch' setting ratio = '0.5': must be a number (write it without quotes)\n  in: {f}, line 3"),
    ("compute: {precision: fp64}\n", "compute.precision = 'fp64'\n  in: {f}, line 1\n  allowed: one of fp32, bf16, fp16"),
])
def test_a_wrong_type_names_key_value_and_fix(tmp_path, text, expected):
    assert expected.format(f=tmp_path / "mine.yaml") in refused(tmp_path, text)


def test_nested_command_line_values_are_read_as_yaml():
    # Snakemake hands `--config 'sampling={num_samples: 16}'` over as {'num_samples': '16'}
    assert typed_command_line({"sampling": {"num_samples": "16", "sampler": "ddim", "x": ["1", "0.5", "true"]},
                               "suite": "1e3"}) == \
        {"sampling": {"num_samples": 16, "sampler": "ddim", "x": [1, 0.5, True]}, "suite": "1e3"}
    config = load(DEFAULT, command_line={"sampling": {"num_samples": "16", "num_shards": "2"}})
    assert config["sampling"]["num_samples"] == 16 and config["sampling"]["num_shards"] == 2


def test_a_command_line_value_is_located_on_the_command_line():
    with pytest.raises(ConfigError, match=r"sampling.num_samples = -3\n  in: --config on the command line"):
        load(DEFAULT, command_line={"sampling": {"num_samples": "-3"}})


@pytest.mark.parametrize("text, expected", [
    (f"sampling: {{num_samples: {10**12}}}\n",
     f"sampling.num_samples: 1,000,000,000,000 samples for methods.tstitch is more than the bound {MAX_SAMPLES:,}"),
    ("sampling: {num_samples: 4, num_shards: 5}\n",
     "sampling.num_shards: 5 shards for 4 samples of methods.tstitch leaves shards empty; set num_shards <= 4"),
    ("sampling: {num_samples: 900000, num_shards: 1}\n", "set num_shards >= 165"),
])
def test_absurd_sizes_are_refused_with_the_bound(tmp_path, text, expected):
    message = refused(tmp_path, text)
    assert expected in message and f"in: {tmp_path / 'mine.yaml'}, line 1" in message


def test_no_setting_value_is_replaced_by_a_default():
    @dataclass(frozen=True)
    class Mine:
        steps: int
        scale: float = 1.0

    with pytest.raises(ValueError, match=r"steps = 0: must be an integer in \[1, 1000\]"):
        build_dataclass(Mine, {"steps": 0}, owner="method 'mine'", noun="setting")
    with pytest.raises(ValueError, match=r"scale = True: must be a number"):
        build_dataclass(Mine, {"steps": 5, "scale": True}, owner="method 'mine'", noun="setting")
    assert build_dataclass(Mine, {"steps": 5, "scale": 2}, owner="m", noun="setting").scale == 2
    # a setting's own step count is used even when falsy; only an absent one means the config's
    assert steps_for(SimpleNamespace(steps=0), {"steps": 10}) == 0
    assert steps_for(SimpleNamespace(), {"steps": 10}) == 10


@pytest.mark.slow
def test_snakemake_shows_the_short_message_for_the_default_config_and_a_nested_config(tmp_path):
    work = copy_repository(tmp_path)
    default = work / "config/default.yaml"
    text = default.read_text()
    default.write_text(text.replace("seed: 0\n", "seed: 0\nseed: 1\n", 1))
    result = snakemake(work, "-n", "reproduce_tstitch_table", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "key seed is given twice\n  in: config/default.yaml, line" in output
    assert len(output.splitlines()) <= 22, output
    default.write_text(text)
    result = snakemake(work, "-n", "reproduce_tstitch_table", "--config",
                       "sampling={num_samples: 16, num_shards: 1, batch_size: 8}")
    assert "reproduce_tstitch_table" in result.stdout


def test_a_pipeline_job_declares_the_training_summaries_it_reads():
    """check_text_encoder reads <checkpoint>.train.json: the DAG must know (rebuilt, ordered)."""
    from diffrepro.plan import Plan

    plan = Plan(load(DEFAULT))
    inputs = plan.sample_inputs(SimpleNamespace(method="tstitch_sd"))
    models = plan.config["methods"]["tstitch_sd"]["models"]
    assert inputs["train_summaries"] == [f"{plan.checkpoints}/{m}.train.json" for m in models.values()]
    timing = plan.timing_inputs(SimpleNamespace(table="tstitch_sd"))
    assert set(inputs["train_summaries"]) <= set(timing["checkpoints"])
    assert "train_summaries" not in plan.sample_inputs(SimpleNamespace(method="tstitch"))


def test_the_check_command_names_the_line_of_a_syntax_error_snakemake_would_not(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  num_samples: [1\n")
    result = subprocess.run([sys.executable, "-m", "diffrepro", "check", "--configfile", str(bad)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and f"in: {bad}, line 3" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "diffrepro", "check", "--configfile", "config/smoke.yaml"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("config ok"), ok.stderr


def test_a_job_gets_its_sections_and_the_whole_configs_hash():
    from diffrepro.provenance import config_hash, job_config

    config = load(DEFAULT)
    handed = job_config(config, "compute", "clip", "nonexistent")
    assert set(handed) == {"compute", "clip", "config_sha256"}
    assert config_hash(handed) == config_hash(config)  # provenance records the run's config, not the slice


def test_a_name_that_cannot_be_a_path_or_target_is_refused(tmp_path):
    message = refused(tmp_path, "tables:\n  my table: {kind: tstitch, method: tstitch, paper: dit_s_xl}\n")
    assert "tables.my table = 'my table'\n  in: " in message and "line 2" in message
    assert "fix: rename it: letters, digits and _ only" in message


def test_a_full_disk_leaves_neither_a_partial_result_nor_a_temporary_file(tmp_path, monkeypatch):
    import errno
    import json

    from diffrepro import io

    target = tmp_path / "scores.json"
    target.write_text('{"fid": 1.0}\n')  # what an earlier run computed

    real_write_text = Path.write_text

    def full(self, text, *args, **kwargs):  # half the bytes reach the disk, then it is full
        real_write_text(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(target, {"fid": 2.0})
    assert json.loads(target.read_text()) == {"fid": 1.0} and sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]
