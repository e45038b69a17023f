"""`iii trigger` payload and duration parsing (spec/cli.md §2).

The rules are the reference system's (`engine/src/cli_trigger/payload.rs`) so commands written
for it behave the same. Everything here is pure and runs before any connection is made, which
is why a bad payload exits 2 even with no engine running.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable, TextIO

from pyiii.cli.output import UsageError

DEFAULT_TIMEOUT_MS = 30_000

_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; strict JSON (the reference's serde_json) does not,
    # so `x=NaN` must stay the string "NaN".
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def parse_value(text: str) -> Any:
    """A `key=value` value: JSON when it parses (`2`, `true`, `[1,2]`, `'"42"'`), else the text."""
    try:
        return _loads(text)
    except ValueError:  # JSONDecodeError is a ValueError
        return text


def parse_pairs(tokens: Iterable[str]) -> dict[str, Any]:
    """`key=value` tokens into an object; a later duplicate key wins (keeping its first slot)."""
    pairs: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got '{token}'")
        if not key:
            raise UsageError(f"empty key in '{token}'")
        pairs[key] = parse_value(value)
    return pairs


def read_json_arg(arg: str, stdin: TextIO | None = None) -> Any:
    """`--json` value: inline JSON, `-` for stdin, or `@path` for a file."""
    if arg == "-":
        text = (stdin if stdin is not None else sys.stdin).read()
    elif arg.startswith("@"):
        try:
            with open(arg[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read --json file {arg[1:]}: {exc.strerror or exc}") from None
    else:
        text = arg
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--json is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"--json is not valid JSON: {exc}") from None


def build_payload(pairs: Iterable[str] = (), json_arg: str | None = None,
                  stdin: TextIO | None = None) -> Any:
    """Combine `--json` and `key=value` pairs (rule 4 of cli.md §2).

    Nothing gives `{}`; pairs only an object; `--json` only that value of any JSON type; both
    require `--json` to be an object whose top-level keys the pairs override.
    """
    tokens = list(pairs)
    parsed_pairs = parse_pairs(tokens)  # pair errors first: they need no stdin or file
    if json_arg is None:
        return parsed_pairs
    base = read_json_arg(json_arg, stdin)
    if not tokens:
        return base
    if not isinstance(base, dict):
        raise UsageError("--json must be a JSON object when key=value pairs are given")
    base.update(parsed_pairs)
    return base


def parse_duration(text: str) -> int:
    """`30`, `30s`, `500ms`, `2m` (and `1.5s`, `1h`) into milliseconds; a bare number is seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise UsageError(f"invalid duration '{text}': use a number of seconds or 500ms, 30s, 2m",
                         hint="for example --timeout 30s")
    ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise UsageError(f"invalid duration '{text}': must be greater than zero")
    return ms


def resolve_timeout(timeout: str | None, timeout_ms: str | int | None) -> int:
    """The call timeout in ms from `--timeout` or the reference's `--timeout-ms` (default 30 s)."""
    if timeout is not None and timeout_ms is not None:
        raise UsageError("--timeout and --timeout-ms cannot be used together")
    if timeout_ms is not None:
        try:
            ms = int(str(timeout_ms))
        except ValueError:
            raise UsageError(f"invalid --timeout-ms '{timeout_ms}': expected a whole number of milliseconds") from None
        if ms <= 0:
            raise UsageError(f"invalid --timeout-ms '{timeout_ms}': must be greater than zero")
        return ms
    return parse_duration(timeout) if timeout is not None else DEFAULT_TIMEOUT_MS


def format_duration(ms: int) -> str:
    """Shortest exact spelling: 120000 -> `2m`, 30000 -> `30s`, 200 -> `200ms`."""
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
