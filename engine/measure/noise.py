"""How loaded the machine was while a cell was timed, and whether the cell's own samples are noisy.

`snapshot()` before the timed loop and `finish(snapshot)` after it each make one pass over the process
table (outside the loop); `noise_verdict` turns the samples and that record into a flag a user can act on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

# The median's 95% interval may stray at most this far (its larger side, in % of the median): the tool ranks
# variants whose speedups are often 1.1-1.3x, and a ±5% interval already lets a 10% win swap places.
MAX_SPREAD_PCT = 5.0
# Cores other processes may keep busy, on average over the window. Every runtime runs `threads` workers that
# meet at a barrier each operator; half a core of foreign work means some worker loses its core a large
# share of the time, and the whole call waits for it (the 357 ms vs 26.7 ms dashboard case was ~1 core).
MAX_OTHER_BUSY_CORES = 0.5
# std / mean of the samples at or below their p99. The slowest 1% is left out because on a sub-millisecond
# cell one preempted call among thousands (100x the median) alone pushes the plain cv past 1 on a quiet
# machine. Above 0.5 a sizeable share of calls is slow (one in ten at 3x the median gives ~0.5): a second mode
# from preemption or throttling, so p90/p99 describe the machine even when the median's interval is tight.
MAX_CV = 0.5
# How many of the other processes `busiest` names.
BUSIEST = 3
_STREAMLIT = "streamlit"


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    name: str
    cpu_s: float  # user + system since the process started
    reaped_s: float  # user + system of the children it has waited for: where short-lived work ends up
    streamlit: bool


@dataclass(frozen=True)
class LoadSnapshot:
    """The process table, the machine's busy CPU time and load average at the start of a measurement window."""

    at: float  # time.monotonic() halfway through the pass that read the table
    busy_s: float  # CPU seconds the whole machine has spent busy since boot, at the same moment
    loadavg: float
    processes: Mapping[tuple[int, float], _Proc]  # keyed by (pid, create time): a reused pid is a new process


def _read(proc: psutil.Process) -> tuple[tuple[int, float], _Proc] | None:
    """One process's row, or None when it vanished or hides its times (it just drops out of the record)."""
    try:
        with proc.oneshot():  # one read of /proc/<pid>/stat for ppid, times and create time
            times = proc.cpu_times()
            key = (proc.pid, proc.create_time())
            ppid, name = proc.ppid(), proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        cmdline = []
    streamlit = any(_STREAMLIT in part for part in cmdline)
    reaped = getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
    return key, _Proc(proc.pid, ppid, name, times.user + times.system, reaped, streamlit)


def _busy_s() -> float:
    """The machine's busy CPU seconds since boot: every process, including those too short to see in a pass."""
    times = psutil.cpu_times()
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))


def _table() -> tuple[float, float, dict[tuple[int, float], _Proc]]:
    start, busy = time.monotonic(), _busy_s()
    rows = {}
    for proc in psutil.process_iter():
        row = _read(proc)
        if row is not None:
            rows[row[0]] = row[1]
    return (start + time.monotonic()) / 2, (busy + _busy_s()) / 2, rows


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def snapshot() -> LoadSnapshot:
    """Read the process table and the machine's CPU counters; call right before the timed loop."""
    loadavg = _loadavg()
    at, busy, processes = _table()
    return LoadSnapshot(at, busy, loadavg, processes)


