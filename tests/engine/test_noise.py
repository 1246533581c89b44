"""The machine-load record around a timed loop and the noise verdict: synthetic samples, real busy processes,
and a real cell through the CLI."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import psutil
import pytest

from engine.measure import noise
from engine.measure.latency import bootstrap_median_ci

ROOT = Path(__file__).resolve().parents[2]
QUIET_LOAD = {"cpu_count": 2, "other_busy_cores": 0.05, "dashboard_cpu_s": None, "window_s": 2.0}
# Spins until it has used this many CPU seconds (not wall seconds: on busy cores it simply takes longer), with
# a wall-clock bound so that a forgotten one cannot outlive the test run.
SPINNER = ("import time\nend = time.monotonic() + 120\n"
           "while time.process_time() < {cpu_s} and time.monotonic() < end:\n    pass\n")
# Records the load around "the timed loop", as a cell's child does: the test's processes are its siblings.
RECORDER = ("import json, sys\nfrom engine.measure import noise\nbefore = noise.snapshot()\n"
            "print('ready', flush=True)\nsys.stdin.readline()\nprint(json.dumps(noise.finish(before)), flush=True)\n")


def verdict(samples: np.ndarray, load: dict[str, Any] | None = None) -> dict[str, Any]:
    return noise.noise_verdict(samples, bootstrap_median_ci(samples), QUIET_LOAD if load is None else load)


# --- the verdict ------------------------------------------------------------------------------


def test_tight_samples_on_a_quiet_machine_are_not_noisy() -> None:
    samples = np.random.default_rng(0).normal(10.0, 0.1, 200)
    v = verdict(samples)
    assert v["noisy"] is False and v["reasons"] == [] and v["message"] is None
    assert 0 < v["spread_pct"] < 1 and v["cv"] < 0.02 and v["other_busy_cores"] == 0.05
    json.dumps(v)  # stored as is


def test_bimodal_samples_are_noisy_with_the_spread_in_the_message() -> None:
    rng = np.random.default_rng(0)
    samples = rng.permutation(np.concatenate([rng.normal(10, 0.1, 100), rng.normal(20, 0.1, 100)]))
    v = verdict(samples)
    assert v["noisy"] is True and v["spread_pct"] > noise.MAX_SPREAD_PCT
    assert any(r.startswith("the median's 95% interval is ±") for r in v["reasons"])
    match = re.fullmatch(r"noisy: ±(\d+)% — rerun on an idle machine", v["message"])
    assert match and int(match.group(1)) == round(v["spread_pct"]) >= 10


def test_the_larger_side_of_the_interval_sets_the_spread() -> None:
    samples = np.full(10, 10.0)
    v = noise.noise_verdict(samples, (9.9, 11.0), QUIET_LOAD)
    assert v["spread_pct"] == pytest.approx(10.0)  # +10%, not the half-width 5.5%
    assert v["noisy"] is True


def test_a_heavy_tail_is_noisy_even_when_the_median_is_tight() -> None:
    rng = np.random.default_rng(0)
    samples = rng.permutation(np.concatenate([rng.normal(10, 0.05, 900), np.full(100, 40.0)]))  # 1 in 10 at 4x
    v = verdict(samples)
    assert v["spread_pct"] < noise.MAX_SPREAD_PCT and v["cv_p99"] > noise.MAX_CV
    assert v["noisy"] is True and any("vary by" in r for r in v["reasons"])
    assert re.fullmatch(r"noisy: ±\d\.\d%, calls vary by \d+% — rerun on an idle machine", v["message"])


def test_one_preempted_call_among_thousands_is_not_noise() -> None:
    samples = np.random.default_rng(0).normal(0.05, 0.001, 5000)
    samples[1234] = 20.0  # 400x the median: alone it pushes the plain cv past 1
    v = verdict(samples)
    assert v["cv"] > 1 and v["cv_p99"] < 0.1
    assert v["noisy"] is False


def test_quiet_samples_on_a_loaded_machine_are_noisy_because_of_the_load() -> None:
    samples = np.random.default_rng(0).normal(10.0, 0.1, 200)
    load = {"cpu_count": 2, "other_busy_cores": 0.9, "dashboard_cpu_s": 1.6, "window_s": 2.0}
    v = verdict(samples, load)
    assert v["noisy"] is True and v["spread_pct"] < noise.MAX_SPREAD_PCT
    assert v["reasons"] == ["other processes kept 0.9 of 2 cores busy"]
    assert v["message"] == ("noisy: ±0.2%, 0.9 of 2 cores busy elsewhere — close the dashboard or rerun on an "
                            "idle machine")


def test_a_missing_load_record_judges_the_samples_alone() -> None:
    v = noise.noise_verdict([5.0, 5.0, 5.0], (5.0, 5.0), None)
    assert v == {"spread_pct": 0.0, "cv": 0.0, "cv_p99": 0.0, "other_busy_cores": None, "noisy": False, "reasons": [],
                 "message": None}


# --- the recorder -----------------------------------------------------------------------------


def spinner(cpu_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SPINNER.format(cpu_s=cpu_s)])


def cpu_of(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def wait_for(predicate: Any, what: str, timeout: float = 120) -> None:
    """A safety net against hanging, not the assertion: the condition is about work done, not time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def record(during: Any) -> dict[str, Any]:
    """Run the recorder in a child of this process, call `during()` inside its window, return its record."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", RECORDER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        during()
        proc.stdin.write("\n")
        proc.stdin.flush()
        load: dict[str, Any] = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    return load


def test_a_busy_process_is_named_and_counted() -> None:
    busy = spinner(cpu_s=30)
    try:
        watched = psutil.Process(busy.pid)

        def spin_one_cpu_second() -> None:
            start = cpu_of(watched)
            wait_for(lambda: cpu_of(watched) - start >= 1.0, "the spinner to use one CPU second")

        load = record(spin_one_cpu_second)
    finally:
        busy.kill()
        busy.wait()
    assert {"loadavg_before", "loadavg_after", "cpu_count", "other_cpu_s", "other_busy_cores", "parent_cpu_s",
            "dashboard_cpu_s", "busiest", "window_s"} <= set(load)
    assert load["other_cpu_s"] >= 0.9  # two counters (the machine's, the spinner's) a tick or so apart
    named = {b["pid"]: b for b in load["busiest"]}
    if busy.pid not in named:  # on a machine this busy, three others may each have used as much
        assert len(named) == noise.BUSIEST and all(b["cpu_s"] >= 0.95 for b in named.values()), named
        pytest.skip(f"three other processes were at least as busy as the spinner: {load['busiest']}")
    assert named[busy.pid]["cpu_s"] >= 0.95 and named[busy.pid]["name"].startswith("python")
    assert load["other_busy_cores"] == pytest.approx(load["other_cpu_s"] / load["window_s"], rel=0.01)
    assert load["parent_cpu_s"] is not None  # this test process is the recorder's parent, as a worker would be
    assert len(load["busiest"]) <= noise.BUSIEST


def test_processes_that_come_and_go_mid_window_are_billed_to_the_parent_that_reaped_them() -> None:
    """A test suite or the dashboard's upload checks spawn short children that no single pass sees."""
    ending = spinner(cpu_s=60)
    short: list[subprocess.Popen[bytes]] = []
    watched = psutil.Process(ending.pid)
    wait_for(lambda: cpu_of(watched) >= 1.0, "the first spinner to use one CPU second")

    def churn() -> None:
        ending.kill()  # ends mid-window after a CPU second spent before it
        ending.wait()
        short.append(spinner(cpu_s=1.0))  # starts and ends between the two passes
        short[0].wait()

    try:
        load = record(churn)
    finally:
        for p in (ending, *short):
            p.kill()
            p.wait()
    named = {b["pid"]: b for b in load["busiest"]}
    assert ending.pid not in named and short[0].pid not in named  # neither is in the second pass
    assert load["other_cpu_s"] >= 0.95  # the machine's busy time saw the short one
    # this test process reaped both: billed the short one's second, not the second the other used before
    if os.getpid() not in named:  # on a machine this busy, three others may each have used as much
        assert len(named) == noise.BUSIEST and all(b["cpu_s"] >= 0.95 for b in named.values()), named
        pytest.skip(f"three other processes were at least as busy as this test: {load['busiest']}")
    assert 0.95 <= named[os.getpid()]["cpu_s"] < 1.9


