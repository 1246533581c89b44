"""Test doubles: runtimes that misbehave on purpose (crash, hang, eat memory, load slowly, leave an orphan).

Registered like any plugin, and only in the processes a test starts: it names this module in PARETOSCOPE_PLUGINS
(the worker and its cells then find the runtimes). Never imported by the test process itself, whose dashboard
and studies must not see them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
