"""The time and memory limits of the child processes that open a user's files or run a cell."""

from __future__ import annotations

import os


def default_memory_limit_mb() -> float:
    """80% of the machine's memory: a runaway cell fails alone instead of taking the machine down."""
    import psutil

    return round(psutil.virtual_memory().total * 0.8 / 2**20)


def inspect_timeout_s() -> float:
    """The inspecting child's time limit: `PARETOSCOPE_INSPECT_TIMEOUT_S`, default 600 s."""
    return float(os.environ.get("PARETOSCOPE_INSPECT_TIMEOUT_S", 600))


def inspect_memory_mb() -> float:
    """The inspecting child's address-space cap: `PARETOSCOPE_INSPECT_MEMORY_MB`, else a cell's default."""
    raw = os.environ.get("PARETOSCOPE_INSPECT_MEMORY_MB")
    return float(raw) if raw else default_memory_limit_mb()
