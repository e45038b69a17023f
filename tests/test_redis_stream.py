"""iii-stream on the redis adapter: items, live sync and triggers across two engines
(spec/workers.md §7.6, §1.7)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from pyiii.sdk import InvocationError

from .iii_process import free_port
from .test_redis_state import cluster, recorder, redis_adapter, wait_subscribers, wait_until

__all__ = ["cluster"]  # the fixture, imported for this module's tests


async def recv(ws: Any, timeout: float = 3.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(message.pop("timestamp"), int)
    return message


async def no_frame(ws: Any, timeout: float = 0.3) -> None:
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {frame}")


def change(item: str | None, event: dict[str, Any], group: str = "g") -> dict[str, Any]:
    return {"type": "stream", "streamName": "todo", "groupId": group, "id": item, "event": event}


async def test_items_and_groups_through_redis(cluster, redis_server, redis_prefix):
    node = await cluster.node({"iii-stream": {"adapter": redis_adapter(redis_server.url,
                                                                       redis_prefix)}})
    item = {"stream_name": "todo", "group_id": "g:1", "item_id": "i1"}
    assert await node.call("stream::set", {**item, "data": {"t": "a"}}) == \
        {"old_value": None, "new_value": {"t": "a"}}
    assert await node.call("stream::set", {**item, "data": {"t": "b"}}) == \
        {"old_value": {"t": "a"}, "new_value": {"t": "b"}}
    await node.call("stream::set", {"stream_name": "todo", "group_id": "g2", "item_id": "x",
                                    "data": 1})
    await node.call("stream::set", {"stream_name": "a:b", "group_id": "c", "item_id": "x",
                                    "data": 2})
    assert await node.call("stream::get", item) == {"t": "b"}
    assert await node.call("stream::update", {**item, "ops": [
        {"type": "merge", "path": "", "value": {"done": True}}]}) == \
        {"old_value": {"t": "b"}, "new_value": {"t": "b", "done": True}}
    assert await node.call("stream::list", {"stream_name": "todo", "group_id": "g:1"}) == \
        [{"t": "b", "done": True}]
    assert await node.call("stream::list_groups", {"stream_name": "todo"}) == ["g2", "g:1"]
    assert await node.call("stream::list_all", {}) == {
        "stream": [{"id": "a:b", "groups": ["c"]}, {"id": "todo", "groups": ["g2", "g:1"]}],
        "count": 2}
    assert await node.call("stream::delete", item) == {"old_value": {"t": "b", "done": True}}
    assert await node.call("stream::list_groups", {"stream_name": "todo"}) == ["g2"]
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await raw.hgetall(f"{redis_prefix}stream:todo:g2") == {b"x": b"1"}
    finally:
        await raw.aclose()


async def test_socket_on_one_engine_sees_changes_made_on_another(cluster, redis_server,
                                                                 redis_prefix):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-stream": adapter})
    b = await cluster.node({"iii-stream": adapter})
    await wait_subscribers(redis_server.url, f"{redis_prefix}stream::events", 2)
    await a.call("stream::set", {"stream_name": "todo", "group_id": "g", "item_id": "i0",
                                 "data": 0})
    port_b = b.workers["iii-stream"].port
    async with connect(f"ws://127.0.0.1:{port_b}/") as ws:
        await ws.send(json.dumps({"type": "join", "data": {
            "subscriptionId": "s1", "streamName": "todo", "groupId": "g"}}))
        assert await recv(ws) == change(None, {"type": "sync", "data": [0]})
        base = {"stream_name": "todo", "group_id": "g"}
        await a.call("stream::set", {**base, "item_id": "i1", "data": {"n": 1}})
        await a.call("stream::update", {**base, "item_id": "i1", "ops": [
            {"type": "increment", "path": "n", "by": 1}]})
        await a.call("stream::send", {**base, "id": "i1", "type": "ping", "data": {"p": 1}})
        await a.call("stream::delete", {**base, "item_id": "i1"})
        await a.call("stream::set", {"stream_name": "todo", "group_id": "other",
                                     "item_id": "z", "data": 1})
        assert await recv(ws) == change("i1", {"type": "create", "data": {"n": 1}})
        assert await recv(ws) == change("i1", {"type": "update", "data": {"n": 2}})
        assert await recv(ws) == change("i1", {"type": "event", "event": {
            "type": "ping", "data": {"p": 1}}})
        assert await recv(ws) == change("i1", {"type": "delete", "data": {"n": 2}})
        await no_frame(ws)


async def test_join_sync_reads_the_shared_store(cluster, redis_server, redis_prefix):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-stream": adapter})
    b = await cluster.node({"iii-stream": adapter})
    await a.call("stream::set", {"stream_name": "todo", "group_id": "g", "item_id": "i0",
                                 "data": {"v": 0}})
    async with connect(f"ws://127.0.0.1:{b.workers['iii-stream'].port}/") as ws:
        await ws.send(json.dumps({"type": "join", "data": {
            "subscriptionId": "s1", "streamName": "todo", "groupId": "g", "id": "i0"}}))
        assert await recv(ws) == change("i0", {"type": "sync", "data": {"v": 0}})


async def test_stream_binding_fires_once_across_engines(cluster, redis_server, redis_prefix):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-stream": adapter})
    b = await cluster.node({"iii-stream": adapter})
    await wait_subscribers(redis_server.url, f"{redis_prefix}stream::events", 2)
    calls: list[Any] = []
    only_a: list[Any] = []
    for node in (a, b):
        recorder(node.client, "t::replica", calls)
        node.client.register_trigger({"type": "stream", "function_id": "t::replica",
                                      "config": {"stream_name": "todo", "group_id": "g"}})
    recorder(a.client, "t::only_a", only_a)
    a.client.register_trigger({"type": "stream", "function_id": "t::only_a",
                               "config": {"stream_name": "todo", "item_id": "i3"}})
    await asyncio.sleep(0.2)
    for i in range(6):
        await b.call("stream::set", {"stream_name": "todo", "group_id": "g", "item_id": f"i{i}",
                                     "data": i})
    await wait_until(lambda: len(calls) >= 6 and len(only_a) >= 1)
    await asyncio.sleep(0.3)  # room for a duplicate to show up
    assert sorted(c["id"] for c in calls) == [f"i{i}" for i in range(6)]
    assert len(only_a) == 1
    only_a[0].pop("timestamp")
    assert only_a[0] == change("i3", {"type": "create", "data": 3})


async def test_unreachable_redis_fails_calls_with_their_codes(cluster, redis_prefix):
    url = f"redis://127.0.0.1:{free_port()}"
    node = await cluster.node({"iii-stream": {"adapter": redis_adapter(
        url, redis_prefix, connect_timeout_ms=300)}})
    for function_id, payload, code in (
            ("stream::set", {"stream_name": "s", "group_id": "g", "item_id": "i", "data": 1},
             "STREAM_SET_ERROR"),
            ("stream::list", {"stream_name": "s", "group_id": "g"}, "STREAM_GET_GROUP_ERROR"),
            ("stream::list_all", {}, "STREAM_LIST_ALL_ERROR")):
        with pytest.raises(InvocationError) as err:
            await node.call(function_id, payload)
        assert (err.value.code, err.value.message[:19]) == (code, "redis unavailable: ")
