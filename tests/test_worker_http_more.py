"""iii-http: refusals, limits, CORS, hot reload, bad input and official-SDK handlers
(spec/workers.md §3, §13 scenarios 12-15)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import pytest

from .conftest_peers import fn, make_spec
from .test_worker_http import base, bind, client, routes_ready, start_http, web, worker  # noqa: F401


async def test_scenario_12_refusals(worker, raw):
    c = await raw("binder")

    async def send(tid: str, config: dict) -> None:
        await c.send({"type": "registertrigger", "id": tid, "trigger_type": "http",
                      "function_id": "c::f", "config": config})

    async def register(tid: str, config: dict) -> dict:
        await send(tid, config)
        return await c.recv_type("triggerregistrationresult")

    async def accepted(tid: str, config: dict) -> None:
        await send(tid, config)  # the engine reports failures only
        await c.no_frame(0.3)

    await accepted("a", {"api_path": "/s/:a"})
    answer = await register("b", {"api_path": "/s/:b"})
    assert answer["error"]["code"] == "trigger_registration_failed"
    assert "conflicts" in answer["error"]["message"]
    assert answer["error"]["message"] == ("route GET /s/:b conflicts with GET /s/:a "
                                          "(same shape, different parameter names)")
    answer = await register("c", {"http_method": "GET"})
    assert answer["error"]["message"] == "api_path is required for http triggers"
    answer = await register("d", {"api_path": "/f", "http_method": "FETCH"})
    assert answer["error"] == {"code": "trigger_registration_failed",
                               "message": "unsupported http_method 'FETCH'"}
    answer = await register("e", {"api_path": "/p/:"})
    assert answer["error"]["code"] == "trigger_registration_failed"
    # same shape, same names, other method: no conflict
    await accepted("g", {"api_path": "s/{a}", "http_method": "put"})
    await accepted("h", {"api_path": "/s/{a}"})  # same names as "a": the newest serves


async def test_scenario_12_binding_before_worker_is_parked(engine, tmp_path, client, web):
    client.register_function("early::h", lambda d: {"body": {"early": True}})
    bind(client, "early::h", "/early")
    await asyncio.sleep(0.1)
    worker = await start_http(engine, tmp_path)
    try:
        await routes_ready(worker, 1)
        async with web.get(base(worker) + "/early") as resp:
            assert resp.status == 200 and await resp.json() == {"early": True}
    finally:
        await worker.stop()


async def test_newest_binding_serves_and_older_is_fallback(worker, client, web):
    client.register_function("v::one", lambda d: {"body": 1})
    client.register_function("v::two", lambda d: {"body": 2})
    bind(client, "v::one", "/v")
    await routes_ready(worker, 1)
    second = bind(client, "v::two", "/v")
    await routes_ready(worker, 2)
    async with web.get(base(worker) + "/v") as resp:
        assert await resp.json() == 2
    second.unregister()
    for _ in range(100):
        if len(worker.routes) == 1:
            break
        await asyncio.sleep(0.01)
    async with web.get(base(worker) + "/v") as resp:
        assert await resp.json() == 1


async def test_scenario_13_limits(engine, tmp_path, client, web):
    calls: list[Any] = []

    async def sleepy(data: Any) -> Any:
        await asyncio.sleep(2)
        return {"body": "late"}

    client.register_function("l::sleep", sleepy)
    client.register_function("l::take", lambda d: calls.append(d["body"]) or {"body": "ok"})
    bind(client, "l::sleep", "/sleep")
    bind(client, "l::take", "/take", "POST")
    worker = await start_http(engine, tmp_path, {"default_timeout": 500, "body_limit": 100})
    try:
        await routes_ready(worker, 2)
        started = time.monotonic()
        async with web.get(base(worker) + "/sleep") as resp:
            assert resp.status == 504
            assert await resp.json() == {"error": {
                "code": "TIMEOUT", "message": "request exceeded default_timeout of 500 ms"}}
        assert time.monotonic() - started < 1.5
        big = {"k": "x" * 1024}
        async with web.post(base(worker) + "/take", json=big) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"

        async def chunks():  # no content-length: the limit applies while reading
            for _ in range(8):
                yield b'{"k":"' + b"x" * 30 + b'",'

        async with web.post(base(worker) + "/take", data=chunks(),
                            headers={"content-type": "application/json"}) as resp:
            assert resp.status == 413
        assert calls == []
        async with web.post(base(worker) + "/take", json={"small": 1}) as resp:
            assert resp.status == 200
        assert calls == [{"small": 1}]
    finally:
        await worker.stop()


async def test_concurrency_wait_counts_against_timeout(engine, tmp_path, client, web):
    async def hold(data: Any) -> Any:
        await asyncio.sleep(0.8)
        return {"body": "done"}

    client.register_function("c::hold", hold)
    bind(client, "c::hold", "/hold")
    worker = await start_http(engine, tmp_path, {"default_timeout": 500,
                                                 "concurrency_request_limit": 0})
    try:
        assert worker.limiter.limit == 1  # 0 is raised to 1
        await worker.reconfigure({"port": worker.port, "default_timeout": 1000,
                                  "concurrency_request_limit": 1})
        await routes_ready(worker, 1)

        async def get() -> int:
            async with web.get(base(worker) + "/hold") as resp:
                return resp.status

        first = asyncio.ensure_future(get())
        await asyncio.sleep(0.1)
        second = await get()  # waits ~0.7 s for the slot, then has 0.3 s left for 0.8 s work
        assert (await first, second) == (200, 504)
    finally:
        await worker.stop()


async def test_bad_input(worker, client, web):
    seen: list[Any] = []
    client.register_function("b::h", lambda d: seen.append(d["body"]) or {"body": {"ok": True}})
    bind(client, "b::h", "/b", "POST")
    await routes_ready(worker, 1)
    for raw in (b"{not json", b"", b"[1,", b"\xff\xfe"):
        async with web.post(base(worker) + "/b", data=raw,
                            headers={"content-type": "application/json"}) as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True}
    async with web.post(base(worker) + "/b", data=b'{"a":1}',
                        headers={"content-type": "text/plain"}) as resp:
        assert resp.status == 200
    assert seen == [None, None, None, None, None]
    for path in ("/zzz", "/b/", "/b/c", "//", "/%ff"):
        async with web.get(base(worker) + path) as resp:
            assert resp.status in (404, 405)
            assert (await resp.json())["error"]["code"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")
    async with web.post(base(worker) + "/b", json={"still": "fine"}) as resp:
        assert resp.status == 200


async def test_bad_config_is_refused(engine, tmp_path):
    for config in ({"nope": 1}, {"port": "x"}, {"default_timeout": 0}, {"cors": []},
                   {"middleware": [{"function_id": ""}]}, {"body_limit": -1}):
        with pytest.raises(ValueError):
            await start_http(engine, tmp_path, config)


async def test_scenario_14_cors(engine, tmp_path, client, web):
    client.register_function("x::h", lambda d: {"body": 1})
    bind(client, "x::h", "/c", "POST")
    worker = await start_http(engine, tmp_path, {"cors": {
        "allowed_origins": ["https://a.example"], "allowed_methods": ["POST"]}})
    try:
        await routes_ready(worker, 1)
        pre = {"Access-Control-Request-Method": "POST"}
        async with web.options(base(worker) + "/c",
                               headers={"Origin": "https://a.example", **pre}) as resp:
            assert resp.status == 204
            assert resp.headers["access-control-allow-origin"] == "https://a.example"
            assert "POST" in resp.headers["access-control-allow-methods"]
        async with web.options(base(worker) + "/c",
                               headers={"Origin": "https://b.example", **pre}) as resp:
            assert "access-control-allow-origin" not in resp.headers
        async with web.post(base(worker) + "/c", headers={"Origin": "https://a.example"}) as resp:
            assert resp.headers["access-control-allow-origin"] == "https://a.example"
            assert resp.headers["vary"].lower() == "origin"
        async with web.post(base(worker) + "/c", headers={"Origin": "https://b.example"}) as resp:
            assert resp.status == 200 and "access-control-allow-origin" not in resp.headers
    finally:
        await worker.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_scenario_15_hot_reload(worker, client, web, caplog):
    client.register_function("r::h", lambda d: {"body": "up"})
    bind(client, "r::h", "/up")
    await routes_ready(worker, 1)
    old_port, new_port = worker.port, _free_port()
    await worker.reconfigure({"port": new_port})
    assert worker.port == new_port
    async with web.get(f"http://127.0.0.1:{new_port}/up") as resp:
        assert await resp.json() == "up"
    await asyncio.sleep(0.1)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with web.get(f"http://127.0.0.1:{old_port}/up") as resp:
            await resp.read()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="pyiii.workers.http"):
            with pytest.raises(ValueError):
                await worker.reconfigure({"port": taken})
        assert str(taken) in caplog.text and "cannot bind" in caplog.text
    assert worker.port == new_port
    async with web.get(f"http://127.0.0.1:{new_port}/up") as resp:
        assert resp.status == 200
    before = worker.settings
    with pytest.raises(ValueError):
        await worker.reconfigure({"port": new_port, "concurrency_request_limit": "abc"})
    assert worker.settings is before
    await worker.reconfigure({"port": new_port, "default_timeout": 1234})  # live key
    assert worker.settings.default_timeout == 1234 and worker.port == new_port


@pytest.mark.parametrize("lang", ["s25", "n22"])
async def test_official_sdk_handler_answers_http(engine, worker, web, peers, lang):
    spec = make_spec(f"http-{lang}", [
        fn(f"{lang}::reply", "http_reply", status_code=201,
           headers={"X-Peer": lang, "Content-Type": "application/json"}),
        fn(f"{lang}::boom", "boom", message="kaput"),
    ], triggers=[
        {"type": "http", "function_id": f"{lang}::reply",
         "config": {"api_path": f"/{lang}/orders/:id", "http_method": "POST"}},
        {"type": "http", "function_id": f"{lang}::boom", "config": {"api_path": f"/{lang}/boom"}},
    ])
    peer = await peers.astart(lang, engine.url, spec)
    await routes_ready(worker, 2)
    async with web.post(f"{base(worker)}/{lang}/orders/7?q=a", json={"n": 1}) as resp:
        assert resp.status == 201
        assert resp.headers["x-peer"] == lang
        assert resp.headers["content-type"] == "application/json"
        assert await resp.json() == {"sdk": lang, "method": "POST", "path": f"/{lang}/orders/:id",
                                     "path_params": {"id": "7"}, "query_params": {"q": "a"},
                                     "body": {"n": 1}}
    ev = await peer.event("invoke", function_id=f"{lang}::reply")
    assert ev["data"]["path_params"] == {"id": "7"}
    async with web.get(f"{base(worker)}/{lang}/boom") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert "kaput" in error["message"] and error["error_id"]
    await peer.aclose()
    for _ in range(200):
        if len(worker.routes) == 0:
            break
        await asyncio.sleep(0.02)
    async with web.get(f"{base(worker)}/{lang}/boom") as resp:  # worker gone: route gone
        assert resp.status == 404
