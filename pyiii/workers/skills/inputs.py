"""Shape checks of skills/prompts requests: a wrong shape is ``deserialization_error``
(spec/workers.md §1.4); what is well-shaped but refused gets the function's own code."""

from __future__ import annotations

from typing import Any

from ..errors import bad_input


def request(data: Any, function_id: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise bad_input(function_id, "expected an object")
    return data


def text(data: dict[str, Any], key: str, function_id: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise bad_input(function_id, f"missing field `{key}`")
        return None
    if not isinstance(value, str):
        raise bad_input(function_id, f"`{key}` must be a string")
    return value


def arguments(data: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    """A prompt's declared ``arguments``: ``[{name, description?, required?}]``."""
    raw = data.get("arguments")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_input(function_id, "`arguments` must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise bad_input(function_id, f"`arguments[{i}]` must be an object")
        name = text(item, "name", function_id)
        description = text(item, "description", function_id, required=False)
        required = item.get("required", False)
        if not isinstance(required, bool):
            raise bad_input(function_id, f"`arguments[{i}].required` must be true or false")
        argument: dict[str, Any] = {"name": name}
        if description is not None:
            argument["description"] = description
        argument["required"] = required
        out.append(argument)
    return out
