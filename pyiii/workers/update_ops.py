"""Update operations shared by ``state::update`` and ``stream::update`` (spec/workers.md §1.6).

Pure: ``apply_ops(value, ops)`` returns the new value and the per-op errors. Storage adapters
call it inside their own atomic section (a lock, a transaction), so the rules live in one place.
"""

from __future__ import annotations

import copy
from typing import Any

MAX_SEGMENTS = 32
MAX_SEGMENT_BYTES = 256
MAX_MERGE_KEYS = 1024
MAX_MERGE_DEPTH = 16
FORBIDDEN = frozenset({"__proto__", "constructor", "prototype"})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
OPS = ("set", "merge", "increment", "decrement", "append", "remove")


class OpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate_ops(ops: Any) -> str | None:
    """Shape check of the whole request; a problem here fails it with deserialization_error."""
    if not isinstance(ops, list):
        return "`ops` must be an array"
    for index, op in enumerate(ops):
        if not isinstance(op, dict):
            return f"ops[{index}] must be an object"
        kind = op.get("type")
        if kind not in OPS:
            return f"ops[{index}].type must be one of {', '.join(OPS)}"
        if kind in ("increment", "decrement"):
            by = op.get("by")
            if not isinstance(by, int) or isinstance(by, bool):
                return f"ops[{index}].by must be an integer"
        path = op.get("path")
        if path is not None and not isinstance(path, (str, list)):
            return f"ops[{index}].path must be a string or an array of strings"
    return None


def apply_ops(value: Any, ops: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], int]:
    """Apply ``ops`` in order. Returns (new value, errors, number of ops that succeeded)."""
    current = copy.deepcopy(value) if value is not None else {}
    errors: list[dict[str, Any]] = []
    applied = 0
    for index, op in enumerate(ops):
        kind = op["type"]
        try:
            current = _APPLY[kind](current, op)
            applied += 1
        except OpError as exc:
            errors.append({"op_index": index, "code": exc.code, "message": exc.message})
    return current, errors, applied


def _segments(kind: str, path: Any, allow_list: bool) -> list[str]:
    if path is None or path == "" or path == []:
        return []
    parts = path if isinstance(path, list) and allow_list else [path] if isinstance(path, str) else None
    if parts is None:
        raise OpError(f"{kind}.path.invalid", f"{kind}: path must be a string")
    if len(parts) > MAX_SEGMENTS:
        raise OpError(f"{kind}.path.too_deep", f"{kind}: path has more than {MAX_SEGMENTS} segments")
    for part in parts:
        if not isinstance(part, str) or part == "":
            raise OpError(f"{kind}.path.empty_segment", f"{kind}: path segments must be non-empty")
        if len(part.encode()) > MAX_SEGMENT_BYTES:
            raise OpError(f"{kind}.path.segment_too_long",
                          f"{kind}: a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
        if part in FORBIDDEN:
            raise OpError(f"{kind}.path.proto_polluted", f"{kind}: path segment '{part}' is not allowed")
    return parts


def _set(current: Any, op: dict[str, Any]) -> Any:
    path = _segments("set", op.get("path"), allow_list=False)
    if not path:
        return op.get("value")
    if not isinstance(current, dict):
        raise OpError("set.target_not_object", "set: the current value is not an object")
    current[path[0]] = op.get("value")
    return current


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _merge(current: Any, op: dict[str, Any]) -> Any:
    path = _segments("merge", op.get("path"), allow_list=True)
    value = op.get("value")
    if not isinstance(value, dict):
        raise OpError("merge.value.not_an_object", "merge: value must be an object")
    if len(value) > MAX_MERGE_KEYS:
        raise OpError("merge.value.too_many_keys", f"merge: value has more than {MAX_MERGE_KEYS} keys")
    if _depth(value) > MAX_MERGE_DEPTH:
        raise OpError("merge.value.too_deep", f"merge: value is nested deeper than {MAX_MERGE_DEPTH}")
    if any(key in FORBIDDEN for key in value):
        raise OpError("merge.value.proto_polluted", "merge: value has a forbidden key")
    if not path:
        if not isinstance(current, dict):
            return current  # a root merge on a non-object does nothing (logged by the caller)
        current.update(value)
        return current
    if not isinstance(current, dict):
        current = {}
    node = current
    for segment in path[:-1]:
        if not isinstance(node.get(segment), dict):
            node[segment] = {}
        node = node[segment]
    target = node.get(path[-1])
    if not isinstance(target, dict):
        target = {}
    target.update(value)
    node[path[-1]] = target
    return current


def _number_op(kind: str, sign: int) -> Any:
    def apply(current: Any, op: dict[str, Any]) -> Any:
        path = _segments(kind, op.get("path"), allow_list=False)
        delta = sign * op["by"]
        if not path:
            base = 0 if current is None or current == {} else current
            if not isinstance(base, (int, float)) or isinstance(base, bool):
                raise OpError(f"{kind}.not_number", f"{kind}: the value is not a number")
            return _fit(base + delta)
        if not isinstance(current, dict):
            raise OpError(f"{kind}.target_not_object", f"{kind}: the current value is not an object")
        base = current.get(path[0], 0)
        if base is None:
            base = 0
        if not isinstance(base, (int, float)) or isinstance(base, bool):
            raise OpError(f"{kind}.not_number", f"{kind}: field '{path[0]}' is not a number")
        current[path[0]] = _fit(base + delta)
        return current

    return apply


def _fit(number: int | float) -> int | float:
    if isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX:
        return float(number)
    return number


def _append(current: Any, op: dict[str, Any]) -> Any:
    path = _segments("append", op.get("path"), allow_list=True)
    value = op.get("value")

    def grow(target: Any, nested_missing: bool) -> Any:
        if isinstance(target, list):
            return target + [value]
        if isinstance(target, str):
            if not isinstance(value, str):
                raise OpError("append.type_mismatch", "append: only a string can extend a string")
            return target + value
        if target is None:
            return [value] if nested_missing or not isinstance(value, str) else value
        raise OpError("append.type_mismatch", "append: the target is neither an array nor a string")

    if not path:
        return grow(None if current == {} else current, False)
    if not isinstance(current, dict):
        raise OpError("append.target_not_object", "append: the current value is not an object")
    node = current
    for segment in path[:-1]:
        if not isinstance(node.get(segment), dict):
            node[segment] = {}
        node = node[segment]
    missing = path[-1] not in node
    node[path[-1]] = grow(node.get(path[-1]), missing and len(path) > 1)
    return current


def _remove(current: Any, op: dict[str, Any]) -> Any:
    path = _segments("remove", op.get("path"), allow_list=False)
    if not path:
        return None
    if not isinstance(current, dict):
        raise OpError("remove.target_not_object", "remove: the current value is not an object")
    current.pop(path[0], None)
    return current


_APPLY = {
    "set": _set,
    "merge": _merge,
    "increment": _number_op("increment", 1),
    "decrement": _number_op("decrement", -1),
    "append": _append,
    "remove": _remove,
}
