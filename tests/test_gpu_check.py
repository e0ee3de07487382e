"""The prepared GPU check (benchmarks/gpu_check.py) runs its whole code path on tiny models on
the CPU: every part, the JSON and the Markdown written from it, the budget guard, the cache
part's lookup of registered methods, and REPRODUCIBILITY.md's GPU check section."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass

import pytest

from diffrepro import gpu_check, methods
from diffrepro.report.gpu_check import gpu_check_markdown, gpu_check_section
from workflow_run import ROOT

pytestmark = pytest.mark.slow  # the tiny check: about 10 s on 2 shared cores


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class FewerCalls:
    every: int = 2  # reuse the last output on every other step


def cache_every_other(models, sampler, noise, labels, generators, setting):
    """A stand-in cache method: the network on every other step, its last output otherwise."""
    from diffrepro.diffusion.sampling import sample_loop

    model, last = models["model"], {}

    def fresh(x, t, y):
        last["out"] = model(x, t, y)
        return last["out"]

    def pick(i, t):
        return ("model", fresh) if i % setting.every == 0 else ("reused", lambda x, t, y: last["out"])
    samples, steps = sample_loop(sampler, pick, noise, labels, generators)
    return methods.MethodOutput(samples, {"model": steps["model"]})


def para_finite(parts) -> bool:
    return parts["parataa"]["samples_finite"] and all(r["samples_finite"] for r in parts["cache"]["rows"])


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    methods.load_plugins()
    registry = dict(methods._REGISTRY)
    methods.register_method("cache_every_other", setting=FewerCalls, roles=("model",))(cache_every_other)
    try:
        result = _script().main(["--device", "cpu", "--tiny", "--out", str(out), "--budget-s", "300"])
    finally:
        methods._REGISTRY.clear()
        methods._REGISTRY.update(registry)
    return out, result


def test_the_tiny_check_writes_every_part(checked):
    out, result = checked
    assert json.loads((out / "gpu_check.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "gpu_check.md").read_text() == gpu_check_markdown(result)
    assert result["tiny"] and result["machine"]["gpu"] is None and result["machine"]["dtype"] == "fp32"
    parts = result["parts"]
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(gpu_check.PARTS, "done")
    # T-Stitch: all 11 ratios; the ideal meets the measured time at both ends by construction
    rows = parts["tstitch"]["rows"]
    assert [r["ratio"] for r in rows] == list(gpu_check.RATIOS)
    assert rows[0]["vs_ideal"] == pytest.approx(0) and rows[-1]["vs_ideal"] == pytest.approx(0)
    assert [r["model_steps"]["small"] for r in rows] == sorted(r["model_steps"]["small"] for r in rows)
    flops = [r["flops_speedup"] for r in rows]
    assert flops[0] == 1 and flops == sorted(flops) and flops[-1] > 1
    assert parts["tstitch"]["samples_finite"] and para_finite(parts)
    assert rows[4]["paper_time_s"] == 11.0  # the paper's RTX 3090 curve beside ours (reports/paper/tstitch.yaml)
    # BK-SDM: the students have fewer parameters and FLOPs than SD-1.4
    unets = {r["model"]: r for r in parts["bksdm"]["rows"]}
    assert list(unets) == ["sd-v1.4", "base", "small", "tiny"] and unets["sd-v1.4"]["vs_sd14"] == 1
    assert all(unets[v]["flops_vs_sd14"] < 1 and unets[v]["params_m"] < unets["sd-v1.4"]["params_m"]
               for v in ("base", "small", "tiny"))
    # ParaTAA: iterations x one window batch beside its measured time and the sequential sampler's
    para = parts["parataa"]
    assert 1 <= para["iterations"] <= para["setting"]["steps"]
    assert para["iterations_x_window_s"] == pytest.approx(para["iterations"] * para["window_batch_s"])
    assert para["gflops_per_image"]["parataa"] > para["gflops_per_image"]["sequential"] > 0
    # the registered cache method: the network on every other step, FLOPs in proportion
    rows = {r["label"]: r for r in parts["cache"]["rows"]}
    row = rows["cache_every_other"]
    assert row["method"] == "cache_every_other" and row["model_steps"]["model"] == (row["steps"] + 1) // 2
    assert row["flops_speedup"] == pytest.approx(row["steps"] / row["model_steps"]["model"])
    # the DiT cache baselines at off and the embedded table's knobs, each against its own off
    assert [r["label"] for r in parts["cache"]["rows"] if r["method"] != "cache_every_other"] == \
        ["pab_dit s1", "pab_dit s2", "pab_dit s3", "taylorseer_dit i1-o1-w3", "taylorseer_dit i2-o1-w3",
         "taylorseer_dit i3-o1-w3", "magcache_dit e0-k3-r0.2", "magcache_dit e0.02-k3-r0.2", "magcache_dit e0.06-k3-r0.2"]
    for off in ("pab_dit s1", "taylorseer_dit i1-o1-w3", "magcache_dit e0-k3-r0.2"):
        assert rows[off]["flops_speedup_vs_off"] == 1 and rows[off]["speedup_vs_off"] == 1
    # (5 tiny steps, 3 of them warm-up: intervals 2 and 3 skip the same step here)
    assert 1 < rows["taylorseer_dit i2-o1-w3"]["flops_speedup_vs_off"] <= rows["taylorseer_dit i3-o1-w3"]["flops_speedup_vs_off"]
    assert rows["pab_dit s3"]["flops_speedup_vs_off"] > 1 and "speedup_vs_off" not in row
    # MagCache's FLOPs leave its calibration out (counted after the timed rounds): a skip can only lower them
    assert 1 <= rows["magcache_dit e0.02-k3-r0.2"]["flops_speedup_vs_off"] <= rows["magcache_dit e0.06-k3-r0.2"]["flops_speedup_vs_off"]
    md = (out / "gpu_check.md").read_text()
    for title in ("T-Stitch against its ideal time", "BK-SDM U-Net step latency", "ParaTAA", "Cache baselines"):
        assert title in md


def test_no_cache_method_and_no_budget_are_said_so(monkeypatch):
    result = gpu_check.run_check(device="cpu", dtype="fp32", budget_s=1e-6, tiny=True, log=lambda *a: None)
    assert all(part["status"] == "skipped" and part["reason"].startswith("budget")
               for part in result["parts"].values())
    assert "cache_every_other" not in gpu_check.cache_methods()  # the fixture's registration was undone
    monkeypatch.setattr(gpu_check, "cache_arms", lambda: [])
    result = gpu_check.run_check(device="cpu", dtype="fp32", budget_s=60, tiny=True, parts=("cache",),
                                 log=lambda *a: None)
    assert result["parts"]["cache"]["status"] == "skipped"
    assert "no cache method is registered" in result["parts"]["cache"]["reason"]
    assert "*skipped*: no cache method is registered" in gpu_check_markdown(result)


def test_reproducibility_says_whether_a_gpu_run_was_recorded(checked, tmp_path):
    out, result = checked
    assert "No GPU run was recorded" in gpu_check_section(tmp_path / "missing.json")
    section = gpu_check_section(out / "gpu_check.json")
    assert section.startswith("- Machine: CPU") and "#### T-Stitch against its ideal time" in section
    assert f"{result['parts']['bksdm']['rows'][0]['step_ms']:.2f}" in section


def test_a_part_re_run_alone_joins_the_record_and_keeps_its_own_run(checked, tmp_path, capsys):
    out, first = checked
    record = tmp_path / "record"
    record.mkdir()
    (record / "gpu_check.json").write_text((out / "gpu_check.json").read_text())
    again = gpu_check.run_check(device="cpu", dtype="fp32", budget_s=60, tiny=True, parts=("parataa",),
                                log=lambda *a: None)
    rerun = tmp_path / "rerun.json"
    rerun.write_text(json.dumps(again))
    merged = _script().main(["--out", str(record), "--merge", str(rerun)])
    assert json.loads((record / "gpu_check.json").read_text()) == json.loads(json.dumps(merged))
    assert list(merged["parts"]) == list(gpu_check.PARTS)
    assert merged["parts"]["parataa"] == json.loads(json.dumps(again["parts"]["parataa"]))
    assert merged["parts"]["tstitch"] == json.loads(json.dumps(first["parts"]["tstitch"]))
    assert [run["parts"] for run in merged["runs"]] == [["tstitch", "bksdm", "cache"], ["parataa"]]
    assert [run["code"]["commit"] for run in merged["runs"]] == [first["code"]["commit"], again["code"]["commit"]]
    md = (record / "gpu_check.md").read_text()
    assert "tstitch, bksdm, cache: started" in md and "; parataa: started" in md
    # re-running the same part again replaces it and drops the run it came from
    assert [run["parts"] for run in gpu_check.merge_runs(merged, again)["runs"]] == \
        [["tstitch", "bksdm", "cache"], ["parataa"]]
    other = {**again, "machine": {**again["machine"], "dtype": "bf16"}}
    with pytest.raises(ValueError, match="dtype 'fp32' vs 'bf16'"):
        gpu_check.merge_runs(merged, other)
    with pytest.raises(ValueError, match="tiny vs paper sizes"):
        gpu_check.merge_runs(merged, {**again, "tiny": False})
    # the script refuses before writing anything, naming the files and the reason
    (tmp_path / "other.json").write_text(json.dumps(other))
    before = (record / "gpu_check.json").read_text()
    for argv, message in [(["--out", str(record), "--merge", str(tmp_path / "other.json")], "dtype 'fp32' vs 'bf16'"),
                          (["--out", str(tmp_path / "none"), "--merge", str(rerun)], "no record at")]:
        with pytest.raises(SystemExit):
            _script().main(argv)
        assert message in capsys.readouterr().err
    assert (record / "gpu_check.json").read_text() == before
