"""spec/protocol.md §12 with SDK workers: calls.

Clients: ``s25`` (official Python iii-sdk 0.25, subprocess), ``n22`` (official Node iii-sdk 0.22,
subprocess), ``pyiii`` (``pyiii.sdk`` in the test process). Scenario 8 runs as a full owner ×
caller matrix, which also covers "calls cross languages both ways" with exact values; then the
function-ownership rule (§4.6) and scenario 29 (20 MiB through the engine).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest_peers import fn, make_spec

from .sdk_workers import LANGS, LocalPeer, sdk  # noqa: F401  (fixture)

# What each SDK puts in the stacktrace of a handler that raised "boom".
BOOM_TRACE = {"s25": "ValueError", "n22": "Error: boom", "pyiii": "ValueError"}
RICH = {"s": "h\u00e9llo \u2603 \U0001f600", "n": [1, 2.5, None, True, False, -7],
        "o": {"k": "v", "nested": {"empty": {}, "list": []}}, "big": 2 ** 53}


async def test_these_tests_run_the_engine_on_uvloop():
    """As `iii` does (tests/conftest.py picks the loop per module)."""
    from pyiii.runtime import running_loop_name

    assert running_loop_name() == "uvloop"


@pytest.mark.parametrize("caller", LANGS)
@pytest.mark.parametrize("owner", LANGS)
async def test_08_sdk_end_to_end(sdk, owner, caller):
    """§12.8 (and cross-language calls): owner A hosts math::add / math::boom / x::echo; B calls."""
    a = await sdk.start(owner, make_spec(f"a-{owner}", [fn("math::add", "add"),
                                                         fn("math::boom", "boom"),
                                                         fn("x::echo", "echo")]))
    b = await sdk.start(caller, make_spec(f"b-{caller}"))
    assert a.ready["barrier"] == "ok" and b.ready["barrier"] == "ok"

    assert await b.acall("math::add", {"a": 2, "b": 3}) == {"result": {"c": 5}}
    seen = await a.event("invoke", function_id="math::add")
    assert seen["data"] == {"a": 2, "b": 3}

    err = (await b.acall("math::boom", {}))["error"]
    assert err["code"] == "invocation_failed"
    assert err["message"] == "boom"
    assert BOOM_TRACE[owner] in err["stacktrace"]

    assert await b.acall("x::echo", RICH) == {"result": RICH}
    seen = await a.event("invoke", function_id="x::echo")
    assert seen["data"] == RICH


async def _rejection(peer: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The registrationrejected frame a worker received (frame tap / pyiii.sdk record)."""
    if isinstance(peer, LocalPeer):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not peer.client.rejections:
            assert loop.time() < deadline, "pyiii.sdk worker received no registrationrejected"
            await asyncio.sleep(0.01)
        return peer.client.rejections[0]
    ev = await peer.event("frame", timeout,
                          predicate=lambda e: e["frame"].get("type") == "registrationrejected")
    return ev["frame"]


@pytest.mark.parametrize("first,second", [("s25", "n22"), ("n22", "s25"), ("pyiii", "s25"),
                                          ("s25", "pyiii"), ("n22", "pyiii"), ("pyiii", "n22")])
async def test_function_registered_twice_keeps_first_live_owner(sdk, first, second):
    """§4.6 / §12.14 with SDK workers: the second registration of dup::fn is refused
    (FUNCTION_NAMESPACE_CONFLICT, non-fatal), calls reach the first owner, and the refusal is
    final: when the first owner leaves, dup::fn is gone."""
    a = await sdk.start(first, make_spec(f"first-{first}", [fn("dup::fn", "echo")]))
    b = await sdk.start(second, make_spec(f"second-{second}", [fn("dup::fn", "none"),
                                                              fn("b::ok", "echo")]))
    frame = await _rejection(b)
    assert {k: v for k, v in frame.items() if k != "message"} == {
        "type": "registrationrejected", "code": "FUNCTION_NAMESPACE_CONFLICT",
        "namespace": "default", "function_id": "dup::fn", "owner_worker_id": a.worker_id}
    assert isinstance(frame["message"], str) and frame["message"]

    # non-fatal: the second worker stays connected, its other function works
    assert await b.acall("b::ok", {"v": 1}) == {"result": {"v": 1}}
    # every call (from either worker) reaches the first owner
    assert await b.acall("dup::fn", {"x": 1}) == {"result": {"x": 1}}
    assert await a.acall("dup::fn", {"x": 2}) == {"result": {"x": 2}}
    assert (await a.event("invoke", function_id="dup::fn"))["data"] == {"x": 1}
    await b.no_event("invoke", within=0.3, function_id="dup::fn")

    await a.aclose()
    await asyncio.sleep(0.1)
    gone = await b.acall("dup::fn", {"x": 3})
    assert gone["error"]["code"] == "function_not_found"
    assert gone["error"]["message"] == "Function dup::fn not found in namespace default."


TWENTY_MIB = 20 * 1024 * 1024


@pytest.mark.parametrize("caller,callee", [("s25", "s25"), ("n22", "s25"), ("pyiii", "s25"),
                                           ("s25", "n22"), ("s25", "pyiii")])
async def test_29_twenty_mib_round_trip(sdk, caller, callee):
    """§12.29: B calls A with a 20 MiB string, A echoes it, B gets it back unchanged."""
    a = await sdk.start(callee, make_spec(f"big-a-{callee}", [fn("big::echo", "echo")]))
    b = await sdk.start(caller, make_spec(f"big-b-{caller}"))
    text = ("0123456789abcdef\u00e9" * (TWENTY_MIB // 17 + 1))[:TWENTY_MIB]
    res = await b.acall("big::echo", text, timeout_ms=60000)
    assert "error" not in res, res.get("error")
    assert len(res["result"]) == TWENTY_MIB and res["result"] == text
    ev = await a.event("invoke", function_id="big::echo")
    assert ev["data"]["_json_len"] >= TWENTY_MIB  # the handler got the whole string
