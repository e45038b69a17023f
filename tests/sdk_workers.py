"""Three interchangeable worker clients for the SDK conformance tests (spec/protocol.md §12).

``s25`` / ``n22``: real official-SDK subprocesses (tests/conftest_peers.py). ``pyiii``: our own
``pyiii.sdk`` client running in the test process (same loop as the engine under test), driven by
the same spec format (``make_spec``/``fn``) and exposing the subset of the ``Peer`` surface the
tests use: ``lang``, ``worker_id``, ``ready``, ``history``, ``await event(...)``,
``await no_event(...)``, ``await acall(...)`` (-> ``{"result"}`` / ``{"error"}``), ``await aclose()``.

Fixture ``sdk``: ``await sdk.start(lang, spec, url=None)`` starts any of the three and tears all
of them down at the end of the test.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from typing import Any, Callable

import pytest

from pyiii.sdk import (
    InitOptions,
    InvocationError,
    ReconnectionConfig,
    RegistrationRejectedError,
    TriggerConfig,
    TriggerHandler,
    register_worker,
)

LANGS = ("s25", "n22", "pyiii")
SMALL = 4096


def _small(value: Any) -> Any:
    try:
        text = json.dumps(value, default=repr)
    except Exception:
        return {"_unserialisable": repr(value)[:200]}
    return value if len(text) <= SMALL else {"_json_len": len(text)}


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, InvocationError):
        return {"code": exc.code, "message": exc.message, "stacktrace": exc.stacktrace}
    return {"code": getattr(exc, "code", None) or type(exc).__name__,
            "message": getattr(exc, "message", None) or str(exc),
            "stacktrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


class _Recorder(TriggerHandler[Any]):
    def __init__(self, peer: "LocalPeer", type_id: str, fail: str | None) -> None:
        self.peer, self.type_id, self.fail = peer, type_id, fail

    def _event(self, kind: str, config: TriggerConfig[Any]) -> dict[str, Any]:
        return {"event": kind, "trigger_type": self.type_id, "id": config.id,
                "function_id": config.function_id, "config": _small(config.config),
                "metadata": _small(config.metadata)}

    async def register_trigger(self, config: TriggerConfig[Any]) -> None:
        self.peer.emit(self._event("register_trigger", config))
        if self.fail:
            raise Exception(self.fail)

    async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        self.peer.emit(self._event("unregister_trigger", config))


class LocalPeer:
    """A ``pyiii.sdk`` worker in the test process, shaped like ``conftest_peers.Peer``."""

    lang = "pyiii"

    def __init__(self, url: str, spec: dict[str, Any],
                 reconnection: ReconnectionConfig | None = None) -> None:
        self.url = url
        self.spec = spec
        self.history: list[dict[str, Any]] = []
        self._cursor = 0
        self.ready: dict[str, Any] | None = None
        self.triggers: list[Any] = []
        self.client = register_worker(url, InitOptions(
            worker_name=spec.get("name"), namespace=spec.get("namespace"),
            worker_description=spec.get("description"),
            reconnection_config=reconnection or ReconnectionConfig()))
        self.client.add_connection_state_listener(
            lambda state: self.emit({"event": "state", "state": state}))
        for tt in spec.get("trigger_types", []):
            tt = {"id": tt} if isinstance(tt, str) else tt
            self.client.register_trigger_type(
                {"id": tt["id"], "description": tt.get("description", f"{tt['id']} (test peer)")},
                _Recorder(self, tt["id"], tt.get("fail")))
        for f in spec.get("functions", []):
            behaviour = f.get("behaviour") or "echo"
            kw = {k: f[k] for k in ("description", "metadata") if f.get(k) is not None}
            self.client.register_function(f["id"], self._handler(f["id"], behaviour, f), **kw)
        for tr in spec.get("triggers", []):
            req = {"type": tr["type"], "function_id": tr["function_id"], "config": tr.get("config")}
            for key in ("metadata", "namespace", "trigger_namespace"):
                if tr.get(key) is not None:
                    req[key] = tr[key]
            self.triggers.append(self.client.register_trigger(req))

    # -- Peer surface -------------------------------------------------------------------------
    @property
    def worker_id(self) -> str | None:
        return self.client.worker_id

    def emit(self, event: dict[str, Any]) -> None:
        self.history.append(event)

    async def start(self, timeout: float = 10.0) -> "LocalPeer":
        rejected = None

        def on_rejected(exc: RegistrationRejectedError) -> None:
            nonlocal rejected
            rejected = {"code": exc.code, "namespace": exc.namespace,
                        "worker_name": exc.worker_name, "owner_worker_id": exc.owner_worker_id}
            self.emit({"event": "rejected", **rejected})

        try:
            await self.client.wait_connected(timeout)
        except RegistrationRejectedError as exc:
            on_rejected(exc)
        barrier = "skipped"
        if rejected is None and self.spec.get("barrier", True):
            # the rejection of a name conflict arrives after the (void) register call: a
            # round trip settles it, as the READY barrier of the subprocess peers does
            try:
                await self.client.trigger_async({"function_id": "engine::functions::list",
                                                 "payload": {}, "timeout_ms": 10000})
                barrier = "ok"
            except InvocationError as exc:
                barrier = exc.code
            except RegistrationRejectedError as exc:
                on_rejected(exc)
                barrier = exc.code
        self.ready = {"worker_id": self.worker_id, "sdk": "pyiii", "barrier": barrier,
                      "rejected": rejected, "state": self.client.get_connection_state(),
                      "triggers": [{"id": t.id} for t in self.triggers]}
        return self

    async def event(self, event: str | None = None, timeout: float = 10.0,
                    predicate: Callable[[dict[str, Any]], bool] | None = None,
                    **match: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._cursor < len(self.history):
                ev = self.history[self._cursor]
                self._cursor += 1
                if event is not None and ev.get("event") != event:
                    continue
                if any(ev.get(k) != v for k, v in match.items()):
                    continue
                if predicate is not None and not predicate(ev):
                    continue
                return ev
            if loop.time() >= deadline:
                raise AssertionError(f"no event {event!r} matching {match} within {timeout}s; "
                                     f"seen: {self.history[-30:]}")
            await asyncio.sleep(0.01)

    async def no_event(self, event: str | None = None, within: float = 1.0, **match: Any) -> None:
        try:
            ev = await self.event(event, within, **match)
        except AssertionError:
            return
        raise AssertionError(f"unexpected event from pyiii peer: {ev}")

    async def acall(self, function_id: str, payload: Any = None, *, namespace: str | None = None,
                    timeout_ms: int | None = None, metadata: Any = None, action: Any = None,
                    timeout: float | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"function_id": function_id, "payload": payload}
        for k, v in (("namespace", namespace), ("timeout_ms", timeout_ms),
                     ("metadata", metadata), ("action", action)):
            if v is not None:
                req[k] = v
        try:
            return {"result": await self.client.trigger_async(req)}
        except Exception as exc:  # noqa: BLE001
            return {"error": error_body(exc)}

    async def aclose(self, grace: float = 5.0) -> None:
        await asyncio.wait_for(self.client.shutdown_async(), grace)

    # -- behaviours (same as tests/peers/s25_worker.py) ---------------------------------------
    def _handler(self, function_id: str, behaviour: str, fn_spec: dict[str, Any]):
        client = self.client

        async def handler(data: Any, metadata: Any = None) -> Any:
            ev: dict[str, Any] = {"event": "invoke", "function_id": function_id}
            if behaviour != "read_channel":
                ev["data"] = data if fn_spec.get("record_full") else _small(data)
            if metadata is not None:
                ev["metadata"] = _small(metadata)
            self.emit(ev)
            d = data if isinstance(data, dict) else {}
            if behaviour == "echo":
                return data
            if behaviour == "add":
                return {"c": d["a"] + d["b"]}
            if behaviour == "boom":
                raise ValueError(fn_spec.get("message", "boom"))
            if behaviour == "slow":
                ms = d.get("ms", fn_spec.get("ms", 1000))
                await asyncio.sleep(ms / 1000)
                return {"slept": ms}
            if behaviour == "call":
                req = {"function_id": d["function_id"], "payload": d.get("payload")}
                if d.get("namespace") is not None:
                    req["namespace"] = d["namespace"]
                return await client.trigger_async(req)
            if behaviour == "size":
                return {"len": len(d.get("s", ""))}
            if behaviour == "big":
                return "x" * int(d.get("n", fn_spec.get("n", 0)))
            if behaviour == "none":
                return None
            if behaviour == "meta":
                return {"data": data, "metadata": metadata}
            if behaviour == "read_channel":
                reader = d["reader"]
                messages: list[str] = []
                reader.on_message(messages.append)
                chunks = [len(c) async for c in reader]
                return {"bytes": sum(chunks), "chunks": chunks, "messages": messages}
            if behaviour == "send_channel":
                ch = await client.create_channel_async()
                req = {"function_id": d["function_id"], "payload": {"reader": ch.reader_ref}}
                call = asyncio.ensure_future(client.trigger_async(req))
                for msg in d.get("messages", []):
                    await ch.writer.send_message_async(msg if isinstance(msg, str) else json.dumps(msg))
                if int(d.get("n", 0)):
                    await ch.writer.write(b"y" * int(d["n"]))
                await ch.writer.close_async()
                return {"callee": await call}
            raise ValueError(f"unknown behaviour {behaviour!r}")

        return handler


class SdkWorkers:
    def __init__(self, engine: Any, peers: Any) -> None:
        self.engine = engine
        self.peers = peers
        self.local: list[LocalPeer] = []

    async def start(self, lang: str, spec: dict[str, Any], url: str | None = None,
                    reconnection: ReconnectionConfig | None = None, **kw: Any) -> Any:
        url = url or self.engine.url
        if lang == "pyiii":
            peer = LocalPeer(url, spec, reconnection)
            self.local.append(peer)
            return await peer.start()
        return await self.peers.astart(lang, url, spec, **kw)

    async def close_all(self) -> None:
        for peer in self.local:
            try:
                await peer.aclose()
            except Exception:
                pass


@pytest.fixture
async def sdk(engine, peers):
    workers = SdkWorkers(engine, peers)
    try:
        yield workers
    finally:
        await workers.close_all()
