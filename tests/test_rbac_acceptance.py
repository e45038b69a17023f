"""RBAC acceptance checks not covered by the access table (spec/workers.md §8, cli.md §9.4):
listeners and the trusted token configured from config.yaml in a real `iii` process, an untrusted
connection trying to take what is not its own (engine::* ids, another worker's function, another
worker's invocation, a trigger provider's answer), filtered trigger and worker listings, and the
denial texts telling the user what to change.

The untrusted side here is a raw WebSocket client on the RBAC listener: an attacker sends frames
no official SDK would, which is exactly what the gates must withstand.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pyiii.engine.listener import Listener, ListenerConfig
from pyiii.sdk import InitOptions, register_worker
from tests.conftest import start_engine
from tests.conftest_peers import make_spec
from tests.iii_process import free_port, iii_procs  # noqa: F401

EXPOSE = "add to rbac.expose_functions"
GOOD = "good"
_ids = itertools.count()


class Raw:
    """A hand-driven worker connection: every frame it receives is kept in ``frames``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, name: str, namespace: str = "default", **kw: Any) -> "Raw":
        raw = cls(await connect(url, **kw))
        await raw.wait(lambda f: f["type"] == "workerregistered")
        assert (await raw.call("engine::workers::register", {
            "name": name, "namespace": namespace})) == {"success": True}
        return raw

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.frames.append(json.loads(message))
        except ConnectionClosed:
            pass

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            assert asyncio.get_running_loop().time() < deadline, f"no such frame: {self.frames}"
            await asyncio.sleep(0.01)

    async def answer(self, function_id: str, data: Any = None, **extra: Any) -> dict[str, Any]:
        """The whole result frame of a call (``result`` or ``error``)."""
        invocation_id = f"c{next(_ids)}"
        await self.send({"type": "invokefunction", "invocation_id": invocation_id,
                         "function_id": function_id, "data": data, **extra})
        return await self.wait(lambda f: f["type"] == "invocationresult"
                               and f.get("invocation_id") == invocation_id)

    async def call(self, function_id: str, data: Any = None, **extra: Any) -> Any:
        frame = await self.answer(function_id, data, **extra)
        assert "error" not in frame or frame["error"] is None, frame
        return frame.get("result")

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


def forbidden(message: str) -> dict[str, Any]:
    return {"code": "FORBIDDEN", "message": message}


def error_of(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: frame["error"].get(k) for k in ("code", "message")}


# -- a real `iii` process: listeners and the trusted token from config.yaml ----------------

def _config(trusted: int, public: int, bare: int) -> str:
    return f"""workers:
  - name: iii-worker-manager
    config: {{port: {trusted}, host: 127.0.0.1, token: s3cret}}
  - name: iii-worker-manager
    config:
      port: {public}
      host: 127.0.0.1
      handshake_timeout_ms: 2000
      rbac:
        auth_function_id: gate::auth
        expose_functions: ['match("api::*")', 'match("engine::functions::list")']
  - name: iii-worker-manager
    config: {{port: {bare}, host: 127.0.0.1, rbac: {{expose_functions: []}}}}
"""


