"""The ``http`` route table (spec/workers.md §3.2).

Paths without parameters live in a dict keyed by the path (one lookup per request); routes with
parameters live in a trie of segments, searched literal-first with backtracking, so lookup cost
depends on the depth of the path, not on the number of routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ...sdk import TriggerConfig
from .config import METHODS


class RouteError(ValueError):
    """A binding the table refuses (reported as ``trigger_registration_failed``)."""


@dataclass
class Route:
    """One ``http`` binding: its parsed path and the binding it invokes."""

    binding: TriggerConfig[Any]
    method: str
    api_path: str  # as written in the binding
    shape: tuple[str | None, ...]  # literal segments, None for parameters
    params: tuple[str, ...]  # parameter names, in order
    condition_function_id: str | None
    middleware_function_ids: tuple[str, ...]

    @property
    def display(self) -> str:
        return "/" + self.api_path.removeprefix("/")


@dataclass
class _Node:
    literal: dict[str, "_Node"] = field(default_factory=dict)
    param: "_Node | None" = None
    # method -> routes of that shape, most recent last (older ones are fallbacks)
    methods: dict[str, list[Route]] = field(default_factory=dict)


def split_path(path: str) -> list[str]:
    """``/users/42`` -> ``["users", "42"]``; a trailing slash keeps an empty last segment."""
    return (path[1:] if path.startswith("/") else path).split("/")


def parse_route(binding: TriggerConfig[Any]) -> Route:
    cfg = binding.config if isinstance(binding.config, dict) else {}
    api_path = cfg.get("api_path")
    if not isinstance(api_path, str) or not api_path:
        raise RouteError("api_path is required for http triggers")
    method = cfg.get("http_method", "GET")
    if method is None:
        method = "GET"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise RouteError(f"unsupported http_method '{method}'")
    condition = cfg.get("condition_function_id")
    if condition is not None and not isinstance(condition, str):
        raise RouteError("http trigger config.condition_function_id must be a string")
    middleware = cfg.get("middleware_function_ids") or []
    if not isinstance(middleware, list) or not all(isinstance(m, str) and m for m in middleware):
        raise RouteError("http trigger config.middleware_function_ids must be a list of "
                         "function ids")
    shape: list[str | None] = []
    params: list[str] = []
    for segment in split_path(api_path):
        name = None
        if segment.startswith(":"):
            name = segment[1:]
        elif len(segment) >= 2 and segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
        if name is None:
            shape.append(segment)
            continue
        if not name:
            raise RouteError(f"api_path '{api_path}' has a parameter segment with an empty name")
        shape.append(None)
        params.append(name)
    return Route(binding, method.upper(), api_path, tuple(shape), tuple(params),
                 condition or None, tuple(middleware))


@dataclass
class Match:
    route: Route
    path_params: dict[str, str]


class RouteTable:
    def __init__(self) -> None:
        self._root = _Node()
        self._static: dict[str, _Node] = {}  # "users/me" -> node (parameter-free paths)
        self._by_id: dict[str, Route] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    # -- registration -----------------------------------------------------------------------

    def _node(self, shape: tuple[str | None, ...], create: bool) -> _Node | None:
        node = self._root
        for segment in shape:
            if segment is None:
                if node.param is None:
                    if not create:
                        return None
                    node.param = _Node()
                node = node.param
            else:
                child = node.literal.get(segment)
                if child is None:
                    if not create:
                        return None
                    child = node.literal[segment] = _Node()
                node = child
        return node

    def add(self, binding: TriggerConfig[Any]) -> Route:
        """Validate and add a binding (a known id is replaced); raises RouteError."""
        route = parse_route(binding)
        node = self._node(route.shape, create=False)
        for other in (node.methods.get(route.method, []) if node else []):
            if other.binding.id != binding.id and other.params != route.params:
                raise RouteError(
                    f"route {route.method} {route.display} conflicts with {other.method} "
                    f"{other.display} (same shape, different parameter names)")
        self.remove(binding.id)
        node = self._node(route.shape, create=True)
        assert node is not None
        node.methods.setdefault(route.method, []).append(route)
        if not route.params:
            self._static["/".join(s for s in route.shape if s is not None)] = node
        self._by_id[binding.id] = route
        return route

    def remove(self, binding_id: str) -> Route | None:
        route = self._by_id.pop(binding_id, None)
        if route is None:
            return None
        node = self._node(route.shape, create=False)
        if node is not None:
            stack = node.methods.get(route.method, [])
            stack[:] = [r for r in stack if r.binding.id != binding_id]
            if not stack:
                node.methods.pop(route.method, None)
            if not route.params and not node.methods:
                self._static.pop("/".join(s for s in route.shape if s is not None), None)
        self._prune(route.shape)
        return route

    def _prune(self, shape: tuple[str | None, ...]) -> None:
        trail: list[tuple[_Node, str | None]] = []
        node: _Node | None = self._root
        for segment in shape:
            if node is None:
                return
            trail.append((node, segment))
            node = node.param if segment is None else node.literal.get(segment)
        child = node
        for parent, segment in reversed(trail):
            if child is None or child.methods or child.literal or child.param:
                return
            if segment is None:
                parent.param = None
            else:
                parent.literal.pop(segment, None)
            child = parent

    # -- lookup -----------------------------------------------------------------------------

    def match(self, method: str, path: str) -> Match | None:
        """The route serving ``method path`` (HEAD falls back to GET), or None."""
        wanted = ("HEAD", "GET") if method == "HEAD" else (method,)
        segments = split_path(path)
        node = self._static.get("/".join(segments))
        if node is not None:
            route = _pick(node, wanted)
            if route is not None:
                return Match(route, {})
        values: list[str] = []
        found = self._search(self._root, segments, 0, wanted, values)
        if found is None:
            return None
        return Match(found, {name: unquote(value) for name, value in zip(found.params, values)})

    def _search(self, node: _Node, segments: list[str], index: int, wanted: tuple[str, ...],
                values: list[str]) -> Route | None:
        if index == len(segments):
            return _pick(node, wanted)
        segment = segments[index]
        child = node.literal.get(segment)
        if child is not None:
            found = self._search(child, segments, index + 1, wanted, values)
            if found is not None:
                return found
        if node.param is not None:
            values.append(segment)
            found = self._search(node.param, segments, index + 1, wanted, values)
            if found is not None:
                return found
            values.pop()
        return None

    def allowed(self, path: str) -> list[str]:
        """Methods that some route answers for ``path`` (for 405 and its ``allow`` header)."""
        methods: set[str] = set()
        self._collect(self._root, split_path(path), 0, methods)
        if "GET" in methods:
            methods.add("HEAD")
        return [m for m in METHODS if m in methods]

    def _collect(self, node: _Node, segments: list[str], index: int, into: set[str]) -> None:
        if index == len(segments):
            into.update(node.methods)
            return
        child = node.literal.get(segments[index])
        if child is not None:
            self._collect(child, segments, index + 1, into)
        if node.param is not None:
            self._collect(node.param, segments, index + 1, into)


def _pick(node: _Node, wanted: tuple[str, ...]) -> Route | None:
    for method in wanted:
        stack = node.methods.get(method)
        if stack:
            return stack[-1]
    return None
