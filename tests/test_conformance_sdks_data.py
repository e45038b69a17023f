"""spec/protocol.md §12 with SDK workers: channels (26), telemetry (31), observe fallback (32).

Clients: ``s25`` / ``n22`` (official SDK subprocesses), ``pyiii`` (``pyiii.sdk`` in the test
process). Scenario 26 runs every sender × reader pair; 31 and 32 are S25 features (pyiii.sdk
sends no telemetry and has no observe; N22 0.22 has no observe).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pyiii.engine.listener import WsConnection
from tests.conftest_peers import fn, make_spec

from .conftest import NO_FRAME_S
from .sdk_workers import LANGS, sdk  # noqa: F401  (fixture)

STATUS = '{"type":"set_status","status_code":201}'


@pytest.mark.parametrize("reader", LANGS)
@pytest.mark.parametrize("sender", LANGS)
async def test_26_channel_between_workers(sdk, sender, reader):
    """A creates a channel, passes the reader ref to B's function, sends a text message, writes
    70 000 bytes and closes: B sees 65 536 + 4 464 bytes and the text; A gets B's result."""
    a = await sdk.start(sender, make_spec(f"chan-a-{sender}", [fn("a::send", "send_channel")]))
    await sdk.start(reader, make_spec(f"chan-b-{reader}", [fn("b::read", "read_channel")]))
    res = await a.acall("a::send", {"function_id": "b::read", "n": 70_000, "messages": [STATUS]},
                        timeout_ms=15000)
    if reader == "n22":
        # N22's reader is a Node byte stream: `for await` yields whatever is buffered, so two
        # wire messages read late come out as one chunk. Chunk ends must still be wire ends.
        callee = res["result"]["callee"]
        assert (callee["bytes"], callee["messages"]) == (70_000, [STATUS])
        assert set(itertools.accumulate(callee["chunks"])) <= {65_536, 70_000}
        assert sum(callee["chunks"]) == 70_000
        return
    assert res == {"result": {"callee": {"bytes": 70_000, "chunks": [65_536, 4_464],
                                         "messages": [STATUS]}}}


async def test_26_channel_routes_raw(engine, raw):
    """The raw half of §12.26: 409 for a second reader, 404 for a wrong key, and one 200 000-byte
    binary message reaching the reader as 65 536 ×3 + 3 392, then close 1000."""
    b = await raw("chan-raw")
    refs = (await b.call("engine::channels::create", {}))["result"]
    cid, key = refs["reader"]["channel_id"], refs["reader"]["access_key"]
    base = f"{engine.url}/ws/channels/{cid}?key={key}"
    reader = await connect(base + "&dir=read", max_size=None)
    try:
        with pytest.raises(InvalidStatus) as second:
            await connect(base + "&dir=read")
        assert second.value.response.status_code == 409
        with pytest.raises(InvalidStatus) as wrong:
            await connect(f"{engine.url}/ws/channels/{cid}?key={uuid.uuid4()}&dir=read")
        assert wrong.value.response.status_code == 404
        async with connect(base + "&dir=write", max_size=None) as writer:
            await writer.send(b"w" * 200_000)
        sizes = []
        try:
            while True:
                item = await asyncio.wait_for(reader.recv(), 5)
                assert isinstance(item, bytes)
                sizes.append(len(item))
        except ConnectionClosed:
            pass
        assert sizes == [65_536, 65_536, 65_536, 3_392]
        assert reader.close_code == 1000
    finally:
        await reader.close()


def _otel_logs(service: str, text: str, severity: int) -> bytes:
    doc = {"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"logRecords": [{"severityNumber": severity,
                                        "body": {"stringValue": text}}]}]}]}
    return b"LOGS" + json.dumps(doc).encode()


