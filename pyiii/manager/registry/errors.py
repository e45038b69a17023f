"""The error every registry, resolution and install operation raises (spec/cli.md §0.4).

Library code raises `ManagerError` with its W-code; the command line (`pyiii.cli.output`
maps W-codes to exit codes) prints it as `error:`, detail lines and `hint:`, or puts it in the
`--json` document. Like the other manager errors (`ManifestError`, `ScriptError`) it carries
`code`, `hint` and `details` attributes, so one handler reports them all.
"""

from __future__ import annotations

import re
from typing import Iterable

_CODE = re.compile(r"^W\d{3}$")


class ManagerError(Exception):
    """A refusal with a W-code, a one-line message, optional detail lines and a hint."""

    def __init__(self, code: str, message: str, *, details: Iterable[str] = (),
                 hint: str | None = None) -> None:
        if not _CODE.match(code):
            raise ValueError(f"not a W-code: {code}")
        super().__init__(message)
        self.code, self.message, self.details, self.hint = code, message, list(details), hint

    def __str__(self) -> str:
        return self.message
