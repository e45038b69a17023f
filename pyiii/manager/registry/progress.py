"""Download progress on stderr (spec/cli.md §0.2 "Progress").

A terminal gets one line per download, redrawn in place; anything else (a log, a CI job, a
test) gets `downloading <name> <version> (<size>)` and then a confirmation line, so captured
output stays readable. `quiet` drops both.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR = 20


def human_size(n: float) -> str:
    """Decimal units as package managers print them: `812 B`, `12.4 kB`, `1.2 MB`."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Progress:
    """Reports downloads; `fancy` (a terminal without NO_COLOR) selects redrawn lines and `✓`."""

    def __init__(self, stream: TextIO | None = None, *, fancy: bool = False, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.fancy, self.quiet = fancy, quiet
        self._label = ""
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._drawn = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def ok(self, message: str) -> None:
        if not self.quiet:
            self._write(f"{'✓' if self.fancy else 'ok:'} {message}\n")

    def info(self, message: str) -> None:
        """A plain status line (`resolving hello...`); dropped by -q like progress."""
        if not self.quiet:
            self._write(message + "\n")

    def start(self, name: str, version: str, size: int) -> None:
        self._label, self._total, self._done = f"{name} {version}", size, 0
        self._started = self._drawn = time.monotonic()
        if self.quiet:
            return
        if self.fancy:
            self._draw()
        else:
            self._write(f"downloading {self._label} ({human_size(size)})\n")

    def advance(self, n: int) -> None:
        self._done += n
        if self.fancy and not self.quiet and time.monotonic() - self._drawn >= 0.1:
            self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        total = max(self._total, 1)
        filled = min(BAR, int(BAR * self._done / total))
        elapsed = max(self._drawn - self._started, 1e-6)
        rate = human_size(self._done / elapsed)
        mb = 1_000_000
        self._write(f"\r\x1b[2K{self._label}  [{'#' * filled}{'-' * (BAR - filled)}] "
                    f"{self._done / mb:.1f}/{self._total / mb:.1f} MB  {rate}/s")

    def finish(self) -> None:
        if self.fancy and not self.quiet:
            self._write("\r\x1b[2K")
        self.ok(f"downloaded {self._label} ({human_size(self._done)})")

    def abort(self) -> None:
        if self.fancy and not self.quiet:
            self._write("\r\x1b[2K")