def _worker_lines(caplog: Any, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pyiii.worker" and r.getMessage() == text]


async def _wait_line(caplog: Any, text: str, timeout: float) -> logging.LogRecord:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not _worker_lines(caplog, text):
        assert loop.time() < deadline, f"{text!r} not in the engine log within {timeout}s"
        await asyncio.sleep(0.05)
    return _worker_lines(caplog, text)[0]


# Default OTel service names of the official SDKs (neither uses the worker name).
OTEL_SERVICE = {"s25": "iii-python-sdk", "n22": "iii-node"}


@pytest.mark.parametrize("lang", ["s25", "n22"])
async def test_31_telemetry_socket(engine, raw, sdk, caplog, lang):
    """pyiii.sdk sends no telemetry (TelemetryOptions is accepted and ignored): not applicable."""
    caplog.set_level(logging.INFO)
    otel = await connect(engine.url + "/otel", max_size=None)
    try:
        await otel.send(_otel_logs("raw-otel", "raw-record", 13))
        await otel.send(b"MTRC{}")
        await otel.send("a text frame")
        rec = await _wait_line(caplog, "raw-record", 3)
        assert rec.levelno == logging.WARNING and rec.component == "raw-otel"

        a = await sdk.start(lang, make_spec(f"otel-{lang}", [fn("o::echo", "echo")], otel=True,
                                            log=["hello-otel"]))
        rec = await _wait_line(caplog, "hello-otel", 10)
        assert rec.levelno == logging.INFO
        assert rec.component == OTEL_SERVICE[lang]

        with pytest.raises(asyncio.TimeoutError):  # no data frame is ever sent on /otel
            await asyncio.wait_for(otel.recv(), NO_FRAME_S)
        assert otel.close_code is None
        await asyncio.wait_for(await otel.ping(), 2)  # still open and answering

        b = await raw("otel-list")
        rows = (await b.call("engine::workers::list", {}))["result"]["workers"]
        assert sorted(r["id"] for r in rows) == sorted([a.worker_id, b.worker_id])
        assert len(engine.engine.connections) == 2  # neither /otel socket is a worker
    finally:
        await otel.close()


async def test_32_observe_fallback_s25(engine, sdk, monkeypatch):
    sent: list[tuple[str, str]] = []
    received: list[tuple[str, dict[str, Any]]] = []
    send, handle = WsConnection.send, engine.engine.handle

    def spy_send(conn: Any, frame: dict[str, Any]) -> None:
        sent.append((conn.worker_id, frame["type"]))
        send(conn, frame)

    def spy_handle(conn: Any, frame: dict[str, Any]) -> None:
        received.append((conn.worker_id, frame))
        handle(conn, frame)

    monkeypatch.setattr(WsConnection, "send", spy_send)
    monkeypatch.setattr(engine.engine, "handle", spy_handle)

    a = await sdk.start("s25", make_spec("observer-a", [fn("obs::f", "add", observe=True),
                                                        fn("obs::target", "echo")]))
    observer = (await a.acommand("observe", function_id="obs::f", target="obs::target"))
    assert observer["result"]["state"] == "error"
    assert observer["result"]["reason"]["code"] == "UNSUPPORTED"

    assert await a.acall("obs::f", {"a": 2, "b": 3}) == {"result": {"c": 5}}
    ev = await a.event("invoke", function_id="obs::f")
    assert ev["data"] == {"a": 2, "b": 3}
    assert ev["caller"]["worker_id"] == a.worker_id  # delivered by the engine, not locally
    mine = [f for w, f in received if w == a.worker_id]
    calls = [f for f in mine if f["type"] == "invokefunction" and f["function_id"] == "obs::f"]
    assert len(calls) == 1 and calls[0]["data"] == {"a": 2, "b": 3}
    forbidden_out = {"functionregistered", "observeradded", "observerremoved", "observeresult",
                     "observerstatechanged"}
    assert not [t for _, t in sent if t in forbidden_out]
    observe_in = {"observe", "unobserve", "observerack", "invocationsobserved",
                  "localinvocationstats"}
    assert not [f["type"] for f in mine if f["type"] in observe_in]
