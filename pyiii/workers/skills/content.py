"""The rules of the skills registry that need no engine (spec/workers.md §9.1): ids, ``iii://``
URIs, the internal-namespace guard, the index page and how function results become content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ...sdk import InvocationError

PREFIX = "iii://"
INDEX_URI = "iii://skills"
MARKDOWN = "text/markdown"
JSON = "application/json"
MAX_SKILL_BYTES = 256 * 1024
MAX_SEGMENTS = 8
RESERVED_FIRST = ("skills", "fn")
DESCRIPTION_MAX = 140
# functions that must never back a skill section or a prompt: the engine's own, the storage
# workers', and the agent-facing front ends (a resource must not read through them)
INTERNAL_PREFIXES = ("engine::", "worker::", "state::", "stream::", "iii.", "iii::", "mcp::",
                     "a2a::", "skills::", "prompts::")

_SEGMENT = re.compile(r"[a-z0-9_-]{1,64}")
_ID_RULE = ("1 to 8 segments joined by '/', each 1-64 characters of lowercase letters, digits, "
            "'_' or '-'")


def now_rfc3339() -> str:
    """``registered_at``: UTC, millisecond precision, ``Z`` suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def id_problem(skill_id: str) -> str | None:
    """Why ``skill_id`` is not a valid skill id, or None."""
    segments = skill_id.split("/")
    if len(segments) > MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
        return f"invalid skill id '{skill_id}': use {_ID_RULE}"
    if segments[0] in RESERVED_FIRST:
        return f"invalid skill id '{skill_id}': '{segments[0]}' is reserved as a first segment"
    return None


def check_id(skill_id: str, function_id: str) -> None:
    problem = id_problem(skill_id)
    if problem is not None:
        raise InvocationError("INVALID_ID", problem, function_id)


def is_segment(text: str) -> bool:
    """One id segment: also the rule for prompt names."""
    return _SEGMENT.fullmatch(text) is not None


def check_prompt_name(name: str, function_id: str) -> None:
    if not is_segment(name):
        raise InvocationError("INVALID_ID", f"invalid prompt name '{name}': use 1-64 "
                              "characters of lowercase letters, digits, '_' or '-'", function_id)


def is_internal(function_id: str) -> bool:
    return function_id.startswith(INTERNAL_PREFIXES)


def check_not_internal(target: str, function_id: str) -> None:
    if is_internal(target):
        raise InvocationError("INTERNAL_NAMESPACE", f"'{target}' is in an internal namespace "
                              "and cannot back a skill resource", function_id)


@dataclass(frozen=True)
class Target:
    """What a URI names: ``index``, a ``section`` (function id) or a ``skill`` (id)."""

    kind: str
    name: str = ""


def resolve(uri: str, function_id: str) -> Target:
    """Classify ``uri``; raises ``INVALID_URI`` or ``INTERNAL_NAMESPACE``."""
    def invalid(why: str) -> InvocationError:
        return InvocationError("INVALID_URI", f"invalid URI '{uri}': {why}", function_id)

    if not uri.startswith(PREFIX):
        raise invalid(f"it must start with {PREFIX}")
    path = uri[len(PREFIX):]
    if not path:
        raise invalid("the skill id is empty")
    segments = path.split("/")
    if any(not s for s in segments):
        raise invalid("it has an empty segment")
    if path == "skills":
        return Target("index")
    if segments[0] == "fn":
        if len(segments) == 1:
            raise invalid("iii://fn/ must be followed by a function id")
        target = "/".join(segments[1:])
    elif "::" in segments[-1]:
        target = segments[-1]  # the segments before it only group sections
    else:
        return Target("skill", path)
    check_not_internal(target, function_id)
    return Target("section", target)


def title_of(body: str) -> str | None:
    for line in body.splitlines():
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def description_of(body: str) -> str:
    """The first paragraph that is not a heading, on one line, cut to 140 characters."""
    paragraph: list[str] = []
    for line in [*body.splitlines(), ""]:
        if line.strip():
            paragraph.append(line.strip())
            continue
        if paragraph and not paragraph[0].startswith("#"):
            text = " ".join(paragraph)
            return text if len(text) <= DESCRIPTION_MAX else text[:DESCRIPTION_MAX] + "..."
        paragraph = []
    return ""


def render_index(skills: list[dict[str, Any]]) -> str:
    """The ``iii://skills`` page for skill records sorted by id."""
    if not skills:
        return "# Skills\n\nNo skills are registered yet.\n"
    lines = ["# Skills", "", "Every registered skill; read one through its iii:// link.", ""]
    for skill in skills:
        body = skill.get("skill") or ""
        entry = f"- [`{skill['id']}`]({PREFIX}{skill['id']}) — {title_of(body) or skill['id']}"
        description = description_of(body)
        lines.append(f"{entry} — {description}" if description else entry)
    return "\n".join(lines) + "\n"


def as_content(result: Any) -> tuple[str, str]:
    """``(mimeType, text)`` of a section function's result."""
    if isinstance(result, str):
        return MARKDOWN, result
    if isinstance(result, dict) and isinstance(result.get("content"), str):
        return MARKDOWN, result["content"]
    return JSON, json.dumps(result, indent=2, ensure_ascii=False)


def as_messages(result: Any) -> list[Any] | None:
    """The MCP messages of a prompt function's result, or None when it has no usable shape."""
    text = result if isinstance(result, str) else None
    if isinstance(result, dict) and isinstance(result.get("content"), str):
        text = result["content"]
    if text is not None:
        return [{"role": "user", "content": {"type": "text", "text": text}}]
    if isinstance(result, dict) and isinstance(result.get("messages"), list):
        return result["messages"]
    return None
