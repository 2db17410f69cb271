"""User-facing errors: anything caused by bad input (a config key, a file, a path) raises ``UserError`` with
one readable line; entry points print it and exit with status 2 instead of showing a traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input from the user: the message names the file, line or key and says what is allowed."""


def main_guard(fn):
    """Decorate an entry point's ``main``: a ``UserError`` becomes ``error: <message>`` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            sys.stderr.write(f"error: {err}\n")  # one write: ranks sharing a log never split each other's line
            sys.stderr.flush()
            sys.exit(2)

    return wrapper
