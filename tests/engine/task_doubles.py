"""Test double: an executor task that ends every way a child can (ok, error, crash, hang, orphan, exit code).

The test process imports it (registering the task), and the child imports it by module name."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from engine.executors.tasks import ProgressFn, task


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
