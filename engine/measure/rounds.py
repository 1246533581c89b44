"""Speedups that survive a drifting machine: a cell and its baseline timed in alternating rounds.

Two cells timed minutes apart each carry the machine's state of their moment (another job, a throttled core,
a neighbour's cache). Timed in short alternating blocks, both see the same moments, and the ratio of each
round's medians cancels what drifts slower than a round. The order flips every round (ABBA), so a trend
within a round lands on both sides alike. The speedup is the median of the per-round ratios, with the
distribution-free 95% interval of a median from order statistics (no assumption about how ratios spread;
one disturbed round moves neither the median nor, alone, the interval's ends).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.results import Rounds

# Fewer rounds than this cannot give a 95% interval of a median from order statistics (0.5**5 * 2 > 0.05).
MIN_ROUNDS_FOR_INTERVAL = 6
MAX_ROUNDS = 1000
# Each block lasts about this share of the cell's min_seconds (0.2 s at the default 2 s), and at least
# MIN_BLOCK_ITERATIONS calls: long enough for a stable median, short enough that drift within a round is small.
BLOCK_SHARE = 0.1
MIN_BLOCK_ITERATIONS = 5
MAX_BLOCK_ITERATIONS = 100_000
# Untimed calls at the start of each block: the other process just ran and evicted this one's caches.
BLOCK_WARMUP = 2
# Pause before each block: ONNX Runtime's and OpenMP's worker threads spin for a while after a call, and on a
# machine whose cores the study's threads fill, the other process's spinning threads would slow this block.
SETTLE_S = 0.03

TimeBlock = Callable[[], np.ndarray]


def block_iterations(p50_ms: float, block_seconds: float) -> int:
    """Calls per block for a cell whose call takes `p50_ms`: about `block_seconds`, within the bounds above."""
    if not p50_ms > 0:
        return MIN_BLOCK_ITERATIONS
    wanted = math.ceil(block_seconds * 1e3 / p50_ms)
    return int(min(max(wanted, MIN_BLOCK_ITERATIONS), MAX_BLOCK_ITERATIONS))


def block_seconds(min_seconds: float) -> float:
    return BLOCK_SHARE * min_seconds


def settle() -> None:
    """Wait for the other process's worker threads to stop spinning (SETTLE_S)."""
    time.sleep(SETTLE_S)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The distribution-free interval of the median: order statistics (k, n-k+1) with the binomial's coverage.

    None with fewer than MIN_ROUNDS_FOR_INTERVAL values: no pair of order statistics covers 95% then.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n < MIN_ROUNDS_FOR_INTERVAL:
        return None
    # the largest k with P(B(n, 1/2) < k) <= (1 - confidence) / 2 on each side
    tail = (1.0 - confidence) / 2.0
    cumulative, k = 0.0, 0
    for j in range(n + 1):
        cumulative += math.comb(n, j) / 2.0**n
        if cumulative > tail:
            k = j
            break
    k = max(k, 1)
    return float(x[k - 1]), float(x[n - k])


@dataclass(frozen=True)
class Paired:
    """A cell's speedup over its baseline from alternating rounds: the `paired` record of a cell's result."""

    baseline_cell: int
    ratios: list[float]  # baseline median / cell median, per round
    cell_p50_ms: float  # median over every round's samples
    baseline_p50_ms: float
    iterations: tuple[int, int]  # calls per block: (cell, baseline)

    @property
    def speedup(self) -> float:
        return float(np.median(self.ratios))

    @property
    def ci95(self) -> tuple[float, float] | None:
        return median_interval(self.ratios)

    def record(self) -> Rounds:
        """The result's `paired` record."""
        return Rounds(baseline_cell=self.baseline_cell, rounds=len(self.ratios), speedup=self.speedup, ci95=self.ci95,
                      ratios=tuple(round(r, 6) for r in self.ratios), cell_p50_ms=self.cell_p50_ms,
                      baseline_p50_ms=self.baseline_p50_ms, block_iterations=self.iterations)


def run_rounds(time_cell: TimeBlock, time_baseline: TimeBlock, rounds: int, baseline_cell: int,
               iterations: tuple[int, int], progress: Callable[[str, float], None] = lambda phase, f: None,
               between: Callable[[], None] = lambda: None) -> Paired:
    """Time `rounds` pairs of blocks, cell first in even rounds and baseline first in odd ones.

    `time_cell` / `time_baseline` each time one block and return its samples (ms); `between` runs before every
    block (the caller's pause that lets the other process's spinning threads go idle).
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")
    ratios: list[float] = []
    cell_all: list[np.ndarray] = []
    base_all: list[np.ndarray] = []
    progress("interleaved rounds", 0.0)
    for r in range(rounds):
        order = (time_cell, time_baseline) if r % 2 == 0 else (time_baseline, time_cell)
        timed = {}
        for timer in order:
            between()
            timed[timer is time_cell] = np.asarray(timer(), dtype=np.float64)
        cell, base = timed[True], timed[False]
        cell_all.append(cell)
        base_all.append(base)
        ratios.append(float(np.median(base) / np.median(cell)))
        progress("interleaved rounds", (r + 1) / rounds)
    return Paired(baseline_cell, ratios, float(np.median(np.concatenate(cell_all))),
                  float(np.median(np.concatenate(base_all))), iterations)
