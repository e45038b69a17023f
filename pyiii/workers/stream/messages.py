"""Request checks and the change messages of iii-stream (spec/workers.md §1.4, §7.3)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import bad_input


def fields(function_id: str, data: Any, names: tuple[str, ...]) -> list[str]:
    """The named string fields of a request, in order; a wrong shape fails the call."""
    if not isinstance(data, dict):
        listed = ", ".join(f"`{n}`" for n in names)
        raise bad_input(function_id, f"expected an object with {listed}")
    values = []
    for name in names:
        value = data.get(name)
        if not isinstance(value, str):
            raise bad_input(function_id, f"missing or non-string field `{name}`")
        values.append(value)
    return values


def required(function_id: str, data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise bad_input(function_id, f"missing field `{name}`")
    return data[name]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wrap(stream: str, group: str, item: str | None, event: dict[str, Any]) -> dict[str, Any]:
    """The message sockets receive and ``stream`` triggers get as their payload."""
    return {"type": "stream", "timestamp": now_ms(), "streamName": stream, "groupId": group,
            "id": item, "event": event}


def change(stream: str, group: str, item: str, kind: str, data: Any) -> dict[str, Any]:
    return wrap(stream, group, item, {"type": kind, "data": data})


def custom(stream: str, group: str, item: str | None, kind: str, data: Any) -> dict[str, Any]:
    return wrap(stream, group, item, {"type": "event", "event": {"type": kind, "data": data}})


def parse_client_frame(frame: Any) -> tuple[str, dict[str, Any]] | None:
    """A ``join``/``leave`` frame as (kind, data), or None when it does not parse (§7.4)."""
    if not isinstance(frame, dict) or frame.get("type") not in ("join", "leave"):
        return None
    data = frame.get("data")
    if not isinstance(data, dict):
        return None
    for name in ("subscriptionId", "streamName", "groupId"):
        if not isinstance(data.get(name), str):
            return None
    item = data.get("id")
    if item is not None and not isinstance(item, str):
        return None
    return frame["type"], {"subscriptionId": data["subscriptionId"],
                           "streamName": data["streamName"], "groupId": data["groupId"],
                           "id": item}
