"""`iii` (serve preparation) and `iii trigger` output rules, against stand-ins for the engine and
SDK (the real ones are tested in their own suites): a WebSocket server that greets like an
engine, and a fake `pyiii.sdk` module with the official SDK's API shape."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
import websockets

from pyiii.cli.main import main
from pyiii.engine.config import STARTER_CONFIG


# --------------------------------------------------------------------------- serve

class FakeServer(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("pyiii.manager.server")
        self.calls: list[Any] = []

    async def serve(self, options: Any) -> int:
        self.calls.append(options)
        return 0


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer()
    monkeypatch.setitem(sys.modules, "pyiii.manager.server", server)
    import pyiii.manager

    monkeypatch.setattr(pyiii.manager, "server", server, raising=False)
    monkeypatch.delenv("III_CONFIG_PATH", raising=False)
    return server


def test_bare_iii_creates_starter_without_terminal(tmp_path: Path, fake_server: FakeServer,
                                                   monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert (tmp_path / "config.yaml").read_text() == STARTER_CONFIG
    err = capsys.readouterr().err
    assert "created config.yaml" in err and err.startswith("ok: ")
    (options,) = fake_server.calls
    assert options.config_path == tmp_path / "config.yaml" and options.created_config
    assert not options.use_default_config and options.log_level is None


def test_serve_flags_and_existing_file(tmp_path: Path, fake_server: FakeServer, capsys: Any) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text("workers: []\n")
    assert main(["-c", str(cfg), "serve", "--log-level", "DEBUG", "--log-format", "json",
                 "--no-reload", "--no-worker-output"]) == 0
    (options,) = fake_server.calls
    assert options.config_path == cfg and not options.created_config
    assert (options.log_level, options.log_format, options.no_reload, options.no_worker_output) == \
        ("debug", "json", True, True)
    assert cfg.read_text() == "workers: []\n" and capsys.readouterr().err == ""


def test_use_default_config_writes_nothing(tmp_path: Path, fake_server: FakeServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--use-default-config"]) == 0
    assert fake_server.calls[0].use_default_config and fake_server.calls[0].config_path is None
    assert list(tmp_path.iterdir()) == []


def test_use_default_config_conflicts(tmp_path: Path, fake_server: FakeServer, capsys: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["--use-default-config", "--config", str(tmp_path / "x.yaml")]) == 2
    assert "error: --use-default-config and --config cannot be used together" in capsys.readouterr().err
    monkeypatch.setenv("III_CONFIG_PATH", str(tmp_path / "x.yaml"))
    assert main(["--use-default-config"]) == 2
    assert fake_server.calls == [] and list(tmp_path.iterdir()) == []


def test_bad_flag_is_usage_error(fake_server: FakeServer, capsys: Any) -> None:
    assert main(["--log-format", "xml"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --log-format")


def test_version(capsys: Any) -> None:
    from pyiii import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"iii (pyiii) {__version__}\n"


# --------------------------------------------------------------------------- trigger

class InvocationError(Exception):
    def __init__(self, code: str, message: str, stacktrace: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.stacktrace = code, message, stacktrace


class FakeClient:
    def __init__(self, behaviour: dict[str, Any]) -> None:
        self.behaviour, self.requests, self.closed = behaviour, [], False

    def trigger(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        outcome = self.behaviour[request["function_id"]]
        if isinstance(outcome, float):
            time.sleep(outcome)
            return {"slept": outcome}
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def shutdown(self) -> None:
        self.closed = True


@pytest.fixture
def fake_sdk(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"behaviour": {}}
    sdk = types.ModuleType("pyiii.sdk")

    class InitOptions:
        def __init__(self, worker_name: str | None = None, reconnection_config: Any = None) -> None:
            self.worker_name, self.reconnection_config = worker_name, reconnection_config

    class TriggerAction:
        @staticmethod
        def Void() -> dict[str, str]:
            return {"type": "void"}

    def register_worker(url: str, options: InitOptions) -> FakeClient:
        state["url"], state["options"] = url, options
        state["client"] = FakeClient(state["behaviour"])
        return state["client"]

    sdk.InitOptions, sdk.TriggerAction, sdk.InvocationError = InitOptions, TriggerAction, InvocationError
    sdk.register_worker = register_worker
    monkeypatch.setitem(sys.modules, "pyiii.sdk", sdk)
    import pyiii

    monkeypatch.setattr(pyiii, "sdk", sdk, raising=False)
    return state


@pytest.fixture
def greeter() -> Any:
    """A WebSocket server whose first frame is `workerregistered`, like an engine."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def handler(ws: Any) -> None:
        await ws.send(json.dumps({"type": "workerregistered", "worker_id": "w", "reattach_token": "t"}))
        await ws.wait_closed()

    async def run() -> None:
        async with websockets.serve(handler, "127.0.0.1", 0) as server:
            box["url"] = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            box["stop"] = asyncio.get_running_loop().create_future()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await box["stop"]

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    ready.wait(5)
    yield box["url"]
    box["loop"].call_soon_threadsafe(box["stop"].set_result, None)
    thread.join(5)


