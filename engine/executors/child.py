"""Child-process entry: `python -m engine.executors.child TASK FD`, payload JSON on stdin, messages as JSON lines on FD.

This is the one boundary that turns any exception into data (STYLE.md, point 8).
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


def main() -> None:
    task, fd = sys.argv[1], int(sys.argv[2])
    channel = os.fdopen(fd, "w", buffering=1)

    def send(*message: Any) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    def progress(phase: str, fraction: float) -> None:
        send("progress", phase, float(fraction))

    from engine.errors import NotApplicable, Unavailable, UserError, is_out_of_memory
    from engine.executors.local import dispatch

    try:
        payload = json.loads(sys.stdin.read())
        limit_memory(payload.get("memory_limit_mb"))
        send("ok", dispatch(task, payload, progress))
    except MemoryError as exc:
        send("oom", f"out of memory: the job passed its memory limit ({exc or 'allocation failed'})")
    except NotApplicable as exc:
        send("n/a", str(exc))
    except Unavailable as exc:
        send("unavailable", str(exc))
    except UserError as exc:
        send("failed", type(exc).__name__, str(exc), traceback.format_exc())
    except BaseException as exc:  # noqa: BLE001 - the child boundary records every failure as a row
        message = str(exc).strip() or repr(exc)
        if is_out_of_memory(message):
            send("oom", f"out of memory: {message.splitlines()[0][:300]}")
        else:
            send("failed", type(exc).__name__, message, traceback.format_exc())
    finally:
        channel.close()


if __name__ == "__main__":
    main()
