"""RBAC rules as pure data (spec/workers.md §8.2-§8.4): the `rbac` block, the AuthResult and the
access decision. No I/O, no engine: everything here is testable with plain values.

The `rbac` block is validated when config.yaml loads (a typo in a filter is a config error, not
a silently open or closed listener); the AuthResult is validated when the auth function answers
(an invalid answer refuses the connection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from ..protocol import DEFAULT_NAMESPACE

# Calls SDKs and reference-trained code make on their own (channels, registration, logging,
# baggage): always allowed unless explicitly forbidden (§8.4 step 4).
CARVE_OUT = frozenset({
    "engine::channels::create", "engine::workers::register",
    "engine::log::info", "engine::log::warn", "engine::log::error", "engine::log::debug",
    "engine::log::trace", "engine::baggage::get", "engine::baggage::set",
    "engine::baggage::get_all",
})
RBAC_KEYS = ("auth_function_id", "expose_functions", "on_function_registration_function_id",
             "on_trigger_registration_function_id",
             "on_trigger_type_registration_function_id", "trust_worker_metadata")
_MATCH = re.compile(r"""match\((?:"([^"]*)"|'([^']*)')\)\Z""")


class RuleError(ValueError):
    """An invalid `rbac` block or AuthResult; ``key`` is the dotted path of the culprit."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@lru_cache(maxsize=4096)
def glob(pattern: str) -> Callable[[str], Any]:
    """`*` is any run of characters (`::` included); anchored, case-sensitive, nothing else
    is special. Returns a matcher (cached: the same patterns are checked on every call)."""
    if "*" not in pattern:
        return pattern.__eq__
    if pattern == "*":
        return lambda _text: True
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S).fullmatch


def match_call(text: str) -> str | None:
    """The pattern of a `match("<pattern>")` / `match('<pattern>')` string, else None."""
    found = _MATCH.match(text.strip())
    if found is None:
        return None
    return found.group(1) if found.group(1) is not None else found.group(2)


def json_equal(a: Any, b: Any) -> bool:
    """Exact JSON equality: unlike Python's ``==``, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


# -- expose filters -------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One `expose_functions` entry: an id glob or a metadata pattern, in one namespace."""

    pattern: str | None = None
    metadata: tuple[tuple[str, Any], ...] | None = None  # (key, value or ("match", glob))
    namespace: str = DEFAULT_NAMESPACE

    def matches(self, function_id: str, namespace: str, metadata: Any) -> bool:
        if namespace != self.namespace:
            return False
        if self.pattern is not None:
            return bool(glob(self.pattern)(function_id))
        if not isinstance(metadata, dict):
            return False  # a function without (trusted) metadata never matches
        for key, want in self.metadata or ():
            if key not in metadata:
                return False
            have = metadata[key]
            if isinstance(want, tuple):
                if not isinstance(have, str) or not glob(want[1])(have):
                    return False
            elif not json_equal(have, want):
                return False
        return True


def parse_filter(raw: Any, key: str) -> Filter:
    if isinstance(raw, str):
        pattern = match_call(raw)
        if pattern is None:
            raise RuleError(key, f"{key}: '{raw}' is not a filter; write match(\"{raw}\") for a "
                                 "function id glob, or {metadata: {key: value}}")
        return Filter(pattern=pattern)
    if not isinstance(raw, dict):
        raise RuleError(key, f"{key} must be match(\"<glob>\") or a mapping with `match` or "
                             "`metadata`")
    unknown = sorted(set(raw) - {"match", "metadata", "namespace"})
    if unknown:
        raise RuleError(key, f"{key}: unknown key '{unknown[0]}' (accepted: match, metadata, "
                             "namespace)")
    if ("match" in raw) == ("metadata" in raw):
        raise RuleError(key, f"{key} needs exactly one of `match` or `metadata`")
    namespace = raw.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace.strip():
        raise RuleError(f"{key}.namespace", f"{key}.namespace must be a non-blank string")
    if "match" in raw:
        pattern = raw["match"]
        if not isinstance(pattern, str) or not pattern:
            raise RuleError(f"{key}.match", f"{key}.match must be a non-empty glob string")
        return Filter(pattern=match_call(pattern) or pattern, namespace=namespace)
    wanted = raw["metadata"]
    if not isinstance(wanted, dict) or not wanted:
        raise RuleError(f"{key}.metadata", f"{key}.metadata must be a non-empty mapping")
    pairs = []
    for name, value in wanted.items():
        pattern = match_call(value) if isinstance(value, str) else None
        pairs.append((str(name), ("match", pattern) if pattern is not None else value))
    return Filter(metadata=tuple(pairs), namespace=namespace)


# -- the `rbac` block -----------------------------------------------------------------------


@dataclass(frozen=True)
class RbacSettings:
    auth_function_id: str | None = None
    expose: tuple[Filter, ...] = ()
    on_function_registration: str | None = None
    on_trigger_registration: str | None = None
    on_trigger_type_registration: str | None = None
    trust_worker_metadata: bool = False


