"""Authentication and registration gates of an untrusted connection (spec/workers.md §8.3, §8.5,
§8.6).

The engine core applies registrations synchronously; the policy hooks are calls into trusted
workers and take time. A :class:`Session` sits between the socket and ``Engine.handle``: it
gates and rewrites registration frames (hooks, prefix, trigger targets) and keeps the
connection's frames in order while a hook is pending, without any task when no hook is
configured. Results, pings and the register call are never queued (a hook may itself wait on
them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, Code, Frame
from .errors import CallError
from .rbac import ListenerRules, Policy, call_trusted
from .rbac_rules import PERMISSIVE, AuthResult, RuleError, parse_auth_result

if TYPE_CHECKING:
    from .connection import Connection
    from .core import Engine

log = logging.getLogger("pyiii.engine.rbac")

AUTH_TIMEOUT_S = 10.0  # pyiii decision (§8.3 step 4): the reference waits forever
HOOK_TIMEOUT_S = 10.0
REGISTER_WORKER = "engine::workers::register"
_PASS_THROUGH = frozenset({Frame.INVOCATION_RESULT, Frame.TRIGGER_REGISTRATION_RESULT,
                           Frame.PING, Frame.PONG, Frame.REATTACH})
_GATED = frozenset({Frame.REGISTER_FUNCTION, Frame.UNREGISTER_FUNCTION, Frame.REGISTER_SERVICE,
                    Frame.REGISTER_TRIGGER_TYPE, Frame.UNREGISTER_TRIGGER_TYPE,
                    Frame.REGISTER_TRIGGER, Frame.UNREGISTER_TRIGGER})
_FN_DENIED = "function registration not allowed for this connection"
_FN_HOOK = "function registration denied by policy hook"
_TRIGGER_HOOK = "trigger registration denied by policy hook"


class AuthRefused(Exception):
    """The connection is refused; ``str()`` is the AUTH_ERROR message."""


# -- authentication -------------------------------------------------------------------------


def auth_request(raw_headers: Any, query: str, ip_address: str | None) -> dict[str, Any]:
    """The auth function's input: lower-case headers (repeats joined with ", "), query
    parameters with every value, and the socket peer address."""
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return {"headers": headers, "query_params": parse_qs(query, keep_blank_values=True),
            "ip_address": ip_address}


async def authenticate(engine: "Engine", rules: ListenerRules, request: dict[str, Any],
                       timeout_s: float = AUTH_TIMEOUT_S) -> AuthResult:
    """§8.3: the AuthResult of a new connection, or :class:`AuthRefused` with the reason."""
    rbac = rules.rbac
    if rbac is None or rbac.auth_function_id is None:
        return PERMISSIVE
    function_id = rbac.auth_function_id
    try:
        raw = await asyncio.wait_for(call_trusted(engine, function_id, request), timeout_s)
    except asyncio.TimeoutError:
        raise AuthRefused(f"auth function {function_id} did not answer within "
                          f"{timeout_s:g} s (it must answer within the listener's "
                          "handshake_timeout_ms, 10 s at most)") from None
    except CallError as exc:
        raise AuthRefused(f"auth function {function_id} refused the connection: "
                          f"[{exc.code}] {exc.message}") from None
    try:
        return parse_auth_result(raw)
    except RuleError as exc:
        raise AuthRefused(f"auth function {function_id} gave an invalid answer: {exc}") from None


def auth_error_frame(reason: str) -> dict[str, Any]:
    return {"type": "error", "error": {"code": Code.AUTH_ERROR, "message": reason}}


# -- the per-connection gate ----------------------------------------------------------------


class Session:
    """Feeds one untrusted connection's frames to the engine, in order, through the gates."""

    def __init__(self, engine: "Engine", conn: "Connection", policy: Policy) -> None:
        self.engine = engine
        self.conn = conn
        self.policy = policy
        self.pending: deque[dict[str, Any]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.namespace_known = asyncio.Event()

    def feed(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        engine = self.engine
        if kind in _PASS_THROUGH or (kind == Frame.INVOKE_FUNCTION
                                     and frame.get("function_id") == REGISTER_WORKER):
            engine.handle(self.conn, frame)
            if self.conn.namespace is not None:
                self.namespace_known.set()
            return
        if self.task is not None:
            self.pending.append(frame)
        elif kind in _GATED and self._needs_wait(kind):
            self.pending.append(frame)
            self.task = asyncio.ensure_future(self._drain())
        elif kind in _GATED:
            self._apply_sync(kind, frame)
        else:
            engine.handle(self.conn, frame)

    def stop(self) -> None:
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()

    def _needs_wait(self, kind: str) -> bool:
        if self.conn.namespace is None:
            return True  # hooks and refusals need the connection namespace
        rbac = self.policy.listener.rbac
        if rbac is None:
            return False
        hook = {Frame.REGISTER_FUNCTION: rbac.on_function_registration,
                Frame.REGISTER_TRIGGER: rbac.on_trigger_registration,
                Frame.REGISTER_TRIGGER_TYPE: rbac.on_trigger_type_registration}.get(kind)
        return hook is not None

    async def _drain(self) -> None:
        conn = self.conn
        try:
            while self.pending and not conn.closing:
                frame = self.pending.popleft()
                kind = frame["type"]
                if kind not in _GATED:
                    self.engine.handle(conn, frame)
                    continue
                await self._wait_namespace()
                try:
                    await self._apply(kind, frame)
                except protocol.InvalidFrame as exc:
                    log.warning("dropped %s from %s: %s", kind, conn.label(), exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("RBAC gate failed for %s", conn.label())
        finally:
            self.task = None

    async def _wait_namespace(self) -> None:
        # fixed by the register call (seen in feed) or by the grace expiry in the core, which
        # has no callback: poll for the latter
        while self.conn.namespace is None and not self.conn.closing:
            try:
                await asyncio.wait_for(self.namespace_known.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    def _apply_sync(self, kind: str, frame: dict[str, Any]) -> None:
        coro = self._apply(kind, frame)
        try:
            coro.send(None)  # no hook configured: completes without suspending
        except StopIteration:
            return
        except protocol.InvalidFrame as exc:
            log.warning("dropped %s from %s: %s", kind, self.conn.label(), exc)
            return
        coro.close()
        raise RuntimeError("registration gate suspended without a hook")

    async def _hook(self, function_id: str | None, payload: dict[str, Any]) -> Any:
        """The hook's answer (a dict), the payload itself without a hook, or None on refusal."""
        if function_id is None:
            return {}
        try:
            answer = await asyncio.wait_for(call_trusted(self.engine, function_id, payload),
                                            HOOK_TIMEOUT_S)
        except (CallError, asyncio.TimeoutError) as exc:
            log.warning("registration hook %s refused for %s: %s", function_id,
                        self.conn.label(), exc or "no answer in time")
            return None
        if not isinstance(answer, dict):
            log.warning("registration hook %s returned %s, not an object: refused",
                        function_id, type(answer).__name__)
            return None
        return answer

    async def _apply(self, kind: str, frame: dict[str, Any]) -> None:
        if kind == Frame.REGISTER_FUNCTION:
            return await self._register_function(frame)
        if kind == Frame.REGISTER_TRIGGER:
            return await self._register_trigger(frame)
        if kind == Frame.REGISTER_TRIGGER_TYPE:
            return await self._register_trigger_type(frame)
        if kind == Frame.UNREGISTER_FUNCTION and self.policy.prefix is not None:
            frame = {**frame, "id": self.policy.prefixed(protocol.req_str(frame, "id"))}
        self.engine.handle(self.conn, frame)

    async def _register_function(self, frame: dict[str, Any]) -> None:
        conn, policy, auth = self.conn, self.policy, self.policy.auth
        function_id = protocol.req_str(frame, "id")
        namespace = conn.namespace or DEFAULT_NAMESPACE

        def refuse(message: str, why: str) -> None:
            log.warning("refused function %s from %s: %s (%s)", function_id, conn.label(),
                        message, why)
            self.engine.send_safely(conn, protocol.function_conflict(
                namespace, policy.prefixed(function_id), "", message))

        if not auth.allow_function_registration:
            return refuse(_FN_DENIED, "the auth function returned allow_function_registration: "
                                      "false")
        rbac = policy.listener.rbac
        hook = rbac.on_function_registration if rbac is not None else None
        new = dict(frame)
        if hook is not None:
            answer = await self._hook(hook, {
                "function_id": function_id, "description": frame.get("description"),
                "metadata": frame.get("metadata"), "namespace": namespace,
                "context": auth.context})
            if answer is None or ("function_id" in answer and not (
                    isinstance(answer["function_id"], str) and answer["function_id"].strip())):
                return refuse(_FN_HOOK, f"see {hook}")
            if "function_id" in answer:
                new["id"] = answer["function_id"]
            if "description" in answer:
                new["description"] = answer["description"]
            if "metadata" in answer:
                new["metadata"] = answer["metadata"]
        new["id"] = policy.prefixed(new["id"])
        if new["id"].startswith("engine::"):  # the queue worker's way in; never a public one
            return refuse(f"'{new['id']}': engine::* ids are reserved for the engine and trusted "
                          "workers; an RBAC connection cannot register them (choose another id)",
                          "engine::* id")
        key = (namespace, new["id"])
        if hook is not None and "metadata" in answer:
            policy.vouched[key] = new["metadata"]  # metadata the hook vouched for is trusted
        else:
            policy.vouched.pop(key, None)
        if conn.closing:
            return
        self.engine.handle(conn, new)

    async def _register_trigger(self, frame: dict[str, Any]) -> None:
        conn, policy = self.conn, self.policy
        trigger_id = protocol.req_str(frame, "id")
        trigger_type = protocol.req_str(frame, "trigger_type")
        function_id = protocol.req_str(frame, "function_id")
        target_ns = frame.get("namespace")
        if not isinstance(target_ns, str) or not target_ns.strip():
            if target_ns is not None:
                return self.engine.handle(conn, frame)  # the core answers INVALID_NAMESPACE
            target_ns = DEFAULT_NAMESPACE

        def refuse(message: str, fix: str) -> None:
            # the wire text is fixed by the spec; the operator's log says what to change
            log.warning("refused trigger %s (%s -> %s) from %s: %s (%s)", trigger_id,
                        trigger_type, function_id, conn.label(), message, fix)
            self.engine.send_safely(conn, protocol.trigger_result(
                trigger_id, trigger_type, function_id,
                protocol.error_body(Code.FORBIDDEN, message)))

        denial = policy.check_trigger_type(trigger_type)
        if denial is not None:
            return refuse(denial, "add it to allowed_trigger_types in the auth function's answer")
        rbac = policy.listener.rbac
        hook = rbac.on_trigger_registration if rbac is not None else None
        new = dict(frame)
        if hook is not None:
            answer = await self._hook(hook, {
                "trigger_id": trigger_id, "trigger_type": trigger_type,
                "function_id": function_id, "config": frame.get("config"),
                "metadata": frame.get("metadata"), "namespace": target_ns,
                "context": policy.auth.context})
            if answer is None:
                return refuse(_TRIGGER_HOOK, f"see {hook}")
            for field, wire in (("trigger_id", "id"), ("trigger_type", "trigger_type"),
                                ("function_id", "function_id"), ("config", "config")):
                if field in answer:
                    if field != "config" and not isinstance(answer[field], str):
                        return refuse(_TRIGGER_HOOK, f"{hook} returned a non-string {field}")
                    new[wire] = answer[field]
        new["function_id"] = policy.prefixed(new["function_id"])
        denial = policy.check_target(conn, new["function_id"], target_ns)
        if denial is not None:
            return refuse(denial, "bind a function this connection registered, or allow the "
                                  "target through rbac.expose_functions or the AuthResult")
        if not conn.closing:
            self.engine.handle(conn, new)

    async def _register_trigger_type(self, frame: dict[str, Any]) -> None:
        conn, policy = self.conn, self.policy
        type_id = protocol.req_str(frame, "id")
        if not policy.auth.allow_trigger_type_registration:
            log.warning("dropped trigger type %s from %s: the auth function did not return "
                        "allow_trigger_type_registration: true", type_id, conn.label())
            return
        rbac = policy.listener.rbac
        hook = rbac.on_trigger_type_registration if rbac is not None else None
        new = dict(frame)
        if hook is not None:
            answer = await self._hook(hook, {"trigger_type_id": type_id,
                                             "description": frame.get("description"),
                                             "context": policy.auth.context})
            if answer is None or ("trigger_type_id" in answer
                                  and not isinstance(answer["trigger_type_id"], str)):
                log.warning("dropped trigger type %s from %s: denied by policy hook %s",
                            type_id, conn.label(), hook)
                return
            if "trigger_type_id" in answer:
                new["id"] = answer["trigger_type_id"]
            if "description" in answer:
                new["description"] = answer["description"]
        if self._claims_foreign_type(new["id"]):
            log.warning("dropped trigger type %s from %s: another worker provides it or has "
                        "bindings waiting for it, and an RBAC connection may not take it over "
                        "(give public types their own ids, e.g. through %s)", new["id"],
                        conn.label(), "rbac.on_trigger_type_registration_function_id")
            return
        if not conn.closing:
            self.engine.handle(conn, new)

    def _claims_foreign_type(self, type_id: str) -> bool:
        """Whether registering ``type_id`` would make this connection provider (or standby) of a
        type others rely on: one provided by another connection in any namespace (a namespaced
        type also captures that namespace's bindings), or one whose bindings from trusted
        workers wait for their provider to come back (they would be handed to this worker,
        configuration included)."""
        triggers = self.engine.triggers
        if any(key[1] == type_id and ttype.provider is not self.conn
               for key, ttype in triggers.types.items()):
            return True
        return any(b.trigger_type == type_id and b.provider_key is None
                   and (b.owner is None or b.owner.policy is None)
                   for b in triggers.bindings.values())
