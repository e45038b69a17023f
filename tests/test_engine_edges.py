"""Channels, HTTP-invoked functions, payload sizes and the frame fuzzer (raw clients)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import uuid

import pytest
from aiohttp import web
from websockets.asyncio.client import connect

from pyiii.engine.core import EngineSettings

from .conftest import Raw, start_engine


async def test_26_channel_raw_writer_and_reader(raw, engine):
    a = await raw("chan")
    refs = (await a.call("engine::channels::create", {}))["result"]
    writer, reader = refs["writer"], refs["reader"]
    assert writer["channel_id"] == reader["channel_id"] and writer["direction"] == "write"
    base = f"{engine.url}/ws/channels/{writer['channel_id']}?key={writer['access_key']}"
    w = await connect(base + "&dir=write", max_size=None)
    await w.send(b"x" * 200_000)
    await w.send('{"type":"set_status","status_code":201}')
    await w.close()
    r = await connect(base + "&dir=read", max_size=None)
    sizes = []
    texts = []
    async for message in r:
        if isinstance(message, bytes):
            sizes.append(len(message))
        else:
            texts.append(message)
    assert sizes == [65_536, 65_536, 65_536, 3_392]
    assert texts == ['{"type":"set_status","status_code":201}']
    assert r.close_code == 1000


async def test_26_channel_upgrade_refusals(raw, engine):
    import aiohttp

    a = await raw("chan")
    ref = (await a.call("engine::channels::create", {"buffer_size": 4}))["result"]["reader"]
    base = engine.url.replace("ws://", "http://") + f"/ws/channels/{ref['channel_id']}"
    first = await connect(engine.url + f"/ws/channels/{ref['channel_id']}?key="
                          f"{ref['access_key']}&dir=read")
    async with aiohttp.ClientSession() as http:
        for query, status in ((f"?key={ref['access_key']}&dir=read", 409),
                              ("?key=wrong&dir=read", 404),
                              (f"?key={ref['access_key']}&dir=sideways", 400)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(base + query)
            assert err.value.status == status
    await first.close()


async def test_26_channel_back_pressure(raw, engine):
    """A full buffer stops the engine reading the writer; nothing is lost once a reader comes."""
    a = await raw("chan")
    ref = (await a.call("engine::channels::create", {"buffer_size": 2}))["result"]["writer"]
    base = f"{engine.url}/ws/channels/{ref['channel_id']}?key={ref['access_key']}"
    w = await connect(base + "&dir=write", max_size=None, max_queue=1, write_limit=1024)
    chunks = [bytes([i]) * 60_000 for i in range(250)]  # 15 MB: more than socket buffers hold

    async def write_all() -> None:
        for chunk in chunks:
            await w.send(chunk)
        await w.close()

    writing = asyncio.ensure_future(write_all())
    await asyncio.sleep(0.3)
    assert not writing.done(), "the writer should be held back by the full channel"
    r = await connect(base + "&dir=read", max_size=None)
    received = b"".join([m async for m in r])
    await writing
    assert received == b"".join(chunks)


class _Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.body: bytes = b'{"ok":true}'

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status, body=self.body,
                            content_type="application/json")


@pytest.fixture
async def http_target():
    receiver = _Receiver()
    app = web.Application()
    app.router.add_route("*", "/run", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield receiver, f"http://127.0.0.1:{port}/run"
    await runner.cleanup()


async def test_33_http_invoked_function(http_target, monkeypatch):
    receiver, url = http_target
    monkeypatch.setenv("LAMBDA_SECRET", "s3cret")
    running = await start_engine(EngineSettings(
        namespace_grace_ms=300,
        http_security={"require_https": False, "block_private_ips": False}))
    try:
        a = await Raw.open(running.url)
        await a.register("owner")
        await a.send({"type": "registerfunction", "id": "ext::fn", "invocation": {
            "url": url, "auth": {"type": "hmac", "secret_key": "LAMBDA_SECRET"}}})
        await a.sync()
        b = await Raw.open(running.url)
        await b.register("b")
        answer = await b.call("ext::fn", {"x": 1})
        assert answer["result"] == {"ok": True}
        headers, body = receiver.requests[0]
        assert body == b'{"x":1}'
        assert headers["x-iii-Function-Path"] == "ext::fn"
        stamp = headers["x-iii-Timestamp"]
        expected = hmac.new(b"s3cret", f"{stamp}:{base64.b64encode(body).decode()}".encode(),
                            hashlib.sha256).hexdigest()
        assert headers["x-iii-Signature"] == f"sha256={expected}"
        receiver.status, receiver.body = 500, b'{"error":{"code":"E1","message":"m"}}'
        failed = await b.call("ext::fn", {"x": 2})
        assert failed["error"] == {"code": "E1", "message": "m"}
        await a.send({"type": "registerfunction", "id": "ext::bad", "invocation": {
            "url": url, "auth": {"type": "hmac", "secret_key": "NOT_SET_ANYWHERE"}}})
        rejected = await a.recv()
        assert rejected["code"] == "FUNCTION_NAMESPACE_CONFLICT"
        assert rejected["owner_worker_id"] == "" and "NOT_SET_ANYWHERE" in rejected["message"]
        assert (await b.call("ext::bad", {}))["error"]["code"] == "function_not_found"
        await a.close()
        await b.close()
    finally:
        await running.listener.close()
        await running.engine.stop()


async def test_http_function_requires_https_by_default(raw):
    a = await raw("owner")
    await a.send({"type": "registerfunction", "id": "ext::plain",
                  "invocation": {"url": "http://127.0.0.1:9/run"}})
    rejected = await a.recv()
    assert rejected["code"] == "FUNCTION_NAMESPACE_CONFLICT"
    assert "require_https" in rejected["message"]


async def test_five_mib_round_trip_and_hundred_concurrent_calls(raw):
    a = await raw("echo")
    await a.send({"type": "registerfunction", "id": "util::echo"})
    await a.sync()

    async def echo_server() -> None:
        while True:
            call = await a.recv_type("invokefunction", timeout=10)
            await a.send({"type": "invocationresult", "invocation_id": call["invocation_id"],
                          "result": call["data"]})

    server = asyncio.ensure_future(echo_server())
    try:
        b = await raw("caller")
        blob = os.urandom(5 * 1024 * 1024 // 4 * 3)
        text = base64.b64encode(blob).decode()
        answer = await b.call("util::echo", {"blob": text}, timeout=20)
        assert answer["result"]["blob"] == text
        ids = [str(uuid.uuid4()) for _ in range(100)]
        for n, iid in enumerate(ids):
            await b.send({"type": "invokefunction", "invocation_id": iid,
                          "function_id": "util::echo", "data": {"n": n}})
        got = {}
        while len(got) < 100:
            frame = await b.recv_type("invocationresult")
            got[frame["invocation_id"]] = frame["result"]["n"]
        assert got == {iid: n for n, iid in enumerate(ids)}
    finally:
        server.cancel()


def _junk(rng: random.Random) -> str | bytes:
    kinds = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
        lambda: json.dumps(rng.choice([1, "s", None, True, [1, 2], 3.5])),
        lambda: json.dumps({"type": rng.choice([1, None, [], {}, True])}),
        lambda: json.dumps({"type": rng.choice(["invokefunction", "registerfunction",
                                                "registertrigger", "invocationresult",
                                                "registertriggertype", "reattach",
                                                "unregistertrigger", "triggerregistrationresult",
                                                "unregisterfunction", "registerservice"])}),
        lambda: json.dumps({"type": "invokefunction", "invocation_id": rng.choice(
            [str(uuid.uuid4()), 5, "", None]), "function_id": rng.choice(
            [None, 7, "", "x" * 10_000, "nope::x"]), "action": rng.choice(
            [None, 3, {"type": "teleport"}, {"type": "enqueue"}]),
            "namespace": rng.choice([None, " ", 4, "ns"])}),
        lambda: json.dumps({"type": "registerfunction", "id": rng.choice(
            [None, 1, "", "engine::functions::list", "fz::" + "y" * 5000]),
            "invocation": rng.choice([None, 1, {"url": 5}, {"url": "ftp://x"}])}),
        lambda: json.dumps({"type": "registertrigger", "id": rng.choice([None, "t", 5]),
                            "trigger_type": rng.choice([None, "x", {}]),
                            "function_id": rng.choice([None, "f", []]),
                            "namespace": rng.choice([None, "", "  "])}),
        lambda: "[" * rng.randint(1000, 3000) + "]" * rng.randint(0, 3000),
        lambda: json.dumps({"type": "".join(rng.choice("abcxyz") for _ in range(8)),
                            "k": "z" * rng.randint(0, 100_000)}),
        lambda: json.dumps({"type": "invocationresult", "invocation_id": str(uuid.uuid4()),
                            "error": rng.choice([5, "bad", {"code": 1}, []])}),
        lambda: json.dumps({"type": "reattach", "previous_worker_id": rng.choice(
            [5, str(uuid.uuid4())]), "reattach_token": rng.choice([None, 5, "t"])}),
        lambda: "{\"type\":\"invokefunction\",\"data\":" + "{\"a\":" * 2000 + "1" + "}" * 2000,
    ]
    return rng.choice(kinds)()


async def test_fuzz_malformed_frames_do_not_disturb_a_good_worker(raw, engine):
    rng = random.Random(20261128)
    good = await raw("good")
    await good.send({"type": "registerfunction", "id": "math::add"})
    await good.sync()

    async def serve_forever() -> None:
        while True:
            call = await good.recv_type("invokefunction", timeout=30)
            data = call["data"]
            await good.send({"type": "invocationresult", "invocation_id": call["invocation_id"],
                             "result": {"c": data["a"] + data["b"]}})

    server = asyncio.ensure_future(serve_forever())
    caller = await raw("caller")
    sent = 0

    async def fuzz(conn_no: int) -> None:
        nonlocal sent
        client = await Raw.open(engine.url)
        if conn_no % 2:
            await client.register(f"fuzzer-{conn_no}")
        for _ in range(2_000):
            frame = _junk(rng)
            await client.ws.send(frame)
            sent += 1
        await client.sync()
        await client.close()

    async def keep_calling() -> int:
        done = 0
        while not fuzzers.done():
            answer = await caller.call("math::add", {"a": done, "b": 1}, timeout=10)
            assert answer["result"] == {"c": done + 1}
            done += 1
        return done

    try:
        fuzzers = asyncio.ensure_future(asyncio.gather(*(fuzz(i) for i in range(6))))
        calls = await keep_calling()
        await fuzzers
    finally:
        server.cancel()
    assert sent >= 10_000
    assert calls > 10
    # the engine still accepts connections, and the good worker is still registered
    fresh = await Raw.open(engine.url)
    names = [w["name"] for w in (await fresh.call("engine::workers::list", {}))["result"]["workers"]]
    assert "good" in names and "caller" in names
    await fresh.close()


async def test_fast_path_answers_pings_and_hands_fragments_back(raw):
    """Once open, frames are parsed by pyiii.wswire; pings, fragmented messages and messages
    after a hand-back to the library must behave exactly as before."""
    a = await raw("frames")
    await a.sync()  # the connection now runs on the fast path
    pong = await a.ws.ping(b"hey")
    await asyncio.wait_for(pong, 2)
    fragments = ['{"type":"invokefunction","invocation_id":"f1",', '"function_id":"nope::x"}']
    await a.ws.send(iter(fragments))
    answer = await a.recv_type("invocationresult")
    assert answer["invocation_id"] == "f1" and answer["error"]["code"] == "function_not_found"
    pong = await a.ws.ping(b"again")
    await asyncio.wait_for(pong, 2)
    assert (await a.call("engine::baggage::get", {"key": "k"}, baggage="k=v"))["result"] == \
        {"value": "v"}