def parse_rbac(raw: Any) -> RbacSettings:
    """Validate an `rbac` block. Raises :class:`RuleError` naming the key (under `rbac.`)."""
    if not isinstance(raw, dict):
        raise RuleError("rbac", "rbac must be a mapping")
    for key in raw:
        if key not in RBAC_KEYS:
            raise RuleError(f"rbac.{key}", f"unknown key '{key}' in rbac (accepted: "
                                           f"{', '.join(RBAC_KEYS)})")

    def function_id(key: str) -> str | None:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise RuleError(f"rbac.{key}", f"rbac.{key} must be a function id")
        return value

    exposed = raw.get("expose_functions") or []
    if not isinstance(exposed, list):
        raise RuleError("rbac.expose_functions", "rbac.expose_functions must be a list of filters")
    trust = raw.get("trust_worker_metadata", False)
    if not isinstance(trust, bool):
        raise RuleError("rbac.trust_worker_metadata", "rbac.trust_worker_metadata must be true "
                                                      "or false")
    return RbacSettings(
        auth_function_id=function_id("auth_function_id"),
        expose=tuple(parse_filter(f, f"rbac.expose_functions[{i}]") for i, f in enumerate(exposed)),
        on_function_registration=function_id("on_function_registration_function_id"),
        on_trigger_registration=function_id("on_trigger_registration_function_id"),
        on_trigger_type_registration=function_id("on_trigger_type_registration_function_id"),
        trust_worker_metadata=trust,
    )


# -- the AuthResult -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    allowed_functions: frozenset[str] = frozenset()
    forbidden_functions: frozenset[str] = frozenset()
    namespaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allowed_trigger_types: frozenset[str] | None = None  # None: all
    allow_trigger_type_registration: bool = False
    allow_function_registration: bool = True
    function_registration_prefix: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


PERMISSIVE = AuthResult(allow_trigger_type_registration=True)  # no auth function (§8.3 step 2)


def parse_auth_result(raw: Any) -> AuthResult:
    """Validate what the auth function returned. Raises :class:`RuleError` with the reason."""
    if raw is None:
        raise RuleError("", "it returned no AuthResult")
    if not isinstance(raw, dict):
        raise RuleError("", f"it returned {type(raw).__name__}, not an AuthResult object")

    def strings(key: str) -> frozenset[str] | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RuleError(key, f"AuthResult.{key} must be a list of strings")
        return frozenset(value)

    def flag(key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise RuleError(key, f"AuthResult.{key} must be true or false")
        return value

    namespaces = raw.get("namespaces") or {}
    if not isinstance(namespaces, dict) or not all(
            isinstance(grants, list) and all(isinstance(g, str) for g in grants)
            for grants in namespaces.values()):
        raise RuleError("namespaces", "AuthResult.namespaces must map namespace names to lists "
                                      "of function id grants")
    prefix = raw.get("function_registration_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.strip()):
        raise RuleError("function_registration_prefix",
                        "AuthResult.function_registration_prefix must be a non-blank string")
    context = raw.get("context")
    if context is not None and not isinstance(context, dict):
        raise RuleError("context", "AuthResult.context must be an object")
    return AuthResult(
        allowed_functions=strings("allowed_functions") or frozenset(),
        forbidden_functions=strings("forbidden_functions") or frozenset(),
        namespaces={str(ns): tuple(match_call(g) or g for g in grants)
                    for ns, grants in namespaces.items()},
        allowed_trigger_types=strings("allowed_trigger_types"),
        allow_trigger_type_registration=flag("allow_trigger_type_registration", False),
        allow_function_registration=flag("allow_function_registration", True),
        function_registration_prefix=prefix,
        context=context or {},
    )


# -- the access decision --------------------------------------------------------------------

ALLOW = None
FORBIDDEN_RULE = "forbidden"  # denied by forbidden_functions
NOT_EXPOSED = "expose"  # nothing allows it


def decide(auth: AuthResult, rbac: RbacSettings | None, function_id: str, namespace: str,
           metadata: Callable[[], Any]) -> str | None:
    """§8.4: ``None`` when allowed, else which rule denied. ``metadata`` is called only when a
    metadata filter needs it (it returns the *trusted* metadata of the target, or None)."""
    if function_id in auth.forbidden_functions:
        return FORBIDDEN_RULE
    grants = auth.namespaces.get(namespace)
    if grants and any(glob(g)(function_id) for g in grants):
        return ALLOW
    if namespace == DEFAULT_NAMESPACE and function_id in auth.allowed_functions:
        return ALLOW
    if function_id in CARVE_OUT or rbac is None:
        return ALLOW
    fetched: list[Any] = []
    for rule in rbac.expose:
        if rule.metadata is not None and not fetched:
            fetched.append(metadata())
        if rule.matches(function_id, namespace, fetched[0] if fetched else None):
            return ALLOW
    return NOT_EXPOSED


def invoke_denial_message(function_id: str, rule: str) -> str:
    fix = "remove from rbac.forbidden_functions" if rule == FORBIDDEN_RULE \
        else "add to rbac.expose_functions"
    return f"function '{function_id}' not allowed ({fix})"


def namespace_allowed(auth: AuthResult, namespace: str) -> bool:
    """A non-empty `namespaces` map limits which namespaces may be declared (`default` stays
    reachable: a refused declaration falls back to it anyway)."""
    return not auth.namespaces or namespace in auth.namespaces or namespace == DEFAULT_NAMESPACE
