"""spec/protocol.md §12 with SDK workers: connection lifecycle.

Scenario 13 (reconnect + reattach through a TCP proxy), 16 (worker name conflict) and 24 (engine
trigger types), each with ``s25`` / ``n22`` (official SDK subprocesses) and ``pyiii``
(``pyiii.sdk`` in the test process). Engine state is observed by wrapping ``Engine.accept`` /
``Engine.handle`` on the engine instance and ``WsConnection.close`` (observation only).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pyiii.engine.listener import WsConnection
from tests.conftest_peers import fn, make_spec

from .conftest import NO_FRAME_S, Raw
from .sdk_workers import LANGS, LocalPeer, sdk  # noqa: F401  (fixture)


class Spy:
    """Records what the engine accepts, handles and closes (wraps, never changes, behaviour)."""

    def __init__(self, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.accepted: list[tuple[float, str]] = []
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.closes: list[tuple[str, int]] = []
        accept, handle, close = engine.accept, engine.handle, WsConnection.close

        def spy_accept(conn: Any) -> None:
            self.accepted.append((time.monotonic(), conn.worker_id))
            accept(conn)

        depth = 0

        def spy_handle(conn: Any, frame: dict[str, Any]) -> None:
            nonlocal depth
            if depth == 0:  # held frames released inside a register call: recorded once
                self.frames.append((conn.worker_id, frame))
            depth += 1
            try:
                handle(conn, frame)
            finally:
                depth -= 1

        def spy_close(conn: Any, code: int = 1000, reason: str = "") -> None:
            self.closes.append((conn.worker_id, code))
            close(conn, code, reason)

        monkeypatch.setattr(engine, "accept", spy_accept)
        monkeypatch.setattr(engine, "handle", spy_handle)
        monkeypatch.setattr(WsConnection, "close", spy_close)

    def first_frame(self, worker_id: str) -> dict[str, Any] | None:
        return next((f for w, f in self.frames if w == worker_id), None)


@pytest.fixture
def spy(engine, monkeypatch):
    return Spy(engine.engine, monkeypatch)


async def _drain(client: Raw, quiet: float = NO_FRAME_S) -> list[dict[str, Any]]:
    """Every frame that arrives until ``quiet`` seconds pass without one."""
    frames = []
    while True:
        try:
            frames.append(await client.recv(quiet))
        except asyncio.TimeoutError:
            return frames


class CutProxy:
    """A TCP proxy in front of the engine. ``cut()`` aborts every client side at once while the
    engine side stays open and silent (a half-open link the engine has not noticed)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.live: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Task]]] = []
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            # EOF / error: pass the end on. A cut cancels the task instead: nothing is closed.
            if not writer.is_closing():
                writer.close()

        tasks = [asyncio.ensure_future(pipe(creader, uwriter)),
                 asyncio.ensure_future(pipe(ureader, cwriter))]
        self.live.append((cwriter, uwriter, tasks))

    def cut(self) -> None:
        live, self.live = self.live, []
        for cwriter, uwriter, tasks in live:
            for task in tasks:
                task.cancel()
            cwriter.transport.abort()
            self.held.append(uwriter)  # engine side: open, nothing more forwarded

    async def close(self) -> None:
        self.cut()
        for uwriter in self.held:
            uwriter.transport.abort()
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize("lang", LANGS)
async def test_13_reconnect_reattaches_and_replays(engine, raw, sdk, spy, lang):
    p = await raw("provider-p")
    await p.send({"type": "registertriggertype", "id": "webhook", "description": "hooks"})
    await p.sync()
    proxy = CutProxy(engine.listener.port)
    url = await proxy.start()
    try:
        a = await sdk.start(lang, make_spec(f"recon-{lang}", [fn("r::add", "add")], triggers=[
            {"type": "webhook", "function_id": "r::add", "config": {"path": "/r"}}]), url=url)
        trigger_id = a.ready["triggers"][0]["id"]
        bound = await p.recv_type("registertrigger")
        assert (bound["id"], bound["function_id"], bound["config"]) == (trigger_id, "r::add",
                                                                        {"path": "/r"})
        # S25 may send its binding twice on a first connection (at registration and in the
        # connect replay); the provider gets each as a replacement (§3.10)
        assert all(f == bound for f in await _drain(p))
        old_id = a.worker_id
        old_token = engine.engine.connections[old_id].reattach_token

        proxy.cut()
        # P: the old binding goes (cleanup of the retired connection), the replay comes back
        first = await p.recv(8)
        second = await p.recv(5)
        assert (first["type"], first["id"]) == ("unregistertrigger", trigger_id)
        assert (second["type"], second["id"]) == ("registertrigger", trigger_id)
        assert (second["function_id"], second["config"]) == ("r::add", {"path": "/r"})

        new_ids = [w for _, w in spy.accepted if w != old_id and w in engine.engine.connections]
        new_id = next(w for w in new_ids if spy.first_frame(w) and
                      spy.first_frame(w)["type"] == "reattach")
        assert spy.first_frame(new_id) == {"type": "reattach", "previous_worker_id": old_id,
                                           "reattach_token": old_token}
        assert old_id not in engine.engine.connections
        assert (old_id, 1000) in spy.closes  # the retired socket, closed by the engine

        b = await raw("recon-caller")
        assert (await b.call("r::add", {"a": 2, "b": 3}))["result"] == {"c": 5}
        rows = (await b.call("engine::workers::list", {}))["result"]["workers"]
        mine = [r for r in rows if r["name"] == f"recon-{lang}"]
        assert [r["id"] for r in mine] == [new_id]
        # no rejection of any kind reached the worker, and it is connected
        if isinstance(a, LocalPeer):
            assert a.client.rejections == [] and a.client.get_connection_state() == "connected"
        else:
            assert not [e for e in a.history if e["event"] == "frame"
                        and e["frame"]["type"] == "registrationrejected"]
            await a.event("state", state="connected")
        await p.no_frame()
    finally:
        await proxy.close()


