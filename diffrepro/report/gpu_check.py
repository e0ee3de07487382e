"""The GPU check's Markdown (benchmarks/gpu_check.py writes gpu_check.md with it; the
reproducibility rule prints it in REPRODUCIBILITY.md's "GPU check" section), from its JSON.
Every number comes from that file: nothing here is measured or typed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .format import fmt

# where the reproducibility rule looks for the check's result (benchmarks/gpu_check.py --out)
GPU_CHECK_JSON = "reports/gpu_check/gpu_check.json"  # tracked: a GPU run is a record, not rebuilt without one


def _pct(value) -> str:
    return fmt(value, "+.1%")


def _yes(flag) -> str:
    return "yes" if flag else "**no**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _status(part: Mapping[str, Any]) -> list[str] | None:
    if part.get("status") == "done":
        return None
    why = part.get("reason") or part.get("error") or "not run"
    return [f"*{part.get('status', 'not run')}*: {why}", ""]


def _tstitch(part: Mapping[str, Any]) -> list[str]:
    models = part["models"]
    lines = [f"{models['small']} → {models['large']} T-Stitch, {part['images']} images, {part['sampler']}, "
             f"CFG {part['cfg_scale']:g}, {part['rounds']} timed rounds. Ideal = r·T_S + (1−r)·T_XL from the "
             f"r = 1 and r = 0 runs of the same rounds; target: within {part['target']:.0%}. Largest deviation: "
             f"{_pct(part['max_abs_vs_ideal']).lstrip('+')}. Samples finite: {_yes(part['samples_finite'])}.", ""]
    rows = [[fmt(r["ratio"], "g"), fmt(r["median_s"], ".3f"), fmt(r["ideal_s"], ".3f"), _pct(r["vs_ideal"]),
             "yes" if r["within_target"] else "**no**", fmt(r["speedup"], ".2f") + "×",
             fmt(r["gflops_per_image"], ".4g"), fmt(r["flops_speedup"], ".2f") + "×",
             fmt(r.get("paper_time_s"), ".1f"), fmt(r.get("paper_speedup"), ".2f"), _pct(r.get("paper_vs_ideal"))]
            for r in part["rows"]]
    return lines + _table(["r", "time (s)", "ideal (s)", "vs ideal", f"within {part['target']:.0%}", "speed-up",
                           "GFLOPs / image", "FLOPs speed-up", "paper RTX 3090 (s)", "paper speed-up",
                           "paper vs its ideal"], rows) + [""]


def _bksdm(part: Mapping[str, Any]) -> list[str]:
    lines = [f"U-Net step latency, {part['resolution']} px, one image with guidance ({part['rows_per_step']} rows), "
             f"{part['tokens']} tokens, {part['rounds']} timed rounds; random weights.", ""]
    rows = [[r["model"], fmt(r["params_m"], ".4g"), fmt(r["step_ms"], ".2f"), fmt(r["vs_sd14"], ".3f"),
             fmt(r["gflops_per_step"], ".4g"), fmt(r["flops_vs_sd14"], ".3f")] for r in part["rows"]]
    return lines + _table(["U-Net", "params (M)", "ms / step", "time vs SD-1.4", "GFLOPs / step",
                           "FLOPs vs SD-1.4"], rows) + [""]


def _parataa(part: Mapping[str, Any]) -> list[str]:
    s = part["setting"]
    rows = [["ParaTAA", fmt(part["parataa_s"], ".3f"), str(part["iterations"]), fmt(part["window_batch_s"], ".4f"),
             fmt(part["iterations_x_window_s"], ".3f"), fmt(part["measured_vs_iterations_x_window"], ".2f"),
             fmt(part["speedup_vs_sequential"], ".2f") + "×", fmt(part["gflops_per_image"]["parataa"], ".4g")],
            ["sequential DDIM", fmt(part["sequential_s"], ".3f"), str(s["steps"]), "", "", "", "1×",
             fmt(part["gflops_per_image"]["sequential"], ".4g")]]
    return [f"ParaTAA on {part['model']}, {part['images']} image, {part['sampler']}, window {s['window']}, "
            f"order {s['order']}, memory {s['memory']}; {part['rounds']} timed rounds; samples finite: "
            f"{_yes(part['samples_finite'])}. {part['note']}.", ""] + \
        _table(["run", "time (s)", "iterations", "window batch (s)", "iterations × window (s)",
                "time / (iterations × window)", "speed-up vs sequential", "GFLOPs / image"], rows) + [""]


def _cache(part: Mapping[str, Any]) -> list[str]:
    def row(r):
        if "skipped" in r:
            return [r["method"], *[""] * 7, f"skipped: {r['skipped']}"]
        vs_off = (fmt(r["speedup_vs_off"], ".2f") + "×", fmt(r["flops_speedup_vs_off"], ".2f") + "×") \
            if "speedup_vs_off" in r else ("", "")
        return [r.get("label", r["method"]), str(r["steps"]), fmt(r["median_s"], ".3f"), vs_off[0], vs_off[1],
                fmt(r["sequential_s"], ".3f"), fmt(r["speedup"], ".2f") + "×", fmt(r["flops_speedup"], ".2f") + "×",
                _yes(r["samples_finite"])]

    note = f" {part['note'][0].upper()}{part['note'][1:]}." if part.get("note") else ""
    return [f"Cache baselines on {part['model']}, {part['images']} images, DDIM with the same steps, "
            f"{part.get('rounds', '?')} timed rounds.{note}", ""] + \
        _table(["run", "steps", "time (s)", "speed-up vs its off", "FLOPs speed-up vs its off", "sequential (s)",
                "speed-up vs sequential", "FLOPs speed-up vs sequential", "samples finite / note"],
               [row(r) for r in part["rows"]]) + [""]


RENDER = {"tstitch": ("T-Stitch against its ideal time", _tstitch), "bksdm": ("BK-SDM U-Net step latency", _bksdm),
          "parataa": ("ParaTAA: iterations × window batch time", _parataa),
          "cache": ("Cache baselines against sequential DDIM", _cache)}


TINY = "Tiny models (the CI test of the same code), not the papers' sizes"
PAPER = "Random weights at the papers' sizes"


def runs_of(data: Mapping[str, Any]) -> list[dict]:
    """The runs a record's parts came from: its `runs` (a record merged from several runs,
    benchmarks/gpu_check.py --merge), else the one run its top-level fields describe."""
    if data.get("runs"):
        return [dict(run) for run in data["runs"]]
    return [{"started": data["started"], "seconds": data["seconds"], "budget_s": data["budget_s"],
             "parts": [name for name in RENDER if name in data["parts"]],
             **({"code": data["code"]} if "code" in data else {})}]


def _run(run: Mapping[str, Any], name_parts: bool) -> str:
    code = run.get("code") or {}
    at = f" at commit {code['commit'][:12]}{'+dirty' if code.get('dirty') else ''}" if code.get("commit") else ""
    parts = f"{', '.join(run['parts'])}: " if name_parts else ""
    return (f"{parts}started {run['started']}{at}, {fmt(run['seconds'], '.0f')} s of a "
            f"{fmt(run['budget_s'], '.0f')} s budget")


def gpu_check_markdown(data: Mapping[str, Any], top: int = 1) -> str:
    """The check's report; headings start at level `top`."""
    h = "#" * top
    m = data["machine"]
    runs = runs_of(data)
    where = (f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB), CUDA {m.get('cuda')}, TF32 matmul "
             f"{m.get('tf32_matmul')}" if m.get("gpu") else f"CPU ({m.get('cpu')}), {m.get('threads')} threads")
    lines = [f"{h} GPU check", "",
             f"- Machine: {where}; torch {m['torch']}; dtype {m['dtype']} (DiTs: {m['dit_precision']}; "
             f"U-Nets: {m['unet_precision']}).",
             f"- {TINY if data['tiny'] else PAPER}; " + "; ".join(_run(run, len(runs) > 1) for run in runs) + ".",
             "- Written by `benchmarks/gpu_check.py` into gpu_check.json; this text is generated from it.", ""]
    for name, (title, render) in RENDER.items():
        part = data["parts"].get(name)
        lines += [f"{h}# {title}", ""]
        if part is None:
            lines += ["*not run*", ""]
            continue
        lines += _status(part) or render(part)
    return "\n".join(lines).rstrip() + "\n"


def gpu_check_section(path: str | Path = GPU_CHECK_JSON, top: int = 3) -> str:
    """REPRODUCIBILITY.md's GPU check text: the recorded check, or that none was recorded."""
    from ..io import read_json

    path = Path(path)
    if not path.exists():
        return (f"No GPU run was recorded: `{path}` does not exist. On a machine with a GPU, run "
                f"`python benchmarks/gpu_check.py --device cuda --dtype fp16 --out {path.parent} --budget-s 480`, "
                f"then rebuild this document.")
    return gpu_check_markdown(read_json(path), top=top).split("\n", 2)[2].strip()
