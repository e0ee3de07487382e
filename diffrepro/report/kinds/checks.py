"""Config checks shared by table kinds (config.check_config runs the common ones for every table)."""

from __future__ import annotations


def check_paper_timing_batch(config: dict, table: str, entry: dict) -> None:
    """Our time column is comparable with the paper's only at the paper's batch."""
    from ...config import ConfigError, method_timing
    from ..paper import PAPER_DIR, paper_timing_batch

    published = paper_timing_batch(PAPER_DIR / "tstitch.yaml", entry["paper"])
    batch = method_timing(config, entry["method"])["batch_size"]
    if batch != published:
        raise ConfigError(f"config key methods.{entry['method']}.timing.batch_size: {batch}, but the paper "
                          f"times {published} image(s) (tables.{table}.paper); set it to {published}")