async def _conflict_frame(peer: Any, owner_id: str, namespace: str = "default") -> None:
    want = {"type": "registrationrejected", "code": "WORKER_NAMESPACE_CONFLICT",
            "namespace": namespace, "worker_name": "dup", "owner_worker_id": owner_id}
    ev = await peer.event("frame", 5,
                          predicate=lambda e: e["frame"].get("type") == "registrationrejected")
    assert {k: v for k, v in ev["frame"].items() if k != "message"} == want
    assert ev["frame"]["message"]


@pytest.mark.parametrize("lang", ["s25", "pyiii"])
async def test_16_worker_name_conflict_is_fatal(engine, raw, sdk, spy, lang):
    """§12.16 (S25; pyiii.sdk follows S25): second `dup` refused for good, first and third fine."""
    first = await sdk.start(lang, make_spec("dup", [fn("d::one", "echo")]))
    before = len(spy.accepted)
    second = await sdk.start(lang, make_spec("dup", [fn("d::two", "echo")]))
    rejected_at = time.monotonic()
    want = {"code": "WORKER_NAMESPACE_CONFLICT", "namespace": "default", "worker_name": "dup",
            "owner_worker_id": first.worker_id}
    if lang == "s25":
        # S25 reports "connected" on workerregistered; the rejection follows its (void) register
        # call, so the READY barrier call is the pending call that the rejection fails
        assert second.ready["barrier"] == "WORKER_NAMESPACE_CONFLICT"
        await _conflict_frame(second, first.worker_id)
    else:  # raised by wait_connected() or by the barrier call, whichever it reaches first
        assert second.ready["rejected"] == want
    assert second.ready["state"] == "failed"
    await second.event("state", state="failed")
    second_id = spy.accepted[before][1]
    assert (second_id, 1008) in spy.closes
    assert second_id not in engine.engine.connections
    # its calls raise the rejection
    err = (await second.acall("d::one", {}))["error"]
    assert err["code"] == "WORKER_NAMESPACE_CONFLICT"

    third = await sdk.start(lang, make_spec("dup", [fn("d::three", "echo")], namespace="other"))
    assert third.ready["rejected"] is None and third.ready["barrier"] == "ok"
    b = await raw("dup-caller")
    assert (await b.call("d::one", {"v": 1}))["result"] == {"v": 1}
    assert (await b.call("d::three", {"v": 3}, namespace="other"))["result"] == {"v": 3}
    missing = await b.call("d::two", {})
    assert missing["error"]["code"] == "function_not_found"
    rows = (await b.call("engine::workers::list", {}))["result"]["workers"]
    assert sorted((r["name"], r["namespace"], r["id"]) for r in rows if r["name"] == "dup") == \
        sorted([("dup", "default", first.worker_id), ("dup", "other", third.worker_id)])

    # no new connection from the rejected worker within 5 s
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - rejected_at)))
    later = [w for _, w in spy.accepted[before + 1:]]
    assert later == [third.worker_id, b.worker_id]


