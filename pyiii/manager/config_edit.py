"""Round-trip edits of config.yaml's `workers:` list (spec/cli.md §5.3).

config.yaml is the user's file: an `iii worker` command may add, change or remove entries but
must keep everything else as written (comments, blank lines, key order, quoting, flow
collections, `${...}` text, LF or CRLF endings, the final newline), so that adding then removing
a worker gives back the original bytes.

ruamel.yaml's round-trip loader finds where each entry starts (line and column of every node);
the edit itself is a splice of whole lines into the original text, which is the only way to be
sure that nothing outside the edited entry moves. Layouts a splice cannot handle safely (a
non-empty flow list, an entry written as a flow mapping, a dash alone on its line) go through
ruamel.yaml's round-trip dumper instead. Every result is re-parsed and checked to hold exactly
the intended entries before it is returned.

API (all functions take and return the file's text):
    entry_names(text)                     declared names in file order, canonical
    add_entry(text, fields, comment=None)  append `- name: ...` (fields in the order given)
    set_fields(text, name, fields)        set (or, with None, delete) scalar keys of an entry
    remove_entry(text, name)              drop an entry with its comments; last one -> `[]`
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from pyiii.engine.firstparty import canonical_name

SECTIONS = ("workers", "modules")
_PLAIN_OK = re.compile(r"[A-Za-z0-9_./~^$][^\s#,\[\]{}'\"]*")
_CLOSE_QUOTE = {"'": re.compile(r"'(?:[^']|'')*'"), '"': re.compile(r'"(?:[^"\\]|\\.)*"')}


class ConfigEditError(Exception):
    """The edit is impossible (no such entry, unparsable file); the text was not changed."""


# --------------------------------------------------------------------------- scalars

def scalar(value: Any) -> str:
    """`value` as YAML text that reads back as the same value (plain when that is safe)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{scalar(str(k))}: {scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    text = str(value)
    if _PLAIN_OK.fullmatch(text) and ": " not in text and not text.endswith(":"):
        try:
            if YAML(typ="safe", pure=True).load(text) == text:
                return text
        except YAMLError:
            pass
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------- layout

def _load(text: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    try:
        return yaml.load(text)
    except YAMLError as exc:
        raise ConfigEditError(f"config.yaml is not valid YAML: {exc}") from None


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _is_blank(line: str) -> bool:
    return not line.strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _ending(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""


def _newline_of(text: str) -> str:
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


@dataclass
class _Item:
    name: str  # canonical
    start: int  # 0-based line of the dash
    end: int  # last line holding the entry's content


@dataclass
class _Section:
    key: str
    key_line: int
    style: str  # null | flow-empty | block | other
    dash_col: int = 2
    key_col: int = 4
    items: list[_Item] | None = None


class _Layout:
    """Where the sections and their entries sit in the text, as whole lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.newline = _newline_of(text)
        self.doc = _load(text)
        if self.doc is not None and not isinstance(self.doc, CommentedMap):
            raise ConfigEditError("the top level of config.yaml must be a mapping (workers: ...)")
        self.flow_top = isinstance(self.doc, CommentedMap) and self.doc.fa.flow_style()
        self.sections = {k: self._section(k) for k in SECTIONS if self.doc is not None and k in self.doc}

    def _section(self, key: str) -> _Section:
        line = self.doc.lc.key(key)[0]
        value = self.doc[key]
        if value is None:
            return _Section(key, line, "null")
        if not isinstance(value, CommentedSeq):
            return _Section(key, line, "other")
        if len(value) == 0:
            return _Section(key, line, "flow-empty")
        if value.fa.flow_style():
            return _Section(key, line, "other")
        section = _Section(key, line, "block", items=[])
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
                if not _is_blank(self.lines[j]) and not _is_comment(self.lines[j]):
                    end = j
            name = value[i].get("name")
            section.items.append(_Item(canonical_name(str(name)) if name is not None else "", start, end))
        return section

    def _section_end(self, start: int, dash_col: int) -> int:
        """The first line after the list (a line at or left of the dashes that is not an entry)."""
        for j in range(start + 1, len(self.lines)):
            line = self.lines[j]
            if _is_blank(line) or _is_comment(line):
                continue
            if _indent(line) <= dash_col:
                return j
        return len(self.lines)

    def comment_above(self, start: int, floor: int) -> int:
        """First line of the comment block directly above line `start` (not above `floor`)."""
        first = start
        while first - 1 > floor and _is_comment(self.lines[first - 1]):
            first -= 1
        return first


def entry_names(text: str) -> list[str]:
    """Canonical names of the declared entries, in file order (both sections)."""
    doc = _load(text)
    names: list[str] = []
    for key in SECTIONS:
        seq = doc.get(key) if isinstance(doc, Mapping) else None
        for node in seq or []:
            if isinstance(node, Mapping) and node.get("name") is not None:
                names.append(canonical_name(str(node["name"])))
    return names


def _check(result: str, expected: list[str]) -> str:
    try:
        names = entry_names(result)
    except ConfigEditError:
        names = None
    if names != expected:
        raise ConfigEditError("internal: the edited config.yaml does not hold the expected entries")
    return result


# --------------------------------------------------------------------------- add

def _entry_lines(fields: Mapping[str, Any], dash_col: int, key_col: int, comment: str | None,
                 newline: str) -> list[str]:
    keys = list(fields.items())
    gap = " " * max(1, key_col - dash_col - 1)
    out = []
    for i, (key, value) in enumerate(keys):
        lead = " " * dash_col + "-" + gap if i == 0 else " " * key_col
        line = f"{lead}{key}: {scalar(value)}"
        if i == 0 and comment:
            line += f"  # {comment}"
        out.append(line + newline)
    return out


def add_entry(text: str, fields: Mapping[str, Any], comment: str | None = None) -> str:
    """Append an entry at the end of `workers:` with the file's list indentation."""
    if next(iter(fields), None) != "name":
        raise ValueError("an entry's first field is its name")
    doc = _load(text) if text.strip() else None
    new = canonical_name(str(fields["name"]))
    expected = _section_names(doc, "workers") + [new] + _section_names(doc, "modules")
    try:
        layout = _Layout(text) if doc is not None else None
        return _check(_splice_add(text, layout, fields, comment), expected)
    except _Unsupported:
        return _check(_ruamel_add(text, fields, comment), expected)


def _section_names(doc: Any, key: str) -> list[str]:
    seq = doc.get(key) if isinstance(doc, Mapping) else None
    return [canonical_name(str(n.get("name"))) for n in seq or [] if isinstance(n, Mapping)]


class _Unsupported(Exception):
    """This layout needs the ruamel.yaml dumper."""


def _splice_add(text: str, layout: _Layout | None, fields: Mapping[str, Any], comment: str | None) -> str:
    newline = _newline_of(text) if text else "\n"
    if layout is None or layout.doc is None:
        if text.strip() and not all(_is_blank(l) or _is_comment(l) for l in text.splitlines()):
            raise _Unsupported()
        prefix = text if not text or text.endswith("\n") else text + newline
        return prefix + "workers:" + newline + "".join(_entry_lines(fields, 2, 4, comment, newline))
    if layout.flow_top:
        raise _Unsupported()
    lines = list(layout.lines)
    section = layout.sections.get("workers")
    if section is None:
        prefix = text if text.endswith("\n") else text + newline
        return prefix + "workers:" + newline + "".join(_entry_lines(fields, 2, 4, comment, newline))
    if section.style == "block":
        new = _entry_lines(fields, section.dash_col, section.key_col, comment, newline)
        last = section.items[-1].end
        if not _ending(lines[last]):
            new[0] = newline + new[0]
            new[-1] = new[-1][: -len(newline)]
        lines[last + 1:last + 1] = new
        return "".join(lines)
    key_line = lines[section.key_line]
    body, end = key_line[: len(key_line) - len(_ending(key_line))], _ending(key_line)
    m = re.match(r"^(\s*workers\s*:)(\s*)(\[\s*\]|null|~|Null|NULL)?(\s*(#.*)?)$", body)
    if section.style not in ("null", "flow-empty") or m is None or (section.style == "flow-empty" and not m.group(3)):
        raise _Unsupported()
    rest = m.group(4) or ""
    lines[section.key_line] = m.group(1) + (rest if rest.strip() else "") + (end or newline)
    new = _entry_lines(fields, 2, 4, comment, newline)
    if not end and section.key_line == len(lines) - 1:
        new[-1] = new[-1][: -len(newline)]
    lines[section.key_line + 1:section.key_line + 1] = new
    return "".join(lines)


def _ruamel_dump(doc: Any, original: str) -> str:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 30  # never re-wrap
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    out = buf.getvalue()
    if _newline_of(original) == "\r\n":
        out = out.replace("\n", "\r\n")
    return out


def _ruamel_add(text: str, fields: Mapping[str, Any], comment: str | None) -> str:
    doc = _load(text) if text.strip() else None
    if doc is None:
        doc = CommentedMap()
    seq = doc.get("workers")
    if not isinstance(seq, CommentedSeq):
        seq = CommentedSeq()
        doc["workers"] = seq
    seq.fa.set_block_style()  # new entries are block mappings; a flow list cannot hold them
    for node in seq:
        if isinstance(node, CommentedMap) and node.fa.flow_style():
            node.fa.set_flow_style()  # keep each existing entry as written
    entry = CommentedMap()
    for key, value in fields.items():
        entry[key] = value
    seq.append(entry)
    if comment:
        entry.yaml_add_eol_comment(f"# {comment}", "name")
    return _ruamel_dump(doc, text)


# --------------------------------------------------------------------------- set fields

def set_fields(text: str, name: str, fields: Mapping[str, Any]) -> str:
    """Set (or, for a None value, delete) top-level scalar keys of the entry named `name`.

    Only the keys given change; the entry keeps its place and every other key.
    """
    expected = entry_names(text)
    try:
        return _check(_splice_set(text, name, fields), expected)
    except _Unsupported:
        return _check(_ruamel_set(text, name, fields), expected)


def _splice_set(text: str, name: str, fields: Mapping[str, Any]) -> str:
    layout = _Layout(text)
    item, section = _find(layout, name)
    lines = list(layout.lines)
    node = layout.doc[section.key][section.items.index(item)]
    for key, value in fields.items():
        if key in node:
            vline, vcol = node.lc.value(key)
            kline = node.lc.key(key)[0]
            token = _scalar_token(lines[vline], vcol) if vline == kline else None
            if token is None:
                raise _Unsupported()
            if value is None:
                del lines[kline]
                layout = _Layout("".join(lines))  # positions moved: re-read before the next key
                item, section = _find(layout, name)
                lines, node = list(layout.lines), layout.doc[section.key][section.items.index(item)]
                continue
            start, stop = token
            lines[vline] = lines[vline][:start] + scalar(value) + lines[vline][stop:]
        elif value is not None:
            nline = node.lc.key("name")[0]
            if node.lc.value("name")[0] != nline:
                raise _Unsupported()
            insert = " " * node.lc.key("name")[1] + f"{key}: {scalar(value)}" + (_ending(lines[nline]) or layout.newline)
            if not _ending(lines[nline]):
                lines[nline] += layout.newline
                insert = insert[: -len(layout.newline)]
            lines.insert(nline + 1, insert)
            layout = _Layout("".join(lines))
            item, section = _find(layout, name)
            lines, node = list(layout.lines), layout.doc[section.key][section.items.index(item)]
    return "".join(lines)


def _scalar_token(line: str, col: int) -> tuple[int, int] | None:
    """Start and end columns of a one-line scalar starting at `col`, or None."""
    rest = line[col:]
    if rest[:1] in _CLOSE_QUOTE:
        m = _CLOSE_QUOTE[rest[0]].match(rest)
        return (col, col + m.end()) if m else None
    if rest[:1] in ("|", ">", "[", "{", "&", "*", "!"):
        return None
    body = rest.rstrip("\r\n")
    cut = re.search(r"\s+#", body)
    token = (body[: cut.start()] if cut else body).rstrip()
    return (col, col + len(token)) if token else None


def _ruamel_set(text: str, name: str, fields: Mapping[str, Any]) -> str:
    doc = _load(text)
    for key in SECTIONS:
        for node in doc.get(key) or []:
            if isinstance(node, Mapping) and canonical_name(str(node.get("name"))) == canonical_name(name):
                for k, v in fields.items():
                    if v is None:
                        node.pop(k, None)
                    else:
                        node[k] = v
                return _ruamel_dump(doc, text)
    raise ConfigEditError(f"no worker named '{name}' in config.yaml")


# --------------------------------------------------------------------------- remove

def _find(layout: _Layout, name: str) -> tuple[_Item, _Section]:
    target = canonical_name(name)
    for section in layout.sections.values():
        for item in section.items or []:
            if item.name == target:
                return item, section
    if any(s.style == "other" for s in layout.sections.values()):
        raise _Unsupported()
    raise ConfigEditError(f"no worker named '{name}' in config.yaml")


def remove_entry(text: str, name: str) -> str:
    """Remove the entry named `name` (aliases accepted) with the comment lines directly above
    it and its end-of-line comments; the last entry of a list leaves `workers: []`."""
    expected = entry_names(text)
    target = canonical_name(name)
    if target not in expected:
        raise ConfigEditError(f"no worker named '{name}' in config.yaml")
    expected.remove(target)
    layout = _Layout(text)
    try:
        item, section = _find(layout, name)
    except _Unsupported:
        return _check(_ruamel_remove(text, name), expected)
    lines = list(layout.lines)
    first = layout.comment_above(item.start, section.key_line)
    last = item.end
    if last == len(lines) - 1 and not _ending(lines[last]) and first > 0:
        lines[first - 1] = lines[first - 1][: len(lines[first - 1]) - len(_ending(lines[first - 1]))]
    del lines[first:last + 1]
    if len(section.items) == 1:
        key_line = lines[section.key_line]
        end = _ending(key_line)
        body = key_line[: len(key_line) - len(end)]
        m = re.match(r"^(\s*\w+\s*:)(\s*(#.*)?)$", body)
        if m is None:
            return _check(_ruamel_remove(text, name), expected)
        lines[section.key_line] = m.group(1) + " []" + m.group(2) + end
    return _check("".join(lines), expected)


def _ruamel_remove(text: str, name: str) -> str:
    doc = _load(text)
    for key in SECTIONS:
        seq = doc.get(key)
        for i, node in enumerate(seq or []):
            if isinstance(node, Mapping) and canonical_name(str(node.get("name"))) == canonical_name(name):
                del seq[i]
                if len(seq) == 0:
                    seq.fa.set_flow_style()
                return _ruamel_dump(doc, text)
    raise ConfigEditError(f"no worker named '{name}' in config.yaml")
