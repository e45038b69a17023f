"""Resilience with real processes: a real `iii` engine process, workers built with pyiii.sdk
(tests/workers/pyiii_worker.py), the official Python SDK (S25) and the official Node SDK (N22).

- a callee SIGKILLed mid-call: its callers get `invocation_stopped` within 1 s (protocol §2.6, §4.3);
- the engine SIGKILLed and restarted on the same port: every worker reconnects by itself and its
  functions are callable again within 10 s (protocol §1.6, §2.5, §11.3: backoff from 1 s);
- 100 concurrent calls from one pyiii.sdk worker, and a 5 MiB payload round trip.

Measured timings are printed (run with -s to see them) and asserted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Raw
from tests.conftest_peers import fn, make_spec
from tests.iii_process import IIIProcs, free_port, iii_procs, manager_config  # noqa: F401

LANGS = ["pyiii", "s25", "n22"]
STOP_LIMIT_S = 1.0
RECONNECT_LIMIT_S = 10.0


async def start_engine(procs: IIIProcs, port: int | str = 0) -> tuple[Path, str]:
    project = procs.project("proj", manager_config(port))
    engine = procs.engine(project)
    url = await asyncio.to_thread(engine.wait_ready)
    return project, url


async def raw_client(url: str, name: str) -> Raw:
    client = await Raw.open(url)
    await client.register(name)
    await client.sync()
    return client


async def wait_result(client: Raw, invocation_id: str, timeout: float) -> dict:
    while True:
        frame = await client.recv(timeout)
        if frame.get("type") == "invocationresult" and frame.get("invocation_id") == invocation_id:
            return frame


# --------------------------------------------------------------------------- 1. callee killed

@pytest.mark.parametrize("lang", LANGS)
async def test_callee_sigkill_mid_call_stops_invocation(iii_procs, peers, lang):
    _, url = await start_engine(iii_procs)
    callee = await peers.astart(lang, url, make_spec(f"callee-{lang}", [fn("res::slow", "slow")]))
    sdk_caller = await peers.astart("pyiii", url, make_spec("sdk-caller"))
    raw = await raw_client(url, "raw-caller")
    try:
        iid = str(uuid.uuid4())
        await raw.send({"type": "invokefunction", "invocation_id": iid, "function_id": "res::slow",
                        "data": {"ms": 20000}})
        sdk_call = asyncio.create_task(sdk_caller.acall("res::slow", {"ms": 20000}, timeout_ms=30000))
        # both calls delivered to the callee (it is now sleeping on them)
        await callee.event("invoke", function_id="res::slow", timeout=10)
        await callee.event("invoke", function_id="res::slow", timeout=10)

        t_kill = time.monotonic()
        os.killpg(callee.pid, signal.SIGKILL)
        frame = await wait_result(raw, iid, timeout=5)
        raw_s = time.monotonic() - t_kill
        sdk_res = await asyncio.wait_for(sdk_call, 10)
        sdk_s = time.monotonic() - t_kill
        await asyncio.to_thread(callee.proc.wait, 5)

        print(f"\n[{lang}] kill -> invocation_stopped: raw caller {raw_s * 1000:.0f} ms, "
              f"pyiii.sdk caller {sdk_s * 1000:.0f} ms")
        assert frame["error"]["code"] == "invocation_stopped", frame
        assert "result" not in frame
        assert sdk_res.get("error", {}).get("code") == "invocation_stopped", sdk_res
        assert raw_s < STOP_LIMIT_S, f"raw caller waited {raw_s:.3f}s"
        assert sdk_s < STOP_LIMIT_S, f"pyiii.sdk caller waited {sdk_s:.3f}s"

        # the function left with its owner: a new call fails at once with function_not_found
        again = await raw.call("res::slow", {"ms": 1})
        assert again["error"]["code"] == "function_not_found", again
    finally:
        await raw.close()


# --------------------------------------------------------------------------- 2. engine restart

async def test_engine_sigkill_and_restart_workers_reconnect(iii_procs, peers):
    port = free_port()
    project, url = await start_engine(iii_procs, port)
    assert url == f"ws://127.0.0.1:{port}"
    workers = {}
    for lang in LANGS:
        workers[lang] = await peers.astart(
            lang, url, make_spec(f"rs-{lang}", [fn(f"rs::echo-{lang}", "echo")]))
    raw = await raw_client(url, "probe-1")
    for lang in LANGS:
        got = await raw.call(f"rs::echo-{lang}", {"from": lang})
        assert got.get("result") == {"from": lang}, got

    engine = iii_procs.started[0]
    t_kill = time.monotonic()
    await asyncio.to_thread(engine.kill)
    assert await raw.closed(5) is not None
    restarted = iii_procs.engine(project)
    url2 = await asyncio.to_thread(restarted.wait_ready)
    t_ready = time.monotonic()
    assert url2 == url

    raw2 = await raw_client(url, "probe-2")
    back: dict[str, float] = {}
    try:
        while len(back) < len(LANGS) and time.monotonic() - t_ready < RECONNECT_LIMIT_S + 1:
            for lang in LANGS:
                if lang in back:
                    continue
                got = await raw2.call(f"rs::echo-{lang}", {"again": lang}, timeout=5)
                if got.get("result") == {"again": lang}:
                    back[lang] = time.monotonic()
                else:
                    assert got["error"]["code"] == "function_not_found", got
            await asyncio.sleep(0.05)
    finally:
        await raw2.close()
    summary = ", ".join(f"{lang} {back[lang] - t_ready:.2f}s after ready "
                        f"({back[lang] - t_kill:.2f}s after kill)" for lang in back)
    print(f"\nengine restart (ready {t_ready - t_kill:.2f}s after kill) -> callable again: {summary}")
    missing = [lang for lang in LANGS if lang not in back]
    assert not missing, f"not callable {RECONNECT_LIMIT_S}s after restart: {missing}; got {summary}"
    for lang in LANGS:
        assert back[lang] - t_ready <= RECONNECT_LIMIT_S, summary
        assert workers[lang].alive
    # the reconnected workers can also call out through the new engine
    res = await workers["pyiii"].acall("rs::echo-n22", {"k": 1}, timeout_ms=5000)
    assert res == {"result": {"k": 1}}
    res = await workers["s25"].acall("rs::echo-pyiii", {"k": 2}, timeout_ms=5000)
    assert res == {"result": {"k": 2}}


# --------------------------------------------------------------------------- 3. load and size

async def test_hundred_concurrent_calls_from_one_pyiii_worker(iii_procs, peers):
    _, url = await start_engine(iii_procs)
    await peers.astart("pyiii", url, make_spec("callee", [fn("load::echo", "echo"),
                                                          fn("load::slow", "slow")]))
    caller = await peers.astart("pyiii", url, make_spec("caller"))
    payloads = [{"i": i, "s": "v" * i, "nested": {"list": [i, str(i), None, i / 2]}}
                for i in range(100)]

    for op in ("gather", "threads"):  # trigger_async + asyncio.gather, then 100 threads
        t0 = time.monotonic()
        res = await caller.acommand(op, function_id="load::echo", payloads=payloads, timeout=60)
        took = time.monotonic() - t0
        print(f"\n100 concurrent echo calls ({op}): {took * 1000:.0f} ms")
        assert "error" not in res, res
        assert res["result"] == [{"ok": p} for p in payloads]

    # really concurrent: 100 calls of 500 ms each finish together, not one after another
    t0 = time.monotonic()
    res = await caller.acommand("gather", function_id="load::slow",
                                payloads=[{"ms": 500, "i": i} for i in range(100)], timeout=60)
    took = time.monotonic() - t0
    print(f"100 concurrent 500 ms calls: {took:.2f} s")
    assert res["result"] == [{"ok": {"slept": 500}}] * 100
    assert took < 5.0


async def test_five_mib_payload_round_trip(iii_procs, peers):
    _, url = await start_engine(iii_procs)
    callee = await peers.astart("pyiii", url, make_spec("big-callee", [fn("big::echo", "echo"),
                                                                       fn("big::size", "size")]))
    caller = await peers.astart("pyiii", url, make_spec("big-caller"))
    blob = base64.b64encode(os.urandom(5 * 1024 * 1024 * 3 // 4)).decode()  # 5 MiB of text
    assert len(blob) == 5 * 1024 * 1024
    payload = {"blob": blob, "tail": ["é", "😀", {"k": None}]}

    t0 = time.monotonic()
    res = await caller.acall("big::echo", payload, timeout_ms=30000)
    took = time.monotonic() - t0
    print(f"\n5 MiB echo round trip: {took * 1000:.0f} ms")
    assert "error" not in res, res.get("error")
    assert res["result"] == payload
    ev = await callee.event("invoke", function_id="big::echo")
    assert ev["data"]["_json_len"] > 5 * 1024 * 1024

    res = await caller.acall("big::size", {"s": blob}, timeout_ms=30000)
    assert res == {"result": {"len": 5 * 1024 * 1024}}
