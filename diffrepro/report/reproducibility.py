"""REPRODUCIBILITY.md, written from result files and a prose template (workflow/report/reproducibility.md.j2).

Every number in it comes from a table or claims file a rule wrote; the prose says what each
table reproduces and how to regenerate it. A configured table whose results were not part of
this build is listed as not regenerated, never filled from an older run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..integrity import read_verified_json


@dataclass
class Section:
    """One configured table: its kind, target and, when regenerated, its files' text."""

    name: str
    kind: str
    summary: str
    target: str
    regenerated: bool = False
    table: str = ""          # the table's Markdown, headings demoted under the section's
    claims: str = ""
    commits: list[str] = field(default_factory=list)   # of the results shown ("<sha>" or "<sha>+dirty")
    configs: list[str] = field(default_factory=list)   # sha256 of the resolved config, 12 hex digits
    machine: str = ""


def nest(markdown: str, top: int = 3) -> str:
    """Shift the headings so the highest becomes level `top` (under the section's '## ')."""
    levels = [len(m) for m in re.findall(r"^(#+) ", markdown, flags=re.M)]
    shift = top - min(levels) if levels else 0
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + shift) + " ", markdown, flags=re.M).strip()


def _provenance(score_paths: Sequence[str]) -> tuple[list[str], list[str], str]:
    commits, configs, machines = [], [], []
    for path in score_paths:
        prov = read_verified_json(path).get("provenance", {})
        git = prov.get("git", {})
        if git.get("commit"):
            commits.append(git["commit"][:12] + ("+dirty" if git.get("dirty") else ""))
        if prov.get("config_sha256"):
            configs.append(prov["config_sha256"][:12])
        cpu, torch_version = prov.get("cpu"), prov.get("packages", {}).get("torch")
        if cpu or torch_version:
            machines.append(f"{prov.get('device', 'cpu')} ({cpu}), torch {torch_version}, "
                            f"{prov.get('torch_threads', '?')} torch thread(s) for scoring")
    unique = lambda items: sorted(dict.fromkeys(items))  # noqa: E731
    return unique(commits), unique(configs), "; ".join(unique(machines))


def sections(tables: Mapping[str, Mapping[str, Any]], kinds: Mapping[str, Any], targets: Mapping[str, str],
             files: Mapping[str, Mapping[str, Any]]) -> list[Section]:
    """A section per configured table, in config order; `files[table]` = {table, claims, scores}
    for the tables this build regenerated."""
    out = []
    for name in tables:
        kind = kinds[name]
        section = Section(name=name, kind=kind.name, summary=kind.summary, target=targets[name])
        if name in files:
            made = files[name]
            section.regenerated = True
            section.table = nest(Path(made["table"]).read_text())
            section.claims = nest(Path(made["claims"]).read_text())
            section.commits, section.configs, section.machine = _provenance(made["scores"])
        out.append(section)
    return out


def render(template: str | Path, *, suite: str, config_file: str, sections_: list[Section],
           gpu_check: str | None = None) -> str:
    """gpu_check: the "GPU check" section's text (report.gpu_check.gpu_check_section; by
    default from reports/gpu_check/gpu_check.json under the working directory)."""
    import jinja2

    from .gpu_check import gpu_check_section

    if gpu_check is None:
        gpu_check = gpu_check_section()

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(template).parent)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    text = env.get_template(Path(template).name).render(suite=suite, config_file=config_file,
                                                        sections=sections_, gpu_check=gpu_check)
    return re.sub(r"\n{3,}", "\n\n", text)
