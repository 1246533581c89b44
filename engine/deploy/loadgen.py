"""A load generator for an HTTP model server: closed loops at fixed concurrency and open loops at a Poisson rate.

Asyncio with one `httpx.AsyncClient`, no threads. A closed loop keeps N requests in flight (each worker sends its next
request when the previous one returns); an open loop sends on a schedule fixed in advance whatever the server does,
and measures each request from its *intended* start, so time spent waiting for a free connection or behind a stalled
server counts (no coordinated omission). Each level's time is split into windows; a level is stable by
perf_analyzer's rule: the last three windows' throughput and p99 within 10% of each other.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

STABLE_WINDOWS = 3  # perf_analyzer: the last three measurement windows
STABILITY = 0.10  # ... within 10% of each other


class Clock(Protocol):
    """Seconds on a monotonic clock, and a sleep until such a time (tests inject a fake one)."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.perf_counter()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class Record:
    """One request: when it should have started, when it was sent, when its reply (or its failure) came."""

    intended: float
    sent: float
    end: float
    ok: bool
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.end - self.intended


Send = Callable[[], Awaitable[str | None]]  # one request; None when it succeeded, else a one-line error


async def closed_loop(send: Send, concurrency: int, duration_s: float, clock: Clock | None = None) -> list[Record]:
    """`concurrency` workers, each sending its next request when the previous returns, for `duration_s`."""
    clock = clock or MonotonicClock()
    records: list[Record] = []
    end_at = clock.now() + duration_s

    async def worker() -> None:
        while clock.now() < end_at:
            start = clock.now()
            error = await guarded(send)
            records.append(Record(start, start, clock.now(), error is None, error))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def poisson_arrivals(rate: float, duration_s: float, seed: int = 0) -> list[float]:
    """Offsets (s) of a Poisson process of `rate` per second within `duration_s`, from a fixed seed."""
    rng = np.random.default_rng(seed)
    offsets: list[float] = []
    t = float(rng.exponential(1.0 / rate))
    while t < duration_s:
        offsets.append(t)
        t += float(rng.exponential(1.0 / rate))
    return offsets


async def open_loop(send: Send, arrivals: Sequence[float], max_outstanding: int | None = None,
                    clock: Clock | None = None) -> list[Record]:
    """One request at each offset of `arrivals` (seconds from now), at most `max_outstanding` in flight (the
    client's connections): a request that cannot go out on time waits, and its latency counts from its intended
    start."""
    clock = clock or MonotonicClock()
    start = clock.now()
    gate = asyncio.Semaphore(max_outstanding) if max_outstanding else None
    records: list[Record] = []

    async def one(intended: float) -> None:
        if gate is not None:
            async with gate:
                await _timed(intended)
        else:
            await _timed(intended)

    async def _timed(intended: float) -> None:
        sent = clock.now()
        error = await guarded(send)
        records.append(Record(intended, sent, clock.now(), error is None, error))

    tasks = []
    for offset in arrivals:
        intended = start + offset
        await clock.sleep_until(intended)
        tasks.append(asyncio.create_task(one(intended)))
    await asyncio.gather(*tasks)
    return records


async def warm_up(send: Send, requests: int, concurrency: int) -> None:
    """`requests` requests over at most `concurrency` connections before a level, none recorded, whatever their end."""
    left = [requests]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await guarded(send)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(requests, 1)))))


async def guarded(send: Send) -> str | None:
    try:
        return await send()
    except Exception as exc:  # noqa: BLE001 - a refused or timed-out request is a counted error, not a crash
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# --- summaries -----------------------------------------------------------------------------------------------


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()), "max": float(ms.max())}


@dataclass(frozen=True)
class Window:
    """One slice of a level's time: successful replies per second and their p99, by completion time."""

    throughput_rps: float
    p99_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return {"throughput_rps": self.throughput_rps, "p99_ms": self.p99_ms}