async def test_listeners_and_token_from_config_yaml(iii_procs: Any, peers: Any) -> None:
    trusted, public, bare = free_port(), free_port(), free_port()
    project = iii_procs.project("rbac", _config(trusted, public, bare))
    proc = iii_procs.engine(project)
    await asyncio.to_thread(proc.wait_ready, 20)
    main, rbac = f"ws://127.0.0.1:{trusted}", f"ws://127.0.0.1:{public}"

    # the trusted listener wants the bearer token: HTTP 401 with the fix, no upgrade
    with pytest.raises(InvalidStatus) as err:
        await connect(main + "/")
    assert err.value.response.status_code == 401
    assert err.value.response.body == (b"AUTH_ERROR: missing or wrong bearer token; set III_TOKEN "
                                       b"to the engine's token\n")
    gate = register_worker(main, InitOptions(worker_name="gate",
                                             headers={"Authorization": "Bearer s3cret"}))
    try:
        await gate.wait_connected(10)

        def auth(data: dict[str, Any]) -> Any:
            if data["query_params"].get("token") != [GOOD]:
                raise PermissionError("pass ?token=good")
            return {"context": {"ip": data["ip_address"]}}

        gate.register_function("gate::auth", auth)
        gate.register_function("api::list", lambda data: {"listed": data})
        gate.register_function("secret::x", lambda data: "secret")
        await asyncio.sleep(0.2)

        # the official Python SDK sends III_TOKEN by itself
        s25 = await peers.astart("s25", main, make_spec("s25-trusted", [("t::echo", "echo")]),
                                 env={"III_TOKEN": "s3cret"})
        assert await s25.acall("secret::x", {}) == {"result": "secret"}
        n22 = await peers.astart("n22", f"{rbac}/?token={GOOD}", make_spec("n22-public"))
        assert await n22.acall("api::list", {"a": 1}) == {"result": {"listed": {"a": 1}}}
        denied = await n22.acall("secret::x", {})
        assert error_of(denied) == forbidden(f"function 'secret::x' not allowed ({EXPOSE})")
        # cli.md §9.4: the worker::* functions exist (the trusted side reaches them) ...
        listed = await s25.acall("worker::list", {})
        assert "workers" in listed["result"], listed
        # ... but an RBAC listener never exposes them unless granted
        for function_id in ("worker::list", "worker::exec", "worker::stop"):
            denied = await n22.acall(function_id, {"name": "x", "argv": ["true"]})
            assert error_of(denied) == forbidden(f"function '{function_id}' not allowed "
                                                 f"({EXPOSE})"), function_id
        visible = await n22.acall("engine::functions::list", {"include_internal": True})
        ids = {f["function_id"] for f in visible["result"]["functions"]}
        assert "api::list" in ids and "engine::functions::list" in ids
        assert not {i for i in ids if i.startswith(("worker::", "secret::", "gate::"))}, ids

        # the RBAC listener refuses a connection without the token: one AUTH_ERROR frame, 1008
        async with connect(rbac + "/") as ws:
            frames = []
            try:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            except ConnectionClosed:
                pass
        assert frames == [{"type": "error", "error": {"code": "AUTH_ERROR", "message": (
            "auth function gate::auth refused the connection: [invocation_failed] "
            "pass ?token=good")}}]
        assert ws.close_code == 1008

        # a third listener, its own policy: no auth function (permissive), nothing exposed
        anyone = await Raw.open(f"ws://127.0.0.1:{bare}/", "anyone")
        denied = await anyone.answer("api::list", {})
        assert error_of(denied) == forbidden(f"function 'api::list' not allowed ({EXPOSE})")
        await anyone.close()
    finally:
        await peers.aclose_all()
        await gate.shutdown_async()


# -- an untrusted connection reaching for what is not its own -------------------------------

RBAC = {"auth_function_id": "gate::auth",
        "expose_functions": ['match("api::*")', 'match("engine::*::list")',
                             'match("engine::*::info")', {"match": "multi::*", "namespace": "ns1"}]}


@pytest.fixture
async def rig() -> Any:
    running = await start_engine()
    rbac = Listener(running.engine, ListenerConfig(host="127.0.0.1", port=0, rbac=RBAC))
    await rbac.start()
    gate = register_worker(running.url, InitOptions(worker_name="gate"))
    await gate.wait_connected(5)
    seen: list[dict[str, Any]] = []

    def auth(data: dict[str, Any]) -> Any:
        seen.append(data)
        if data["query_params"].get("token") != [GOOD]:
            raise PermissionError("pass ?token=good")
        return {"allowed_trigger_types": ["tick"],
                "allow_trigger_type_registration": bool(data["query_params"].get("tt")),
                "function_registration_prefix": "t1" if data["query_params"].get("p") else None}

    gate.register_function("gate::auth", auth)
    owner = await Raw.open(running.url + "/", "owner")
    for function_id in ("api::list", "api::slow", "secret::x"):
        await owner.send({"type": "registerfunction", "id": function_id})
    for type_id in ("tick", "tock"):
        await owner.send({"type": "registertriggertype", "id": type_id, "description": type_id})
    binder = await Raw.open(running.url + "/", "binder")
    for trigger_id, type_id, target in (("b-api", "tick", "api::list"),
                                        ("b-secret", "tick", "secret::x"),
                                        ("b-tock", "tock", "api::list")):
        await binder.send({"type": "registertrigger", "id": trigger_id, "trigger_type": type_id,
                           "function_id": target, "config": {}})
    for trigger_id in ("b-api", "b-secret", "b-tock"):  # the provider hears of each binding
        await owner.wait(lambda f, t=trigger_id: f["type"] == "registertrigger" and f["id"] == t)
    url = f"ws://127.0.0.1:{rbac.port}/?token={GOOD}"
    try:
        yield running, url, owner, binder, seen
    finally:
        await owner.close()
        await binder.close()
        await gate.shutdown_async()
        await rbac.close()
        await running.listener.close()
        await running.engine.stop()


