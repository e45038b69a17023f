"""The access policy of one connection on an RBAC listener (spec/workers.md §8.4-§8.7).

A :class:`Policy` is what ``Connection.policy`` holds; ``None`` there means trusted, so a
trusted connection never reaches this module. The policy keeps the AuthResult computed when
the connection was accepted and reads the listener's *current* rules through ``listener``, so
a reload of `rbac` / `middleware_function_id` applies to later messages (§8.1).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, Code
from .errors import CallError
from .rbac_rules import (CARVE_OUT, AuthResult, RbacSettings, decide, invoke_denial_message,
                         namespace_allowed)

if TYPE_CHECKING:
    from .connection import Connection
    from .core import Engine
    from .functions import FunctionEntry
    from .router import CallFrame

log = logging.getLogger("pyiii.engine.rbac")


class ListenerRules(Protocol):
    """What a policy reads from its listener, at the time of each message."""

    rbac: RbacSettings | None
    middleware_function_id: str | None


def trusted_metadata(entry: "FunctionEntry", trust_worker_metadata: bool) -> Any:
    """The metadata of ``entry`` if metadata filters may believe it (§8.5 metadata trust)."""
    owner = entry.owner
    if owner is None or owner.policy is None or trust_worker_metadata:
        return entry.metadata  # engine, in-process or trusted listener
    vouched = owner.policy.vouched.get(entry.key)
    return entry.metadata if vouched is not None and vouched is entry.metadata else None


async def call_trusted(engine: "Engine", function_id: str, data: Any,
                       namespace: str = DEFAULT_NAMESPACE, traceparent: str | None = None,
                       baggage: str | None = None) -> Any:
    """Call an auth function, hook or middleware, refusing one an untrusted worker registered:
    otherwise a public worker could take over the id while the trusted one is away."""
    entry = engine.functions.get(namespace, function_id)
    if entry is not None and entry.owner is not None and entry.owner.policy is not None:
        raise CallError(Code.FORBIDDEN, f"{function_id} is registered by an untrusted worker "
                                        f"({entry.owner.label()}); RBAC functions must come "
                                        "from a trusted listener")
    return await engine.router.call(function_id, data, namespace, traceparent=traceparent,
                                    baggage=baggage)


class Policy:
    """Gates for one untrusted connection (or one on a listener with only a middleware)."""

    def __init__(self, engine: "Engine", listener: ListenerRules, auth: AuthResult) -> None:
        self.engine = engine
        self.listener = listener
        self.auth = auth
        # (namespace, id) -> metadata returned by the registration hook: only that is trusted
        self.vouched: dict[tuple[str, str], Any] = {}
        carved = sorted(auth.forbidden_functions & CARVE_OUT)
        if carved:
            log.warning("the auth function forbids %s, which SDKs call on their own (channels, "
                        "worker registration, logging); workers may misbehave", ", ".join(carved))

    @property
    def prefix(self) -> str | None:
        return self.auth.function_registration_prefix

    def prefixed(self, function_id: str) -> str:
        prefix = self.auth.function_registration_prefix
        return function_id if prefix is None else f"{prefix}::{function_id}"

    # -- the access decision ----------------------------------------------------------------

    def denial_rule(self, function_id: str, namespace: str) -> str | None:
        rbac = self.listener.rbac
        functions = self.engine.functions

        def metadata() -> Any:
            entry = functions.get(namespace, function_id)
            if entry is None:
                return None
            return trusted_metadata(entry, rbac is not None and rbac.trust_worker_metadata)

        return decide(self.auth, rbac, function_id, namespace, metadata)

    def check_invoke(self, function_id: str, namespace: str) -> dict[str, Any] | None:
        """``None`` when the call may go ahead, else the FORBIDDEN ErrorBody. The answer is the
        same whether the function exists or not, so denials reveal nothing."""
        rule = self.denial_rule(function_id, namespace)
        if rule is None:
            return None
        return protocol.error_body(Code.FORBIDDEN, invoke_denial_message(function_id, rule))

    def check_namespace(self, namespace: str) -> dict[str, Any] | None:
        if namespace_allowed(self.auth, namespace):
            return None
        permitted = ", ".join(sorted(self.auth.namespaces))
        return protocol.error_body(Code.FORBIDDEN, f"namespace '{namespace}' not allowed for this "
                                                   f"connection (permitted: {permitted})")

    def check_trigger_type(self, trigger_type: str) -> str | None:
        allowed = self.auth.allowed_trigger_types
        if allowed is not None and trigger_type not in allowed:
            return f"trigger type '{trigger_type}' not allowed for this connection"
        return None

    def check_target(self, conn: "Connection | None", function_id: str,
                     namespace: str) -> str | None:
        """Step 4 of §8.5 `registertrigger`: own functions always pass (pyiii decision)."""
        entry = self.engine.functions.get(namespace, function_id)
        if conn is not None and entry is not None and entry.owner is conn:
            return None
        if self.denial_rule(function_id, namespace) is None:
            return None
        return f"function '{function_id}' not allowed in namespace '{namespace}'"

    def check_register_trigger(self, trigger_type: str, function_id: str,
                               namespace: str) -> str | None:
        """The synchronous gates, for `engine::register_trigger` (no hook, no own function)."""
        return self.check_trigger_type(trigger_type) or self.check_target(None, function_id,
                                                                         namespace)

    # -- invocations ------------------------------------------------------------------------

    def intercept(self, conn: "Connection", call: "CallFrame", reply_id: str | None) -> bool:
        """Gate (and maybe divert to the middleware) a call from ``conn``. True: handled here."""
        router = self.engine.router
        denial = self.check_invoke(call.function_id, call.namespace)
        if denial is not None:
            router._fail(conn, call, reply_id, denial)
            return True
        middleware = self.listener.middleware_function_id
        if middleware is None or call.function_id in self.engine.reserved:
            return False  # engine functions (channels, logs, …) bypass the middleware
        router._spawn(self._through_middleware(middleware, conn, call, reply_id))
        return True

    async def _through_middleware(self, middleware: str, conn: "Connection", call: "CallFrame",
                                  reply_id: str | None) -> None:
        action: dict[str, Any] | None = None
        if call.action == "void":
            action = {"type": "void"}
        elif call.action == "enqueue":
            action = {"type": "enqueue", "queue": call.queue}
        payload = {"function_id": call.function_id, "payload": call.data, "action": action,
                   "context": self.auth.context, "namespace": call.namespace}
        router = self.engine.router
        try:
            result = await call_trusted(self.engine, middleware, payload, call.namespace,
                                        call.traceparent, call.baggage)
        except CallError as exc:
            log.info("middleware %s failed the call to %s: [%s] %s", middleware,
                     call.function_id, exc.code, exc.message)
            return router._fail(conn, call, reply_id, exc.body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # fail closed, never crash the engine
            log.exception("middleware %s crashed", middleware)
            return router._fail(conn, call, reply_id, protocol.error_body(
                Code.INVOCATION_FAILED, f"middleware {middleware} failed: {exc}"))
        if reply_id is not None and conn.live:
            router._answer(conn, reply_id, call.function_id, result, None)


def default_namespace_of(frame: dict[str, Any]) -> str:
    namespace = frame.get("namespace")
    return namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE
