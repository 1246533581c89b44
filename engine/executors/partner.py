"""The baseline's side of a cell's interleaved rounds: a second process that keeps the baseline loaded.

A cell's child starts it with `Partner(...)`; it builds and loads the baseline cell exactly as that cell's own
job does, then times one block per request. Commands go in on stdin, replies come back as JSON lines on a
pipe of their own (a library printing to stdout cannot garble them; its output lands in the cell's log).
It is the cell child's own child: in the cell's process group (a stopped cell stops it), under the same
memory limit, and killed by the kernel if the cell's process dies first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from engine.artifacts import Artifact
from engine.plan import Cell, StudySettings

# How long the partner may take to build and load the baseline, at most (a slice of the cell's time limit).
READY_SHARE = 0.5
# A block may take this many times its expected duration, plus BLOCK_GRACE_S, before the partner is deemed hung.
BLOCK_SLACK = 20.0
BLOCK_GRACE_S = 30.0
# Timed calls after the warm-up that size the partner's blocks.
MIN_ESTIMATE = 5


class PartnerError(RuntimeError):
    """The partner failed, died or hung: the cell keeps its own timings and says why the rounds are missing."""


class Partner:
    """The baseline, loaded in its own process, timed one block at a time with `time_block()`."""

    def __init__(self, study_dir: Path, model: Artifact, baseline: Cell, settings: StudySettings,
                 data_path: str | None, block_seconds: float) -> None:
        self._payload = {"study_dir": str(study_dir), "model": model.to_json(), "cell": baseline.to_json(),
                         "settings": settings.to_json(), "data": data_path, "block_seconds": block_seconds,
                         "memory_limit_mb": settings.memory_limit_mb}
        self._ready_s = max(READY_SHARE * settings.timeout_s, 1.0)
        self._process: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._buffer = b""
        self.iterations = 0
        self._expected_s = block_seconds

    def __enter__(self) -> Partner:
        read_fd, write_fd = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "engine.executors.partner", str(write_fd), str(os.getpid())],
                stdin=subprocess.PIPE, pass_fds=(write_fd,))
        except OSError as exc:
            os.close(read_fd)
            raise PartnerError(f"could not start the baseline's process: {exc}") from exc
        finally:
            os.close(write_fd)
        self._fd = read_fd
        try:
            self._send(self._payload)
            ready = self._receive(self._ready_s, "load the baseline")
        except BaseException:
            self._stop()
            raise
        self.iterations = int(ready["iterations"])
        self._expected_s = max(self._expected_s, self.iterations * float(ready["p50_ms"]) / 1e3)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()

    def time_block(self) -> np.ndarray:
        """The baseline's samples (ms) of one block of `iterations` calls."""
        self._send({"block": True})
        reply = self._receive(BLOCK_SLACK * self._expected_s + BLOCK_GRACE_S, "time a block")
        return np.asarray(reply["samples"], dtype=np.float64)

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write((json.dumps(message) + "\n").encode())
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise PartnerError(self._death()) from exc

    def _receive(self, timeout_s: float, doing: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not wait([self._fd], timeout=remaining):
                raise PartnerError(f"the baseline's process did not {doing} within {timeout_s:.0f} s")
            chunk = os.read(self._fd, 1 << 20)
            if not chunk:
                raise PartnerError(self._death())
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise PartnerError(f"the baseline failed: {reply['error']}")
        return reply

    def _death(self) -> str:
        assert self._process is not None
        code = self._process.wait()
        return f"the baseline's process ended (exit code {code})"

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        try:
            if process.stdin is not None:
                process.stdin.close()  # end of input: the partner closes its session and exits
        except BrokenPipeError:
            pass
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def serve(payload: dict[str, Any], commands: Iterable[str], reply: Callable[[dict[str, Any]], None]) -> None:
    """The partner's loop: load the baseline cell of `payload`, then time one block per command line."""
    from engine import prepare
    from engine.data import take_batch
    from engine.measure import latency, rounds

    model = Artifact.from_json(payload["model"])
    cell = Cell.from_json(payload["cell"])
    settings = StudySettings.from_json(payload["settings"])
    opened = prepare.open_cell(model, cell, settings, payload.get("data"), lambda phase, fraction: None)
    inputs, _, _ = prepare.load_reference(Path(payload["study_dir"]))
    with opened.runtime.load(opened.variant) as session:
        prepared = session.prepare(take_batch(inputs, 0, cell.batch_size))
        warm = latency.MeasureSettings(warmup=settings.measure.warmup, iterations=MIN_ESTIMATE, min_seconds=0.0)
        p50 = float(np.median(latency.measure(session, prepared, warm)))
        iterations = rounds.block_iterations(p50, float(payload["block_seconds"]))
        block = latency.MeasureSettings(warmup=rounds.BLOCK_WARMUP, iterations=iterations, min_seconds=0.0)
        reply({"iterations": iterations, "p50_ms": p50})
        for line in commands:
            if not line.strip():
                continue
            samples = latency.measure(session, prepared, block)
            reply({"samples": samples.tolist()})


def main() -> None:
    from engine.executors.child import die_with_parent, limit_memory

    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(parent)
    channel = os.fdopen(fd, "w", buffering=1)

    def reply(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        payload = json.loads(sys.stdin.readline())
        limit_memory(payload.get("memory_limit_mb"))
        serve(payload, sys.stdin, reply)
    except BaseException as exc:  # noqa: BLE001 - the cell records the partner's failure in its own row
        message = (str(exc).strip() or repr(exc)).splitlines()[0][:300]
        reply({"error": f"{type(exc).__name__}: {message}"})
    finally:
        channel.close()


if __name__ == "__main__":
    main()
