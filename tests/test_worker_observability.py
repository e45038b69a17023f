"""iii-observability: the log store behind engine::logs::list (spec/workers.md §10, scenario 42)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from pyiii import __version__
from pyiii.engine import logs
from pyiii.engine.inprocess import local_connector
from pyiii.workers import observability
from pyiii.workers.base import WorkerContext
from pyiii.workers.observability.store import LogQuery, LogStore
from pyiii.workers.observability.worker import parse_settings

from .conftest_peers import fn, make_spec


async def _start(engine: Any, tmp_path: Any, config: dict[str, Any] | None = None) -> Any:
    return await observability.start(WorkerContext(
        "iii-observability", config or {}, tmp_path, False, url=engine.url,
        connector=local_connector(engine.engine)))


@pytest.fixture
async def obs(engine, tmp_path):
    worker = await _start(engine, tmp_path)
    yield worker
    await worker.stop()


async def _list(client: Any, query: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = await client.call("engine::logs::list", query or {})
    assert "error" not in answer, answer
    return answer["result"]


def _now_ns() -> int:
    return time.time_ns()


async def test_scenario_42_logging_functions(obs, raw):
    w = await raw("w")
    before = _now_ns()
    logged = await w.call("engine::log::error", {"message": "boom", "data": {"k": 1}})
    assert "result" not in logged and "error" not in logged  # null
    page = await _list(w, {"severity_text": "ERROR"})
    assert page["total"] == 1
    [record] = page["logs"]
    stamp = record.pop("timestamp_unix_nano")
    assert before <= stamp <= _now_ns()
    assert record == {"severity_number": 17, "severity_text": "ERROR", "body": "boom",
                      "attributes": {"k": 1}, "trace_id": None, "span_id": None,
                      "service_name": "w"}
    bad = await w.call("engine::log::info", {})
    assert bad["error"] == {"code": "deserialization_error", "message":
                            "Failed to deserialize input for engine::log::info: missing field "
                            "`message`"}
    bag = await w.call("engine::baggage::get", {"key": "tenant"}, baggage="tenant=acme")
    assert bag["result"] == {"value": "acme"}


async def test_list_filters_paging_and_query_echo(obs, raw):
    w = await raw("w")
    start_ms = int(time.time() * 1000) - 1
    await w.call("engine::log::debug", {"message": "d1", "trace_id": "t1", "span_id": "s1"})
    await w.call("engine::log::info", {"message": "i1", "trace_id": "t1", "span_id": "s2"})
    await w.call("engine::log::warn", {"message": "w1", "trace_id": "t2",
                                       "service_name": "billing", "data": [1, 2]})
    await w.call("engine::log::trace", {"message": "t0"})
    everything = await _list(w)
    assert [r["body"] for r in everything["logs"]] == ["t0", "w1", "i1", "d1"]  # newest first
    assert [(r["severity_number"], r["severity_text"]) for r in everything["logs"]] == \
        [(1, "TRACE"), (13, "WARN"), (9, "INFO"), (5, "DEBUG")]
    assert everything["total"] == 4
    assert everything["query"] == {"trace_id": None, "span_id": None, "severity_min": None,
                                   "severity_text": None, "start_time": None, "end_time": None,
                                   "offset": 0, "limit": 100}
    assert abs(everything["timestamp"] - time.time() * 1000) < 5000
    warn = everything["logs"][1]
    assert (warn["service_name"], warn["attributes"]) == ("billing", {"data": [1, 2]})

    assert [r["body"] for r in (await _list(w, {"trace_id": "t1"}))["logs"]] == ["i1", "d1"]
    assert [r["body"] for r in (await _list(w, {"span_id": "s1"}))["logs"]] == ["d1"]
    assert [r["body"] for r in (await _list(w, {"severity_min": 9}))["logs"]] == ["w1", "i1"]
    assert [r["body"] for r in (await _list(w, {"severity_text": "warn"}))["logs"]] == ["w1"]
    page = await _list(w, {"offset": 1, "limit": 2})
    assert ([r["body"] for r in page["logs"]], page["total"]) == (["w1", "i1"], 4)
    assert (page["query"]["offset"], page["query"]["limit"]) == (1, 2)
    assert (await _list(w, {"start_time": start_ms}))["total"] == 4
    assert (await _list(w, {"end_time": start_ms}))["total"] == 0
    assert (await _list(w, {"start_time": int(time.time() * 1000) + 60_000}))["total"] == 0
    assert (await w.call("engine::logs::list", None))["result"]["total"] == 4

    wrong = await w.call("engine::logs::list", {"limit": "ten"})
    assert wrong["error"] == {"code": "deserialization_error", "message":
                              "Failed to deserialize input for engine::logs::list: `limit` "
                              "must be a number"}
    negative = await w.call("engine::logs::list", {"offset": -1})
    assert negative["error"]["code"] == "deserialization_error"


async def test_health_check_and_clear(obs, raw):
    w = await raw("w")
    await w.call("engine::log::info", {"message": "one"})
    await w.call("engine::log::info", {"message": "two"})
    health = (await w.call("engine::health::check", {}))["result"]
    assert abs(health.pop("timestamp") - time.time() * 1000) < 5000
    assert health == {"status": "healthy", "components": {"logs": {"status": "healthy",
                                                                    "count": 2}},
                      "version": __version__}
    assert (await w.call("engine::logs::clear", {}))["result"] == {"success": True}
    assert (await _list(w))["logs"] == []
    after = (await w.call("engine::health::check", {}))["result"]
    assert after["components"]["logs"] == {"status": "healthy", "count": 0}


async def test_max_count_enabled_and_console_output_apply_live(engine, raw, tmp_path, caplog):
    worker = await _start(engine, tmp_path, {"logs_max_count": 2})
    try:
        w = await raw("w")
        for n in range(5):
            await w.call("engine::log::info", {"message": f"m{n}"})
        page = await _list(w)
        assert ([r["body"] for r in page["logs"]], page["total"]) == (["m4", "m3"], 2)

        await worker.reconfigure({"logs_max_count": 1})
        assert [r["body"] for r in (await _list(w))["logs"]] == ["m4"]

        await worker.reconfigure({"enabled": False})
        assert (await _list(w))["logs"] == []  # what was stored is gone too
        await w.call("engine::log::error", {"message": "not kept"})
        assert (await _list(w))["logs"] == []
        health = (await w.call("engine::health::check", {}))["result"]
        assert health["components"]["logs"] == {"status": "disabled", "count": 0}

        caplog.set_level(logging.INFO)
        caplog.clear()
        await worker.reconfigure({"logs_console_output": False})
        await w.call("engine::log::warn", {"message": "quiet"})
        assert [r["body"] for r in (await _list(w))["logs"]] == ["quiet"]
        assert not [r for r in caplog.records if r.name == "pyiii.worker"]
        await worker.reconfigure({})
        await w.call("engine::log::warn", {"message": "loud"})
        assert [r.getMessage() for r in caplog.records if r.name == "pyiii.worker"] == ["loud"]

        with pytest.raises(ValueError, match="logs_max_count"):
            await worker.reconfigure({"logs_max_count": 0})
        assert worker.settings.logs_max_count == 1000  # the previous block stays
    finally:
        await worker.stop()
    # once stopped, records are printed again and stored nowhere
    assert logs.FEED.echo


async def test_retention_drops_old_records(engine, raw, tmp_path):
    worker = await _start(engine, tmp_path, {"logs_retention_seconds": 1})
    try:
        w = await raw("w")
        await w.call("engine::log::info", {"message": "old"})
        assert [r["body"] for r in (await _list(w))["logs"]] == ["old"]
        await asyncio.sleep(1.3)
        await w.call("engine::log::info", {"message": "new"})
        assert [r["body"] for r in (await _list(w))["logs"]] == ["new"]
        await asyncio.sleep(1.2)
        assert (await _list(w))["total"] == 0
    finally:
        await worker.stop()


def test_store_limits_with_a_clock():
    now = [100.0]
    store = LogStore(3, 10, clock=lambda: now[0])
    for n in range(4):
        store.add({"body": str(n), "timestamp_unix_nano": 0, "trace_id": None, "span_id": None,
                   "severity_number": 9, "severity_text": "INFO"})
        now[0] += 4
    now[0] = 112.0  # arrivals at 100 (pushed out by the count limit), 104, 108, 112
    assert [r["body"] for r in store.query(LogQuery())[1]] == ["3", "2", "1"]
    # at 116, the record that arrived at 104 is older than 10 s
    now[0] = 116.0
    assert [r["body"] for r in store.query(LogQuery())[1]] == ["3", "2"]
    store.configure(1, 10)
    assert [r["body"] for r in store.query(LogQuery())[1]] == ["3"]
    assert store.count() == 1


def test_settings_validation(caplog):
    assert parse_settings({}) == parse_settings({"enabled": True, "level": "info",
                                                 "format": "default", "logs_max_count": 1000,
                                                 "logs_retention_seconds": 3600,
                                                 "logs_console_output": True})
    with pytest.raises(ValueError) as unknown:
        parse_settings({"logs_max_cnt": 5})
    assert str(unknown.value).startswith(
        "unknown key config.logs_max_cnt (did you mean 'logs_max_count'?); accepted: enabled, "
        "level, format, logs_max_count, logs_retention_seconds, logs_console_output")
    with caplog.at_level(logging.WARNING):
        parsed = parse_settings({"exporter": "memory", "sampling_ratio": 1.0,
                                 "logs_max_count": 7})
    assert parsed.logs_max_count == 7
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["iii-observability: config keys exporter, sampling_ratio are not used "
                        "by pyiii and are ignored"]
    for bad, key in (({"level": "loud"}, "level"), ({"format": "xml"}, "format"),
                     ({"enabled": "yes"}, "enabled"), ({"logs_retention_seconds": 0},
                                                      "logs_retention_seconds"),
                     ({"logs_console_output": 1}, "logs_console_output")):
        with pytest.raises(ValueError, match=key):
            parse_settings(bad)


async def test_invalid_config_does_not_start(engine, tmp_path):
    with pytest.raises(ValueError, match="unknown key config.colour"):
        await _start(engine, tmp_path, {"colour": "blue"})
    assert logs.FEED.echo and not logs.FEED._subscriptions


def test_entry_level_and_format_unless_chosen(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.setup_logging(None, None)
        logs.apply_entry_settings("warn", "json")
        assert root.level == logging.WARNING
        logging.getLogger("pyiii.engine").warning("as json")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["message"] == "as json"
        logs.setup_logging("debug", "text")  # the command line wins over the entry
        logs.apply_entry_settings("error", "json")
        assert root.level == logging.DEBUG
        logging.getLogger("pyiii.engine").warning("as text")
        assert capsys.readouterr().err.strip().endswith("WARN  engine: as text")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _otel_logs(records: list[dict[str, Any]], service: str = "svc") -> bytes:
    doc = {"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"logRecords": records}]}]}
    return b"LOGS" + json.dumps(doc).encode()


async def _wait_total(client: Any, total: int, query: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        page = await _list(client, query)
        if page["total"] >= total:
            return page
        assert loop.time() < deadline, f"only {page['total']} records: {page['logs']}"
        await asyncio.sleep(0.05)


async def test_telemetry_logs_frames_reach_the_store(obs, engine, raw):
    w = await raw("w")
    record = {"timeUnixNano": "1700000000123456789", "severityNumber": 10,
              "severityText": "INFO2", "body": {"stringValue": "from otel"},
              "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
              "attributes": [{"key": "user", "value": {"stringValue": "ann"}},
                             {"key": "n", "value": {"intValue": "3"}},
                             {"key": "ok", "value": {"boolValue": True}},
                             {"key": "tags", "value": {"arrayValue": {"values": [
                                 {"stringValue": "a"}, {"doubleValue": 1.5}]}}}]}
    otel = await connect(engine.url + "/otel", max_size=None)
    try:
        await otel.send(b"LOGS{not json")
        await otel.send(b"MTRC{}")
        await otel.send(b"OTLP{}")
        await otel.send(_otel_logs([record, {"severityNumber": 21,
                                             "body": {"kvlistValue": {"values": [
                                                 {"key": "x", "value": {"intValue": 1}}]}}}]))
        page = await _wait_total(w, 2)
    finally:
        await otel.close()
    fatal, info = page["logs"]
    assert info == {"timestamp_unix_nano": 1700000000123456789, "severity_number": 9,
                    "severity_text": "INFO", "body": "from otel",
                    "attributes": {"user": "ann", "n": 3, "ok": True, "tags": ["a", 1.5]},
                    "trace_id": "0af7651916cd43dd8448eb211c80319c",
                    "span_id": "b7ad6b7169203331", "service_name": "svc"}
    assert (fatal["severity_number"], fatal["severity_text"], fatal["body"]) == \
        (17, "ERROR", '{"x":1}')
    assert (await _list(w, {"trace_id": "0af7651916cd43dd8448eb211c80319c"}))["total"] == 1
    # the same prefixed frames are accepted on the control socket
    await w.ws.send(_otel_logs([{"severityNumber": 13, "body": {"stringValue": "on /"}}], "ctl"))
    page = await _wait_total(w, 3)
    assert (page["logs"][0]["body"], page["logs"][0]["service_name"]) == ("on /", "ctl")


async def test_official_sdk_worker_logs_reach_the_store(obs, engine, raw, peers):
    """An S25 worker: its Logger (telemetry on /otel) and an engine::log::error call it makes."""
    peer = await peers.astart("s25", engine.url, make_spec(
        "s25-logger", [fn("s25::echo", "echo")], otel=True, log=["hello from s25"]))
    answer = await peer.acall("engine::log::error", {"message": "s25 failed",
                                                     "data": {"order": 7}})
    assert answer == {"result": None}
    w = await raw("w")
    called = await _list(w, {"severity_text": "ERROR"})
    assert [(r["body"], r["service_name"], r["attributes"]) for r in called["logs"]] == \
        [("s25 failed", "s25-logger", {"order": 7})]
    page = await _wait_total(w, 1, {"severity_text": "INFO"}, timeout=15)
    [hello] = [r for r in page["logs"] if r["body"] == "hello from s25"]
    assert (hello["severity_number"], hello["service_name"]) == (9, "iii-python-sdk")
