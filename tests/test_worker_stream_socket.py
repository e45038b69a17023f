"""iii-stream live sync: browser-style WebSocket clients on the stream port (§7.4, §13 #29-31)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, register_worker
from pyiii.workers import stream
from pyiii.workers.base import WorkerContext

from .conftest_peers import fn, make_spec


async def _start(engine, tmp_path: Path, **config):
    ctx = WorkerContext("iii-stream", {"port": 0, "adapter": "memory", **config}, tmp_path, False,
                        url=engine.url, connector=local_connector(engine.engine))
    return await stream.start(ctx)


@pytest.fixture
async def client(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="tester"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


@pytest.fixture
async def worker(engine, tmp_path):
    running = await _start(engine, tmp_path)
    yield running
    await running.stop()


async def call(iii, function_id, payload):
    return await iii.trigger_async({"function_id": function_id, "payload": payload})


def join(sid, group="g", item=None, stream_name="todo", kind="join"):
    data = {"subscriptionId": sid, "streamName": stream_name, "groupId": group}
    if item is not None:
        data["id"] = item
    return json.dumps({"type": kind, "data": data})


async def recv(ws, timeout=3.0):
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(message.pop("timestamp"), int)
    return message


async def no_frame(ws, timeout=0.3):
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {frame}")


def msg(event, item=None, group="g", stream_name="todo"):
    return {"type": "stream", "streamName": stream_name, "groupId": group, "id": item,
            "event": event}


async def wait_for(predicate, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_scenario_29_live_sync(worker, client):
    async with connect(f"ws://127.0.0.1:{worker.port}/") as ws:
        await ws.send(join("s1"))
        assert await recv(ws) == msg({"type": "sync", "data": []})
        await ws.send(join("s2", item="i1"))
        assert await recv(ws) == msg({"type": "sync", "data": None}, "i1")
        key = {"stream_name": "todo", "group_id": "g", "item_id": "i1"}
        await call(client, "stream::set", {**key, "data": {"t": "x"}})
        assert await recv(ws) == msg({"type": "create", "data": {"t": "x"}}, "i1")
        await no_frame(ws)  # once per socket although s1 and s2 both match
        await call(client, "stream::set", {**key, "data": {"t": "y"}})
        assert await recv(ws) == msg({"type": "update", "data": {"t": "y"}}, "i1")
        await call(client, "stream::update", {**key, "ops": [
            {"type": "set", "path": "n", "value": 1}]})
        assert await recv(ws) == msg({"type": "update", "data": {"t": "y", "n": 1}}, "i1")
        await call(client, "stream::update", {**key, "ops": [{"type": "merge", "value": 1}]})
        await call(client, "stream::send", {"stream_name": "todo", "group_id": "g",
                                            "type": "typing", "data": 1})
        assert await recv(ws) == msg({"type": "event", "event": {"type": "typing", "data": 1}})
        await call(client, "stream::delete", key)
        assert await recv(ws) == msg({"type": "delete", "data": {"t": "y", "n": 1}}, "i1")
        await call(client, "stream::delete", key)  # missing item: nothing sent
        await call(client, "stream::set", {**key, "group_id": "h", "data": 1})  # other group
        await call(client, "stream::set", {**key, "stream_name": "x", "data": 1})
        await no_frame(ws)
        # a second item in g reaches s1 only; the sync after a join carries the group
        await call(client, "stream::set", {**key, "item_id": "i2", "data": 2})
        assert await recv(ws) == msg({"type": "create", "data": 2}, "i2")
        await ws.send(join("s3", item="i2"))
        assert await recv(ws) == msg({"type": "sync", "data": 2}, "i2")
        await asyncio.wait_for(await ws.ping(), 2)  # pings get pongs


async def test_scenario_30_auth_refused_before_upgrade(engine, client, tmp_path):
    inputs: list[dict] = []
    joins: list[dict] = []

    def auth(data):
        inputs.append(data)
        if data["query_params"].get("token") == ["ok"]:
            return {"context": {"user": "u"}}
        if data["query_params"].get("token") == ["empty"]:
            return {}
        if data["query_params"].get("token") == ["text"]:
            return "yes"
        if data["query_params"].get("token") == ["none"]:
            return None
        raise ValueError("no valid token")

    client.register_function("auth::check", auth)
    client.register_function("j::record", lambda data: joins.append(data))
    client.register_trigger({"type": "stream:join", "function_id": "j::record", "config": {}})
    await asyncio.sleep(0.1)
    worker = await _start(engine, tmp_path, auth_function="auth::check")
    url = f"ws://127.0.0.1:{worker.port}/"
    try:
        for query, message in (("", "authentication failed: "),
                               ("?token=text", "auth function auth::check returned a non-object"),
                               ("?token=none", "auth function auth::check returned no result")):
            with pytest.raises(InvalidStatus) as err:
                await connect(url + query)
            response = err.value.response
            assert response.status_code == 401
            assert response.headers.get("upgrade") is None
            body = json.loads(response.body)
            assert body["error"]["code"] == "AUTH_ERROR"
            assert body["error"]["message"].startswith(message)
        assert worker.hub.clients == set() and joins == []
        first = inputs[0]
        assert first["path"] == "/" and first["query_params"] == {}
        assert first["headers"]["host"] == f"127.0.0.1:{worker.port}"
        assert first["headers"]["upgrade"].lower() == "websocket"
        host, port = first["addr"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        async with connect(url + "?token=ok", additional_headers={"X-Tag": "a"}) as ws:
            assert inputs[-1]["query_params"] == {"token": ["ok"]}
            assert inputs[-1]["headers"]["x-tag"] == "a"
            await ws.send(join("s1", item="i1"))
            assert await recv(ws) == msg({"type": "sync", "data": None}, "i1")
        assert joins == [{"subscription_id": "s1", "stream_name": "todo", "group_id": "g",
                          "id": "i1", "context": {"user": "u"}}]
        async with connect(url + "?token=empty") as ws:  # {} accepts with context null
            await ws.send(join("s2"))
            assert await recv(ws) == msg({"type": "sync", "data": []})
        assert joins[-1]["context"] is None
        with pytest.raises(InvalidStatus) as err:
            await connect(f"ws://127.0.0.1:{worker.port}/elsewhere")
        assert err.value.response.status_code == 404
    finally:
        await worker.stop()


async def test_auth_message_names_the_error(engine, client, tmp_path):
    def auth(data):
        raise ValueError("no valid token")

    client.register_function("auth::deny", auth)
    worker = await _start(engine, tmp_path, auth_function="auth::deny")
    try:
        with pytest.raises(InvalidStatus) as err:
            await connect(f"ws://127.0.0.1:{worker.port}/")
        body = json.loads(err.value.response.body)
        assert err.value.response.status_code == 401 and body["error"]["code"] == "AUTH_ERROR"
        assert "no valid token" in body["error"]["message"]
        await worker.reconfigure({"port": 0, "adapter": "memory", "auth_function": "auth::none"})
        with pytest.raises(InvalidStatus) as err:  # a missing auth function refuses too
            await connect(f"ws://127.0.0.1:{worker.port}/")
        assert err.value.response.status_code == 401
        await worker.reconfigure({"port": 0, "adapter": "memory"})  # live: no auth any more
        async with connect(f"ws://127.0.0.1:{worker.port}/") as ws:
            await ws.send(join("s"))
            assert (await recv(ws))["event"]["type"] == "sync"
    finally:
        await worker.stop()


async def test_auth_without_answer_is_refused(engine, client, tmp_path, monkeypatch):
    from pyiii.workers.stream import sockets

    monkeypatch.setattr(sockets, "AUTH_TIMEOUT_S", 0.3)  # 10 s in production

    async def slow(data):
        await asyncio.sleep(2)
        return {"context": 1}

    client.register_function("auth::slow", slow)
    worker = await _start(engine, tmp_path, auth_function="auth::slow")
    try:
        with pytest.raises(InvalidStatus) as err:
            await connect(f"ws://127.0.0.1:{worker.port}/")
        assert err.value.response.status_code == 401
        assert json.loads(err.value.response.body) == {"error": {
            "code": "AUTH_ERROR", "message": "auth function auth::slow did not answer within 0.3 s"}}
    finally:
        await worker.stop()


async def test_port_in_use_fails_start(engine, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            await _start(engine, tmp_path, port=busy.getsockname()[1])


async def test_scenario_31_join_refusal(worker, client):
    def guard(data):
        if data["group_id"] == "boom":
            raise RuntimeError("join handler failed")
        if data["group_id"] == "secret":
            return {"unauthorized": True}
        return {"unauthorized": False}

    client.register_function("j::guard", guard)
    client.register_function("j::deny", lambda data: {"unauthorized": True})
    client.register_function("j::never", lambda data: False)
    client.register_trigger({"type": "stream:join", "function_id": "j::guard",
                             "config": {"stream_name": "todo"}})
    # condition false: skipped, does not refuse; other stream: filtered out
    client.register_trigger({"type": "stream:join", "function_id": "j::deny",
                             "config": {"condition_function_id": "j::never"}})
    client.register_trigger({"type": "stream:join", "function_id": "j::deny",
                             "config": {"stream_name": "locked"}})
    client.register_trigger({"type": "stream:join", "function_id": "j::deny",
                             "config": {"stream_name": "cond",
                                        "condition_function_id": "nope::missing"}})
    await asyncio.sleep(0.1)
    async with connect(f"ws://127.0.0.1:{worker.port}/") as ws:
        for group, stream_name in (("secret", "todo"), ("boom", "todo"), ("g", "locked"),
                                   ("g", "cond")):
            await ws.send(join("s", group=group, stream_name=stream_name))
            assert await recv(ws) == msg({"type": "unauthorized"}, group=group,
                                         stream_name=stream_name)
        for group in ("secret", "boom"):
            await call(client, "stream::set", {"stream_name": "todo", "group_id": group,
                                               "item_id": "i", "data": 1})
        await call(client, "stream::set", {"stream_name": "locked", "group_id": "g",
                                           "item_id": "i", "data": 1})
        await no_frame(ws)
        await ws.send(join("ok"))
        assert await recv(ws) == msg({"type": "sync", "data": []})


async def test_leave_and_close_run_leave_bindings(worker, client):
    left: list[tuple] = []
    client.register_function("l::rec", lambda data, metadata=None: left.append((data, metadata)))
    client.register_trigger({"type": "stream:leave", "function_id": "l::rec", "config": {},
                             "metadata": {"k": 1}})
    await asyncio.sleep(0.1)
    async with connect(f"ws://127.0.0.1:{worker.port}/") as ws:
        await ws.send(join("s1"))
        await ws.send(join("s2", group="h", item="i"))
        await recv(ws), await recv(ws)
        await ws.send(join("s1", kind="leave"))
        await wait_for(lambda: len(left) == 1)
        assert left[0] == ({"subscription_id": "s1", "stream_name": "todo", "group_id": "g",
                            "id": None, "context": None}, {"k": 1})
        await call(client, "stream::set", {"stream_name": "todo", "group_id": "g",
                                           "item_id": "i", "data": 1})
        await call(client, "stream::set", {"stream_name": "todo", "group_id": "h",
                                           "item_id": "i", "data": 2})
        assert await recv(ws) == msg({"type": "create", "data": 2}, "i", group="h")
        await no_frame(ws, 0.1)
    await wait_for(lambda: len(left) == 2)
    assert left[1][0] == {"subscription_id": "s2", "stream_name": "todo", "group_id": "h",
                          "id": "i", "context": None}


async def test_bad_frames_are_ignored_and_subscription_ids_replace(worker, client):
    async with connect(f"ws://127.0.0.1:{worker.port}/") as ws:
        for frame in ("", "   ", "not json", b"\xff\xfe", "[1]", '{"type":"join"}',
                      '{"type":"hello","data":{}}', join("x", item=None).replace('"g"', "5")):
            await ws.send(frame)
        await ws.send(join("s1").encode())  # binary frames hold JSON too
        assert await recv(ws) == msg({"type": "sync", "data": []})
        await ws.send(join("s1", group="h"))  # same subscriptionId: replaces todo/g
        assert await recv(ws) == msg({"type": "sync", "data": []}, group="h")
        await call(client, "stream::set", {"stream_name": "todo", "group_id": "g",
                                           "item_id": "i", "data": 1})
        await no_frame(ws, 0.2)
        await call(client, "stream::set", {"stream_name": "todo", "group_id": "h",
                                           "item_id": "i", "data": 2})
        assert await recv(ws) == msg({"type": "create", "data": 2}, "i", group="h")


async def test_slow_client_is_closed_with_1013(engine, client, tmp_path):
    worker = await _start(engine, tmp_path, channel_size=2)
    big = "x" * 256 * 1024
    try:
        ws = await connect(f"ws://127.0.0.1:{worker.port}/", max_queue=1, max_size=None)
        await ws.send(join("s"))
        assert (await recv(ws))["event"]["type"] == "sync"
        for n in range(300):  # the client reads nothing meanwhile
            await call(client, "stream::set", {"stream_name": "todo", "group_id": "g",
                                               "item_id": str(n % 4), "data": big})
            if any(c.closing for c in worker.hub.clients):
                break
        assert any(c.closing for c in worker.hub.clients)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1013
        async with connect(f"ws://127.0.0.1:{worker.port}/", max_size=None) as again:
            await again.send(join("s"))
            sync = await recv(again)
            assert sync["event"]["type"] == "sync" and len(sync["event"]["data"]) == 4
    finally:
        await worker.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_hot_reload_rebind_and_adapter_swap(worker, client, tmp_path, caplog):
    old_port = worker.port
    async with connect(f"ws://127.0.0.1:{old_port}/") as ws:
        await ws.send(join("s"))
        await recv(ws)
        new_port = _free_port()
        await worker.reconfigure({"port": new_port, "adapter": "memory"})
        assert worker.port == new_port
        with pytest.raises(OSError):
            await connect(f"ws://127.0.0.1:{old_port}/", open_timeout=2)
        async with connect(f"ws://127.0.0.1:{new_port}/") as fresh:
            await fresh.send(join("s"))
            assert (await recv(fresh))["event"]["type"] == "sync"
        key = {"stream_name": "todo", "group_id": "g", "item_id": "i"}
        await call(client, "stream::set", {**key, "data": 1})
        assert await recv(ws) == msg({"type": "create", "data": 1}, "i")  # old socket kept
        with pytest.raises(ValueError, match="channel_size"):
            await worker.reconfigure({"port": new_port, "channel_size": "abc"})
        assert worker.settings.adapter.name == "memory"
        with socket.socket() as busy:  # a port in use: keep serving on the current one
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            await worker.reconfigure({"port": busy.getsockname()[1], "adapter": "memory"})
        assert worker.port == new_port and "cannot listen" in caplog.text
        await worker.reconfigure({"port": new_port, "adapter": "sqlite"})  # swap: no copy
        assert (tmp_path / "data" / "stream.db").exists()
        assert await call(client, "stream::get", key) is None
        await call(client, "stream::set", {**key, "data": 2})
        assert await recv(ws) == msg({"type": "create", "data": 2}, "i")  # still live


async def test_official_sdk_handlers(engine, worker, client, peers):
    """`stream` handled by Python iii-sdk 0.25, `stream:join` by Node iii-sdk 0.22."""
    py = await peers.astart("s25", engine.url, make_spec(
        "stream-py", [fn("py::on_stream", "echo")],
        triggers=[{"type": "stream", "function_id": "py::on_stream",
                   "config": {"stream_name": "todo", "group_id": "g"}, "metadata": {"m": 1}}]))
    js = await peers.astart("n22", engine.url, make_spec(
        "stream-js", [fn("js::on_join", "echo")],
        triggers=[{"type": "stream:join", "function_id": "js::on_join",
                   "config": {"stream_name": "todo"}}]))
    await asyncio.sleep(0.2)
    async with connect(f"ws://127.0.0.1:{worker.port}/") as ws:
        await ws.send(join("s1", item="i1"))
        assert await recv(ws) == msg({"type": "sync", "data": None}, "i1")  # echo: no refusal
        joined = await js.event("invoke", function_id="js::on_join")
        assert joined["data"] == {"subscription_id": "s1", "stream_name": "todo",
                                  "group_id": "g", "id": "i1", "context": None}
        await call(client, "stream::set", {"stream_name": "todo", "group_id": "g",
                                           "item_id": "i1", "data": {"t": "x"}})
        assert await recv(ws) == msg({"type": "create", "data": {"t": "x"}}, "i1")
    got = await py.event("invoke", function_id="py::on_stream")
    payload = got["data"]
    assert isinstance(payload.pop("timestamp"), int)
    assert payload == msg({"type": "create", "data": {"t": "x"}}, "i1")
    assert got.get("metadata") == {"m": 1}
