"""The prepared GPU check: random weights at the papers' sizes, one GPU, a few minutes.

    .venv/bin/python benchmarks/gpu_check.py --device cuda --dtype fp16 --out reports/gpu_check --budget-s 480
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check   # the same code, tiny, seconds

Writes OUT/gpu_check.json and OUT/gpu_check.md: T-Stitch DiT-S/2 -> DiT-XL/2 time at all 11
ratios against its ideal beside the paper's RTX 3090 curve, SD-1.4 and BK-SDM U-Net step
latency, ParaTAA iterations x window batch time against sequential DDIM, and the registered
cache baselines' speed-ups on DiT-XL/2 (diffrepro/gpu_check.py says what each part runs).
Run it alone on the machine; `snakemake --cores all reproducibility` then prints
reports/gpu_check/gpu_check.json (tracked: the record of the last GPU run) in REPRODUCIBILITY.md.
A part re-run alone (--parts X --out DIR) joins the record with --merge DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffrepro.gpu_check import PARTS, merge_runs, run_check  # noqa: E402
from diffrepro.io import read_json, write_json, write_text  # noqa: E402
from diffrepro.report.gpu_check import gpu_check_markdown  # noqa: E402
from diffrepro.report.paper import TSTITCH_YAML, load_paper_table  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                        help="default: fp16 on a GPU, fp32 on a CPU")
    parser.add_argument("--out", default="reports/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds the parts may take together")
    parser.add_argument("--tiny", action="store_true", help="tiny models: the same code in seconds (CI)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--merge", metavar="JSON", type=Path,
                        help="run nothing: put this run's parts (gpu_check.json of a re-run of some parts) "
                             "into OUT's record, each part keeping the run it came from")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        missing = [str(p) for p in (out / "gpu_check.json", args.merge) if not p.is_file()]
        if missing:
            parser.error(f"--merge: no record at {', '.join(missing)}; run the check into --out first "
                         f"(or name the re-run's gpu_check.json)")
        try:
            result = merge_runs(read_json(out / "gpu_check.json"), read_json(args.merge))
        except ValueError as error:
            parser.error(f"--merge {args.merge} into {out / 'gpu_check.json'}: {error}")
        return _write(out, result)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch here; use --device cpu --tiny for the CI run")
    dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    paper = load_paper_table(TSTITCH_YAML, "dit_s_xl_ddim100").to_dict(orient="list")
    result = run_check(device=args.device, dtype=dtype, budget_s=args.budget_s, tiny=args.tiny, paper=paper,
                       parts=tuple(args.parts), log=lambda line: print(line, flush=True))
    return _write(out, result)


def _write(out: Path, result: dict) -> dict:
    write_json(out / "gpu_check.json", result)
    write_text(out / "gpu_check.md", gpu_check_markdown(result))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return result


if __name__ == "__main__":
    main()
