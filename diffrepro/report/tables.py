"""The table and figure jobs: what a table kind is handed (TableJob, FigureJob) and the two
entry points the workflow's `table` and `figure` rules call. A kind's build and draw functions
read their inputs through these objects, so none of them knows about Snakemake."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from .kinds import TableKind, kind_of
from .paper import load_paper_table, paper_source, paper_timing_batch


@dataclass
class TableJob:
    """One table's inputs, settings and output paths (csv, md, claims)."""

    name: str
    entry: Mapping[str, Any]
    inputs: Mapping[str, Any]           # rule inputs by name: scores, timings, features, reference, paper, ...
    outputs: Mapping[str, str]          # csv, md, claims
    setting_note: str = ""
    scoring: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)  # the kind's own config extract

    @property
    def kind(self) -> TableKind:
        return kind_of(self.entry)

    @property
    def methods(self) -> list[str]:
        return self.kind.methods(self.entry)

    # -- published numbers (reports/paper/<kind.paper>.yaml, table entry['paper']) -----------
    @property
    def has_paper(self) -> bool:
        return self.kind.paper is not None and self.entry.get("paper") is not None

    def published(self):
        return load_paper_table(self.inputs["paper"], self.entry["paper"]) if self.has_paper else None

    def paper_note(self) -> str:
        if not self.has_paper:
            return ""
        source = paper_source(self.inputs["paper"], self.entry["paper"])
        return f"{source['description']} ({source['source']})"

    def timing_batch(self) -> int:
        """The batch the published times are for (the DiT figures: 8)."""
        return paper_timing_batch(self.inputs["paper"], self.entry["paper"]) if self.has_paper else 8

    # -- our results --------------------------------------------------------------------------
    @cached_property
    def records(self) -> list[dict]:
        """One record per (method, setting): its score file with its timing under 'timing', and
        the paired bootstrap SE of FID(setting) - FID(its reference run)."""
        from ..jobs import attach_paired_fid_se, bootstrap_distance, merge_records

        records = merge_records(self.inputs["scores"], self.inputs["timings"])
        # Score jobs compute the paired SE; this fills it in for score files written before.
        attach_paired_fid_se(records, self.inputs["features"], self.inputs["reference"],
                             reps=self.scoring["bootstrap_reps"], seed=self.scoring["seed"],
                             distance=bootstrap_distance(self.scoring))
        return records

    def labels(self) -> dict[str, str]:
        from .format import labels_from_records

        return labels_from_records(self.records)


@dataclass
class FigureJob:
    """One figure of a table: the table's CSV as built, its inputs, and where to draw."""

    name: str
    figure: str
    entry: Mapping[str, Any]
    csv: str
    inputs: Mapping[str, Any]
    png: str
    svg: str
    title: str = ""
    timing_batch: int = 8
    context: Mapping[str, Any] = field(default_factory=dict)

    def table(self):
        from ..integrity import read_verified_csv

        table = read_verified_csv(self.csv)
        table.attrs["timing_batch"] = self.timing_batch
        return table

    def score_records(self) -> list[dict]:
        from ..jobs import read_score

        return [read_score(path) for path in self.inputs["scores"]]

    def labels(self) -> dict[str, str]:
        from .format import labels_from_records

        return labels_from_records(self.score_records())


def build_table(job: TableJob) -> None:
    """Rule `table`: the kind writes job.outputs csv, md and claims; a sampling table's
    Markdown then gets its cost beside time (report.cost: NFE, FLOPs, p50 / p90, images/s per
    setting), here so every kind has it; the CSV's sha256 goes beside it (here, so no kind can
    forget it), checked by the figures that read it."""
    from ..integrity import record_sidecar

    job.kind.build(job)
    if job.kind.stage == "sampling" and {"scores", "timings"} <= set(job.inputs):
        from pathlib import Path

        from ..io import write_text
        from .cost import cost_markdown

        md = Path(job.outputs["md"])
        write_text(md, md.read_text().rstrip("\n") + "\n\n" + cost_markdown(job.records, job.methods))
    record_sidecar(job.outputs["csv"])


def draw_figure(job: FigureJob) -> None:
    """Rule `figure`: the kind draws job.figure into job.png and job.svg."""
    kind = kind_of(job.entry)
    if job.figure not in kind.figures:
        raise ValueError(f"table {job.name!r} ({kind.name}) has no figure {job.figure!r}; "
                         f"its figures: {sorted(kind.figures)}")
    kind.figures[job.figure](job)


def as_dict(named: Any) -> dict[str, Any]:
    """A Snakemake Namedlist (input, output) as a plain dict of its named entries."""
    return {name: (list(value) if isinstance(value, (list, tuple)) else value)
            for name, value in named.items()}
