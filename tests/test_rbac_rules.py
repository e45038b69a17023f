"""RBAC rules without peers: the `rbac` grammar and its config errors, glob and metadata
matching, and raw-client checks of discovery filtering, `/otel` authentication, hot-reloaded
rules and the permissive listener (spec/workers.md §8.1-§8.5)."""

from __future__ import annotations

import asyncio
import json
import textwrap
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pyiii.engine.config import ConfigError, parse_config
from pyiii.engine.listener import Listener, ListenerConfig
from pyiii.engine.rbac_rules import (
    AuthResult,
    Filter,
    RuleError,
    decide,
    glob,
    json_equal,
    parse_auth_result,
    parse_rbac,
)
from tests.conftest import Raw, start_engine


# -- pure rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,text,expected", [
    ("api::*", "api::list", True), ("api::*", "api::a::b", True), ("api::*", "xapi::list", False),
    ("*", "anything::at::all", True), ("*::get", "state::get", True), ("*::get", "state::set", False),
    ("Api::*", "api::list", False), ("a.b", "aXb", False), ("a?c", "abc", False),
    ("exact::id", "exact::id", True), ("exact::id", "exact::idx", False),
])
def test_glob(pattern: str, text: str, expected: bool) -> None:
    assert bool(glob(pattern)(text)) is expected


def test_json_equality_is_exact() -> None:
    assert json_equal({"a": [1, True]}, {"a": [1.0, True]})
    assert not json_equal(True, 1)
    assert not json_equal({"public": 1}, {"public": True})
    assert not json_equal("1", 1)


@pytest.mark.parametrize("raw,message", [
    ({"expose_functions": ["api::*"]}, "rbac.expose_functions[0]: 'api::*' is not a filter; "
                                       "write match(\"api::*\") for a function id glob, or "
                                       "{metadata: {key: value}}"),
    ({"expose_functions": [{"match": "a", "metadata": {"x": 1}}]},
     "rbac.expose_functions[0] needs exactly one of `match` or `metadata`"),
    ({"expose_functions": [{"namespace": "x"}]},
     "rbac.expose_functions[0] needs exactly one of `match` or `metadata`"),
    ({"expose_functions": [{"match": "a", "where": 1}]},
     "rbac.expose_functions[0]: unknown key 'where' (accepted: match, metadata, namespace)"),
    ({"auth_function": "x"}, "unknown key 'auth_function' in rbac (accepted: auth_function_id, "
                             "expose_functions, on_function_registration_function_id, "
                             "on_trigger_registration_function_id, "
                             "on_trigger_type_registration_function_id, trust_worker_metadata)"),
    ({"trust_worker_metadata": "yes"}, "rbac.trust_worker_metadata must be true or false"),
])
def test_rbac_grammar_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rbac(raw)
    assert str(err.value) == message


def test_rbac_filters_parse() -> None:
    rules = parse_rbac({"expose_functions": [
        "match('a::*')", {"match": "b::*", "namespace": "orders"},
        {"metadata": {"public": True, "team": 'match("pay*")'}}]})
    assert rules.expose == (
        Filter(pattern="a::*"), Filter(pattern="b::*", namespace="orders"),
        Filter(metadata=(("public", True), ("team", ("match", "pay*")))))
    meta = rules.expose[2]
    assert meta.matches("x", "default", {"public": True, "team": "payments", "other": 1})
    assert not meta.matches("x", "default", {"public": True, "team": 7})
    assert not meta.matches("x", "default", {"public": True})
    assert not meta.matches("x", "orders", {"public": True, "team": "pay"})
    assert not meta.matches("x", "default", None)


def test_config_yaml_reports_rbac_errors_at_their_position() -> None:
    text = textwrap.dedent("""\
        workers:
          - name: iii-worker-manager
          - name: iii-worker-manager
            config:
              port: 49135
              rbac:
                expose_functions:
                  - api::*
        """)
    cfg = parse_config(text, "/proj/config.yaml", {})
    with pytest.raises(ConfigError) as err:
        cfg.listeners()
    assert str(err.value) == ("config.yaml:8:13: config.rbac.expose_functions[0]: 'api::*' is not "
                              "a filter; write match(\"api::*\") for a function id glob, or "
                              "{metadata: {key: value}}")
    ok = parse_config(text.replace("- api::*", "- match(\"api::*\")") + "      token: ${T:}\n",
                      "/proj/config.yaml", {"T": "abc"})
    main, public = ok.listeners()
    assert (main.rbac, public.rbac["expose_functions"], public.token) == (
        None, ['match("api::*")'], "abc")


