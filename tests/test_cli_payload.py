"""`iii trigger` payload and duration parsing (cli.md §2, scenario 6) and exits without an engine."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyiii.cli.output import UsageError
from pyiii.cli.payload import (
    DEFAULT_TIMEOUT_MS,
    build_payload,
    format_duration,
    parse_duration,
    parse_pairs,
    parse_value,
    resolve_timeout,
)
from pyiii.cli.trigger import render

SCENARIO_6 = ["a=2", "b=2.5", "ok=true", "n=null", "s=hi", "arr=[1,2]", 'q="42"', "z=007"]


def usage(fn, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    assert info.value.code == 2
    return info.value.message


def test_scenario_6_pairs() -> None:
    payload = build_payload(SCENARIO_6)
    assert payload == {"a": 2, "b": 2.5, "ok": True, "n": None, "s": "hi", "arr": [1, 2], "q": "42", "z": "007"}
    assert list(payload) == ["a", "b", "ok", "n", "s", "arr", "q", "z"]
    assert type(payload["a"]) is int and type(payload["b"]) is float
    assert render(payload, compact=False) == json.dumps(
        {"a": 2, "b": 2.5, "ok": True, "n": None, "s": "hi", "arr": [1, 2], "q": "42", "z": "007"}, indent=2)


@pytest.mark.parametrize("text,value", [
    ("2", 2), ("-1", -1), ("2.5", 2.5), ("true", True), ("null", None), ("[1,2]", [1, 2]),
    ('{"k":1}', {"k": 1}), ("hi", "hi"), ('"42"', "42"), ("007", "007"), ("", ""),
    ("NaN", "NaN"), ("Infinity", "Infinity"), ("a=b", "a=b"), ("{oops", "{oops"), ("1 2", "1 2"),
])
def test_value_is_json_else_string(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_pairs_split_at_first_equals_and_later_duplicate_wins() -> None:
    assert parse_pairs(["url=a=b", "k=1", "k=2"]) == {"url": "a=b", "k": 2}


def test_pair_errors() -> None:
    assert usage(parse_pairs, ["oops"]) == "expected key=value, got 'oops'"
    assert usage(parse_pairs, ["=1"]) == "empty key in '=1'"


def test_nothing_gives_empty_object() -> None:
    assert build_payload([], None) == {}


def test_json_only_is_any_value() -> None:
    assert build_payload([], "[1, 2]") == [1, 2]
    assert build_payload([], '"x"') == "x"
    assert build_payload([], "null") is None
    assert build_payload([], "3") == 3


def test_json_and_pairs_merge_with_pairs_winning() -> None:
    merged = build_payload(["b=2", "c=x"], '{"a":1,"b":1}')
    assert merged == {"a": 1, "b": 2, "c": "x"} and list(merged) == ["a", "b", "c"]
    assert render(build_payload(["b=2"], '{"a":1,"b":1}'), compact=False) == '{\n  "a": 1,\n  "b": 2\n}'


def test_json_must_be_object_with_pairs() -> None:
    assert usage(build_payload, ["a=1"], "[1]") == "--json must be a JSON object when key=value pairs are given"


def test_invalid_json_message() -> None:
    msg = usage(build_payload, [], "{")
    assert msg.startswith("--json is not valid JSON: ")
    assert usage(build_payload, [], "NaN").startswith("--json is not valid JSON: ")


def test_json_from_stdin_and_file(tmp_path: Path) -> None:
    assert build_payload(["b=2"], "-", stdin=io.StringIO('{"a": 1}')) == {"a": 1, "b": 2}
    f = tmp_path / "p.json"
    f.write_text('{"x": [1]}')
    assert build_payload([], f"@{f}") == {"x": [1]}
    assert usage(build_payload, [], f"@{tmp_path / 'missing.json'}").startswith("cannot read --json file")


def test_compact_render_is_one_line() -> None:
    assert render({"a": 1, "b": [1, 2]}, compact=True) == '{"a":1,"b":[1,2]}'
    assert render(None, compact=False) == "null"


@pytest.mark.parametrize("text,ms", [
    ("30", 30_000), ("30s", 30_000), ("500ms", 500), ("2m", 120_000), ("1.5s", 1500), ("200ms", 200),
])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "abc", "5x", "-1", "0", "0ms", "s"])
def test_bad_durations(text: str) -> None:
    assert usage(parse_duration, text).startswith("invalid duration")


def test_timeout_resolution() -> None:
    assert resolve_timeout(None, None) == DEFAULT_TIMEOUT_MS == 30_000
    assert resolve_timeout("200ms", None) == 200
    assert resolve_timeout(None, "750") == 750
    assert usage(resolve_timeout, None, "1s").startswith("invalid --timeout-ms")
    assert usage(resolve_timeout, "1s", "5") == "--timeout and --timeout-ms cannot be used together"


def test_format_duration() -> None:
    assert [format_duration(ms) for ms in (200, 1500, 30_000, 120_000)] == ["200ms", "1500ms", "30s", "2m"]


# --------------------------------------------------------------------------- subprocess

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iii(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("III_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pyiii.cli.main", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_bad_pair_exits_2_without_engine(tmp_path: Path) -> None:
    r = iii("trigger", "x::y", "oops", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: expected key=value, got 'oops'" and r.stdout == ""


def test_json_array_with_pairs_exits_2(tmp_path: Path) -> None:
    r = iii("t", "x::y", "--json", "[1]", "a=1", cwd=tmp_path)
    assert r.returncode == 2 and "must be a JSON object" in r.stderr


def test_bad_timeout_exits_2(tmp_path: Path) -> None:
    r = iii("trigger", "x::y", "--timeout", "soon", cwd=tmp_path)
    assert r.returncode == 2 and "invalid duration 'soon'" in r.stderr


def test_no_engine_exits_3(tmp_path: Path) -> None:
    port = free_port()
    r = iii("trigger", "x::y", "a=1", "--engine", f"ws://127.0.0.1:{port}", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"error: no iii engine is answering at ws://127.0.0.1:{port} (")
    assert lines[1] == f"hint: start it with `iii` in {tmp_path}, or pass --engine URL"
    assert r.stdout == ""


def test_no_engine_via_address_port_and_configured_port(tmp_path: Path) -> None:
    port = free_port()
    r = iii("trigger", "x::y", "--address", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    assert r.returncode == 3 and f"ws://127.0.0.1:{port}" in r.stderr
    (tmp_path / "config.yaml").write_text(f"workers:\n  - name: iii-worker-manager\n    config:\n      port: ${{EP:{port}}}\n")
    r = iii("trigger", "x::y", cwd=tmp_path)
    assert r.returncode == 3 and f"no iii engine is answering at ws://127.0.0.1:{port} (" in r.stderr
    r = iii("trigger", "x::y", cwd=tmp_path, env={"III_ENGINE_URL": f"ws://127.0.0.1:{free_port()}"})
    assert r.returncode == 3 and f"ws://127.0.0.1:{port} " not in r.stderr


def test_stale_engine_json_is_ignored(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".iii").mkdir()
    (tmp_path / ".iii" / "engine.json").write_text(json.dumps({"pid": 999999999, "url": "ws://127.0.0.1:1"}))
    (tmp_path / "config.yaml").write_text(f"workers:\n  - name: iii-worker-manager\n    config:\n      port: {port}\n")
    r = iii("trigger", "x::y", cwd=tmp_path)
    assert r.returncode == 3 and f"ws://127.0.0.1:{port}" in r.stderr


def test_not_an_iii_engine_exits_3(tmp_path: Path) -> None:
    # A TCP server that answers HTTP 404 to the WebSocket upgrade.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        import threading

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        r = iii("trigger", "x::y", "--engine", f"127.0.0.1:{port}", cwd=tmp_path)
    assert r.returncode == 3
    assert r.stderr.strip() == f"error: ws://127.0.0.1:{port} answered but is not an iii engine"
