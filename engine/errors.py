"""Exceptions a user can act on; the CLI prints them as one `error: ...` line and exits 2."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


class NotApplicable(Exception):
    """A cell that cannot run by design (an optimization or conversion the format lacks)."""


class Unavailable(Exception):
    """A cell whose runtime or device is missing on this machine."""


# How allocators other than Python's (ATen, ONNX Runtime, OpenVINO) report an allocation past the limit.
_OUT_OF_MEMORY = ("can't allocate memory", "std::bad_alloc", "Failed to allocate memory", "out of memory")


def is_out_of_memory(message: str) -> bool:
    """An error message that says an allocation failed (the memory limit, not the user's input)."""
    return any(m in message for m in _OUT_OF_MEMORY)


def disk_full(exc: OSError, where: str) -> UserError | None:
    """A full disk or quota as one line that says what to do; None for any other OSError."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return UserError(f"the disk of {where} is full ({exc.strerror}): free space there (or ask the server's admin), "
                     "then try again")
