"""Test-only child tasks that end every way a real runtime can: ok, error, crash, hang, memory blow-up."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any


def run(payload: dict[str, Any], progress: Callable[[str, float], None]) -> dict[str, Any]:
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