@pytest.mark.parametrize("raw,message", [
    ({"allowed_functions": ["a", 1]}, "AuthResult.allowed_functions must be a list of strings"),
    ({"namespaces": {"o": "svc::*"}}, "AuthResult.namespaces must map namespace names to lists "
                                      "of function id grants"),
    ({"allow_function_registration": "no"}, "AuthResult.allow_function_registration must be "
                                            "true or false"),
    ({"function_registration_prefix": " "}, "AuthResult.function_registration_prefix must be a "
                                            "non-blank string"),
    ({"context": []}, "AuthResult.context must be an object"),
    ([], "it returned list, not an AuthResult object"),
])
def test_invalid_auth_results(raw: Any, message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_auth_result(raw)
    assert str(err.value) == message


def test_decision_order() -> None:
    rules = parse_rbac({"expose_functions": ["match(\"*\")"]})
    auth = parse_auth_result({"forbidden_functions": ["engine::log::info", "a::b"],
                              "namespaces": {"o": ["a::*"]}, "allowed_functions": ["a::b"]})
    none = lambda: None  # noqa: E731
    assert decide(auth, rules, "a::b", "o", none) == "forbidden"  # beats grants and allows
    assert decide(auth, rules, "engine::log::info", "default", none) == "forbidden"
    assert decide(auth, rules, "a::c", "o", none) is None
    assert decide(AuthResult(), parse_rbac({}), "engine::log::warn", "default", none) is None
    assert decide(AuthResult(), parse_rbac({}), "x::y", "default", none) == "expose"


# -- raw clients against RBAC listeners -----------------------------------------------------


async def _gate(url: str, auth: dict[str, Any] | None) -> Raw:
    """A trusted raw worker providing gate::auth (answering ``auth``) and api::list."""
    gate = await Raw.open(url)
    await gate.register("gate")
    for fid in ("gate::auth", "api::list", "hidden::x", "mw::audit", "gate::on_fn"):
        await gate.send({"type": "registerfunction", "id": fid})
    await gate.sync()
    gate.calls = []  # type: ignore[attr-defined]

    async def serve() -> None:
        while True:
            call = await gate.recv_type("invokefunction", timeout=60)
            gate.calls.append((call["function_id"], call.get("data")))  # type: ignore[attr-defined]
            result = auth if call["function_id"] == "gate::auth" else {"ok": call["function_id"]}
            await gate.send({"type": "invocationresult", "invocation_id": call["invocation_id"],
                             "function_id": call["function_id"], "result": result})

    gate.server_task = asyncio.ensure_future(serve())  # type: ignore[attr-defined]
    return gate


async def test_discovery_reload_and_otel() -> None:
    running = await start_engine()
    rbac = {"auth_function_id": "gate::auth",
            "expose_functions": ['match("api::*")', 'match("engine::functions::list")']}
    public = Listener(running.engine, ListenerConfig(host="127.0.0.1", port=0, rbac=rbac))
    await public.start()
    url = f"ws://127.0.0.1:{public.port}"
    gate = await _gate(running.url, {"context": {"u": 1}})
    try:
        u = await Raw.open(url)
        await u.register("u")
        listed = await u.call("engine::functions::list", {})
        assert [f["function_id"] for f in listed["result"]["functions"]] == ["api::list"]
        assert (await u.call("api::list", {}))["result"] == {"ok": "api::list"}

        # a reload changes the rules for later messages of the same connection
        public.reconfigure(ListenerConfig(host="127.0.0.1", port=0, rbac={
            "auth_function_id": "gate::auth", "expose_functions": ['match("hidden::*")']}))
        denied = await u.call("api::list", {})
        assert denied["error"] == {"code": "FORBIDDEN", "message":
                                   "function 'api::list' not allowed (add to rbac.expose_functions)"}
        assert (await u.call("hidden::x", {}))["result"] == {"ok": "hidden::x"}
        with pytest.raises(Exception):
            public.reconfigure(ListenerConfig(rbac={"expose_functions": ["bad"]}))
        assert (await u.call("hidden::x", {}))["result"] == {"ok": "hidden::x"}  # rules kept

        # /otel is authenticated like `/`, and never becomes a worker
        gate.server_task.cancel()  # type: ignore[attr-defined]
        async with connect(url + "/otel") as otel:
            call = await gate.recv_type("invokefunction")
            assert call["function_id"] == "gate::auth"
            await gate.send({"type": "invocationresult", "invocation_id": call["invocation_id"],
                             "function_id": "gate::auth", "error": {"code": "DENIED",
                                                                    "message": "no"}})
            frame = json.loads(await asyncio.wait_for(otel.recv(), 5))
            assert frame == {"type": "error", "error": {
                "code": "AUTH_ERROR",
                "message": "auth function gate::auth refused the connection: [DENIED] no"}}
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(otel.recv(), 5)
            assert otel.close_code == 1008
        await u.close()
    finally:
        gate.server_task.cancel()  # type: ignore[attr-defined]
        await gate.close()
        await public.close()
        await running.listener.close()
        await running.engine.stop()


async def test_listener_without_auth_function_is_permissive_but_gated() -> None:
    running = await start_engine()
    public = Listener(running.engine, ListenerConfig(
        host="127.0.0.1", port=0, rbac={"expose_functions": ['match("api::*")']}))
    await public.start()
    gate = await _gate(running.url, {})
    try:
        u = await Raw.open(f"ws://127.0.0.1:{public.port}")
        await u.register("open")
        await u.send({"type": "registertriggertype", "id": "hook"})
        await u.send({"type": "registerfunction", "id": "mine::f"})
        await u.sync()
        assert ("default", "hook") in running.engine.triggers.types
        assert running.engine.functions.get("default", "mine::f") is not None
        assert (await u.call("api::list", {}))["result"] == {"ok": "api::list"}
        assert (await u.call("hidden::x", {}))["error"]["code"] == "FORBIDDEN"
        # an untrusted worker's own functions are not callable by it unless exposed
        assert (await u.call("mine::f", {}))["error"]["message"] == (
            "function 'mine::f' not allowed (add to rbac.expose_functions)")
        # the permissive result allows every trigger type, but targets are still gated
        iid = str(uuid.uuid4())
        await u.send({"type": "registertrigger", "id": iid, "trigger_type": "hook",
                      "function_id": "hidden::x", "config": {}})
        refusal = await u.recv_type("triggerregistrationresult")
        assert refusal["error"] == {"code": "FORBIDDEN", "message":
                                    "function 'hidden::x' not allowed in namespace 'default'"}
        await u.close()
    finally:
        gate.server_task.cancel()  # type: ignore[attr-defined]
        await gate.close()
        await public.close()
        await running.listener.close()
        await running.engine.stop()


async def test_listener_reload_moves_removes_and_reconfigures() -> None:
    from pyiii.engine.listener import apply_listener_configs
    from tests.iii_process import free_port

    running = await start_engine()
    engine = running.engine
    port_a, port_b = free_port(), free_port()
    first = [ListenerConfig(host="127.0.0.1", port=port_a, rbac={"expose_functions": []})]
    listeners = await apply_listener_configs(engine, [], first)
    try:
        u = await Raw.open(f"ws://127.0.0.1:{port_a}")
        # same address: the token applies to new connections, the open one stays
        same = [ListenerConfig(host="127.0.0.1", port=port_a, rbac={"expose_functions": []},
                               token="t")]
        assert await apply_listener_configs(engine, listeners, same) == listeners
        with pytest.raises(Exception):
            await Raw.open(f"ws://127.0.0.1:{port_a}")
        await u.sync()
        # new port: the old listener's connections are told to reconnect (1012)
        moved = [ListenerConfig(host="127.0.0.1", port=port_b, rbac={"expose_functions": []})]
        listeners = await apply_listener_configs(engine, listeners, moved)
        assert await u.closed() == 1012
        v = await Raw.open(f"ws://127.0.0.1:{port_b}")
        # removed: 1001
        listeners = await apply_listener_configs(engine, listeners, [])
        assert listeners == [] and await v.closed() == 1001
    finally:
        for listener in listeners:
            await listener.close()
        await running.listener.close()
        await engine.stop()


async def test_middleware_sees_the_action_and_fails_closed() -> None:
    running = await start_engine()
    public = Listener(running.engine, ListenerConfig(
        host="127.0.0.1", port=0, rbac={"expose_functions": [
            'match("api::*")', {"match": "api::*", "namespace": "orders"}]},
        middleware_function_id="mw::audit"))
    await public.start()
    # an untrusted worker holding the middleware's id is never called (fail closed)
    squatter = await Raw.open(f"ws://127.0.0.1:{public.port}")
    await squatter.register("squatter")
    await squatter.send({"type": "registerfunction", "id": "mw::audit"})
    await squatter.sync()
    refused = await squatter.call("api::list", {})
    assert refused["error"]["code"] == "FORBIDDEN"
    assert refused["error"]["message"].startswith("mw::audit is registered by an untrusted worker")
    await squatter.close()
    await _settle_until(lambda: running.engine.functions.get("default", "mw::audit") is None)
    gate = await _gate(running.url, {})
    try:
        u = await Raw.open(f"ws://127.0.0.1:{public.port}")
        await u.register("u")
        await u.send({"type": "invokefunction", "function_id": "api::list", "data": {"v": 1},
                      "action": {"type": "void"}})
        answer = await u.call("api::list", {"e": 1}, action={"type": "enqueue", "queue": "q"})
        assert answer["result"] == {"ok": "mw::audit"}  # the middleware's answer, not a receipt
        await u.no_frame(0.2)  # nothing for the void call
        context = {}
        assert gate.calls == [  # type: ignore[attr-defined]
            ("mw::audit", {"function_id": "api::list", "payload": {"v": 1},
                           "action": {"type": "void"}, "context": context, "namespace": "default"}),
            ("mw::audit", {"function_id": "api::list", "payload": {"e": 1},
                           "action": {"type": "enqueue", "queue": "q"}, "context": context,
                           "namespace": "default"})]
        # a middleware missing in the target namespace fails the call (fail closed)
        failed = await u.call("api::list", {}, namespace="orders")
        assert failed["error"]["code"] == "function_not_found"
        assert "mw::audit" in failed["error"]["message"]
        await u.close()
    finally:
        gate.server_task.cancel()  # type: ignore[attr-defined]
        await gate.close()
        await public.close()
        await running.listener.close()
        await running.engine.stop()


async def test_registrations_wait_for_the_namespace_and_the_hook() -> None:
    running = await start_engine()
    public = Listener(running.engine, ListenerConfig(host="127.0.0.1", port=0, rbac={
        "expose_functions": [{"match": "*", "namespace": "orders"}],
        "on_function_registration_function_id": "gate::on_fn"}))
    await public.start()
    url = f"ws://127.0.0.1:{public.port}"
    try:
        u = await Raw.open(url)
        # before the hook's owner exists: registrations sent before the register call wait
        # for the namespace; the hook is missing, so the registration is refused
        await u.send({"type": "registerfunction", "id": "f::a"})
        await u.register("u", namespace="orders")
        refusal = await u.recv_type("registrationrejected")
        assert (refusal["namespace"], refusal["function_id"], refusal["message"]) == (
            "orders", "f::a", "function registration denied by policy hook")
        # a trusted hook: registrations wait for its answer, and calls queue behind them
        gate = await _gate(running.url, {})
        await u.send({"type": "registerfunction", "id": "f::c"})
        await u.send({"type": "invokefunction", "invocation_id": str(uuid.uuid4()),
                      "function_id": "f::c", "namespace": "orders", "data": 1})
        call = await u.recv_type("invokefunction")  # delivered to u itself: registered first
        assert (call["function_id"], call["data"]) == ("f::c", 1)
        assert ("gate::on_fn", {"function_id": "f::c", "description": None, "metadata": None,
                                "namespace": "orders", "context": {}}) in gate.calls
        gate.server_task.cancel()
        await gate.close()
        await u.close()
    finally:
        await public.close()
        await running.listener.close()
        await running.engine.stop()


async def _settle_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
