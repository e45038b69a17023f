"""RBAC listeners end to end (spec/workers.md §8, scenarios 33-39): official-SDK workers (S25,
N22) on RBAC listeners as the untrusted side, a pyiii.sdk worker on the trusted listener
providing the auth function, the registration hooks, the middleware and the target functions.

One engine with four listeners serves a table of allowed / denied cases; each untrusted peer
authenticates with a token naming its AuthResult profile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pyiii.engine.listener import Listener, ListenerConfig
from pyiii.sdk import InitOptions, ReconnectionConfig, TriggerConfig, TriggerHandler, register_worker
from tests.conftest import start_engine
from tests.conftest_peers import make_spec

FAST = ReconnectionConfig(initial_delay_ms=20, max_delay_ms=100, jitter_factor=0)
EXPOSE = "add to rbac.expose_functions"
FORBID = "remove from rbac.forbidden_functions"

PROFILES: dict[str, Any] = {
    "main": {"forbidden_functions": ["api::admin"], "allowed_functions": ["extra::one"],
             "namespaces": {"orders": ["svc::*"]}, "allowed_trigger_types": ["tick"],
             "context": {"user": "main"}},
    "caller": {"context": {"user": "caller"}},
    "noreg": {"allow_function_registration": False},
    "prefix": {"function_registration_prefix": "t1"},
    "tt": {"allow_trigger_type_registration": True, "namespaces": {"orders": ["match(\"x::*\")"]}},
    "mw": {"context": {"user": "mw"}},
    "badshape": {"allowed_functions": "api::list"},
}
HOOKS = {"auth_function_id": "gate::auth",
         "on_function_registration_function_id": "gate::on_fn",
         "on_trigger_registration_function_id": "gate::on_trigger",
         "on_trigger_type_registration_function_id": "gate::on_tt"}
RBAC_A = {**HOOKS, "expose_functions": ['match("api::*")', {"metadata": {"public": True}},
                                        {"match": "orders::*", "namespace": "orders"}]}
RBAC_B = {"auth_function_id": "gate::auth", "expose_functions": ["match('api::*')"]}
RBAC_C = {"expose_functions": [{"metadata": {"public": True}}], "trust_worker_metadata": True}


class TickProvider(TriggerHandler):
    """The trusted `tick` trigger type: records the bindings the engine forwards."""

    def __init__(self) -> None:
        self.bound: list[TriggerConfig] = []

    async def register_trigger(self, config: TriggerConfig) -> None:
        self.bound.append(config)

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        pass


class Gate:
    """The trusted worker: auth, hooks, middleware and target functions; records every input."""

    def __init__(self, url: str) -> None:
        self.seen: dict[str, list[Any]] = {}
        self.client = register_worker(url, InitOptions(worker_name="gate",
                                                       reconnection_config=FAST))
        self.orders = register_worker(url, InitOptions(worker_name="gate-orders",
                                                       namespace="orders",
                                                       reconnection_config=FAST))
        self.tick = TickProvider()

    def record(self, function_id: str, value: Any) -> None:
        self.seen.setdefault(function_id, []).append(value)

    async def start(self) -> None:
        await self.client.wait_connected(5)
        await self.orders.wait_connected(5)
        c = self.client

        async def auth(data: dict[str, Any]) -> Any:
            self.record("gate::auth", data)
            bearer = data["headers"].get("authorization", "")
            token = bearer[7:] if bearer.startswith("Bearer ") else \
                (data["query_params"].get("token") or [None])[0]
            if token == "none":
                return None
            if token == "slow":
                await asyncio.sleep(30)
            if token not in PROFILES:
                raise ValueError(f"unknown token {token!r}")
            return PROFILES[token]

        async def on_fn(data: dict[str, Any]) -> Any:
            self.record("gate::on_fn", data)
            if data["function_id"].startswith("deny::"):
                raise PermissionError("no deny::* functions")
            if data["function_id"].startswith("hooked::"):
                return {"metadata": {"public": True}}
            if data["function_id"] == "rename::x":
                return {"function_id": "ns::x"}
            return {}

        async def on_trigger(data: dict[str, Any]) -> Any:
            self.record("gate::on_trigger", data)
            if (data.get("config") or {}).get("deny"):
                raise PermissionError("denied")
            return {}

        async def on_tt(data: dict[str, Any]) -> Any:
            self.record("gate::on_tt", data)
            return {"trigger_type_id": "ext::" + data["trigger_type_id"]}

        async def audit(data: dict[str, Any]) -> Any:
            self.record("mw::audit", data)
            if (data.get("payload") or {}).get("block"):
                return {"blocked": True}
            return await c.trigger_async({"function_id": data["function_id"],
                                          "payload": data["payload"]})

        def target(function_id: str) -> Any:
            def handler(data: Any) -> Any:
                self.record(function_id, data)
                return {"from": function_id, "got": data}
            return handler

        c.register_function("gate::auth", auth)
        c.register_function("gate::on_fn", on_fn)
        c.register_function("gate::on_trigger", on_trigger)
        c.register_function("gate::on_tt", on_tt)
        c.register_function("mw::audit", audit)
        for fid in ("api::list", "api::admin", "secret::x", "extra::one", "svc::a"):
            c.register_function(fid, target(fid))
        c.register_function("pub::a", target("pub::a"), metadata={"public": True})
        c.register_function("pub::b", target("pub::b"), metadata={"public": False})
        c.register_trigger_type({"id": "tick", "description": "test ticks"}, self.tick)
        for fid in ("svc::a", "orders::z", "x::y"):
            self.orders.register_function(fid, target(f"orders/{fid}"))

    async def stop(self) -> None:
        await self.client.shutdown_async()
        await self.orders.shutdown_async()


def deny(function_id: str, fix: str = EXPOSE) -> dict[str, Any]:
    return {"error": {"code": "FORBIDDEN", "message": f"function '{function_id}' not allowed ({fix})"}}


def ok(function_id: str, data: Any) -> dict[str, Any]:
    return {"result": {"from": function_id, "got": data}}


# (case, peer, function_id, payload, namespace, expected answer; None: any successful result)
CALLS: list[tuple[str, str, str, Any, str | None, Any]] = [
    ("expose glob", "main", "api::list", {"n": 1}, None, ok("api::list", {"n": 1})),
    ("not exposed", "main", "secret::x", {}, None, deny("secret::x")),
    ("forbidden beats expose", "main", "api::admin", {}, None, deny("api::admin", FORBID)),
    ("missing looks like denied", "main", "nope::x", {}, None, deny("nope::x")),
    ("carve-out log", "main", "engine::log::info", {"message": "hi"}, None, None),
    ("carve-out channels", "main", "engine::channels::create", {}, None, None),
    ("discovery not carved out", "main", "engine::workers::list", {}, None,
     deny("engine::workers::list")),
    ("allowed_functions", "main", "extra::one", 1, None, ok("extra::one", 1)),
    ("allowed_functions only in default", "main", "extra::one", 1, "orders", deny("extra::one")),
    ("namespace grant", "main", "svc::a", 2, "orders", ok("orders/svc::a", 2)),
    ("grant only in its namespace", "main", "svc::a", 2, None, deny("svc::a")),
    ("grant via match()", "tt", "x::y", 3, "orders", ok("orders/x::y", 3)),
    ("no grant for this connection", "tt", "svc::a", 2, "orders", deny("svc::a")),
    ("namespaced expose filter", "tt", "orders::z", 4, "orders", ok("orders/orders::z", 4)),
    ("namespaced filter not in default", "tt", "orders::z", 4, None, deny("orders::z")),
    ("forbidden is per connection", "tt", "api::admin", 5, None, ok("api::admin", 5)),
    ("trusted metadata", "caller", "pub::a", 6, None, ok("pub::a", 6)),
    ("metadata mismatch", "caller", "pub::b", 6, None, deny("pub::b")),
    ("untrusted worker metadata", "caller", "u::c", 7, None, deny("u::c")),
    ("hook-vouched metadata", "caller", "hooked::v", 8, None, {"result": 8}),
    ("own prefixed id needs exposure", "prefix", "t1::echo", 9, None, deny("t1::echo")),
    ("permissive listener still gates", "open", "secret::x", {}, None, deny("secret::x")),
    ("trust_worker_metadata", "open", "u::c", 10, None, {"result": 10}),
    ("metadata filter, trusted owner", "open", "pub::a", 11, None, ok("pub::a", 11)),
    ("metadata filter mismatch", "open", "pub::b", 11, None, deny("pub::b")),
    ("middleware forwards", "mw", "api::list", {"a": 1}, None, ok("api::list", {"a": 1})),
    ("middleware answers", "mw", "api::list", {"block": True}, None, {"result": {"blocked": True}}),
    ("gate before middleware", "mw", "secret::x", {}, None, deny("secret::x")),
    ("engine functions bypass middleware", "mw", "engine::channels::create", {}, None, None),
    ("declare a granted namespace", "main", "engine::workers::register", {"namespace": "orders"},
     None, {"result": {"success": True}}),
    ("declare another namespace", "main", "engine::workers::register",
     {"namespace": "billing"}, None, {"error": {"code": "FORBIDDEN", "message": (
         "namespace 'billing' not allowed for this connection (permitted: orders)")}}),
]


async def _listener(engine: Any, **config: Any) -> Listener:
    listener = Listener(engine, ListenerConfig(host="127.0.0.1", port=0, **config))
    await listener.start()
    return listener


def _url(listener: Listener, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{listener.port}/" + (f"?token={token}" if token else "")


def _frames(peer: Any, kind: str) -> list[dict[str, Any]]:
    return [e["frame"] for e in peer.history if e.get("event") == "frame"
            and e["frame"].get("type") == kind]


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def rig(peers: Any) -> Any:
    running = await start_engine()
    engine = running.engine
    listeners = [await _listener(engine, rbac=RBAC_A, handshake_timeout_ms=1500),
                 await _listener(engine, rbac=RBAC_B, middleware_function_id="mw::audit"),
                 await _listener(engine, rbac=RBAC_C)]
    gate = Gate(running.url)
    try:
        await gate.start()
        yield running, listeners, gate
    finally:
        await peers.aclose_all()
        await gate.stop()
        for listener in listeners:
            await listener.close()
        await running.listener.close()
        await engine.stop()


async def test_rbac_access_table(rig: Any, peers: Any) -> None:
    running, (lis_a, lis_b, lis_c), gate = rig
    functions = running.engine.functions
    main_spec = make_spec(
        "u-main",
        [("own::h", "echo"), ("u::c", "echo"), ("deny::x", "echo"), ("rename::x", "echo"),
         {"id": "hooked::v", "behaviour": "echo", "metadata": {"public": False}}],
        trigger_types=["utt"],
        triggers=[{"type": "tick", "function_id": "own::h", "config": {"n": 1}},
                  {"type": "tick", "function_id": "secret::x", "config": {}},
                  {"type": "cron", "function_id": "own::h", "config": {"expression": "* * * * * *"}},
                  {"type": "tick", "function_id": "api::list", "config": {}},
                  {"type": "tick", "function_id": "own::h", "config": {"deny": True}}])
    main_spec["functions"][1]["metadata"] = {"public": True}
    started = await asyncio.gather(
        peers.astart("s25", _url(lis_a), main_spec, env={"III_TOKEN": "main"}),
        peers.astart("n22", _url(lis_a, "caller"), make_spec("u-caller")),
        peers.astart("s25", _url(lis_a), make_spec("u-noreg", [("nr::f", "echo")]),
                     env={"III_TOKEN": "noreg"}),
        peers.astart("n22", _url(lis_a, "prefix"), make_spec("u-prefix", [("echo", "echo")])),
        peers.astart("s25", _url(lis_a), make_spec("u-tt", trigger_types=["utt2"]),
                     env={"III_TOKEN": "tt"}),
        peers.astart("s25", _url(lis_b), make_spec("u-mw"), env={"III_TOKEN": "mw"}),
        peers.astart("n22", _url(lis_c), make_spec("u-open")),
    )
    by_name = dict(zip(("main", "caller", "noreg", "prefix", "tt", "mw", "open"), started))
    main, prefix = by_name["main"], by_name["prefix"]

    failures = []
    for case, who, function_id, payload, namespace, expected in CALLS:
        kw = {"namespace": namespace} if namespace else {}
        got = await by_name[who].acall(function_id, payload, **kw)
        if "error" in got:
            got["error"] = {k: got["error"].get(k) for k in ("code", "message")}
        if expected is None:
            good = "result" in got
        else:
            good = got == expected
        if not good:
            failures.append(f"{case}: {who} -> {function_id} ({namespace}): {got} != {expected}")

    # what the hooks and the middleware were given
    mw_inputs = [s for s in gate.seen.get("mw::audit", [])]
    if mw_inputs[:1] != [{"function_id": "api::list", "payload": {"a": 1}, "action": None,
                          "context": {"user": "mw"}, "namespace": "default"}]:
        failures.append(f"middleware input: {mw_inputs[:1]}")
    if len(mw_inputs) != 2 or gate.seen["api::list"].count({"block": True}) != 0:
        failures.append(f"middleware calls: {mw_inputs} / api::list saw {gate.seen['api::list']}")
    on_fn = {s["function_id"]: s for s in gate.seen.get("gate::on_fn", [])}
    if on_fn.get("u::c") != {"function_id": "u::c", "description": None,
                             "metadata": {"public": True}, "namespace": "default",
                             "context": {"user": "main"}}:
        failures.append(f"registration hook input: {on_fn.get('u::c')}")
    if "nr::f" in on_fn:
        failures.append("the hook ran for a connection not allowed to register functions")
    auth_in = gate.seen["gate::auth"][0]
    if auth_in["ip_address"] != "127.0.0.1" or not isinstance(auth_in["query_params"], dict):
        failures.append(f"auth input: {auth_in}")

    # registrations: hooks, prefix, refusals
    rejected = {f["function_id"]: f for f in _frames(main, "registrationrejected")}
    noreg = _frames(by_name["noreg"], "registrationrejected")
    expect_regs = [
        ("hook keeps the registration", functions.get("default", "u::c") is not None),
        ("hook error refuses", functions.get("default", "deny::x") is None),
        ("hook refusal answered", {k: rejected.get("deny::x", {}).get(k) for k in (
            "code", "owner_worker_id", "message")} == {
            "code": "FUNCTION_NAMESPACE_CONFLICT", "owner_worker_id": "",
            "message": "function registration denied by policy hook"}),
        ("hook renames", functions.get("default", "ns::x") is not None
         and functions.get("default", "rename::x") is None),
        ("registration not allowed", functions.get("default", "nr::f") is None),
        # S25 may send a registration twice while connecting; each copy gets the same answer
        ("registration refusal answered", {(f["function_id"], f["code"], f["owner_worker_id"],
                                            f["message"]) for f in noreg} == {(
            "nr::f", "FUNCTION_NAMESPACE_CONFLICT", "",
            "function registration not allowed for this connection")}),
        ("prefix applied", functions.get("default", "t1::echo") is not None
         and functions.get("default", "echo") is None),
        ("trigger type registration not allowed",
         ("default", "utt") not in running.engine.triggers.types),
        ("trigger type hook renames", ("default", "ext::utt2") in running.engine.triggers.types
         and ("default", "utt2") not in running.engine.triggers.types),
    ]
    failures += [f"registration: {name}" for name, good in expect_regs if not good]

    # trigger gates, in the order of main's spec
    ids = [t["id"] for t in main.ready["triggers"]]
    results = {f["id"]: f.get("error") for f in _frames(main, "triggerregistrationresult")}
    bindings = running.engine.triggers.bindings
    expect_triggers = [
        ("own function, unexposed", ids[0], None),
        ("unexposed target", ids[1], "function 'secret::x' not allowed in namespace 'default'"),
        ("trigger type not allowed", ids[2], "trigger type 'cron' not allowed for this connection"),
        ("exposed target", ids[3], None),
        ("trigger hook refuses", ids[4], "trigger registration denied by policy hook"),
    ]
    for name, trigger_id, message in expect_triggers:
        error = results.get(trigger_id)
        if message is None and (error is not None or trigger_id not in bindings):
            failures.append(f"trigger {name}: refused {error}")
        if message is not None and (error != {"code": "FORBIDDEN", "message": message}
                                    or trigger_id in bindings):
            failures.append(f"trigger {name}: {error}")
    try:  # the provider hears of accepted bindings only (S25 may send one twice)
        await _until(lambda: {c.function_id for c in gate.tick.bound} == {"api::list", "own::h"})
    except AssertionError:
        failures.append(f"tick provider got {[c.function_id for c in gate.tick.bound]}")

    # void denial: no answer, never delivered
    void = await main.acall("secret::x", {"void": 1}, action={"type": "void"})
    if "error" in void or {"void": 1} in gate.seen.get("secret::x", []):
        failures.append(f"void denial: {void} / {gate.seen.get('secret::x')}")

    # prefix: the trusted side calls t1::echo, the worker sees its own id
    answer = await gate.client.trigger_async({"function_id": "t1::echo", "payload": {"x": 1}})
    seen = await prefix.event("invoke", predicate=lambda e: e.get("data") == {"x": 1})
    if answer != {"x": 1} or seen["function_id"] != "echo":
        failures.append(f"prefix delivery: {answer} / {seen}")
    await prefix.aclose()
    await _until(lambda: functions.get("default", "t1::echo") is None)

    assert not failures, "\n".join(failures)
    assert len(CALLS) + len(expect_regs) + len(expect_triggers) >= 30


async def _refused(url: str, **kw: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Frames received before the engine closed the socket, and the close code."""
    frames = []
    async with connect(url, **kw) as ws:
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        except ConnectionClosed:
            pass
        return frames, ws.close_code


