"""Run a job in a fresh child process with a wall-clock limit; every ending becomes an Outcome, never a crash.

The parent blocks in `multiprocessing.connection.wait` on the child's message pipe: it never
polls in a loop, so the measured child keeps every core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from engine.executors.tasks import ProgressFn, Task
from engine.results import Status
from storage.paths import ENV, data_dir, sub_dir

# Seconds between SIGTERM and SIGKILL when a child must stop.
GRACE_S = 5.0
# Scratch folders under data/tmp/: job-<pid of the process that made it>-<random>.
SCRATCH_PREFIX = "job-"



@dataclass
class Outcome:
    """How a child ended: ok, failed, timeout, crashed, oom, n/a or unavailable (or cancelled, by its worker)."""

    status: Status
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    elapsed_s: float = 0.0


def child_env() -> dict[str, str]:
    """A child's environment: this process's, with the data folder made absolute.

    Children run in other working directories (a scratch folder), where the relative default would name another
    folder, and one that is deleted afterwards. The package itself is installed (`pip install -e .`)."""
    return {**os.environ, ENV: str(data_dir())}


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_group(pid: int) -> None:
    """SIGTERM a job's process group from another thread; run_child's own wait reaps it."""
    _kill_group(pid, signal.SIGTERM)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL it after the grace period."""
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(process.pid, signal.SIGKILL)
    process.wait()


def run_child(task: Task, payload: dict[str, Any], timeout_s: float, log_path: Path,
              progress: ProgressFn = lambda phase, fraction: None,
              on_spawn: Callable[[int], None] = lambda pid: None) -> Outcome:
    """Run the registered `task` in a fresh interpreter (`python -m engine.executors.child`) and classify its end.

    A fresh interpreter rather than multiprocessing's spawn: spawn re-runs the parent's __main__
    in the child, which under Streamlit is the dashboard script.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # libraries that drop temp files in the working directory (ONNX Runtime's shape inference does)
    # write them into a scratch folder inside the data folder, removed afterwards; named with this pid, so
    # a worker that starts after a kill -9 knows it is stale (engine.worker.remove_stale_scratch)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=sub_dir("tmp")))
    read_fd, write_fd = os.pipe()
    env = child_env()
    start = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.executors.child", task.module, task.name, str(write_fd),
             str(os.getpid())],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
            start_new_session=True,  # own process group, so a timeout stops grandchildren too
            env=env, cwd=str(scratch),
        )
    os.close(write_fd)
    outcome: Outcome | None = None
    try:
        on_spawn(process.pid)  # inside the try: a stop that lands in it still stops the child
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps(payload).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the child died at start; classified below
        outcome = _follow(process, read_fd, start + timeout_s, timeout_s, progress)
    finally:
        os.close(read_fd)
        if outcome is None:  # interrupted (the worker is stopping): stop the child now
            _stop_group(process)
        try:
            process.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            _stop_group(process)
        _kill_group(process.pid)  # nothing of the job may outlive it
        shutil.rmtree(scratch, ignore_errors=True)
    outcome.elapsed_s = time.monotonic() - start
    return _explained(outcome, log_path)


# What a child's log says when the interpreter cannot import the project: it runs outside the checkout.
_NOT_INSTALLED = ("No module named 'engine'", "No module named 'storage'")


def _explained(outcome: Outcome, log_path: Path) -> Outcome:
    """A child that exited before its first message because the project is not installed says so, and what to do."""
    if outcome.status != Status.CRASHED or outcome.error_type != "ExitCode":
        return outcome
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            tail = log.read().decode(errors="replace")
    except OSError:
        return outcome
    if any(marker in tail for marker in _NOT_INSTALLED):
        outcome.error = (f"the child process cannot import Paretoscope ({sys.executable}): install the project into "
                         "this Python (`make install`, or `pip install -e .` in the checkout)")
        outcome.error_type = "NotInstalled"
    return outcome


def _follow(process: subprocess.Popen[bytes], fd: int, deadline: float, timeout_s: float,
            progress: ProgressFn) -> Outcome:
    """Read the child's JSON-line messages until its result, its death or the deadline."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            outcome = _handle(json.loads(line), progress)
            if outcome is not None:
                return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop_group(process)
            return Outcome(Status.TIMEOUT, error=f"exceeded the time limit of {timeout_s:g} s")
        # blocks until a message, the child's exit (EOF on the pipe) or the deadline
        if not wait([fd], timeout=remaining):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            process.wait()
            return _ended_without_result(process.returncode)
        buffer += chunk


def _handle(message: list[Any], progress: ProgressFn) -> Outcome | None:
    kind = message[0]
    if kind == "progress":
        progress(message[1], message[2])
        return None
    if kind == Status.OK:
        return Outcome(Status.OK, result=message[1])
    if kind in (Status.NOT_APPLICABLE, Status.UNAVAILABLE, Status.OOM):
        return Outcome(Status(kind), error=message[1], error_type="MemoryError" if kind == Status.OOM else None)
    return Outcome(Status.FAILED, error_type=message[1], error=message[2], traceback=message[3])


def _ended_without_result(exitcode: int | None) -> Outcome:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        if name == "SIGKILL":  # we only send SIGKILL after a timeout, handled before this point
            return Outcome(Status.OOM, error_type=name,
                           error="killed by SIGKILL: the kernel's out-of-memory killer (or a manual kill -9)")
        return Outcome(Status.CRASHED, error=f"killed by {name}", error_type=name)
    return Outcome(Status.CRASHED, error=f"the process exited with code {exitcode} before reporting a result",
                   error_type="ExitCode")
