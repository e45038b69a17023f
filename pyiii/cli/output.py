"""Human-facing output of every `iii` command (spec/cli.md §0.2).

stdout carries data only; everything written here goes to stderr. Colour and the `✓` mark are
used only when stderr is a terminal and NO_COLOR is unset, so logs and test captures stay plain
(`ok:` replaces `✓`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable, TextIO

# Exit codes of spec/cli.md §0.3, named so commands do not scatter magic numbers.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_ENGINE = 3
EXIT_DRIFT = 4
EXIT_BUSY = 5
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

# Error codes of spec/cli.md §0.4 and the exit code each implies. `--json` documents and the
# engine's `worker::*` errors carry the code; the process exits with the mapped number.
W_EXIT: dict[str, int] = {
    "W100": EXIT_USAGE, "W104": EXIT_USAGE, "W105": EXIT_USAGE,
    "W110": EXIT_FAILED, "W111": EXIT_FAILED, "W112": EXIT_FAILED,
    "W120": EXIT_BUSY,
    "W131": EXIT_FAILED, "W132": EXIT_FAILED, "W180": EXIT_FAILED,
    "W140": EXIT_FAILED, "W141": EXIT_FAILED, "W142": EXIT_FAILED, "W143": EXIT_FAILED,
    "W150": EXIT_DRIFT,
    "W160": EXIT_FAILED, "W161": EXIT_FAILED, "W170": EXIT_FAILED,
    "W190": EXIT_NO_ENGINE,
    "W900": EXIT_FAILED,
}
# The code a CliError gets when the raiser named only an exit code.
_DEFAULT_W = {EXIT_USAGE: "W105", EXIT_NO_ENGINE: "W190", EXIT_DRIFT: "W150", EXIT_BUSY: "W120"}


class Mode:
    """Presentation switches of the running command (`--json`, `-q`, `--no-color`).

    One process runs one command, so a module-level instance is enough; `reset()` restores the
    defaults for callers that run several commands in one process (tests).
    """

    json = False
    quiet = False
    no_color = False

    @classmethod
    def reset(cls) -> None:
        cls.json = cls.quiet = cls.no_color = False


def set_mode(*, json_output: bool = False, quiet: bool = False, no_color: bool = False) -> None:
    Mode.json, Mode.quiet, Mode.no_color = json_output, quiet, no_color


class CliError(Exception):
    """A failure a command reports as `error: <message>` (+ details, hint) and exits with `code`.

    Raised from deep inside a command so the single handler in `main` prints it the same way
    everywhere.
    """

    def __init__(self, message: str, code: int | None = None, *, details: Iterable[str] = (),
                 hint: str | None = None, plain: bool = False, wcode: str | None = None) -> None:
        super().__init__(message)
        if code is None:
            code = W_EXIT.get(wcode or "", EXIT_FAILED)
        self.message, self.code, self.details, self.hint = message, code, list(details), hint
        self.plain = plain  # printed as is, without `error:` (e.g. the prompt's "Aborted.")
        # §0.4 code for `--json` documents; derived from the exit code when not given
        self.wcode = wcode or _DEFAULT_W.get(code)

    def document(self) -> dict[str, Any]:
        """The `--json` error document of §0.2."""
        err: dict[str, Any] = {"code": self.wcode or "W900", "message": self.message}
        if self.hint:
            err["hint"] = self.hint
        if self.details:
            err["details"] = list(self.details)
        return {"ok": False, "error": err}


class UsageError(CliError):
    """Bad flags, arguments, names or payload: exit 2."""

    def __init__(self, message: str, *, hint: str | None = None, wcode: str = "W105") -> None:
        super().__init__(message, EXIT_USAGE, hint=hint, wcode=wcode)


def _stream(stream: TextIO | None) -> TextIO:
    return stream if stream is not None else sys.stderr


def fancy(stream: TextIO | None = None) -> bool:
    """True when colour and `✓ ⚠` may be used on `stream` (stderr by default)."""
    s = _stream(stream)
    if Mode.no_color:
        return False
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
    """A confirmation line: `✓ <message>` on a terminal, `ok: <message>` otherwise (not with -q)."""
    if Mode.quiet:
        return
    s = _stream(stream)
    mark = _paint("✓", "32", s) if fancy(s) else "ok:"
    s.write(f"{mark} {message}\n")
    s.flush()


def progress(message: str, stream: TextIO | None = None) -> None:
    """A progress line on stderr (`resolving hello...`); dropped by -q."""
    if Mode.quiet:
        return
    s = _stream(stream)
    s.write(message + "\n")
    s.flush()


def plain(message: str, stream: TextIO | None = None) -> None:
    """An informational stderr line that is neither progress nor a confirmation."""
    s = _stream(stream)
    s.write(message + "\n")
    s.flush()


def emit_json(document: dict[str, Any]) -> None:
    """The single `--json` document of a command, on stdout."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def report(exc: CliError, stream: TextIO | None = None) -> int:
    """Print a CliError and return its exit code; with `--json` also the error document."""
    if Mode.json:
        emit_json(exc.document())
    if exc.plain:
        s = _stream(stream)
        s.write(exc.message + "\n")
        s.flush()
        return exc.code
    error(exc.message, exc.details, exc.hint, stream)
    return exc.code