def _descendants(root: int, tables: Sequence[Mapping[tuple[int, float], _Proc]]) -> set[int]:
    """`root` and every process below it in either table (a child may have started or ended mid-window)."""
    children: dict[int, set[int]] = {}
    for table in tables:
        for p in table.values():
            children.setdefault(p.ppid, set()).add(p.pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def finish(before: LoadSnapshot) -> dict[str, Any]:
    """The machine's load over the window since `before`, as the JSON-able `machine_load` record.

    `other_cpu_s` is the machine's busy time over the window less this process's and its children's, so a
    process that came and went between the two passes still counts. Per process (`busiest`, the parent, the
    dashboard) it is the process's own time plus that of the children it reaped in the window, less what those
    children had used before the window began.
    """
    at, busy, after = _table()
    loadavg = _loadavg()
    window_s = max(at - before.at, 1e-9)
    # A child that ended mid-window adds its whole life to its parent's reaped time, with that of the children
    # it reaped itself (a job's shell, then its pytest, ...): take off what that chain had used before the window.
    gone: dict[int, list[_Proc]] = {}
    for key, proc in before.processes.items():
        if key not in after:
            gone.setdefault(proc.ppid, []).append(proc)

    def before_window(proc: _Proc, seen: frozenset[int] = frozenset()) -> float:
        below = gone.get(proc.pid, []) if proc.pid not in seen else []
        return proc.cpu_s + proc.reaped_s + sum(before_window(c, seen | {proc.pid}) for c in below)

    earlier = {ppid: sum(before_window(c) for c in children) for ppid, children in gone.items()}

    def window_cpu(key: tuple[int, float], proc: _Proc) -> float:
        start = before.processes.get(key)
        if start is None:  # started mid-window: all of its time is in the window
            return proc.cpu_s + proc.reaped_s
        used = proc.cpu_s + proc.reaped_s - start.cpu_s - start.reaped_s - earlier.get(proc.pid, 0.0)
        return max(used, 0.0)

    own = _descendants(os.getpid(), (before.processes, after))
    parent = os.getppid()
    own_cpu, parent_cpu = 0.0, None
    dashboard: list[float] = []
    others: list[tuple[float, _Proc]] = []
    for key, proc in after.items():
        cpu = window_cpu(key, proc)
        if proc.pid in own:
            own_cpu += cpu
            continue
        others.append((cpu, proc))
        if proc.streamlit:
            dashboard.append(cpu)
        if proc.pid == parent and key in before.processes:  # the parent's own time, not its children's
            parent_cpu = max(proc.cpu_s - before.processes[key].cpu_s, 0.0)
    # the two counters disagree by a clock tick or so; never report negative load
    other = max(busy - before.busy_s - own_cpu, 0.0)
    others.sort(key=lambda item: item[0], reverse=True)
    return {
        "loadavg_before": before.loadavg,
        "loadavg_after": loadavg,
        "cpu_count": os.cpu_count(),
        "window_s": round(window_s, 3),
        "other_cpu_s": round(other, 3),
        "other_busy_cores": round(other / window_s, 3),
        "parent_cpu_s": round(parent_cpu, 3) if parent_cpu is not None else None,
        "dashboard_cpu_s": round(sum(dashboard), 3) if dashboard else None,
        "busiest": [{"name": p.name, "pid": p.pid, "cpu_s": round(cpu, 3)} for cpu, p in others[:BUSIEST] if cpu > 0],
    }


def busy_limit(cpu_count: int | None, threads: int | None) -> float:
    """Cores other processes may keep busy before they disturb a cell: what the cell's threads leave free,
    less half a core, and never below MAX_OTHER_BUSY_CORES (on a 64-core server, unrelated work on the 60 free
    cores is no noise; on 2 cores with 2 threads, half a core is)."""
    free = (cpu_count or 0) - (threads or cpu_count or 0)
    return max(MAX_OTHER_BUSY_CORES, free - 0.5)


def noise_verdict(samples_ms: Sequence[float] | np.ndarray, ci95: Sequence[float],
                  machine_load: Mapping[str, Any] | None, threads: int | None = None) -> dict[str, Any]:
    """Whether a cell's timings can be trusted: its median's interval, its spread and the load around it."""
    s = np.asarray(samples_ms, dtype=np.float64)
    median = float(np.median(s))
    # the larger side: a long right tail moves the upper bound only, and that is the side that misleads
    spread = 100.0 * max(median - ci95[0], ci95[1] - median) / median if median > 0 else None
    cv = _cv(s)
    central = _cv(s[s <= np.percentile(s, 99)])
    load = machine_load or {}
    busy = load.get("other_busy_cores")
    cores = load.get("cpu_count")
    loaded = busy is not None and busy > busy_limit(cores, threads)
    reasons = []
    if spread is not None and spread > MAX_SPREAD_PCT:
        reasons.append(f"the median's 95% interval is ±{_pct(spread)}%")
    if central > MAX_CV:
        reasons.append(f"the samples vary by {central:.0%} of their mean (slowest 1% left out)")
    if loaded:
        reasons.append(f"other processes kept {busy:.1f} of {cores or '?'} cores busy")
    message = None
    if reasons:
        where = "close the dashboard or rerun on an idle machine" if _dashboard_busy(load) else (
            "rerun on an idle machine")
        shown = [f"±{_pct(spread)}%" if spread is not None else "no median"]
        if central > MAX_CV:
            shown.append(f"calls vary by {central:.0%}")
        if loaded:
            shown.append(f"{busy:.1f} of {cores or '?'} cores busy elsewhere")
        message = f"noisy: {', '.join(shown)} — {where}"
    return {
        "spread_pct": round(spread, 2) if spread is not None else None,
        "cv": round(cv, 4),
        "cv_p99": round(central, 4),
        "other_busy_cores": busy,
        "noisy": bool(reasons),
        "reasons": reasons,
        "message": message,
    }


def _cv(s: np.ndarray) -> float:
    mean = float(s.mean()) if s.size else 0.0
    return float(s.std(ddof=1)) / mean if s.size > 1 and mean > 0 else 0.0


def _pct(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _dashboard_busy(load: Mapping[str, Any]) -> bool:
    """Whether the dashboard itself burnt a noticeable share (a tenth of a core) of the window."""
    cpu, window = load.get("dashboard_cpu_s"), load.get("window_s")
    return bool(cpu and window and cpu / window > 0.1)
