"""iii-http's in-process fast paths (channels made in the engine's hub, small bodies preloaded,
the response channel read only once claimed, channels retired at once) against the ordinary
path of an out-of-process worker: the same HTTP behaviour both ways, no channel left behind;
and W3C trace context from request headers to the handler's invocation (spec/workers.md §3.7)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, register_worker
from pyiii.workers import http
from pyiii.workers.base import WorkerContext
from tests.test_worker_http import base, bind, routes_ready

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BAGGAGE = "tenant=acme,req=42"


async def start_worker(engine: Any, tmp_path: Path, in_process: bool,
                       config: dict | None = None) -> http.HttpWorker:
    ctx = WorkerContext("iii-http", {"port": 0, **(config or {})}, tmp_path, True,
                        url=engine.url,
                        connector=local_connector(engine.engine) if in_process else None)
    return await http.start(ctx)


def handlers_client(engine: Any, in_process: bool) -> Any:
    if in_process:
        return register_worker("inproc://handlers", InitOptions(
            worker_name="handlers", connector=local_connector(engine.engine)))
    return register_worker(engine.url, InitOptions(worker_name="handlers"))


async def no_channels_left(engine: Any, timeout: float = 4.0) -> tuple[int, int]:
    hub = engine.engine.channels
    deadline = time.monotonic() + timeout
    while (hub.channels or hub.local_tasks) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return len(hub.channels), len(hub.local_tasks)


@pytest.fixture
async def web():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["in-process", "out-of-process"])
async def setup(request, engine, tmp_path):
    """(worker, client): both in the engine's process, or both over WebSocket."""
    in_process = request.param == "in-process"
    worker = await start_worker(engine, tmp_path, in_process, {"default_timeout": 800})
    assert (worker.iii.channel_hub is not None) is in_process
    client = handlers_client(engine, in_process)
    await client.wait_connected(5)
    yield worker, client
    await client.shutdown_async()
    await worker.stop()


async def test_plain_requests_leave_no_channel(engine, setup, web):
    worker, client = setup

    async def echo(data: Any) -> Any:
        return {"body": {"q": data["query_params"].get("n"), "b": data["body"]}}

    client.register_function("p::echo", echo)
    client.register_function("p::sync", lambda d: {"body": "s", "headers": {"content-type": "text/plain"}})
    bind(client, "p::echo", "/echo", "POST")
    bind(client, "p::sync", "/sync")
    await routes_ready(worker, 2)
    for i in range(40):
        async with web.post(f"{base(worker)}/echo?n={i}", json={"i": i}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"q": str(i), "b": {"i": i}}
    answers = await asyncio.gather(*[web.get(base(worker) + "/sync") for _ in range(40)])
    assert [(r.status, await r.text()) for r in answers] == [(200, "s")] * 40
    assert await no_channels_left(engine) == (0, 0)