def _rejections(raw: Raw) -> dict[str, dict[str, Any]]:
    return {f["function_id"]: {k: f[k] for k in ("code", "owner_worker_id", "message")}
            for f in raw.frames if f["type"] == "registrationrejected"}


async def test_untrusted_cannot_take_what_is_not_its_own(rig: Any) -> None:
    running, url, owner, binder, _seen = rig
    functions = running.engine.functions
    evil = await Raw.open(url, "evil")
    # engine::* ids, reserved or not, and another worker's function id
    for function_id in ("engine::custom", "engine::functions::list", "api::list", "mine::ok"):
        await evil.send({"type": "registerfunction", "id": function_id})
    await evil.call("engine::functions::list", {})  # every registration above was handled
    engine_msg = ("'{}': engine::* ids are reserved for the engine and trusted workers; an RBAC "
                  "connection cannot register them (choose another id)")
    assert _rejections(evil) == {
        "engine::custom": {"code": "FUNCTION_NAMESPACE_CONFLICT", "owner_worker_id": "",
                           "message": engine_msg.format("engine::custom")},
        "engine::functions::list": {"code": "FUNCTION_NAMESPACE_CONFLICT", "owner_worker_id": "",
                                    "message": engine_msg.format("engine::functions::list")},
        "api::list": {"code": "FUNCTION_NAMESPACE_CONFLICT",
                      "owner_worker_id": functions.get("default", "api::list").owner.worker_id,
                      "message": "'api::list' in namespace 'default' is already owned by worker "
                                 "'owner'; stop that worker or register under another id or "
                                 "namespace"},
    }
    assert functions.get("default", "engine::custom") is None
    assert functions.get("default", "api::list").owner.name == "owner"
    assert functions.get("default", "mine::ok").owner.name == "evil"
    # a hook-free prefix cannot smuggle an engine::* id either: t1::engine::x is its own id
    prefixed = await Raw.open(url + "&p=1", "prefixed")
    await prefixed.send({"type": "registerfunction", "id": "engine::x"})
    await prefixed.call("engine::functions::list", {})
    assert functions.get("default", "t1::engine::x").owner.name == "prefixed"

    # an invocation sent to `owner`: evil's answer with the same id is ignored
    await binder.send({"type": "invokefunction", "invocation_id": "real", "function_id":
                       "api::slow", "data": {"n": 1}})
    leg = await owner.wait(lambda f: f["type"] == "invokefunction"
                           and f["function_id"] == "api::slow")
    await evil.send({"type": "invocationresult", "invocation_id": leg["invocation_id"],
                     "function_id": "api::slow", "result": "spoofed"})
    await evil.call("engine::functions::list", {})
    assert not [f for f in binder.frames if f.get("invocation_id") == "real"]
    await owner.send({"type": "invocationresult", "invocation_id": leg["invocation_id"],
                      "function_id": "api::slow", "result": "genuine"})
    answer = await binder.wait(lambda f: f.get("invocation_id") == "real")
    assert answer["result"] == "genuine"

    # a trigger provider's answer: evil cannot fail binder's binding ...
    await evil.send({"type": "triggerregistrationresult", "id": "b-api", "trigger_type": "tick",
                     "function_id": "api::list",
                     "error": {"code": "boom", "message": "spoofed refusal"}})
    await evil.call("engine::functions::list", {})
    await asyncio.sleep(0.1)
    assert not [f for f in binder.frames if f["type"] == "triggerregistrationresult"
                and f.get("error")]
    assert running.engine.triggers.bindings["b-api"].provider_key == ("default", "tick")
    # ... while the real provider can (the check above could fail)
    await owner.send({"type": "triggerregistrationresult", "id": "b-api", "trigger_type": "tick",
                      "function_id": "api::list",
                      "error": {"code": "boom", "message": "real refusal"}})
    failed = await binder.wait(lambda f: f["type"] == "triggerregistrationresult"
                               and f.get("error") is not None)
    assert failed["error"]["message"] == "real refusal"
    await evil.close()
    await prefixed.close()