class _Vanishing:
    """A process table entry that raises what a real one can while it is read."""

    def __init__(self, pid: int, error: type[Exception] | None, on: str = "cpu_times") -> None:
        self.pid, self.error, self.on = pid, error, on

    def oneshot(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def _maybe_raise(self, what: str) -> None:
        if self.error is not None and what == self.on:
            raise self.error(self.pid)

    def cpu_times(self) -> Any:
        self._maybe_raise("cpu_times")
        return SimpleNamespace(user=1.0, system=0.5, children_user=0.0, children_system=0.0)

    def create_time(self) -> float:
        return 1.0

    def ppid(self) -> int:
        return 1

    def name(self) -> str:
        return f"p{self.pid}"

    def cmdline(self) -> list[str]:
        self._maybe_raise("cmdline")
        return ["python", "-m", "streamlit", "run", "app.py"]


def test_denied_vanished_and_zombie_processes_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    table = [_Vanishing(101, psutil.NoSuchProcess), _Vanishing(102, psutil.AccessDenied),
             _Vanishing(103, psutil.ZombieProcess), _Vanishing(104, psutil.AccessDenied, on="cmdline"),
             _Vanishing(105, None)]
    monkeypatch.setattr(psutil, "process_iter", lambda: iter(table))
    before = noise.snapshot()
    assert sorted(pid for pid, _ in before.processes) == [104, 105]
    load = noise.finish(before)
    assert load["busiest"] == [] and load["other_cpu_s"] >= 0
    assert load["dashboard_cpu_s"] == 0  # 105 runs streamlit (and used nothing); 104 hid its command line


class _Fake(_Vanishing):
    def __init__(self, pid: int, ppid: int, cpu_s: float, reaped_s: float = 0.0) -> None:
        super().__init__(pid, None)
        self._ppid, self.cpu_s, self.reaped_s = ppid, cpu_s, reaped_s

    def cpu_times(self) -> Any:
        return SimpleNamespace(user=self.cpu_s, system=0.0, children_user=self.reaped_s, children_system=0.0)

    def ppid(self) -> int:
        return self._ppid

    def cmdline(self) -> list[str]:
        return []


def test_a_chain_of_processes_ending_mid_window_bills_only_its_time_in_the_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell runs a job that runs pytest; all of pytest's life lands in the shell's reaped time at once."""
    before = [_Fake(10, 1, 1.0), _Fake(11, 10, 0.1), _Fake(12, 11, 20.0, reaped_s=5.0), _Fake(13, 1, 2.0)]
    # pytest uses 0.5 s more and ends; the job reaps it (25.5), uses 0.05 s and ends; the shell reaps the job
    after = [_Fake(10, 1, 1.0, reaped_s=0.15 + 25.5), _Fake(13, 1, 3.0)]
    tables = iter([before, after])
    monkeypatch.setattr(psutil, "process_iter", lambda: iter(next(tables)))
    load = noise.finish(noise.snapshot())
    assert [(b["pid"], b["cpu_s"]) for b in load["busiest"]] == [(13, 1.0), (10, 0.55)]


# --- a real cell ------------------------------------------------------------------------------


def test_a_real_cell_result_carries_its_machine_load_and_noise(tmp_path: Path, mlp_onnx: Path) -> None:
    from engine.__main__ import main

    out_json = tmp_path / "results.json"
    out = io.StringIO()
    code = main(["bench", str(mlp_onnx), "--runtimes", "onnxruntime", "--variants", "baseline", "--iterations", "5",
                 "--min-seconds", "0.05", "--warmup", "1", "--threads", "1", "--json", str(out_json)], out=out)
    assert code == 0, out.getvalue()
    (row,) = json.loads(out_json.read_text())["results"]
    assert row["status"] == "ok"
    load, verdict_ = row["machine_load"], row["noise"]
    assert load["window_s"] > 0 and load["cpu_count"] == os.cpu_count() and load["other_cpu_s"] >= 0
    assert load["parent_cpu_s"] is not None  # the CLI's in-process worker spawned the cell
    assert isinstance(verdict_["noisy"], bool) and verdict_["spread_pct"] >= 0
    assert verdict_["other_busy_cores"] == load["other_busy_cores"]


def test_load_counts_against_the_cores_the_cell_leaves_free() -> None:
    """Half a core of other work disturbs 2 threads on 2 cores, not 2 threads on a 64-core server."""
    from engine.measure.noise import busy_limit, noise_verdict

    quiet = np.full(200, 1.0) + np.linspace(0, 0.01, 200)
    load = {"other_busy_cores": 3.0, "cpu_count": 64}
    assert not noise_verdict(quiet, [0.999, 1.001], load, threads=2)["noisy"]
    assert noise_verdict(quiet, [0.999, 1.001], {"other_busy_cores": 0.9, "cpu_count": 2}, threads=2)["noisy"]
    assert busy_limit(2, 2) == 0.5 and busy_limit(64, 2) == 61.5 and busy_limit(None, None) == 0.5
