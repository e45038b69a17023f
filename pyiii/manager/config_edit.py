"""Round-trip edits of config.yaml's `workers:` list (spec/cli.md §5.3).

config.yaml is the user's file: an `iii worker` command may add, change or remove entries but
must keep everything else as written (comments, blank lines, key order, quoting, flow
collections, `${...}` text, LF or CRLF endings, the final newline), so that adding then removing
a worker gives back the original bytes.

ruamel.yaml's round-trip loader finds where each entry starts (line and column of every node,
:mod:`pyiii.manager.config_layout`); the edit itself is a splice of whole lines into the original text, which is the only way to be
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
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from pyiii.engine.firstparty import canonical_name

from .config_layout import (
    SECTIONS, ConfigEditError, Item, Layout, Section, check_entries, entry_names, is_blank, is_comment,
    line_ending, load_text, newline_of,
)

_PLAIN_OK = re.compile(r"[A-Za-z0-9_./~^$][^\s#,\[\]{}'\"]*")
_CLOSE_QUOTE = {"'": re.compile(r"'(?:[^']|'')*'"), '"': re.compile(r'"(?:[^"\\]|\\.)*"')}


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
    doc = load_text(text) if text.strip() else None
    new = canonical_name(str(fields["name"]))
    expected = _section_names(doc, "workers") + [new] + _section_names(doc, "modules")
    try:
        layout = Layout(text) if doc is not None else None
        return check_entries(_splice_add(text, layout, fields, comment), expected)
    except _Unsupported:
        return check_entries(_ruamel_add(text, fields, comment), expected)


def _section_names(doc: Any, key: str) -> list[str]:
    seq = doc.get(key) if isinstance(doc, Mapping) else None
    return [canonical_name(str(n.get("name"))) for n in seq or [] if isinstance(n, Mapping)]


class _Unsupported(Exception):
    """This layout needs the ruamel.yaml dumper."""


def _splice_add(text: str, layout: Layout | None, fields: Mapping[str, Any], comment: str | None) -> str:
    newline = newline_of(text) if text else "\n"
    if layout is None or layout.doc is None:
        if text.strip() and not all(is_blank(l) or is_comment(l) for l in text.splitlines()):
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
        if not line_ending(lines[last]):
            new[0] = newline + new[0]
            new[-1] = new[-1][: -len(newline)]
        lines[last + 1:last + 1] = new
        return "".join(lines)
    key_line = lines[section.key_line]
    body, end = key_line[: len(key_line) - len(line_ending(key_line))], line_ending(key_line)
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
    if newline_of(original) == "\r\n":
        out = out.replace("\n", "\r\n")
    return out


def _ruamel_add(text: str, fields: Mapping[str, Any], comment: str | None) -> str:
    doc = load_text(text) if text.strip() else None
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
        return check_entries(_splice_set(text, name, fields), expected)
    except _Unsupported:
        return check_entries(_ruamel_set(text, name, fields), expected)


def _splice_set(text: str, name: str, fields: Mapping[str, Any]) -> str:
    layout = Layout(text)
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
                layout = Layout("".join(lines))  # positions moved: re-read before the next key
                item, section = _find(layout, name)
                lines, node = list(layout.lines), layout.doc[section.key][section.items.index(item)]
                continue
            start, stop = token
            lines[vline] = lines[vline][:start] + scalar(value) + lines[vline][stop:]
        elif value is not None:
            nline = node.lc.key("name")[0]
            if node.lc.value("name")[0] != nline:
                raise _Unsupported()
            insert = " " * node.lc.key("name")[1] + f"{key}: {scalar(value)}" + (line_ending(lines[nline]) or layout.newline)
            if not line_ending(lines[nline]):
                lines[nline] += layout.newline
                insert = insert[: -len(layout.newline)]
            lines.insert(nline + 1, insert)
            layout = Layout("".join(lines))
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
    doc = load_text(text)
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

def _find(layout: Layout, name: str) -> tuple[Item, Section]:
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
    layout = Layout(text)
    try:
        item, section = _find(layout, name)
    except _Unsupported:
        return check_entries(_ruamel_remove(text, name), expected)
    lines = list(layout.lines)
    first = layout.comment_above(item.start, section.key_line)
    last = item.end
    if last == len(lines) - 1 and not line_ending(lines[last]) and first > 0:
        lines[first - 1] = lines[first - 1][: len(lines[first - 1]) - len(line_ending(lines[first - 1]))]
    del lines[first:last + 1]
    if len(section.items) == 1:
        key_line = lines[section.key_line]
        end = line_ending(key_line)
        body = key_line[: len(key_line) - len(end)]
        m = re.match(r"^(\s*\w+\s*:)(\s*(#.*)?)$", body)
        if m is None:
            return check_entries(_ruamel_remove(text, name), expected)
        lines[section.key_line] = m.group(1) + " []" + m.group(2) + end
    return check_entries("".join(lines), expected)


def _ruamel_remove(text: str, name: str) -> str:
    doc = load_text(text)
    for key in SECTIONS:
        seq = doc.get(key)
        for i, node in enumerate(seq or []):
            if isinstance(node, Mapping) and canonical_name(str(node.get("name"))) == canonical_name(name):
                del seq[i]
                if len(seq) == 0:
                    seq.fa.set_flow_style()
                return _ruamel_dump(doc, text)
    raise ConfigEditError(f"no worker named '{name}' in config.yaml")
