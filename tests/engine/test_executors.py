"""The child-process boundary: every way a job can end becomes an Outcome, and nothing is left running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from engine.executors import local
from engine.executors.local import run_child
from tests.engine.task_doubles import misbehave


def _run(tmp_path: Path, mode: str, timeout: float = 60.0, **payload):  # type: ignore[no-untyped-def]
    phases: list[tuple[str, float]] = []
    outcome = run_child(misbehave, {"mode": mode, **payload}, timeout, tmp_path / "logs" / f"{mode}.log",
                        lambda phase, fraction: phases.append((phase, fraction)))
    return outcome, phases


def test_ok_returns_result_and_forwards_progress(tmp_path: Path) -> None:
    outcome, phases = _run(tmp_path, "ok", value=42)
    assert outcome.status == "ok"
    assert outcome.result == {"value": 42}
    assert ("measuring", 0.5) in phases


def test_exception_is_failed_row_with_type_message_traceback(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, "raise")
    assert outcome.status == "failed"
    assert outcome.error_type == "RuntimeError"
    assert outcome.error == "runtime exploded on purpose"
    assert outcome.traceback is not None and "task_doubles.py" in outcome.traceback


def test_segfault_is_crashed_with_signal_name(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, "segfault")
    assert outcome.status == "crashed"
    assert outcome.error_type == "SIGSEGV"
    assert "SIGSEGV" in (outcome.error or "")


def test_exit_without_result_is_crashed(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, "exit", code=3)
    assert outcome.status == "crashed"
    assert "code 3" in (outcome.error or "")


def test_timeout_stops_child_and_grandchildren(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "GRACE_S", 1.0)
    pid_file = tmp_path / "grandchild.pid"
    start = time.monotonic()
    outcome, _ = _run(tmp_path, "spawn-and-sleep", timeout=4.0, pid_file=str(pid_file))
    elapsed = time.monotonic() - start
    assert outcome.status == "timeout"
    assert "time limit of 4 s" in (outcome.error or "")
    assert elapsed < 4.0 + 2 * local.GRACE_S + 5.0  # spawn start-up included
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
    assert not alive, "a grandchild outlived the timed-out job"


def test_parent_waits_without_spinning(tmp_path: Path) -> None:
    """While the child sleeps 2 s, the parent must use almost no CPU (a blocking wait, no polling loop)."""
    me = psutil.Process(os.getpid())
    before = me.cpu_times()
    outcome, _ = _run(tmp_path, "sleep", seconds=2.0)
    after = me.cpu_times()
    assert outcome.status == "ok"
    busy = (after.user - before.user) + (after.system - before.system)
    assert busy < 0.5, f"parent used {busy:.2f} s of CPU while waiting"


def test_child_output_goes_to_log_not_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    outcome, _ = _run(tmp_path, "raise")
    assert outcome.status == "failed"
    captured = capfd.readouterr()
    assert "exploded" not in captured.out
    assert (tmp_path / "logs" / "raise.log").exists()


def test_a_python_without_the_project_says_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that cannot import the engine (isolated mode: no site-packages, no path of ours) is what a
    checkout without `make install` gives every child: the outcome says what to do, not only an exit code."""
    import sys

    wrapper = tmp_path / "python-without-the-project"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    outcome = run_child(misbehave, {"mode": "ok"}, 60.0, tmp_path / "logs" / "bare.log")
    assert (outcome.status, outcome.error_type) == ("crashed", "NotInstalled")
    assert outcome.error is not None and "make install" in outcome.error
