"""iii-http in-process, driven with real HTTP requests (spec/workers.md §3, §13 scenarios 6-11)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, register_worker
from pyiii.workers import http
from pyiii.workers.base import WorkerContext

HEX = re.compile(r"^[0-9a-f]+$")


async def start_http(engine: Any, tmp_path: Path, config: dict | None = None) -> http.HttpWorker:
    ctx = WorkerContext("iii-http", {"port": 0, **(config or {})}, tmp_path, True,
                        url=engine.url, connector=local_connector(engine.engine))
    return await http.start(ctx)


async def routes_ready(worker: http.HttpWorker, count: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while len(worker.routes) < count:
        assert time.monotonic() < deadline, f"only {len(worker.routes)} routes bound"
        await asyncio.sleep(0.01)


def bind(client: Any, function_id: str, api_path: str, method: str = "GET", **extra: Any) -> Any:
    return client.register_trigger({"type": "http", "function_id": function_id,
                                    "config": {"api_path": api_path, "http_method": method,
                                               **extra}})


@pytest.fixture
async def client(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="handlers"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


@pytest.fixture
async def worker(engine, tmp_path):
    running = await start_http(engine, tmp_path)
    yield running
    await running.stop()


@pytest.fixture
async def web():
    async with aiohttp.ClientSession() as session:
        yield session


def base(worker: http.HttpWorker) -> str:
    return f"http://127.0.0.1:{worker.port}"


async def test_scenario_6_happy_path(worker, client, web):
    client.register_function("math::add", lambda d: {"status_code": 200, "body": {
        "c": d["body"]["a"] + d["body"]["b"]}})
    bind(client, "math::add", "math/add", "post")
    await routes_ready(worker, 1)
    async with web.post(base(worker) + "/math/add", json={"a": 2, "b": 3}) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/json"
        assert await resp.json() == {"c": 5}


async def test_scenario_7_request_shape(worker, client, web):
    seen: list[dict] = []

    def echo(data: Any) -> Any:
        seen.append({k: v for k, v in data.items() if k not in ("request_body", "response")})
        assert hasattr(data["request_body"], "read_all")  # the SDK resolved the channel refs
        return {"body": {"ok": True}}

    client.register_function("t::echo", echo)
    bind(client, "t::echo", "/users/:id")
    bind(client, "t::echo", "/items/{sku}")
    await routes_ready(worker, 2)
    async with web.get(base(worker) + "/users/a%20b?x=1&x=2",
                       headers=[("X-Tag", "1"), ("X-Tag", "2")]) as resp:
        assert resp.status == 200
    got = seen.pop()
    assert got["path_params"] == {"id": "a b"}
    assert got["query_params"] == {"x": "2"}
    assert got["path"] == "/users/:id"
    assert got["method"] == "GET"
    assert got["headers"]["x-tag"] == "1, 2"
    assert got["body"] is None
    assert got["trigger"] == {"type": "http", "path": "/users/:id", "method": "GET"}
    async with web.get(base(worker) + "/items/42") as resp:
        assert resp.status == 200
    assert seen.pop()["path_params"] == {"sku": "42"}


async def test_literal_beats_parameter_and_head(worker, client, web):
    client.register_function("u::me", lambda d: {"body": "me", "headers": {"content-type": "text/plain"}})
    client.register_function("u::id", lambda d: {"body": d["path_params"]["id"],
                                                 "headers": {"content-type": "text/plain"}})
    bind(client, "u::id", "/users/:id")
    bind(client, "u::me", "/users/me")
    await routes_ready(worker, 2)
    async with web.get(base(worker) + "/users/me") as resp:
        assert await resp.text() == "me"
    async with web.get(base(worker) + "/users/7") as resp:
        assert await resp.text() == "7"
    async with web.get(base(worker) + "/users/7/") as resp:  # trailing slash is significant
        assert resp.status == 404
    async with web.head(base(worker) + "/users/7") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_scenario_8_response_contract(worker, client, web):
    replies = {
        "text": {"body": "hi", "headers": {"Content-Type": "text/plain"}},
        "empty": {},
        "list": {"status_code": 201, "headers": ["X-A: 1"], "body": {"ok": True}},
        "bad-status": {"status_code": 999},
        "not-object": "text",
        "bad-headers": {"headers": {"X-Ok": "y", "Bad Name": "v", "X-N": 5, "X-Nl": "a\r\nb"}},
        "null-body": {"headers": {"content-type": "text/plain"}, "body": None},
        "other-type": {"headers": {"content-type": "text/csv"}, "body": [1, 2]},
    }
    client.register_function("r::reply", lambda d: replies[d["path_params"]["name"]])
    bind(client, "r::reply", "/r/:name")
    await routes_ready(worker, 1)

    async def get(name: str) -> tuple[int, Any, bytes]:
        async with web.get(f"{base(worker)}/r/{name}") as resp:
            return resp.status, resp.headers, await resp.read()

    status, headers, body = await get("text")
    assert (status, body) == (200, b"hi") and headers["content-type"].startswith("text/plain")
    status, headers, body = await get("empty")
    assert (status, body, headers["content-type"]) == (200, b"{}", "application/json")
    status, headers, body = await get("list")
    assert (status, headers["x-a"], body) == (201, "1", b'{"ok":true}')
    assert (await get("bad-status"))[:1] == (200,)
    assert (await get("not-object"))[0::2] == (200, b"{}")
    status, headers, body = await get("bad-headers")
    assert headers["x-ok"] == "y" and "x-n" not in headers and "x-nl" not in headers
    assert (await get("null-body"))[0::2] == (200, b"")
    assert (await get("other-type"))[2] == b"[1,2]"


async def test_scenario_9_errors(worker, client, web):
    def fail(data: Any) -> Any:
        raise InvocationError("BAD_INPUT", "x")

    client.register_function("e::fail", fail)
    client.register_function("e::ok", lambda d: {"body": 1})
    bind(client, "e::fail", "/fail")
    bind(client, "e::ok", "/users/:id")
    await routes_ready(worker, 2)
    async with web.get(base(worker) + "/fail") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert (error["code"], error["message"]) == ("BAD_INPUT", "x")
        assert HEX.match(error["error_id"])
    async with web.get(base(worker) + "/nope") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": {"code": "NOT_FOUND", "message": "Not Found"}}
    async with web.delete(base(worker) + "/users/1") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
        assert "GET" in [m.strip() for m in resp.headers["allow"].split(",")]


async def test_handler_missing_and_python_exception(worker, client, web):
    def boom(data: Any) -> Any:
        raise ValueError("boom")

    client.register_function("e::boom", boom)
    bind(client, "e::boom", "/boom")
    bind(client, "e::absent", "/absent")
    await routes_ready(worker, 2)
    async with web.get(base(worker) + "/boom") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert "boom" in error["message"] and error["error_id"]
    async with web.get(base(worker) + "/absent") as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["error_id"]


async def test_scenario_10_condition_and_middleware(engine, tmp_path, client, web):
    calls: list[str] = []
    mw_inputs: list[dict] = []
    client.register_function("c::no", lambda d: False)
    client.register_function("c::yes", lambda d: "yes")
    client.register_function("h::run", lambda d: calls.append(d["path"]) or {"body": {"ran": True}})

    def guard(data: Any) -> Any:
        mw_inputs.append(data)
        if data["request"]["headers"].get("x-block"):
            return {"action": "respond", "response": {"status_code": 401, "body": {"e": 1}}}
        return {"action": "continue"}

    async def slow(data: Any) -> Any:
        await asyncio.sleep(3)
        return {"action": "continue"}

    client.register_function("mw::guard", guard)
    client.register_function("mw::slow", slow)
    bind(client, "h::run", "/no", "POST", condition_function_id="c::no")
    bind(client, "h::run", "/yes", condition_function_id="c::yes")
    bind(client, "h::run", "/slow", middleware_function_ids=["mw::slow"])
    worker = await start_http(engine, tmp_path, {
        "default_timeout": 1000, "middleware": [{"function_id": "mw::guard", "phase": "preHandler",
                                                 "priority": 0}]})
    try:
        await routes_ready(worker, 3)
        async with web.post(base(worker) + "/no", json={"a": 1}) as resp:
            assert resp.status == 422
            assert await resp.json() == {"error": {"code": "CONDITION_NOT_MET", "message":
                                                   "Request condition not met"}, "skipped": True}
        assert calls == []
        async with web.get(base(worker) + "/yes") as resp:
            assert resp.status == 200 and await resp.json() == {"ran": True}
        assert calls == ["/yes"]
        async with web.post(base(worker) + "/no", json={"secret": 1},
                            headers={"X-Block": "1"}) as resp:
            assert resp.status == 401 and await resp.json() == {"e": 1}
        assert calls == ["/yes"]
        last = mw_inputs[-1]
        assert last["phase"] == "preHandler" and last["context"] == {}
        assert set(last["request"]) == {"path_params", "query_params", "headers", "method"}
        assert "body" not in last and "body" not in last["request"]
        started = time.monotonic()
        async with web.get(base(worker) + "/slow") as resp:
            assert resp.status == 504
            assert (await resp.json())["error"] == {"code": "MIDDLEWARE_TIMEOUT",
                                                    "message": "Middleware timeout"}
        assert time.monotonic() - started < 2.0
    finally:
        await worker.stop()


async def test_condition_failure_is_500(worker, client, web):
    def bad(data: Any) -> Any:
        raise InvocationError("NOPE", "condition broke")

    client.register_function("c::bad", bad)
    client.register_function("h::x", lambda d: {"body": 1})
    bind(client, "h::x", "/x", condition_function_id="c::bad")
    await routes_ready(worker, 1)
    async with web.get(base(worker) + "/x") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert (error["code"], error["message"]) == ("NOPE", "condition broke")


async def test_scenario_11_streaming_and_null_results(engine, worker, client, web):
    async def streamer(data: Any) -> Any:
        out = data["response"]
        await out.send_message_async('{"type":"set_status","status_code":201}')
        await out.send_message_async('{"type":"set_headers","headers":{"content-type":"text/plain"}}')
        await out.write(b"he")
        await out.write(b"llo")
        await out.close_async()
        return None

    async def upload(data: Any) -> Any:
        raw = await data["request_body"].read_all()
        return {"headers": {"content-type": "text/plain"}, "body": f"{len(raw)}:{raw[:3].decode()}"}

    client.register_function("s::stream", streamer)
    client.register_function("s::none", lambda d: None)
    client.register_function("s::upload", upload)
    bind(client, "s::stream", "/stream")
    bind(client, "s::none", "/none")
    bind(client, "s::upload", "/upload", "POST")
    await routes_ready(worker, 3)
    async with web.get(base(worker) + "/stream") as resp:
        assert resp.status == 201
        assert resp.headers["content-type"] == "text/plain"
        assert await resp.read() == b"hello"
    started = time.monotonic()
    async with web.get(base(worker) + "/none") as resp:
        assert resp.status == 200 and await resp.read() == b"{}"
    assert time.monotonic() - started < 1.0
    async with web.post(base(worker) + "/upload", data=b"abc" * 50000,
                        headers={"content-type": "application/octet-stream"}) as resp:
        assert resp.status == 200 and await resp.text() == "150000:abc"
    async with web.post(base(worker) + "/upload", json={"k": "v"}) as resp:
        assert await resp.text() == '10:{"k'
    for _ in range(200):  # both channels of every request are removed once it is answered
        if not engine.engine.channels.channels:
            break
        await asyncio.sleep(0.02)
    assert not engine.engine.channels.channels
