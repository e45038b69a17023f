"""Smoke tests of the official-SDK peer harness (tests/conftest_peers.py) against the engine."""

from __future__ import annotations

import pytest

from tests.conftest_peers import arun_call, fn, make_spec

LANGS = ["s25", "n22"]


@pytest.mark.parametrize("lang", LANGS)
async def test_peer_starts_and_serves(engine, peers, lang):
    spec = make_spec(f"harness-{lang}", [fn("h::echo", "echo"), fn("h::add", "add"),
                                         fn("h::boom", "boom"), fn("h::none", "none")])
    peer = await peers.astart(lang, engine.url, spec)
    assert peer.worker_id and len(peer.worker_id) == 36
    assert peer.ready["barrier"] == "ok"

    assert await arun_call("s25", engine.url, "h::add", {"a": 2, "b": 3}) == {"result": {"c": 5}}
    assert await arun_call("n22", engine.url, "h::echo", {"x": [1, "y"]}) == {"result": {"x": [1, "y"]}}
    assert await arun_call("s25", engine.url, "h::none", {}) == {"result": None}
    ev = await peer.event("invoke", function_id="h::none")
    assert ev["data"] == {}

    err = (await arun_call("s25", engine.url, "h::boom", {}))["error"]
    assert err["code"] == "invocation_failed" and err["message"] == "boom"
    assert ("ValueError" if lang == "s25" else "Error: boom") in err["stacktrace"]


async def test_cross_language_call_and_commands(engine, peers):
    py = await peers.astart("s25", engine.url, make_spec("harness-py", [fn("py::call", "call"),
                                                                        fn("py::size", "size")]))
    js = await peers.astart("n22", engine.url, make_spec("harness-js", [fn("js::call", "call"),
                                                                        fn("js::big", "big")]))
    # python -> node -> python
    res = await py.acall("js::call", {"function_id": "py::size", "payload": {"s": "abcd"}})
    assert res == {"result": {"len": 4}}
    res = await js.acall("py::call", {"function_id": "js::big", "payload": {"n": 5}})
    assert res == {"result": "xxxxx"}
    missing = await py.acall("nope::x", {})
    assert missing["error"]["code"] == "function_not_found"
