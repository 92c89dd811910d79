"""Error types the CLI maps to exit codes (2: bad input, 1: failed run)."""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterable


class SalbenchError(Exception):
    """Base class for errors salbench reports as a one-line message."""


class UsageError(SalbenchError):
    """The user asked for something that does not exist or is malformed (exit code 2)."""


class SpecError(UsageError):
    """A bad run-spec or parameter value; ``path`` is the key path (``("method_params", "rise", "n_masks")``)
    so a file loader can add the line the key is on."""

    def __init__(self, path: tuple[str, ...], message: str):
        super().__init__(message)
        self.path = path


class NotApplicable(SalbenchError):
    """A method cannot run on a classifier (e.g. CAM without a GAP + linear head).

    The runner records the pair as not applicable with this message as the reason.
    """


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Format ``difflib`` close matches as a suffix for an error message."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` of an exception, cut to ``limit`` characters (error rows, notes)."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:limit]


@contextlib.contextmanager
def exit_codes():
    """CLI error mapping: UsageError -> one line on stderr, exit 2; other salbench errors -> exit 1."""
    try:
        yield
    except UsageError as exc:
        print(f"salbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SalbenchError as exc:
        print(f"salbench: failed: {exc}", file=sys.stderr)
        sys.exit(1)