async def test_16_worker_name_conflict_n22_retries(engine, raw, sdk, spy):
    """§2.3 note: N22 ignores the rejection frame, sees close 1008, reconnects with backoff and is
    rejected again while the first holder lives; the first is unaffected."""
    first = await sdk.start("n22", make_spec("dup", [fn("d::one", "echo")]))
    before = len(spy.accepted)
    second = await sdk.start("n22", make_spec("dup", [fn("d::two", "echo")]), wait_ready=False)
    await _conflict_frame(second, first.worker_id)
    await _conflict_frame(second, first.worker_id)  # after its reconnect, refused again
    attempts = [w for _, w in spy.accepted[before:]]
    assert len(attempts) >= 2 and all((w, 1008) in spy.closes for w in attempts[:2])
    assert first.worker_id in engine.engine.connections
    b = await raw("dup-caller")
    assert (await b.call("d::one", {"v": 1}))["result"] == {"v": 1}
    assert (await b.call("d::two", {}))["error"]["code"] == "function_not_found"


@pytest.mark.parametrize("lang", LANGS)
async def test_24_engine_trigger_types(engine, raw, sdk, lang):
    b = await sdk.start(lang, make_spec(f"watch-{lang}", [
        fn("b::workers", "none"), fn("b::functions", "none", record_full=True)], triggers=[
        {"type": "engine::workers-available", "function_id": "b::workers"},
        {"type": "engine::functions-available", "function_id": "b::functions"}]))
    assert b.ready["barrier"] == "ok"
    a = await Raw.open(engine.url)
    try:
        await a.register("evt-a")
        await a.send({"type": "registerfunction", "id": "x::y"})
        await a.sync()
        t0 = time.monotonic()

        def has_xy(ev: dict[str, Any]) -> bool:
            rows = (ev.get("data") or {}).get("functions") or []
            return {"function_id": "x::y", "namespace": "default", "worker_name": "evt-a"} in rows

        changed = await b.event("invoke", 2.5, predicate=has_xy, function_id="b::functions")
        assert time.monotonic() - t0 <= 2.0 + 0.2  # within 2 s (poll: 1 s), small slack
        assert changed["data"]["event"] == "functions_changed"
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    finally:
        await a.close()
    gone = await b.event("invoke", 5, function_id="b::workers",
                         predicate=lambda e: e["data"] == {"event": "worker_disconnected",
                                                           "worker_id": a.worker_id})
    assert gone
    seen = [e["data"]["event"] for e in b.history
            if e["event"] == "invoke" and e["function_id"] == "b::workers"
            and e["data"].get("worker_id") == a.worker_id]
    assert seen == ["worker_connected", "worker_metadata_updated", "worker_disconnected"]