def test_trigger_prints_result_in_received_order(greeter: str, fake_sdk: dict[str, Any], capsys: Any) -> None:
    fake_sdk["behaviour"]["hello::echo"] = {"b": 1, "a": [1, 2]}
    assert main(["trigger", "hello::echo", "a=2", "--engine", greeter, "-n", "orders", "--timeout", "5s"]) == 0
    out = capsys.readouterr()
    assert out.out == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n' and out.err == ""
    (request,) = fake_sdk["client"].requests
    assert request["payload"] == {"a": 2} and request["namespace"] == "orders"
    assert request["timeout_ms"] >= 5000 and "action" not in request
    assert fake_sdk["options"].worker_name.startswith("iii-cli-") and fake_sdk["client"].closed


def test_trigger_compact_and_null(greeter: str, fake_sdk: dict[str, Any], capsys: Any) -> None:
    fake_sdk["behaviour"].update({"a::b": {"x": 1, "y": "z"}, "n::n": None})
    assert main(["t", "a::b", "--compact", "--engine", greeter]) == 0
    assert main(["t", "n::n", "--engine", greeter]) == 0
    assert capsys.readouterr().out == '{"x":1,"y":"z"}\nnull\n'


def test_trigger_failure(greeter: str, fake_sdk: dict[str, Any], capsys: Any) -> None:
    fake_sdk["behaviour"]["hello::boom"] = InvocationError("invocation_failed", "boom", "Traceback:\n  line 1")
    assert main(["trigger", "hello::boom", "--engine", greeter]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "error: hello::boom failed: [invocation_failed] boom\n  Traceback:\n    line 1\n"


def test_trigger_timeout(greeter: str, fake_sdk: dict[str, Any], capsys: Any) -> None:
    fake_sdk["behaviour"]["hello::slow"] = 2.0
    started = time.monotonic()
    assert main(["trigger", "hello::slow", "--timeout", "200ms", "--engine", greeter]) == 124
    assert time.monotonic() - started < 1.5
    assert capsys.readouterr().err == "error: hello::slow timed out after 200ms\n"


def test_trigger_void(greeter: str, fake_sdk: dict[str, Any], capsys: Any) -> None:
    fake_sdk["behaviour"]["hello::record"] = None
    assert main(["trigger", "hello::record", "--void", "v=2", "--engine", greeter]) == 0
    assert capsys.readouterr().out == ""
    assert fake_sdk["client"].requests[0]["action"] == {"type": "void"}


def test_trigger_connection_lost(greeter: str, fake_sdk: dict[str, Any], capsys: Any) -> None:
    fake_sdk["behaviour"]["x::y"] = ConnectionError("closed")
    assert main(["trigger", "x::y", "--engine", greeter]) == 1
    assert capsys.readouterr().err == f"error: connection to {greeter} lost before x::y answered\n"
