"""Exceptions a user can act on; the CLI prints them as one `error: ...` line and exits 2."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


class NotApplicable(Exception):
    """A cell that cannot run by design (an optimization or conversion the format lacks)."""


class Unavailable(Exception):
    """A cell whose runtime or device is missing on this machine."""
