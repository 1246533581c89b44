"""Run a job in a fresh spawned child with a wall-clock limit; every ending becomes an Outcome, never a crash.

The parent blocks in `multiprocessing.connection.wait` between the child's messages: it never
polls in a loop, so the measured child keeps every core.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

# Seconds between SIGTERM and SIGKILL when a child must stop.
GRACE_S = 5.0

ProgressFn = Callable[[str, float], None]


@dataclass
class Outcome:
    """How a child ended: status is ok, failed, timeout, crashed, n/a or unavailable."""

    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _child_main(conn: Connection, task: str, payload: dict[str, Any], log_path: str) -> None:
    """Entry point of the child: the one place that turns any exception into data."""
    os.setsid()  # own process group, so a timeout can stop grandchildren too
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)

    def progress(phase: str, fraction: float) -> None:
        conn.send(("progress", phase, float(fraction)))

    from engine.errors import NotApplicable, Unavailable, UserError

    try:
        result = _dispatch(task, payload, progress)
        conn.send(("ok", result))
    except NotApplicable as exc:
        conn.send(("n/a", str(exc)))
    except Unavailable as exc:
        conn.send(("unavailable", str(exc)))
    except UserError as exc:
        conn.send(("failed", type(exc).__name__, str(exc), traceback.format_exc()))
    except BaseException as exc:  # noqa: BLE001 - the child boundary records every failure as a row
        message = str(exc).strip() or repr(exc)
        conn.send(("failed", type(exc).__name__, message, traceback.format_exc()))
    finally:
        conn.close()


def _dispatch(task: str, payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    if task == "test":  # test-only tasks exercising each way a child can end
        from engine.executors import testing

        return testing.run(payload, progress)
    from engine import job
    from engine.artifacts import Artifact
    from engine.plan import Cell, StudySettings

    model = Artifact.from_json(payload["model"])
    settings = StudySettings.from_json(payload["settings"])
    study_dir = Path(payload["study_dir"])
    if task == "reference":
        return job.compute_reference(study_dir, model, payload.get("data"), settings, progress)
    if task == "cell":
        cell = Cell.from_json(payload["cell"])
        return job.run_cell(study_dir, model, cell, settings, payload.get("data"), progress)
    raise ValueError(f"unknown task '{task}'")


def _stop_group(process: Any) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after the grace period."""
    for sig, grace in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        process.join(grace)
        if process.exitcode is not None:
            # the leader is gone; make sure no grandchild survives it
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return


def run_child(task: str, payload: dict[str, Any], timeout_s: float, log_path: Path,
              progress: ProgressFn = lambda phase, fraction: None) -> Outcome:
    """Run `task` in a spawned child and classify its end."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = ctx.Process(target=_child_main, args=(child_conn, task, payload, str(log_path)), daemon=False)
    start = time.monotonic()
    process.start()
    child_conn.close()
    deadline = start + timeout_s
    outcome: Outcome | None = None
    try:
        while outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop_group(process)
                outcome = Outcome("timeout", error=f"exceeded the time limit of {timeout_s:g} s")
                break
            ready = wait([parent_conn, process.sentinel], timeout=remaining)
            if parent_conn in ready:
                try:
                    message = parent_conn.recv()
                except (EOFError, OSError):
                    process.join()
                    outcome = _ended_without_result(process.exitcode)
                    break
                outcome = _handle(message, progress)
            elif process.sentinel in ready:
                # the child exited; a final message may still sit in the pipe
                if parent_conn.poll(0):
                    continue
                process.join()
                outcome = _ended_without_result(process.exitcode)
    finally:
        process.join(GRACE_S)
        if process.exitcode is None:
            _stop_group(process)
        parent_conn.close()
    outcome.elapsed_s = time.monotonic() - start
    return outcome


def _handle(message: tuple[Any, ...], progress: ProgressFn) -> Outcome | None:
    kind = message[0]
    if kind == "progress":
        progress(message[1], message[2])
        return None
    if kind == "ok":
        return Outcome("ok", result=message[1])
    if kind in ("n/a", "unavailable"):
        return Outcome(kind, error=message[1])
    return Outcome("failed", error_type=message[1], error=message[2], traceback=message[3])


def _ended_without_result(exitcode: int | None) -> Outcome:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (likely out of memory: the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return Outcome("crashed", error=f"killed by {name}{hint}", error_type=name)
    return Outcome("crashed", error=f"the process exited with code {exitcode} before reporting a result",
                   error_type="ExitCode")