async def test_listings_show_only_what_the_session_may_use(rig: Any) -> None:
    running, url, owner, binder, _seen = rig
    evil = await Raw.open(url, "evil")
    await evil.send({"type": "registerfunction", "id": "mine::f"})
    # trigger types: only those the AuthResult lets it bind (tick, not tock)
    types = await evil.call("engine::triggers::list", {})
    assert [t["id"] for t in types["triggers"]] == ["tick"]
    denied = await evil.answer("engine::triggers::info", {"id": "tock"})
    assert error_of(denied) == forbidden("trigger type 'tock' not allowed for this connection")
    assert (await evil.call("engine::triggers::info", {"id": "tick"}))["id"] == "tick"
    # bindings: only those whose target it may call
    bound = await evil.call("engine::registered-triggers::list", {})
    assert sorted(b["id"] for b in bound["registered_triggers"]) == ["b-api", "b-tock"]
    denied = await evil.answer("engine::registered-triggers::info", {"id": "b-secret"})
    assert error_of(denied) == forbidden(f"function 'secret::x' not allowed ({EXPOSE})")
    # functions: hidden, existing or not, get the invocation gate's answer
    listed = await evil.call("engine::functions::list", {})
    assert sorted(f["function_id"] for f in listed["functions"]) == ["api::list", "api::slow"]
    for function_id in ("secret::x", "nope::x"):
        denied = await evil.answer("engine::functions::info", {"function_id": function_id})
        assert error_of(denied) == forbidden(f"function '{function_id}' not allowed ({EXPOSE})")
    both = await evil.call("engine::functions::info", {"function_ids": ["secret::x", "nope::x"]})
    assert both == {"functions": [{"function_id": "secret::x", "error": "forbidden"},
                                  {"function_id": "nope::x", "error": "forbidden"}]}
    # a function in two namespaces, callable in one: only that one is revealed
    others = [await Raw.open(running.url + "/", f"multi-{ns}", ns) for ns in ("ns1", "ns2")]
    for other in others:
        await other.send({"type": "registerfunction", "id": "multi::f"})
        await other.call("engine::functions::list", {})
    detail = await evil.call("engine::functions::info", {"function_id": "multi::f"})
    assert (detail["function_id"], detail["namespace"]) == ("multi::f", "ns1")
    denied = await evil.answer("engine::functions::info", {"function_id": "multi::f",
                                                           "namespace": "ns2"})
    assert error_of(denied) == forbidden(f"function 'multi::f' not allowed ({EXPOSE})")
    for other in others:
        await other.close()
    # workers: counts and details cover only what it may call
    workers = {w["name"]: w for w in (await evil.call("engine::workers::list", {}))["workers"]}
    assert workers["owner"]["function_count"] == 2
    info = await evil.call("engine::workers::info", {"name": "owner"})
    assert [f["function_id"] for f in info["functions"]] == ["api::list", "api::slow"]
    assert [t["id"] for t in info["trigger_types"]] == ["tick"]
    info = await evil.call("engine::workers::info", {"name": "binder"})
    assert sorted(b["id"] for b in info["registered_triggers"]) == ["b-api", "b-tock"]
    # the trusted side still sees everything
    full = await binder.call("engine::functions::list", {})
    assert "secret::x" in {f["function_id"] for f in full["functions"]}
    assert len((await binder.call("engine::triggers::list", {}))["triggers"]) >= 2
    await evil.close()


