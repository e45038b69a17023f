"""iii-state running in-process on the engine, driven through pyiii.sdk (spec/workers.md §2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, register_worker
from pyiii.workers import state
from pyiii.workers.base import WorkerContext
from pyiii.workers.update_ops import apply_ops


async def _start(engine, tmp_path: Path, config: dict | None = None, ephemeral: bool = False):
    ctx = WorkerContext("iii-state", config or {}, tmp_path, ephemeral,
                        url=engine.url, connector=local_connector(engine.engine))
    return await state.start(ctx)


@pytest.fixture
async def client(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="tester"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


async def call(iii, function_id, payload):
    return await iii.trigger_async({"function_id": function_id, "payload": payload})


async def test_set_get_delete_list(engine, client, tmp_path):
    worker = await _start(engine, tmp_path)
    try:
        assert await call(client, "state::set", {"scope": "u", "key": "a", "value": {"n": 1}}) == \
            {"old_value": None, "new_value": {"n": 1}}
        assert await call(client, "state::set", {"scope": "u", "key": "b", "data": 2}) == \
            {"old_value": None, "new_value": 2}
        assert await call(client, "state::set", {"scope": "u", "key": "a", "value": {"n": 3}}) == \
            {"old_value": {"n": 1}, "new_value": {"n": 3}}
        assert await call(client, "state::get", {"scope": "u", "key": "a"}) == {"n": 3}
        assert await call(client, "state::get", {"scope": "u", "key": "zz"}) is None
        assert await call(client, "state::list", {"scope": "u"}) == [{"n": 3}, 2]
        assert await call(client, "state::list", {"scope": "nope"}) == []
        await call(client, "state::set", {"scope": "v", "key": "x", "value": True})
        assert await call(client, "state::list_groups", {}) == {"groups": ["u", "v"]}
        assert await call(client, "state::delete", {"scope": "u", "key": "a"}) == {"n": 3}
        await call(client, "state::set", {"scope": "u", "key": "a", "value": 9})
        assert await call(client, "state::list", {"scope": "u"}) == [2, 9]
        with pytest.raises(InvocationError) as err:
            await call(client, "state::get", {"scope": "u"})
        assert err.value.code == "deserialization_error"
        assert err.value.message == ("Failed to deserialize input for state::get: "
                                     "missing or non-string field `key`")
    finally:
        await worker.stop()


async def test_sqlite_survives_a_new_worker(engine, client, tmp_path):
    worker = await _start(engine, tmp_path)
    await call(client, "state::set", {"scope": "s", "key": "k", "value": [1, 2]})
    await worker.stop()
    assert (tmp_path / "data" / "state.db").exists()
    worker = await _start(engine, tmp_path)
    try:
        assert await call(client, "state::get", {"scope": "s", "key": "k"}) == [1, 2]
    finally:
        await worker.stop()


async def test_update_ops_and_size_limit(engine, client, tmp_path):
    worker = await _start(engine, tmp_path, {"adapter": "memory", "max_value_bytes": 40})
    try:
        result = await call(client, "state::update", {"scope": "c", "key": "k", "ops": [
            {"type": "increment", "path": "visits", "by": 2},
            {"type": "append", "path": "tags", "value": "a"},
            {"type": "set", "path": "visits", "value": 1},
            {"type": "merge", "path": "", "value": {"x": 1}}]})
        assert result == {"old_value": None, "new_value": {"visits": 1, "tags": "a", "x": 1}}
        failed = await call(client, "state::update", {"scope": "c", "key": "k", "ops": [
            {"type": "append", "path": "tags", "value": 1}]})
        assert failed["new_value"] == failed["old_value"]
        assert failed["errors"][0]["code"] == "append.type_mismatch"
        with pytest.raises(InvocationError) as err:
            await call(client, "state::set", {"scope": "c", "key": "big", "value": "x" * 50})
        assert err.value.code == "VALUE_TOO_LARGE"
        assert err.value.message == ("value of 52 bytes exceeds the configured max_value_bytes "
                                     "limit of 40")
        with pytest.raises(InvocationError) as err:
            await call(client, "state::update", {"scope": "c", "key": "k", "ops": [
                {"type": "increment", "path": "v", "by": "1"}]})
        assert err.value.code == "deserialization_error"
    finally:
        await worker.stop()


async def test_state_trigger_events_and_condition(engine, client, tmp_path):
    worker = await _start(engine, tmp_path, {"adapter": "memory"})
    seen: list[tuple] = []
    got = asyncio.Event()

    async def on_change(data, metadata=None):
        seen.append((data, metadata))
        if len(seen) == 3:
            got.set()

    client.register_function("t::on_change", on_change)
    client.register_function("t::only_b", lambda data: data["key"] == "b")
    client.register_trigger({"type": "state", "function_id": "t::on_change",
                             "config": {"scope": "watched", "condition_function_id": "t::only_b"},
                             "metadata": {"m": 1}})
    await asyncio.sleep(0.1)
    try:
        await call(client, "state::set", {"scope": "watched", "key": "a", "value": 0})
        await call(client, "state::set", {"scope": "other", "key": "b", "value": 0})
        await call(client, "state::set", {"scope": "watched", "key": "b", "value": 1})
        await call(client, "state::update", {"scope": "watched", "key": "b",
                                             "ops": [{"type": "increment", "path": "", "by": 1}]})
        await call(client, "state::delete", {"scope": "watched", "key": "b"})
        await asyncio.wait_for(got.wait(), 5)
        events = [(d["event_type"], d["old_value"], d["new_value"]) for d, _ in seen]
        assert events == [("state:created", None, 1), ("state:updated", 1, 2),
                          ("state:deleted", 2, None)]
        assert all(m == {"m": 1} for _, m in seen)
        assert seen[0][0] == {"type": "state", "event_type": "state:created", "scope": "watched",
                              "key": "b", "old_value": None, "new_value": 1}
    finally:
        await worker.stop()


async def test_invalid_config_is_refused(engine, tmp_path):
    with pytest.raises(ValueError, match="unknown key config.adaptor .did you mean 'adapter'"):
        await _start(engine, tmp_path, {"adaptor": "memory"})
    with pytest.raises(ValueError, match="not available in pyiii"):
        await _start(engine, tmp_path, {"adapter": "rabbitmq"})


def test_update_ops_rules():
    value, errors, applied = apply_ops({"a": 1}, [
        {"type": "remove", "path": "a"}, {"type": "set", "path": "__proto__", "value": 1},
        {"type": "merge", "path": ["x", "y"], "value": {"z": 1}},
        {"type": "decrement", "path": "n", "by": 3}, {"type": "append", "path": "", "value": 1}])
    assert value == {"x": {"y": {"z": 1}}, "n": -3}
    assert [e["code"] for e in errors] == ["set.path.proto_polluted", "append.type_mismatch"]
    assert applied == 3
    big, _, _ = apply_ops({"n": 2**63 - 1}, [{"type": "increment", "path": "n", "by": 1}])
    assert big == {"n": float(2**63)}


@pytest.mark.parametrize("lang", ["s25", "n22"])
async def test_state_trigger_registered_by_an_official_sdk_worker(engine, client, tmp_path,
                                                                  peers, lang):
    from .conftest_peers import fn, make_spec

    worker = await _start(engine, tmp_path, {"adapter": "memory"})
    try:
        peer = await peers.astart(lang, engine.url, make_spec(
            f"state-{lang}", [fn(f"{lang}::on_change", "echo", record_full=True)],
            triggers=[{"type": "state", "function_id": f"{lang}::on_change",
                       "config": {"scope": "watched", "key": "k"}}]))
        await asyncio.sleep(0.2)
        await call(client, "state::set", {"scope": "watched", "key": "other", "value": 0})
        await call(client, "state::set", {"scope": "watched", "key": "k", "value": {"n": 1}})
        event = await peer.event("invoke", function_id=f"{lang}::on_change")
        assert event["data"] == {"type": "state", "event_type": "state:created",
                                 "scope": "watched", "key": "k", "old_value": None,
                                 "new_value": {"n": 1}}
        await peer.no_event("invoke", within=0.3)
    finally:
        await worker.stop()
