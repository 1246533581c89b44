"""Host memory of the process that ran the cell."""

from __future__ import annotations

import resource
import sys

import psutil


def peak_host_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def current_host_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20
