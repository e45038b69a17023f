"""`${NAME}` / `${NAME:default}` expansion of config.yaml string scalars (spec/cli.md §5.2).

Runs after YAML parsing, on string values only, so an environment value can never change the
document's structure; a plain scalar that is exactly one reference is re-typed like YAML would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_ONE_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::[^}]*)?\}")
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


class UnsetVariable(Exception):
    """A `${NAME}` without default whose variable is not set; `offset` is its index in the text."""

    def __init__(self, name: str, offset: int) -> None:
        super().__init__(f"environment variable {name} is not set and has no default")
        self.name, self.offset = name, offset


def expand_text(text: str, env: Mapping[str, str]) -> str:
    """Expand `${NAME}` / `${NAME:default}` in `text`; `$${` is a literal `${`."""
    out: list[str] = []
    pos = 0
    for m in _REF.finditer(text):
        out.append(text[pos:m.start()])
        if m.group(0) == "$${":
            out.append("${")
        elif m.group(1) in env:
            out.append(env[m.group(1)])  # set but empty stays empty, as in the reference
        elif m.group(2) is not None:
            out.append(m.group(2))
        else:
            raise UnsetVariable(m.group(1), m.start())
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def core_scalar(text: str) -> Any:
    """Type `text` as a plain YAML scalar with the YAML 1.2 core schema (null, bool, int, float)."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT.fullmatch(text):
        return int(text, 8) if text.startswith("0o") else int(text, 0) if text.startswith("0x") else int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if re.fullmatch(r"[-+]?\.(inf|Inf|INF)", text):
        return float("-inf") if text.startswith("-") else float("inf")
    if re.fullmatch(r"\.(nan|NaN|NAN)", text):
        return float("nan")
    return text


def expand_scalar(value: str, env: Mapping[str, str], plain: bool) -> Any:
    """Expand one string scalar; a plain scalar that is exactly one reference is re-typed."""
    expanded = expand_text(value, env)
    if plain and _ONE_REF.fullmatch(value):
        return core_scalar(expanded)
    return expanded