async def test_streaming_bodies_both_ways(engine, setup, web):
    worker, client = setup
    late: list[str] = []

    async def streamer(data: Any) -> Any:
        out = data["response"]
        await out.send_message_async('{"type":"set_status","status_code":201}')
        await out.send_message_async('{"type":"set_headers","headers":{"content-type":"text/plain"}}')
        await out.write(b"he")
        await asyncio.sleep(0.01)
        await out.write(b"llo")
        await out.close_async()
        return None

    async def upload(data: Any) -> Any:
        raw = await data["request_body"].read_all()
        return {"headers": {"content-type": "text/plain"}, "body": f"{len(raw)}:{raw[:3].decode()}"}

    async def late_writer(data: Any) -> Any:
        async def later() -> None:
            await asyncio.sleep(0.3)  # well after the response: the channels are retired
            try:
                await data["response"].write(b"late")
                await data["response"].close_async()
                late.append("written")
            except Exception:
                late.append("refused")

        asyncio.ensure_future(later())
        return {"body": {"ok": 1}}

    async def result_wins(data: Any) -> Any:
        await data["response"].send_message_async('{"type":"set_status","status_code":202}')
        return {"status_code": 200, "body": "r", "headers": {"content-type": "text/plain"}}

    async def head_only(data: Any) -> Any:
        out = data["response"]
        await out.send_message_async('{"type":"set_status","status_code":204}')
        await out.close_async()

    def sync_stream(data: Any) -> None:  # runs in a thread: the blocking channel API
        out = data["response"]
        out.send_message('{"type":"set_status","status_code":203}')
        out.stream.write(b"sync!")
        out.close()

    async def slow(data: Any) -> Any:
        await asyncio.sleep(3)

    async def boom(data: Any) -> Any:
        raise ValueError("nope")

    for fid, fn, path, method in (
            ("s::stream", streamer, "/stream", "GET"), ("s::up", upload, "/up", "POST"),
            ("s::late", late_writer, "/late", "GET"), ("s::rw", result_wins, "/rw", "GET"),
            ("s::head", head_only, "/head", "GET"), ("s::none", lambda d: None, "/none", "GET"),
            ("s::sync", sync_stream, "/sync", "GET"), ("s::slow", slow, "/slow", "GET"),
            ("s::boom", boom, "/boom", "GET")):
        client.register_function(fid, fn)
        bind(client, fid, path, method)
    await routes_ready(worker, 9)
    url = base(worker)

    async with web.get(url + "/stream") as resp:
        assert (resp.status, resp.headers["content-type"], await resp.read()) == \
            (201, "text/plain", b"hello")
    async with web.post(url + "/up", data=b"abc" * 50000,
                        headers={"content-type": "application/octet-stream"}) as resp:
        assert (resp.status, await resp.text()) == (200, "150000:abc")
    async with web.post(url + "/up", json={"k": "v"}) as resp:
        assert (resp.status, await resp.text()) == (200, '10:{"k')
    async with web.post(url + "/up") as resp:
        assert (resp.status, await resp.text()) == (200, "0:")

    async def chunks() -> Any:  # a chunked upload of unknown length is streamed, not preloaded
        for _ in range(20):
            yield b"xyz" * 1000
            await asyncio.sleep(0)

    async with web.post(url + "/up", data=chunks(),
                        headers={"content-type": "application/octet-stream"}) as resp:
        assert (resp.status, await resp.text()) == (200, "60000:xyz")
    async with web.get(url + "/late") as resp:
        assert (resp.status, await resp.json()) == (200, {"ok": 1})
    async with web.get(url + "/rw") as resp:
        assert (resp.status, await resp.read()) == (200, b"r")
    async with web.get(url + "/head") as resp:
        assert (resp.status, await resp.read()) == (204, b"")
    started = time.monotonic()
    async with web.get(url + "/none") as resp:  # nothing attached: {} after 500 ms
        assert (resp.status, await resp.read()) == (200, b"{}")
    assert 0.3 < time.monotonic() - started < 1.5
    async with web.get(url + "/sync") as resp:
        assert (resp.status, await resp.read()) == (203, b"sync!")
    async with web.get(url + "/boom") as resp:
        error = (await resp.json())["error"]
        assert resp.status == 500 and (error["code"], error["message"]) == ("invocation_failed", "nope")
    started = time.monotonic()
    async with web.get(url + "/slow") as resp:
        assert resp.status == 504
        assert await resp.json() == {"error": {
            "code": "TIMEOUT", "message": "request exceeded default_timeout of 800 ms"}}
    assert 0.5 < time.monotonic() - started < 2.0

    answers = await asyncio.gather(*[web.get(url + "/stream") for _ in range(30)])
    assert {(r.status, await r.read()) for r in answers} == {(201, b"hello")}
    for _ in range(150):
        if late:
            break
        await asyncio.sleep(0.02)
    assert late == ["refused"]  # the channel was gone once the result had answered
    assert await no_channels_left(engine) == (0, 0)


# -- trace context -------------------------------------------------------------------------

async def raw_http_function(raw: Any, function_id: str, api_path: str, **config: Any) -> Any:
    handler = await raw("traced-http")
    await handler.send({"type": "registerfunction", "id": function_id})
    await handler.send({"type": "registertrigger", "id": f"t-{function_id}", "trigger_type": "http",
                        "function_id": function_id,
                        "config": {"api_path": api_path, "http_method": "GET", **config}})
    await handler.sync()
    return handler


