"""Steady-state latency: warm-up, then at least N iterations and T seconds, each timed alone."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.measure.rounds import MAX_ROUNDS, MIN_ROUNDS_FOR_INTERVAL

# Progress is reported every this many iterations, outside the timed region.
_REPORT_EVERY = 64
_BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class MeasureSettings:
    warmup: int = 10
    iterations: int = 50
    min_seconds: float = 2.0
    # rounds that time each cell against its baseline alternately (engine.measure.rounds); 0: speedups are
    # ratios of the cells' own timings, taken at different moments
    rounds: int = 10

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be 0 or more")
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations} must be at least 1")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds={self.min_seconds} must be 0 or more")
        if self.rounds < 0 or 0 < self.rounds < MIN_ROUNDS_FOR_INTERVAL or self.rounds > MAX_ROUNDS:
            raise ValueError(f"rounds={self.rounds} must be 0 (off) or from {MIN_ROUNDS_FOR_INTERVAL} (fewer "
                             f"cannot give a 95% interval of the speedup) to {MAX_ROUNDS}")


def measure(session: Any, prepared: Any, settings: MeasureSettings,
            progress: Callable[[str, float], None] = lambda phase, fraction: None) -> np.ndarray:
    """Per-iteration latencies in milliseconds (float64), in the order they ran.

    Each sample spans run() and synchronize() only: inputs were prepared before, outputs are
    converted after. A device session with a `device_timer` (CUDA events) times each call on the
    device and waits for it to end; a host clock around an asynchronous launch would time only the
    launch. The garbage collector is paused while timing so that a collection of unrelated objects
    does not land inside one sample.
    """
    device_timer = getattr(session, "device_timer", None)
    if device_timer is not None:
        return _measure_on_device(session, prepared, settings, progress, device_timer)
    run, sync = session.run, session.synchronize
    progress("warming up", 0.0)
    for _ in range(settings.warmup):
        run(prepared)
        sync()
    progress("measuring", 0.0)
    samples: list[int] = []
    append = samples.append
    min_ns = int(settings.min_seconds * 1e9)
    n_min = settings.iterations
    clock = time.perf_counter_ns
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t0 = clock()
            run(prepared)
            sync()
            t1 = clock()
            append(t1 - t0)
            n = len(samples)
            if n >= n_min and t1 - start >= min_ns:
                break
            if n % _REPORT_EVERY == 0:
                done = min(n / n_min, (t1 - start) / min_ns if min_ns else 1.0)
                progress("measuring", min(done, 0.99))
    finally:
        if gc_was_enabled:
            gc.enable()
    progress("measuring", 1.0)
    return np.asarray(samples, dtype=np.float64) / 1e6


def _measure_on_device(session: Any, prepared: Any, settings: MeasureSettings,
                       progress: Callable[[str, float], None], timer: Callable[[Any], float]) -> np.ndarray:
    progress("warming up", 0.0)
    for _ in range(settings.warmup):
        session.run(prepared)
    session.synchronize()
    progress("measuring", 0.0)
    samples: list[float] = []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()  # after the collection, as on the host path
    try:
        while True:
            samples.append(timer(prepared))
            n = len(samples)
            elapsed = time.perf_counter() - start
            if n >= settings.iterations and elapsed >= settings.min_seconds:
                break
            if n % _REPORT_EVERY == 0:
                done = min(n / settings.iterations, elapsed / settings.min_seconds if settings.min_seconds else 1.0)
                progress("measuring", min(done, 0.99))
    finally:
        if gc_was_enabled:
            gc.enable()
    progress("measuring", 1.0)
    return np.asarray(samples, dtype=np.float64)


def summarize(samples_ms: np.ndarray, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Percentiles, mean, spread, a bootstrap 95% CI of the median and throughput (items/s)."""
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(s, [50, 90, 95, 99])
    low, high = bootstrap_median_ci(s, seed)
    mean = float(s.mean())
    return {
        "latency_ms": {
            "p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "mean": mean, "std": float(s.std(ddof=1)) if s.size > 1 else 0.0,
            "min": float(s.min()), "max": float(s.max()),
            "p50_ci95": [low, high], "iterations": int(s.size),
        },
        "throughput_per_s": batch_size * 1000.0 / mean if mean > 0 else None,
    }


def bootstrap_median_ci(samples: np.ndarray, seed: int = 0,
                        resamples: int = _BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap 95% confidence interval of the median."""
    rng = np.random.default_rng(seed)
    n = samples.size
    medians = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bound the index matrix to ~16 MB
    for i in range(0, resamples, chunk):
        rows = min(chunk, resamples - i)
        idx = rng.integers(0, n, size=(rows, n))
        medians[i:i + rows] = np.median(samples[idx], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)
