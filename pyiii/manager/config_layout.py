"""Where things sit in config.yaml's text (spec/cli.md §5.3): the `workers:` and `modules:`
sections, each entry's first and last line, the comment block above it, the line endings.

The edits of :mod:`pyiii.manager.config_edit` splice whole lines at these places; reading the
layout is kept apart because it is pure analysis of the user's text (ruamel.yaml's round-trip
loader gives the line and column of every node) and every edit is checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from pyiii.engine.firstparty import canonical_name

SECTIONS = ("workers", "modules")


class ConfigEditError(Exception):
    """The edit is impossible (no such entry, unparsable file); the text was not changed."""


def load_text(text: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    try:
        return yaml.load(text)
    except YAMLError as exc:
        raise ConfigEditError(f"config.yaml is not valid YAML: {exc}") from None


def is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def is_blank(line: str) -> bool:
    return not line.strip()


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def line_ending(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""


def newline_of(text: str) -> str:
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


@dataclass
class Item:
    name: str  # canonical
    start: int  # 0-based line of the dash
    end: int  # last line holding the entry's content


@dataclass
class Section:
    key: str
    key_line: int
    style: str  # null | flow-empty | block | other
    dash_col: int = 2
    key_col: int = 4
    items: list[Item] | None = None


class Layout:
    """Where the sections and their entries sit in the text, as whole lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.newline = newline_of(text)
        self.doc = load_text(text)
        if self.doc is not None and not isinstance(self.doc, CommentedMap):
            raise ConfigEditError("the top level of config.yaml must be a mapping (workers: ...)")
        self.flow_top = isinstance(self.doc, CommentedMap) and self.doc.fa.flow_style()
        self.sections = {k: self._section(k) for k in SECTIONS if self.doc is not None and k in self.doc}

    def _section(self, key: str) -> Section:
        line = self.doc.lc.key(key)[0]
        value = self.doc[key]
        if value is None:
            return Section(key, line, "null")
        if not isinstance(value, CommentedSeq):
            return Section(key, line, "other")
        if len(value) == 0:
            return Section(key, line, "flow-empty")
        if value.fa.flow_style():
            return Section(key, line, "other")
        section = Section(key, line, "block", items=[])
        boundaries = []
        for i, node in enumerate(value):
            iline, icol = value.lc.item(i)
            text = self.lines[iline] if iline < len(self.lines) else ""
            before = text[:icol].rstrip(" ")
            if not isinstance(node, CommentedMap) or node.fa.flow_style() or not before.endswith("-"):
                section.style = "other"
                return section
            if i == 0:
                section.dash_col, section.key_col = len(before) - 1, icol
            boundaries.append(iline)
        for i, start in enumerate(boundaries):
            stop = boundaries[i + 1] if i + 1 < len(boundaries) else self._section_end(start, section.dash_col)
            end = start
            for j in range(start + 1, stop):
                if not is_blank(self.lines[j]) and not is_comment(self.lines[j]):
                    end = j
            name = value[i].get("name")
            section.items.append(Item(canonical_name(str(name)) if name is not None else "", start, end))
        return section

    def _section_end(self, start: int, dash_col: int) -> int:
        """The first line after the list (a line at or left of the dashes that is not an entry)."""
        for j in range(start + 1, len(self.lines)):
            line = self.lines[j]
            if is_blank(line) or is_comment(line):
                continue
            if indent(line) <= dash_col:
                return j
        return len(self.lines)

    def comment_above(self, start: int, floor: int) -> int:
        """First line of the comment block directly above line `start` (not above `floor`)."""
        first = start
        while first - 1 > floor and is_comment(self.lines[first - 1]):
            first -= 1
        return first


def entry_names(text: str) -> list[str]:
    """Canonical names of the declared entries, in file order (both sections)."""
    doc = load_text(text)
    names: list[str] = []
    for key in SECTIONS:
        seq = doc.get(key) if isinstance(doc, Mapping) else None
        for node in seq or []:
            if isinstance(node, Mapping) and node.get("name") is not None:
                names.append(canonical_name(str(node["name"])))
    return names


def check_entries(result: str, expected: list[str]) -> str:
    try:
        names = entry_names(result)
    except ConfigEditError:
        names = None
    if names != expected:
        raise ConfigEditError("internal: the edited config.yaml does not hold the expected entries")
    return result
