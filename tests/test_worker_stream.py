"""iii-stream functions, update ops, `stream` triggers and configuration (spec/workers.md §7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, register_worker
from pyiii.workers import stream
from pyiii.workers.base import WorkerContext

MEM = {"port": 0, "adapter": "memory"}


async def _start(engine, tmp_path: Path, config: dict | None = None, ephemeral: bool = False):
    ctx = WorkerContext("iii-stream", {"port": 0} if config is None else config, tmp_path,
                        ephemeral, url=engine.url, connector=local_connector(engine.engine))
    return await stream.start(ctx)


@pytest.fixture
async def client(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="tester"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


@pytest.fixture
async def worker(engine, tmp_path):
    running = await _start(engine, tmp_path, MEM)
    yield running
    await running.stop()


async def call(iii, function_id, payload):
    return await iii.trigger_async({"function_id": function_id, "payload": payload})


def item(i="i1", g="g", s="todo", **extra):
    return {"stream_name": s, "group_id": g, "item_id": i, **extra}


async def wait_for(predicate, timeout=2.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_set_get_delete_list(worker, client):
    assert await call(client, "stream::set", item(data={"t": "x"})) == \
        {"old_value": None, "new_value": {"t": "x"}}
    assert await call(client, "stream::set", item("i2", data=2)) == \
        {"old_value": None, "new_value": 2}
    assert await call(client, "stream::set", item(data={"t": "y"})) == \
        {"old_value": {"t": "x"}, "new_value": {"t": "y"}}
    assert await call(client, "stream::get", item()) == {"t": "y"}
    assert await call(client, "stream::get", item("zz")) is None
    assert await call(client, "stream::list", {"stream_name": "todo", "group_id": "g"}) == \
        [{"t": "y"}, 2]
    assert await call(client, "stream::list", {"stream_name": "todo", "group_id": "no"}) == []
    assert await call(client, "stream::delete", item()) == {"old_value": {"t": "y"}}
    assert await call(client, "stream::delete", item()) == {"old_value": None}
    await call(client, "stream::set", item(data=9))
    assert await call(client, "stream::list", {"stream_name": "todo", "group_id": "g"}) == [2, 9]
    assert await call(client, "stream::send", {"stream_name": "todo", "group_id": "g",
                                               "type": "typing", "data": 1}) is None
    assert await call(client, "stream::get", item()) == 9  # send stores nothing


async def test_scenario_32_groups_and_list_all(worker, client):
    # names that a separator-based layout would confuse stay apart
    await call(client, "stream::set", item(g="h", data=1))
    await call(client, "stream::set", item(g="g", data=1))
    await call(client, "stream::set", item(s="a\x00b", g="c", data=1))
    await call(client, "stream::set", item(s="a", g="b\x00c", data=2))
    assert await call(client, "stream::list_groups", {"stream_name": "todo"}) == ["g", "h"]
    assert await call(client, "stream::list_groups", {"stream_name": "none"}) == []
    assert await call(client, "stream::list_all", {}) == {
        "stream": [{"id": "a", "groups": ["b\x00c"]}, {"id": "a\x00b", "groups": ["c"]},
                   {"id": "todo", "groups": ["g", "h"]}], "count": 3}
    assert await call(client, "stream::get", item("i1", s="a", g="b\x00c")) == 2
    await call(client, "stream::delete", item("i1", s="a", g="b\x00c"))
    await call(client, "stream::delete", item("i1", s="a\x00b", g="c"))
    assert await call(client, "stream::list_all", {}) == \
        {"stream": [{"id": "todo", "groups": ["g", "h"]}], "count": 1}


async def test_update_ops(worker, client):
    """Scenario 3 on streams (§1.6)."""
    assert await call(client, "stream::update", item(ops=[
        {"type": "increment", "path": "count", "by": 2}])) == \
        {"old_value": None, "new_value": {"count": 2}}
    for letter in ("a", "b"):
        await call(client, "stream::update", item(ops=[
            {"type": "append", "path": "log", "value": letter}]))
    assert await call(client, "stream::get", item()) == {"count": 2, "log": "ab"}
    result = await call(client, "stream::update", item(ops=[
        {"type": "increment", "path": "log", "by": 1}, {"type": "set", "path": "x", "value": 1}]))
    assert result["old_value"] == {"count": 2, "log": "ab"}
    assert result["new_value"] == {"count": 2, "log": "ab", "x": 1}
    assert [(e["op_index"], e["code"]) for e in result["errors"]] == \
        [(0, "increment.not_number")]
    polluted = await call(client, "stream::update", item(ops=[
        {"type": "merge", "value": {"__proto__": 1}}]))
    assert polluted["new_value"] == polluted["old_value"] == {"count": 2, "log": "ab", "x": 1}
    assert polluted["errors"][0]["code"] == "merge.value.proto_polluted"
    assert await call(client, "stream::update", item("new", ops=[
        {"type": "merge", "path": ["a", "b"], "value": {"c": 1}},
        {"type": "decrement", "path": "n", "by": 3}, {"type": "remove", "path": "n"}])) == \
        {"old_value": None, "new_value": {"a": {"b": {"c": 1}}}}
    nothing = await call(client, "stream::update", item("never", ops=[
        {"type": "set", "path": "__proto__", "value": 1}, {"type": "merge", "value": 5}]))
    assert nothing["old_value"] is None and nothing["new_value"] is None
    assert [e["code"] for e in nothing["errors"]] == ["set.path.proto_polluted",
                                                     "merge.value.not_an_object"]
    assert await call(client, "stream::get", item("never")) is None  # nothing was written


@pytest.mark.parametrize("function_id, payload, detail", [
    ("stream::get", {"stream_name": "todo", "item_id": "i"}, "missing or non-string field `group_id`"),
    ("stream::get", [1], "expected an object with `stream_name`, `group_id`, `item_id`"),
    ("stream::set", item(), "missing field `data`"),
    ("stream::set", item(i=5, data=1), "missing or non-string field `item_id`"),
    ("stream::delete", {"group_id": "g"}, "missing or non-string field `stream_name`"),
    ("stream::update", item(ops={"type": "set"}), "`ops` must be an array"),
    ("stream::update", item(ops=[{"type": "increment", "path": "n", "by": "1"}]),
     "ops[0].by must be an integer"),
    ("stream::update", item(ops=[{"type": "explode"}]),
     "ops[0].type must be one of set, merge, increment, decrement, append, remove"),
    ("stream::list", {"stream_name": "todo"}, "missing or non-string field `group_id`"),
    ("stream::list_groups", {}, "missing or non-string field `stream_name`"),
    ("stream::send", {"stream_name": "s", "group_id": "g", "data": 1},
     "missing or non-string field `type`"),
    ("stream::send", {"stream_name": "s", "group_id": "g", "type": "t", "id": 5, "data": 1},
     "field `id` must be a string or null"),
    ("stream::send", {"stream_name": "s", "group_id": "g", "type": "t"}, "missing field `data`"),
])
async def test_bad_input(worker, client, function_id, payload, detail):
    with pytest.raises(InvocationError) as err:
        await call(client, function_id, payload)
    assert err.value.code == "deserialization_error"
    assert err.value.message == f"Failed to deserialize input for {function_id}: {detail}"
    # the worker keeps serving, nothing was stored
    assert await call(client, "stream::list_all", {}) == {"stream": [], "count": 0}
    assert await call(client, "stream::set", item(data=1)) == {"old_value": None, "new_value": 1}


async def test_scenario_32_stream_trigger(worker, client, raw):
    seen: list[tuple] = []
    client.register_function("t::on", lambda data, metadata=None: seen.append((data, metadata)))
    client.register_function("t::only_i2", lambda data: data["id"] == "i2")
    seen_item: list[dict] = []
    client.register_function("t::item", lambda data: seen_item.append(data))
    client.register_trigger({"type": "stream", "function_id": "t::on",
                             "config": {"stream_name": "todo", "group_id": "g"},
                             "metadata": {"m": 1}})
    client.register_trigger({"type": "stream", "function_id": "t::item",
                             "config": {"stream_name": "todo", "item_id": "i2",
                                        "condition_function_id": "t::only_i2"}})
    await asyncio.sleep(0.1)
    await call(client, "stream::set", item(data={"t": "x"}))
    await call(client, "stream::set", item(g="h", data=1))  # other group: not for t::on
    await call(client, "stream::set", item(s="other", data=1))
    await call(client, "stream::delete", item("missing"))  # deleting a missing item: nothing
    await call(client, "stream::update", item(ops=[{"type": "set", "path": "t", "value": "y"}]))
    await call(client, "stream::update", item(ops=[{"type": "append", "path": "t", "value": 1}]))
    await call(client, "stream::send", {"stream_name": "todo", "group_id": "g", "id": "i2",
                                        "type": "typing", "data": 1})
    await call(client, "stream::delete", item())
    await wait_for(lambda: len(seen) == 4 and len(seen_item) == 1)
    await asyncio.sleep(0.1)
    assert len(seen) == 4 and len(seen_item) == 1
    first, metadata = seen[0]
    assert metadata == {"m": 1}
    assert isinstance(first.pop("timestamp"), int)
    assert first == {"type": "stream", "streamName": "todo", "groupId": "g", "id": "i1",
                     "event": {"type": "create", "data": {"t": "x"}}}
    assert [d["event"] for d, _ in seen[1:]] == [
        {"type": "update", "data": {"t": "y"}},
        {"type": "event", "event": {"type": "typing", "data": 1}},
        {"type": "delete", "data": {"t": "y"}}]
    assert seen_item[0]["event"] == {"type": "event", "event": {"type": "typing", "data": 1}}
    assert seen_item[0]["id"] == "i2"
    # a binding without stream_name is refused
    c = await raw("c")
    for n, (bad, expected) in enumerate((({"group_id": "g"}, "config.stream_name is required"),
                                         ({"stream_name": 3}, "config.stream_name is required"),
                                         ({"stream_name": "t", "item_id": 1}, "config.item_id"),
                                         ("todo", "config must be an object"))):
        await c.send({"type": "registertrigger", "id": f"bad-{n}", "trigger_type": "stream",
                      "function_id": "c::f", "config": bad})
        answer = await c.recv_type("triggerregistrationresult")
        assert answer["error"]["code"] == "trigger_registration_failed"
        assert expected in answer["error"]["message"]


async def test_sqlite_default_survives_restart(engine, client, tmp_path):
    worker = await _start(engine, tmp_path)
    for name, value in (("a", 1), ("b", {"x": 2}), ("c", [3])):
        await call(client, "stream::set", item(name, data=value))
    await worker.stop()
    assert (tmp_path / "data" / "stream.db").exists()
    worker = await _start(engine, tmp_path)
    try:
        assert await call(client, "stream::get", item("b")) == {"x": 2}
        assert await call(client, "stream::list", {"stream_name": "todo", "group_id": "g"}) == \
            [1, {"x": 2}, [3]]
        assert await call(client, "stream::list_groups", {"stream_name": "todo"}) == ["g"]
    finally:
        await worker.stop()


async def test_ephemeral_uses_memory(engine, client, tmp_path):
    worker = await _start(engine, tmp_path, {"port": 0}, ephemeral=True)
    try:
        await call(client, "stream::set", item(data=1))
        assert not (tmp_path / "data").exists()
    finally:
        await worker.stop()


async def test_custom_backend(worker, client):
    calls: list[tuple] = []
    events: list[dict] = []

    def backend(op, answer):
        def run(data):
            calls.append((op, data))
            return answer
        return run

    client.register_function("stream::set(ext)", backend("set", {"old_value": None,
                                                                 "new_value": "stored"}))
    client.register_function("stream::get(ext)", backend("get", {"from": "backend"}))
    client.register_function("stream::list_groups(ext)", backend("list_groups", ["x"]))
    client.register_function("t::on", lambda data: events.append(data))
    client.register_trigger({"type": "stream", "function_id": "t::on",
                             "config": {"stream_name": "ext"}})
    await asyncio.sleep(0.1)
    request = item(s="ext", data={"v": 1})
    assert await call(client, "stream::set", request) == {"old_value": None, "new_value": "stored"}
    assert await call(client, "stream::get", item(s="ext")) == {"from": "backend"}
    assert await call(client, "stream::list_groups", {"stream_name": "ext"}) == ["x"]
    assert calls[0] == ("set", request)
    assert [c[0] for c in calls] == ["set", "get", "list_groups"]
    await wait_for(lambda: events)
    assert events[0]["event"] == {"type": "create", "data": "stored"}
    # built-in storage was not touched; other streams are unaffected
    assert await call(client, "stream::list_all", {}) == {"stream": [], "count": 0}
    client.register_function("stream::delete(ext)", lambda data: (_ for _ in ()).throw(
        ValueError("backend down")))
    await asyncio.sleep(0.05)
    with pytest.raises(InvocationError) as err:
        await call(client, "stream::delete", item(s="ext"))
    assert err.value.code == "STREAM_DELETE_ERROR"
    assert "stream::delete(ext) failed" in err.value.message


async def test_config_validation(engine, tmp_path):
    from pyiii.workers.stream.config import parse_settings

    with pytest.raises(ValueError, match="unknown key config.prot .did you mean 'port'"):
        await _start(engine, tmp_path, {"prot": 1})
    for bad, key in (({"port": 70000}, "port"), ({"channel_size": 0}, "channel_size"),
                     ({"channel_size": 2_000_000}, "channel_size"), ({"host": 5}, "host"),
                     ({"auth_function": 1}, "auth_function"), ({"adapter": "bridge"}, "adapter")):
        with pytest.raises(ValueError, match=key if key != "adapter" else "not available"):
            parse_settings(bad, False)
    inner = {"adapter": {"name": "kv", "config": {"store_method": "in_memory", "channel_size": 7}}}
    parsed = parse_settings(inner, False)
    assert (parsed.channel_size, parsed.adapter.name, parsed.port, parsed.host) == \
        (7, "memory", 3112, "127.0.0.1")
    assert inner["adapter"]["config"]["channel_size"] == 7  # the caller's block is untouched
    assert parse_settings({}, False).adapter.name == "sqlite"
    assert parse_settings({}, True).adapter.name == "memory"
