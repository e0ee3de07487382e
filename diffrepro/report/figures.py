"""Saving figures: atomic, byte-stable files and titles that fit the figure."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Save to a temp file with the same extension (matplotlib picks the format from it), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        # No timestamp in the SVG, so an unchanged plot gives an unchanged file.
        metadata = {"Date": None} if path.suffix.lower() == ".svg" else None
        fig.savefig(tmp, dpi=150, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png_svg(fig: plt.Figure, png: str | os.PathLike, svg: str | os.PathLike) -> None:
    """Lay the figure out, save it as PNG and SVG (each atomically) and close it."""
    try:
        fig.tight_layout()
        save_figure(fig, png)
        save_figure(fig, svg)
    finally:
        plt.close(fig)


def wrapped_title(fig: plt.Figure, title: str, fontsize: float = 9) -> None:
    """A figure title wrapped to the figure's width: a setting note on one line was wider than
    the figure and cut at both edges. ~0.55 em per character at this size."""
    width_pt = fig.get_figwidth() * 72
    chars = max(40, int(width_pt / (0.55 * fontsize)))
    fig.suptitle("\n".join(textwrap.wrap(title, chars)), fontsize=fontsize)