async def test_auth_input_refusal_and_silent_denials(rig: Any, caplog: Any) -> None:
    running, url, owner, binder, seen = rig
    port = url.split(":")[2].split("/")[0]
    # the auth function gets lower-case headers, every value of a repeated query key, the peer
    raw = await Raw.open(f"ws://127.0.0.1:{port}/?token={GOOD}&tag=a&tag=b&empty=", "tagged",
                         additional_headers={"X-Tenant": "acme"})
    last = seen[-1]
    assert last["query_params"] == {"token": [GOOD], "tag": ["a", "b"], "empty": [""]}
    assert last["headers"]["x-tenant"] == "acme" and "X-Tenant" not in last["headers"]
    assert last["ip_address"] == "127.0.0.1"
    # SDK infrastructure calls are allowed although nothing exposes them
    assert await raw.call("engine::baggage::get_all", {}) is not None
    assert set(await raw.call("engine::channels::create", {})) == {"writer", "reader"}
    # a denied void call: no answer, never delivered, logged with the rule
    caplog.set_level("INFO", logger="pyiii.engine.router")
    await raw.send({"type": "invokefunction", "invocation_id": "v1", "function_id": "secret::x",
                    "data": {}, "action": {"type": "void"}})
    await raw.call("engine::functions::list", {})
    assert not [f for f in raw.frames if f.get("invocation_id") == "v1"]
    assert not [f for f in owner.frames if f["type"] == "invokefunction"
                and f["function_id"] == "secret::x"]
    assert ("call to secret::x failed (no reply requested): [FORBIDDEN] function 'secret::x' "
            f"not allowed ({EXPOSE})") in caplog.text
    await raw.close()

    # a refused connection never registers anything, even what it sent before the answer
    async with connect(f"ws://127.0.0.1:{port}/?token=bad") as ws:
        await ws.send(json.dumps({"type": "registerfunction", "id": "early::f"}))
        await ws.send(json.dumps({"type": "registertriggertype", "id": "early"}))
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        except ConnectionClosed:
            pass
    assert [f["type"] for f in frames] == ["error"] and ws.close_code == 1008
    assert frames[0]["error"]["message"] == ("auth function gate::auth refused the connection: "
                                             "[invocation_failed] pass ?token=good")
    names = {w["name"] for w in (await binder.call("engine::workers::list", {}))["workers"]}
    assert names == {"gate", "owner", "binder"}
    assert running.engine.functions.get("default", "early::f") is None
    assert ("default", "early") not in running.engine.triggers.types


async def test_untrusted_cannot_take_over_a_trigger_type(rig: Any) -> None:
    running, url, owner, binder, _seen = rig
    types = running.engine.triggers.types
    # a trusted provider of `tack` with a binding, then gone: the binding waits for it
    prov = await Raw.open(running.url + "/", "prov")
    await prov.send({"type": "registertriggertype", "id": "tack", "description": "tack"})
    await prov.call("engine::functions::list", {})
    await binder.send({"type": "registertrigger", "id": "b-tack", "trigger_type": "tack",
                       "function_id": "api::list", "config": {"secret": "s"}})
    await prov.wait(lambda f: f["type"] == "registertrigger" and f["id"] == "b-tack")
    await prov.close()
    for _ in range(200):
        if ("default", "tack") not in types:
            break
        await asyncio.sleep(0.01)
    assert ("default", "tack") not in types

    evil = await Raw.open(url + "&tt=1", "evil-provider")
    for type_id in ("tick", "tack", "mine"):
        await evil.send({"type": "registertriggertype", "id": type_id, "description": "x"})
    await evil.call("engine::functions::list", {})
    await asyncio.sleep(0.1)
    # neither provider nor standby of owner's type, and the waiting binding is not handed over
    assert types[("default", "tick")].provider is not None
    assert types[("default", "tick")].provider.name == "owner"
    assert not types[("default", "tick")].standbys
    assert ("default", "tack") not in types
    assert not [f for f in evil.frames if f["type"] == "registertrigger"]
    # a type of its own is fine
    assert types[("default", "mine")].provider.name == "evil-provider"
    await evil.close()
