"""iii-pubsub and iii-cron on the redis adapter across two in-process engines
(spec/workers.md §6, §5.3, scenario 26 of §13)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from pyiii.sdk import InvocationError

from .iii_process import free_port
from .test_redis_state import cluster, recorder, redis_adapter, wait_subscribers, wait_until

__all__ = ["cluster"]  # the fixture, imported for this module's tests


async def test_publish_reaches_subscribers_on_every_engine(cluster, redis_server, redis_prefix):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-pubsub": adapter})
    b = await cluster.node({"iii-pubsub": adapter})
    got: dict[str, list[Any]] = {"a1": [], "a2": [], "b1": [], "other": []}
    bindings = {}
    for node, name in ((a, "a1"), (a, "a2"), (b, "b1"), (b, "other")):
        recorder(node.client, f"t::{name}", got[name])
        topic = "other" if name == "other" else "news"
        bindings[name] = node.client.register_trigger({
            "type": "subscribe", "function_id": f"t::{name}", "config": {"topic": topic}})
    channel = f"{redis_prefix}pubsub:news"
    await wait_subscribers(redis_server.url, channel, 2)  # one subscription per engine
    assert await a.call("publish", {"topic": "news", "data": {"n": 1}}) is None
    assert await b.call("publish", {"topic": "news", "data": [2]}) is None
    assert await a.call("publish", {"topic": "nobody", "data": 3}) is None
    await wait_until(lambda: all(len(got[k]) >= 2 for k in ("a1", "a2", "b1")))
    await asyncio.sleep(0.3)  # room for a duplicate to show up
    for name in ("a1", "a2", "b1"):
        assert sorted(got[name], key=str) == [[2], {"n": 1}], name
    assert got["other"] == []

    # the last local binding of a topic leaving drops that engine's subscription only
    bindings["b1"].unregister()
    await wait_subscribers(redis_server.url, channel, 1, exact=True)
    await b.call("publish", {"topic": "news", "data": 4})
    await wait_until(lambda: len(got["a1"]) == 3 and len(got["a2"]) == 3)
    assert got["a1"][-1] == got["a2"][-1] == 4
    assert len(got["b1"]) == 2
    with pytest.raises(InvocationError) as err:
        await a.call("publish", {"topic": ""})
    assert (err.value.code, err.value.message) == ("topic_not_set", "Topic is not set")


async def test_publish_without_redis_fails_then_recovers(cluster, tmp_path, redis_prefix):
    from .redis_server import start_redis

    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    node = await cluster.node({"iii-pubsub": {"adapter": redis_adapter(
        url, redis_prefix, connect_timeout_ms=300)}})
    seen: list[Any] = []
    recorder(node.client, "t::sub", seen)
    node.client.register_trigger({"type": "subscribe", "function_id": "t::sub",
                                  "config": {"topic": "t"}})
    with pytest.raises(InvocationError) as err:
        await node.call("publish", {"topic": "t", "data": 1})
    assert err.value.code == "PUBLISH_ERROR"
    assert err.value.message.startswith("redis unavailable: ")
    server = start_redis(tmp_path / "late-redis", port)
    try:
        await wait_subscribers(url, f"{redis_prefix}pubsub:t", 1)  # resubscribed on its own
        await node.call("publish", {"topic": "t", "data": 2})
        await wait_until(lambda: seen == [2])
    finally:
        server.stop()


def _bind_ticks(pair: list[Any]) -> list[str]:
    """Bind ``*/1`` to ``tick::run`` (100 ms) on both engines, with different binding ids;
    the list fills with the ``scheduled_time`` of every call."""
    calls: list[str] = []
    for node in pair:
        async def run(data: Any, calls: list[str] = calls) -> None:
            calls.append(data["scheduled_time"])
            await asyncio.sleep(0.1)
        node.client.register_function("tick::run", run)
        node.client.register_trigger({"type": "cron", "function_id": "tick::run",
                                      "config": {"expression": "*/1 * * * * *"}})
    return calls


async def test_cron_runs_each_tick_once_across_engines(cluster, redis_server, redis_prefix):
    """Scenario 26: redis locks give 10 ± 1 calls in 10 s over two engines; memory ≈ 20."""
    redis_cron = {"iii-cron": {"adapter": redis_adapter(redis_server.url, redis_prefix)}}
    memory_cron = {"iii-cron": {"adapter": "memory"}}
    shared = [await cluster.node(redis_cron), await cluster.node(redis_cron)]
    apart = [await cluster.node(memory_cron), await cluster.node(memory_cron)]
    shared_calls = _bind_ticks(shared)
    apart_calls = _bind_ticks(apart)
    start = float(math.ceil(time.time() + 0.5))  # the bindings are in place by then
    end = start + 10
    await asyncio.sleep(end + 0.6 - time.time())

    def in_window(calls: list[str]) -> list[str]:
        return [t for t in calls if start <= datetime.fromisoformat(t).timestamp() < end]

    once = in_window(shared_calls)
    assert 9 <= len(once) <= 11, once
    assert len(set(once)) == len(once), Counter(once).most_common(2)
    twice = in_window(apart_calls)
    assert 18 <= len(twice) <= 22, twice
