"""Test doubles: runtimes that misbehave on purpose and an executor task that ends every way a child can.

Registered like any plugin: a test names this module in PARETOSCOPE_PLUGINS for the processes it starts (the
worker's cells then find the runtimes), or imports it (the executor's tests run its task)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.executors.tasks import ProgressFn, task
from engine.runtimes.base import Runtime, Session, register
from engine.runtimes.onnxruntime import OnnxRuntimeCpu


def _note_pid() -> None:
    """Leave this process's pid in the data folder so tests can prove nothing outlived its job."""
    from storage.paths import sub_dir

    Path(sub_dir("test-pids") / str(os.getpid())).touch()


@register
class SegfaultRuntime(Runtime):
    id = "test-segfault"
    consumes = "onnx"
    summary = "test only: dies with SIGSEGV while loading"

    def load(self, variant: Any) -> Session:
        _note_pid()
        os.kill(os.getpid(), signal.SIGSEGV)
        raise AssertionError("unreachable")


@register
class HangRuntime(Runtime):
    id = "test-hang"
    consumes = "onnx"
    summary = "test only: sleeps past any time limit while loading"

    def load(self, variant: Any) -> Session:
        _note_pid()
        time.sleep(3600)
        raise AssertionError("unreachable")


@register
class GreedyRuntime(Runtime):
    id = "test-greedy"
    consumes = "onnx"
    summary = "test only: allocates memory until the limit stops it"

    def load(self, variant: Any) -> Session:
        import numpy as np

        _note_pid()
        blocks = [np.ones(2**28, dtype=np.uint8) for _ in range(256)]  # 64 GiB, touched
        raise AssertionError(f"allocated {len(blocks)} blocks")


@register
class SlowRuntime(OnnxRuntimeCpu):
    id = "test-slow"
    summary = "test only: ONNX Runtime after a delay (PARETOSCOPE_TEST_SLOW_S seconds) in load"

    def load(self, variant: Any) -> Session:
        _note_pid()
        time.sleep(float(os.environ.get("PARETOSCOPE_TEST_SLOW_S", "3")))
        return super().load(variant)


# A grandchild that ignores the polite signals and outlives its parent: only a SIGKILL of its group ends it.
_STUBBORN = ("import signal, time\n"
             "for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT): signal.signal(sig, signal.SIG_IGN)\n"
             "time.sleep(3600)")


@register
class OrphanRuntime(OnnxRuntimeCpu):
    id = "test-orphan"
    summary = "test only: the first load starts a stubborn grandchild and hangs; later loads run ONNX Runtime"

    def load(self, variant: Any) -> Session:
        from storage.paths import sub_dir

        first = sub_dir("test-state") / "orphan-hung"
        if first.exists():
            return super().load(variant)
        first.touch()
        grandchild = subprocess.Popen([sys.executable, "-c", _STUBBORN])  # same process group as this child
        Path(sub_dir("test-pids") / str(grandchild.pid)).touch()
        _note_pid()
        time.sleep(3600)
        raise AssertionError("unreachable")


@task("test")
def misbehave(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """ok, raise, segfault, sleep, spawn-and-sleep or exit, as the payload's `mode` says."""
    mode = payload["mode"]
    progress("measuring", 0.5)
    if mode == "ok":
        return {"value": payload.get("value", 1)}
    if mode == "raise":
        raise RuntimeError("runtime exploded on purpose")
    if mode == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "sleep":
        time.sleep(float(payload.get("seconds", 3600)))
        return {"slept": payload.get("seconds", 3600)}
    if mode == "spawn-and-sleep":
        # a grandchild that must not outlive the job
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        with open(payload["pid_file"], "w") as fh:
            fh.write(str(pid))
        time.sleep(3600)
    if mode == "exit":
        os._exit(int(payload.get("code", 3)))
    raise ValueError(f"unknown test mode '{mode}'")