async def test_auth_error_flow(rig: Any) -> None:
    running, (lis_a, _b, _c), gate = rig
    cases = [
        (None, "auth function gate::auth refused the connection: [invocation_failed] "
               "unknown token None"),
        ("none", "auth function gate::auth gave an invalid answer: it returned no AuthResult"),
        ("badshape", "auth function gate::auth gave an invalid answer: "
                     "AuthResult.allowed_functions must be a list of strings"),
        ("slow", "auth function gate::auth did not answer within 1.5 s (it must answer "
                 "within the listener's handshake_timeout_ms, 10 s at most)"),
    ]
    for token, message in cases:
        started = asyncio.get_running_loop().time()
        frames, code = await _refused(_url(lis_a, token))
        assert (frames, code) == ([{"type": "error", "error": {"code": "AUTH_ERROR",
                                                               "message": message}}], 1008), token
        if token == "slow":  # bounded by the listener's handshake deadline (1.5 s)
            assert 1.0 < asyncio.get_running_loop().time() - started < 3.0
    listed = await gate.client.trigger_async({"function_id": "engine::workers::list"})
    assert sorted(w["name"] for w in listed["workers"]) == ["gate", "gate-orders"]
    # with a good token the same listener registers the worker
    async with connect(_url(lis_a, "caller")) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "workerregistered"


async def test_trusted_listener_token(peers: Any) -> None:
    running = await start_engine(listener=ListenerConfig(host="127.0.0.1", port=0, token="s3cret"))
    try:
        with pytest.raises(InvalidStatus) as err:
            await connect(running.url + "/")
        assert err.value.response.status_code == 401
        assert b"III_TOKEN" in err.value.response.body
        with pytest.raises(InvalidStatus):
            await connect(running.url + "/", additional_headers={"Authorization": "Bearer nope"})
        peer = await peers.astart("s25", running.url, make_spec("tok", [("tok::echo", "echo")]),
                                  env={"III_TOKEN": "s3cret"})
        assert await peer.acall("tok::echo", {"v": 1}) == {"result": {"v": 1}}
        async with connect(running.url + "/?token=s3cret") as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "workerregistered"
    finally:
        await peers.aclose_all()
        await running.listener.close()
        await running.engine.stop()
