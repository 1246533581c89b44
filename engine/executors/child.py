"""Child-process entry: `python -m engine.executors.child MODULE TASK FD [PARENT_PID]`.

The payload arrives as JSON on stdin, messages leave as JSON lines on FD.

This is the one boundary that turns any exception into data (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def limit_memory(limit_mb: float | None) -> None:
    """Cap the address space so an allocation past the limit fails here instead of taking the machine."""
    if not limit_mb:
        return
    import resource

    limit = int(limit_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# Linux's prctl option: the signal this process gets when the thread that started it exits.
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this child when its parent dies (a worker killed with -9 cannot stop its cell itself): no cell
    outlives its worker to time on the machine beside the retry of the same job."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the lease and the requeue still bound the overlap
        return
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def main() -> None:
    module, name, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:
        die_with_parent(int(sys.argv[4]))
    channel = os.fdopen(fd, "w", buffering=1)

    def send(*message: Any) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    def progress(phase: str, fraction: float) -> None:
        send("progress", phase, float(fraction))

    from engine.errors import NotApplicable, Unavailable, UserError, is_out_of_memory
    from engine.executors.tasks import resolve
    from engine.plugins import load_plugins
    from engine.results import Status

    try:
        payload = json.loads(sys.stdin.read())
        limit_memory(payload.get("memory_limit_mb"))
        load_plugins()  # the parent's plugins: their runtimes and tasks exist here too
        send(Status.OK, resolve(name, module)(payload, progress))
    except MemoryError as exc:
        send(Status.OOM, f"out of memory: the job passed its memory limit ({exc or 'allocation failed'})")
    except NotApplicable as exc:
        send(Status.NOT_APPLICABLE, str(exc))
    except Unavailable as exc:
        send(Status.UNAVAILABLE, str(exc))
    except UserError as exc:
        send(Status.FAILED, type(exc).__name__, str(exc), traceback.format_exc())
    except BaseException as exc:  # noqa: BLE001 - the child boundary records every failure as a row
        message = str(exc).strip() or repr(exc)
        if is_out_of_memory(message):
            send(Status.OOM, f"out of memory: {message.splitlines()[0][:300]}")
        else:
            send(Status.FAILED, type(exc).__name__, message, traceback.format_exc())
    finally:
        channel.close()


if __name__ == "__main__":
    main()
