"""iii-cron in-process on the engine, driven through pyiii.sdk and official SDKs (spec/workers.md §5)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, register_worker
from pyiii.workers import cron
from pyiii.workers.base import WorkerContext
from pyiii.workers.cron.expression import CronError, parse
from pyiii.workers.cron.locks import MemoryLocks, SqliteLocks

from .conftest import start_engine
from .conftest_peers import fn, make_spec

SCHEDULED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
ACTUAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
MEMORY = {"adapter": "memory"}


async def _start(under_test, tmp_path: Path, config: dict | None = None, ephemeral: bool = False):
    ctx = WorkerContext("iii-cron", MEMORY if config is None else config, tmp_path, ephemeral,
                        url=under_test.url, connector=local_connector(under_test.engine))
    return await cron.start(ctx)


@pytest.fixture
async def cron_worker(engine, tmp_path):
    worker = await _start(engine, tmp_path)
    yield worker
    await worker.stop()


async def _client(under_test, name: str = "tester"):
    iii = register_worker(under_test.url, InitOptions(worker_name=name))
    await iii.wait_connected(5)
    return iii


@pytest.fixture
async def client(engine):
    iii = await _client(engine)
    yield iii
    await iii.shutdown_async()


def _recorder(iii, function_id: str, calls: list, result=None):
    async def handler(data, metadata=None):
        calls.append({"data": data, "metadata": metadata, "at": time.time()})
        return result

    iii.register_function(function_id, handler)


async def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- expressions (unit) ---------------------------------------------------------------------

def test_expression_fields_and_next_ticks():
    base = datetime(2026, 5, 1, 12, 0, 1, 500000, tzinfo=timezone.utc)  # a Friday
    cases = {
        "* * * * * *": "2026-05-01T12:00:02+00:00",
        "*/2 * * * * *": "2026-05-01T12:00:02+00:00",
        "0 */5 * * * *": "2026-05-01T12:05:00+00:00",
        "0 0 0 * * 1": "2026-05-03T00:00:00+00:00",  # 1 = Sunday
        "0 0 0 * * sun": "2026-05-03T00:00:00+00:00",
        "0 0 0 * * MON-FRI": "2026-05-04T00:00:00+00:00",
        "0 0 0 13 * FRI": "2026-11-13T00:00:00+00:00",  # both day fields must match
        "0 0 12 29 FEB ? *": "2028-02-29T12:00:00+00:00",
        "0 0 0 1 1 * 2030": "2030-01-01T00:00:00+00:00",
        "5/20 * * * * *": "2026-05-01T12:00:05+00:00",
        "10-40/15 * * * * *": "2026-05-01T12:00:10+00:00",
        "0,30 * * * * *": "2026-05-01T12:00:30+00:00",
        "@hourly": "2026-05-01T13:00:00+00:00",
        "@daily": "2026-05-02T00:00:00+00:00",
        "@weekly": "2026-05-03T00:00:00+00:00",
        "@monthly": "2026-06-01T00:00:00+00:00",
        "@yearly": "2027-01-01T00:00:00+00:00",
    }
    for text, expected in cases.items():
        assert parse(text).next_after(base).isoformat() == expected, text
    assert parse("0 0 0 1 1 * 2020").next_after(base) is None
    assert parse("0 0 0 30 2 *").next_after(base) is None
    tick = parse("* * * * * *").next_after(base)
    assert parse("* * * * * *").next_after(tick) == tick + timedelta(seconds=1)


def test_expression_refusals():
    def message(text):
        with pytest.raises(CronError) as err:
            parse(text)
        return str(err.value)

    assert message("") == "Cron expression is required"
    assert message(None) == "Cron expression is required"
    assert message("bogus").startswith("Invalid cron expression 'bogus': ")
    assert message("*/5 * * * *") == ("Invalid cron expression '*/5 * * * *': expected 6 or 7 "
                                      "fields (seconds first); did you mean '0 */5 * * * *'?")
    assert "SUN-SAT" in message("0 0 0 * * 0")
    assert "60 is out of range 0-59" in message("60 * * * * *")
    assert "1969" in message("0 0 0 * * * 1969")
    assert "step" in message("*/0 * * * * *")
    assert "backwards" in message("9-1 * * * * *")
    assert "FOO" in message("* * * * FOO *")
    assert "second: '?' is not a number" in message("? * * * * *")  # '?' only in day fields
    assert "got 8" in message("* * * * * * * *")
    assert "@nope" in message("@nope")


async def test_lock_stores_claim_once(tmp_path):
    expiry = int(time.time() * 1000) + 30_000
    memory = MemoryLocks()
    assert await memory.claim("job", 100, "a", expiry)
    assert not await memory.claim("job", 100, "b", expiry)
    assert await memory.claim("job", 101, "b", expiry)
    first, second = SqliteLocks(tmp_path / "c.db"), SqliteLocks(tmp_path / "c.db")
    try:
        assert await first.claim("job", 100, "a", expiry)
        assert not await second.claim("job", 100, "b", expiry)
        assert await second.claim("job", 101, "b", expiry)
        # expired rows are pruned on the next claim
        assert await first.claim("old", 1, "a", int(time.time() * 1000) - 1)
        await first.claim("job", 102, "a", expiry)
        rows = first.db.execute("SELECT key FROM cron_locks ORDER BY key").fetchall()
        assert [r[0] for r in rows] == ["job:100", "job:101", "job:102"]
    finally:
        await first.close()
        await second.close()


# -- ticks ------------------------------------------------------------------------------------

async def test_fires_every_second_with_the_spec_payload(engine, cron_worker, client):
    calls: list = []
    _recorder(client, "tick::run", calls)
    before = time.time()
    binding = client.register_trigger({"type": "cron", "function_id": "tick::run",
                                       "config": {"expression": "* * * * * *"},
                                       "metadata": {"team": "ops"}})
    await _wait_for(lambda: len(calls) >= 3, 5)
    binding.unregister()
    for call in calls[:3]:
        data = call["data"]
        assert set(data) == {"trigger", "job_id", "scheduled_time", "actual_time"}
        assert data["trigger"] == "cron"
        assert data["job_id"] == binding.id
        assert SCHEDULED.match(data["scheduled_time"]), data
        assert ACTUAL.match(data["actual_time"]), data
        scheduled, actual = _at(data["scheduled_time"]), _at(data["actual_time"])
        assert scheduled.utcoffset() == timedelta(0) and actual.utcoffset() == timedelta(0)
        assert scheduled.timestamp() > before  # first tick strictly after registration
        assert scheduled <= actual < scheduled + timedelta(seconds=0.5)
        assert call["metadata"] == {"team": "ops"}
    ticks = [_at(c["data"]["scheduled_time"]) for c in calls[:3]]
    assert [b - a for a, b in zip(ticks, ticks[1:])] == [timedelta(seconds=1)] * 2
    gaps = [b["at"] - a["at"] for a, b in zip(calls, calls[1:3])]
    assert all(0.7 < gap < 1.3 for gap in gaps), gaps


async def test_scenario_24_every_two_seconds(engine, cron_worker, client):
    calls: list = []
    _recorder(client, "tick::even", calls)
    client.register_trigger({"type": "cron", "function_id": "tick::even",
                             "config": {"expression": "*/2 * * * * *"}})
    await _wait_for(lambda: len(calls) >= 2, 5)
    for call in calls:
        scheduled = _at(call["data"]["scheduled_time"])
        assert scheduled.second % 2 == 0 and call["data"]["scheduled_time"].endswith("+00:00")
        assert _at(call["data"]["actual_time"]) >= scheduled


async def test_seven_field_expression(engine, cron_worker, client):
    calls: list = []
    _recorder(client, "tick::year", calls)
    year = datetime.now(timezone.utc).year
    client.register_trigger({"type": "cron", "function_id": "tick::year",
                             "config": {"expression": f"* * * ? * * {year}-2099"}})
    await _wait_for(lambda: len(calls) >= 2, 4)
    ticks = [_at(c["data"]["scheduled_time"]) for c in calls[:2]]
    assert ticks[1] - ticks[0] == timedelta(seconds=1)
    # a seven-field expression whose year has passed is accepted and never fires
    never: list = []
    _recorder(client, "tick::never", never)
    client.register_trigger({"type": "cron", "function_id": "tick::never",
                             "config": {"expression": "* * * * * * 1999"}})
    await asyncio.sleep(1.2)
    assert never == []


async def test_condition_false_skips_and_other_results_run(engine, cron_worker, client):
    skipped: list = []
    ran: list = []
    seen: list = []
    _recorder(client, "tick::skipped", skipped)
    _recorder(client, "tick::ran", ran)

    async def never(data, metadata=None):
        seen.append((data, metadata))
        return False

    async def nothing(data):
        return None

    async def broken(data):
        raise RuntimeError("condition broke")

    client.register_function("cond::never", never)
    client.register_function("cond::nothing", nothing)
    client.register_function("cond::broken", broken)
    client.register_trigger({"type": "cron", "function_id": "tick::skipped", "metadata": {"m": 1},
                             "config": {"expression": "* * * * * *",
                                        "condition_function_id": "cond::never"}})
    client.register_trigger({"type": "cron", "function_id": "tick::skipped",
                             "config": {"expression": "*/1 * * * * *",
                                        "condition_function_id": "cond::broken"}})
    client.register_trigger({"type": "cron", "function_id": "tick::ran",
                             "config": {"expression": "* * * * * *",
                                        "condition_function_id": "cond::nothing"}})
    await _wait_for(lambda: len(ran) >= 2, 4)
    await asyncio.sleep(0.2)
    assert skipped == []
    assert len(seen) >= 2
    data, metadata = seen[0]
    assert set(data) == {"trigger", "job_id", "scheduled_time", "actual_time"}
    assert metadata == {"m": 1}


async def test_invalid_expressions_are_refused(engine, cron_worker, raw):
    c = await raw("c")
    cases = {
        "bogus": "Invalid cron expression 'bogus'",
        "*/5 * * * *": "did you mean '0 */5 * * * *'",
        "0 0 0 * * 0": "SUN-SAT",
        "": "Cron expression is required",
        "61 * * * * *": "Invalid cron expression '61 * * * * *': second: 61 is out of range 0-59",
    }
    for i, (expression, expected) in enumerate(cases.items()):
        await c.send({"type": "registertrigger", "id": f"bad-{i}", "trigger_type": "cron",
                      "function_id": "c::f", "config": {"expression": expression}})
        answer = await c.recv_type("triggerregistrationresult")
        assert answer["id"] == f"bad-{i}"
        assert answer["error"]["code"] == "trigger_registration_failed"
        assert expected in answer["error"]["message"], answer
    assert answer["error"]["message"] == cases["61 * * * * *"]
    await c.send({"type": "registertrigger", "id": "no-config", "trigger_type": "cron",
                  "function_id": "c::f"})
    answer = await c.recv_type("triggerregistrationresult")
    assert answer["error"]["message"] == "Cron expression is required"
    assert cron_worker.jobs == {}


async def test_unbinding_stops_firing(engine, cron_worker, client):
    calls: list = []
    _recorder(client, "tick::stop", calls)
    binding = client.register_trigger({"type": "cron", "function_id": "tick::stop",
                                       "config": {"expression": "* * * * * *"}})
    await _wait_for(lambda: len(calls) >= 1, 3)
    binding.unregister()
    await _wait_for(lambda: cron_worker.jobs == {}, 2)
    count = len(calls)
    await asyncio.sleep(1.5)
    assert len(calls) == count


async def test_no_catch_up_after_the_loop_was_busy(engine, cron_worker, client):
    calls: list = []
    _recorder(client, "tick::busy", calls)
    client.register_trigger({"type": "cron", "function_id": "tick::busy",
                             "config": {"expression": "* * * * * *"}})
    await _wait_for(lambda: len(calls) >= 1, 3)
    first = _at(calls[0]["data"]["scheduled_time"])
    time.sleep(2.5)  # the whole engine (same event loop) is busy through two more ticks
    await _wait_for(lambda: len(calls) >= 2, 2)
    await asyncio.sleep(0.2)
    ticks = [_at(c["data"]["scheduled_time"]) for c in calls]
    # only the latest passed tick runs: first+2 s, never first+1 s
    assert ticks[:2] == [first, first + timedelta(seconds=2)], ticks
    assert ticks[1:] == sorted(set(ticks[1:]))


async def test_no_catch_up_after_the_worker_was_down(engine, client, tmp_path):
    config = {"adapter": {"name": "sqlite", "config": {"file_path": "data/cron.db"}}}
    worker = await _start(engine, tmp_path, config)
    calls: list = []
    _recorder(client, "tick::down", calls)
    client.register_trigger({"type": "cron", "function_id": "tick::down",
                             "config": {"expression": "*/1 * * * * *"}})
    try:
        await _wait_for(lambda: len(calls) >= 1, 3)
    finally:
        await worker.stop()
    stopped_at = time.time()
    await asyncio.sleep(2.5)
    count = len(calls)
    worker = await _start(engine, tmp_path, config)  # the engine hands it the parked binding
    restarted_at = time.time()
    try:
        await asyncio.sleep(1.6)
        late = calls[count:]
        assert 1 <= len(late) <= 2
        for call in late:
            assert _at(call["data"]["scheduled_time"]).timestamp() > restarted_at
        assert all(not (stopped_at + 0.5 < _at(c["data"]["scheduled_time"]).timestamp()
                        < restarted_at) for c in calls)
    finally:
        await worker.stop()
    assert (tmp_path / "data" / "cron.db").exists()


async def test_slow_handler_does_not_overlap_on_one_engine(engine, cron_worker, client):
    running = {"now": 0, "max": 0, "runs": 0}

    async def slow(data):
        running["now"] += 1
        running["runs"] += 1
        running["max"] = max(running["max"], running["now"])
        await asyncio.sleep(1.5)
        running["now"] -= 1

    client.register_function("tick::slow", slow)
    client.register_trigger({"type": "cron", "function_id": "tick::slow",
                             "config": {"expression": "* * * * * *"}})
    await asyncio.sleep(3.3)
    assert running["max"] == 1
    assert 1 <= running["runs"] <= 2


async def test_two_engines_sharing_sqlite_run_each_tick_once(engine, tmp_path):
    second = await start_engine()
    config = {"adapter": {"name": "sqlite", "config": {"file_path": str(tmp_path / "shared.db")}}}
    workers, clients = [], []
    calls: list = []
    try:
        for under_test, name in ((engine, "e1"), (second, "e2")):
            workers.append(await _start(under_test, tmp_path, config))
            iii = await _client(under_test, name)
            clients.append(iii)
            _recorder(iii, "tick::shared", calls, result=name)
            iii.register_trigger({"type": "cron", "function_id": "tick::shared",
                                  "config": {"expression": "* * * * * *"}})
        await _wait_for(lambda: all(w.jobs for w in workers), 2)
        ids = [next(iter(w.jobs)) for w in workers]
        assert ids[0] != ids[1]  # different binding ids, one job key
        await asyncio.sleep(3.2)
        ticks = [c["data"]["scheduled_time"] for c in calls]
        assert len(ticks) == len(set(ticks)), ticks  # each tick once in total
        assert 3 <= len(ticks) <= 4, ticks
        assert {c["data"]["job_id"] for c in calls} <= set(ids)
    finally:
        for iii in clients:
            await iii.shutdown_async()
        for worker in workers:
            await worker.stop()
        await second.listener.close()
        await second.engine.stop()


async def test_two_engines_with_memory_locks_both_run(engine, tmp_path):
    second = await start_engine()
    workers, clients = [], []
    calls: list = []
    try:
        for under_test, name in ((engine, "e1"), (second, "e2")):
            workers.append(await _start(under_test, tmp_path, MEMORY))
            iii = await _client(under_test, name)
            clients.append(iii)
            _recorder(iii, "tick::twice", calls)
            iii.register_trigger({"type": "cron", "function_id": "tick::twice",
                                  "config": {"expression": "* * * * * *"}})
        await _wait_for(lambda: len(calls) >= 4, 4)
        ticks = [c["data"]["scheduled_time"] for c in calls]
        assert len(set(ticks)) < len(ticks)  # without a shared store each engine runs the tick
    finally:
        for iii in clients:
            await iii.shutdown_async()
        for worker in workers:
            await worker.stop()
        await second.listener.close()
        await second.engine.stop()


# -- configuration ------------------------------------------------------------------------------

async def test_invalid_config_is_refused(engine, tmp_path):
    bad = [
        ({"adapter": "bogus"}, "unknown adapter 'bogus'"),
        ({"nope": 1}, "config.nope"),
        ({"lock_ttl_ms": 5}, "config.lock_ttl_ms"),
        ({"adapter": {"name": "memory", "config": {"lock_ttl_ms": 0}}}, "lock_ttl_ms"),
        ({"adapter": {"name": "memory", "config": {"lock_ttl_ms": "x"}}}, "lock_ttl_ms"),
        ({"adapter": {"name": "sqlite", "config": {"synchronous": "off"}}}, "synchronous"),
        ({"adapter": {"name": "sqlite", "config": {"path": "x.db"}}}, "config.adapter.config.path"),
        ({"adapter": "rabbitmq"}, "not available in pyiii"),
        ({"adapter": 3}, "config.adapter"),
    ]
    for config, expected in bad:
        with pytest.raises(ValueError) as err:
            await _start(engine, tmp_path, config)
        assert expected in str(err.value), (config, str(err.value))
    assert not (tmp_path / "data").exists()


async def test_defaults_reference_adapters_and_reload(engine, client, tmp_path):
    worker = await _start(engine, tmp_path, {})
    try:
        assert worker.settings.adapter.name == "sqlite"
        assert worker.settings.lock_ttl_ms == 30_000
        assert (tmp_path / "data" / "cron.db").exists()
        with pytest.raises(ValueError):
            await worker.reconfigure({"adapter": "nope"})
        assert isinstance(worker.locks, SqliteLocks)  # the old store stays
        await worker.reconfigure({"adapter": {"name": "kv", "config": {"lock_ttl_ms": 2000}}})
        assert isinstance(worker.locks, MemoryLocks) and worker.settings.lock_ttl_ms == 2000
        calls: list = []
        _recorder(client, "tick::reload", calls)
        client.register_trigger({"type": "cron", "function_id": "tick::reload",
                                 "config": {"expression": "* * * * * *"}})
        await _wait_for(lambda: len(calls) >= 1, 3)
    finally:
        await worker.stop()
    ephemeral = await _start(engine, tmp_path / "eph", {}, ephemeral=True)
    try:
        assert isinstance(ephemeral.locks, MemoryLocks)
        assert not (tmp_path / "eph" / "data").exists()
    finally:
        await ephemeral.stop()


# -- official SDK handlers --------------------------------------------------------------------------

async def test_official_sdk_handlers_fire_every_second(engine, cron_worker, peers):
    specs = {
        "s25": make_spec("cron-py", [fn("py::tick", "echo")], triggers=[
            {"type": "cron", "function_id": "py::tick", "config": {"expression": "* * * * * *"}}]),
        "n22": make_spec("cron-js", [fn("js::tick", "echo")], triggers=[
            {"type": "cron", "function_id": "js::tick", "config": {"expression": "* * * * * *"}}]),
    }
    started = await asyncio.gather(*(peers.astart(lang, engine.url, spec)
                                     for lang, spec in specs.items()))
    for peer in started:  # measure arrivals live, not calls queued while the other peer started
        await peer.event("invoke", timeout=5)
        peer.drain_events()

    async def three_calls(peer, function_id):
        got = []
        for _ in range(3):
            event = await peer.event("invoke", timeout=5, function_id=function_id)
            got.append((time.monotonic(), event["data"]))
        return got

    results = await asyncio.gather(three_calls(started[0], "py::tick"),
                                   three_calls(started[1], "js::tick"))
    for peer, got in zip(started, results):
        for _, data in got:
            assert set(data) == {"trigger", "job_id", "scheduled_time", "actual_time"}
            assert data["trigger"] == "cron" and data["job_id"] in peer.trigger_ids
            assert SCHEDULED.match(data["scheduled_time"])
        ticks = [_at(data["scheduled_time"]) for _, data in got]
        assert [b - a for a, b in zip(ticks, ticks[1:])] == [timedelta(seconds=1)] * 2
        arrivals = [at for at, _ in got]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert all(0.6 < gap < 1.4 for gap in gaps), (peer.lang, gaps)