async def answer(handler: Any, web: Any, url: str, headers: dict[str, str],
                 result: Any) -> tuple[dict[str, Any], Any]:
    """Send one request; serve its invocation on the raw worker; the frame and the response."""
    request = asyncio.ensure_future(web.get(url, headers=headers))
    frame = await handler.serve_one(result)
    resp = await asyncio.wait_for(request, 5)
    return frame, resp


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "out-of-process"])
async def test_trace_headers_become_the_invocation_context(engine, raw, tmp_path, web, in_process):
    worker = await start_worker(engine, tmp_path, in_process)
    handler = await raw_http_function(raw, "tr::fn", "/traced")
    try:
        await routes_ready(worker, 1)
        url = base(worker) + "/traced"
        frame, resp = await answer(handler, web, url, {
            "traceparent": TRACEPARENT, "tracestate": "vendor=1", "baggage": BAGGAGE},
            {"status_code": 200, "body": {"ok": True}})
        assert (frame["traceparent"], frame["baggage"]) == (TRACEPARENT, BAGGAGE)
        assert frame["data"]["headers"]["tracestate"] == "vendor=1"
        assert frame["data"]["headers"]["traceparent"] == TRACEPARENT
        assert resp.status == 200 and await resp.json() == {"ok": True}

        frame, resp = await answer(handler, web, url, {}, {"body": 1})
        assert "traceparent" not in frame and "baggage" not in frame  # nothing invented
        assert resp.status == 200

        # a malformed traceparent is dropped; the baggage still goes
        for bad in ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "garbage"):
            frame, resp = await answer(handler, web, url,
                                       {"traceparent": bad, "baggage": "k=v"}, {"body": 2})
            assert "traceparent" not in frame, bad
            assert frame["baggage"] == "k=v"
            assert resp.status == 200
    finally:
        await worker.stop()


async def test_trace_context_reaches_condition_and_middleware(engine, raw, tmp_path, web):
    worker = await start_worker(engine, tmp_path, True,
                                {"middleware": [{"function_id": "tr::global", "phase": "preHandler"}]})
    handler = await raw_http_function(raw, "tr::main", "/guarded",
                                      condition_function_id="tr::cond",
                                      middleware_function_ids=["tr::mw"])
    for fid in ("tr::global", "tr::cond", "tr::mw"):
        await handler.send({"type": "registerfunction", "id": fid})
    await handler.sync()
    try:
        await routes_ready(worker, 1)
        request = asyncio.ensure_future(web.get(base(worker) + "/guarded", headers={
            "traceparent": TRACEPARENT, "baggage": BAGGAGE}))
        seen = []
        for result in ({"action": "continue"}, True, {"action": "continue"}, {"body": "done"}):
            frame = await handler.serve_one(result)
            seen.append((frame["function_id"], frame.get("traceparent"), frame.get("baggage")))
        resp = await asyncio.wait_for(request, 5)
        assert resp.status == 200 and await resp.json() == "done"
        assert seen == [(fid, TRACEPARENT, BAGGAGE)
                        for fid in ("tr::global", "tr::cond", "tr::mw", "tr::main")]
    finally:
        await worker.stop()


@pytest.mark.parametrize("lang", ["s25", "n22"])
async def test_official_sdk_handler_runs_in_the_request_trace(engine, tmp_path, web, peers, lang):
    """An official SDK with OpenTelemetry on gets the request's trace context: the traceparent
    it returns with its result carries the request's trace id."""
    from tests.conftest_peers import fn, make_spec

    worker = await start_worker(engine, tmp_path, True)
    results: list[dict[str, Any]] = []
    router = engine.engine.router
    original = router.result

    def watch(conn: Any, frame: dict[str, Any]) -> None:  # observe the callee's answers
        results.append(frame)
        original(conn, frame)

    router.result = watch  # type: ignore[method-assign]
    try:
        spec = make_spec(f"http-trace-{lang}", [fn(f"{lang}::traced", "http_reply")], otel=True,
                         triggers=[{"type": "http", "function_id": f"{lang}::traced",
                                    "config": {"api_path": f"/{lang}/traced", "http_method": "GET"}}])
        await peers.astart(lang, engine.url, spec)
        await routes_ready(worker, 1)
        async with web.get(f"{base(worker)}/{lang}/traced",
                           headers={"traceparent": TRACEPARENT, "baggage": BAGGAGE}) as resp:
            assert resp.status == 200
            assert (await resp.json())["path"] == f"/{lang}/traced"
        answered = [f for f in results if f.get("function_id") == f"{lang}::traced"]
        assert len(answered) == 1
        version, trace_id, span_id, _flags = answered[0]["traceparent"].split("-")
        assert (version, trace_id) == ("00", TRACEPARENT.split("-")[1])
        # S25 answers with its handler span's context; N22 with the context it was given
        assert (span_id != TRACEPARENT.split("-")[2]) is (lang == "s25")
    finally:
        router.result = original  # type: ignore[method-assign]
        await worker.stop()