def windows(records: Sequence[Record], start: float, duration_s: float, count: int) -> list[Window]:
    """The level's time in `count` equal windows: each window's successful replies per second and p99."""
    width = duration_s / count
    buckets: list[list[float]] = [[] for _ in range(count)]
    for record in records:
        if record.ok:
            index = int((record.end - start) // width)
            if 0 <= index < count:
                buckets[index].append(record.latency_s)
    return [Window(len(b) / width, percentiles_ms(b)["p99"]) for b in buckets]


def is_stable(series: Sequence[Window], threshold: float = STABILITY, last: int = STABLE_WINDOWS) -> bool:
    """perf_analyzer's rule: the last `last` windows' throughput and p99 each within `threshold` of each other
    (the largest at most (1 + threshold) times the smallest); fewer windows, or an empty one, is not stable."""
    tail = list(series)[-last:]
    if len(tail) < last:
        return False
    for values in ([w.throughput_rps for w in tail], [w.p99_ms for w in tail]):
        if any(v is None or not math.isfinite(v) or v <= 0 for v in values):
            return False
        if max(values) > min(values) * (1.0 + threshold):  # type: ignore[type-var, operator]
            return False
    return True


@dataclass
class LevelResult:
    """What one load level measured; `to_json` is the form stored and reported."""

    mode: str  # "closed" (fixed concurrency) or "open" (Poisson arrivals at `rate_rps`)
    concurrency: int | None
    rate_rps: float | None
    duration_s: float
    batch_size: int
    requests: int
    errors: int
    throughput_rps: float
    items_per_s: float
    latency_ms: dict[str, float | None]
    stable: bool
    windows: list[Window]
    batch_sizes: dict[str, int] | None = None  # the server's runtime calls in this level by batch-size bucket
    mean_batch: float | None = None
    error_examples: list[str] = field(default_factory=list)
    # this process's CPU per request: near a core's worth per request/s, the generator, not the server, is the limit
    client_cpu_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "concurrency": self.concurrency, "rate_rps": self.rate_rps,
                "duration_s": self.duration_s, "batch_size": self.batch_size, "requests": self.requests,
                "errors": self.errors, "throughput_rps": self.throughput_rps, "items_per_s": self.items_per_s,
                "latency_ms": self.latency_ms, "stable": self.stable,
                "windows": [w.to_json() for w in self.windows], "batch_sizes": self.batch_sizes,
                "mean_batch": self.mean_batch, "error_examples": self.error_examples,
                "client_cpu_ms": self.client_cpu_ms}


def level_span(records: Sequence[Record], start: float, duration_s: float) -> float:
    """The level's own span, over which its rates are counted: until the last reply, which may come after the
    nominal end."""
    return max([duration_s, *(r.end - start for r in records)]) if records else duration_s


def summarize(records: Sequence[Record], *, mode: str, concurrency: int | None, rate_rps: float | None,
              start: float, duration_s: float, batch_size: int, window_count: int) -> LevelResult:
    ok = [r for r in records if r.ok]
    span = level_span(records, start, duration_s)
    series = windows(records, start, duration_s, window_count)
    examples = list(dict.fromkeys(r.error for r in records if r.error))[:3]
    throughput = len(ok) / span if span > 0 else 0.0
    return LevelResult(mode=mode, concurrency=concurrency, rate_rps=rate_rps, duration_s=duration_s,
                       batch_size=batch_size, requests=len(records), errors=len(records) - len(ok),
                       throughput_rps=throughput, items_per_s=throughput * batch_size,
                       latency_ms=percentiles_ms([r.latency_s for r in ok]), stable=is_stable(series),
                       windows=series, error_examples=[e for e in examples if e])


# --- the server's Prometheus metrics -------------------------------------------------------------------------

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text as {(name, labels): value}."""
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            try:
                samples[(match["name"], match["labels"] or "")] = float(match["value"])
            except ValueError:
                continue
    return samples


def batch_histogram(samples: dict[tuple[str, str], float]) -> dict[str, float] | None:
    """serve_batch_size's cumulative buckets {le: count} with `sum` and `count`, or None when the server has none."""
    buckets = {}
    for (name, labels), value in samples.items():
        if name == "serve_batch_size_bucket":
            match = re.search(r'le="([^"]+)"', labels)
            if match:
                buckets[match[1]] = value
    if not buckets:
        return None
    buckets["sum"] = samples.get(("serve_batch_size_sum", ""), 0.0)
    buckets["count"] = samples.get(("serve_batch_size_count", ""), 0.0)
    return buckets


def batch_sizes_between(before: dict[str, float] | None, after: dict[str, float] | None
                        ) -> tuple[dict[str, int] | None, float | None]:
    """Runtime calls made between two scrapes, by batch-size bucket ("1", "2", "3-4", ..., the buckets being
    Prometheus's cumulative `le`), and their mean batch size."""
    if before is None or after is None:
        return None, None
    bounds = sorted(float(k) for k in after if k not in ("sum", "count", "+Inf"))
    calls: dict[str, int] = {}
    previous_bound, previous_total = 0.0, 0.0
    for bound in [*bounds, math.inf]:
        key = "+Inf" if bound == math.inf else _le_key(after, bound)
        total = after.get(key, 0.0) - before.get(key, 0.0)
        count = round(total - previous_total)
        if count:
            low = int(previous_bound) + 1
            label = (f"{low}+" if bound == math.inf else str(int(bound)) if low == int(bound)
                     else f"{low}-{int(bound)}")
            calls[label] = count
        previous_bound, previous_total = bound, total
    n = after.get("count", 0.0) - before.get("count", 0.0)
    mean = (after.get("sum", 0.0) - before.get("sum", 0.0)) / n if n > 0 else None
    return calls, mean


def _le_key(buckets: dict[str, float], bound: float) -> str:
    return next(k for k in buckets if k not in ("sum", "count", "+Inf") and float(k) == bound)


def batching_settings(samples: dict[tuple[str, str], float]) -> tuple[int | None, float | None]:
    """The server's dynamic-batching settings as its /metrics states them (serve.py's gauges), else unknown."""
    max_batch = samples.get(("serve_max_batch", ""))
    delay = samples.get(("serve_max_delay_seconds", ""))
    return (int(max_batch) if max_batch is not None else None,
            delay * 1000.0 if delay is not None else None)
