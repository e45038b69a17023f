"""Human-facing output of every `iii` command (spec/cli.md §0.2).

stdout carries data only; everything written here goes to stderr. Colour and the `✓` mark are
used only when stderr is a terminal and NO_COLOR is unset, so logs and test captures stay plain
(`ok:` replaces `✓`).
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TextIO

# Exit codes of spec/cli.md §0.3, named so commands do not scatter magic numbers.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_ENGINE = 3
EXIT_DRIFT = 4
EXIT_BUSY = 5
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure a command reports as `error: <message>` (+ details, hint) and exits with `code`.

    Raised from deep inside a command so the single handler in `main` prints it the same way
    everywhere.
    """

    def __init__(self, message: str, code: int = EXIT_FAILED, *, details: Iterable[str] = (),
                 hint: str | None = None, plain: bool = False) -> None:
        super().__init__(message)
        self.message, self.code, self.details, self.hint = message, code, list(details), hint
        self.plain = plain  # printed as is, without `error:` (e.g. the prompt's "Aborted.")


class UsageError(CliError):
    """Bad flags, arguments, names or payload: exit 2."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, EXIT_USAGE, hint=hint)


def _stream(stream: TextIO | None) -> TextIO:
    return stream if stream is not None else sys.stderr


def fancy(stream: TextIO | None = None) -> bool:
    """True when colour and `✓ ⚠` may be used on `stream` (stderr by default)."""
    s = _stream(stream)
    return bool(getattr(s, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def _paint(text: str, code: str, stream: TextIO | None) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if fancy(stream) else text


def error(message: str, details: Iterable[str] = (), hint: str | None = None,
          stream: TextIO | None = None) -> None:
    """`error: <message>`, details indented two spaces, then an optional `hint:` line."""
    s = _stream(stream)
    lines = [f"{_paint('error:', '1;31', s)} {message}"]
    for detail in details:
        lines.extend("  " + line for line in str(detail).splitlines() or [""])
    if hint:
        lines.append(f"{_paint('hint:', '1;36', s)} {hint}")
    s.write("\n".join(lines) + "\n")
    s.flush()


def warning(message: str, stream: TextIO | None = None) -> None:
    s = _stream(stream)
    s.write(f"{_paint('warning:', '1;33', s)} {message}\n")
    s.flush()


def note(message: str, stream: TextIO | None = None) -> None:
    s = _stream(stream)
    s.write(f"note: {message}\n")
    s.flush()


def ok(message: str, stream: TextIO | None = None) -> None:
    """A confirmation line: `✓ <message>` on a terminal, `ok: <message>` otherwise."""
    s = _stream(stream)
    mark = _paint("✓", "32", s) if fancy(s) else "ok:"
    s.write(f"{mark} {message}\n")
    s.flush()


def report(exc: CliError, stream: TextIO | None = None) -> int:
    """Print a CliError and return its exit code."""
    if exc.plain:
        s = _stream(stream)
        s.write(exc.message + "\n")
        s.flush()
        return exc.code
    error(exc.message, exc.details, exc.hint, stream)
    return exc.code
