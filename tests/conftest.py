"""Shared fixtures: an engine on a free port, and raw WebSocket clients that speak JSON frames."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pyiii.engine.core import Engine, EngineSettings
from pyiii.engine.listener import Listener, ListenerConfig

pytest_plugins = ["tests.conftest_peers", "tests.redis_server"]

NO_FRAME_S = 0.5  # "no frame" waits; long enough for a loopback round trip many times over
GRACE_MS = 300

# The official SDKs' conformance runs against an engine on uvloop, the loop `iii` serves on
# (pyiii.runtime); every other async test runs on the standard loop, so both stay covered.
UVLOOP_MODULES = frozenset({"test_conformance_sdks_calls", "test_conformance_sdks_data",
                            "test_conformance_sdks_lifecycle"})


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rpartition(".")[2] in UVLOOP_MODULES:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@dataclass
class EngineUnderTest:
    engine: Engine
    listener: Listener

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.listener.port}"


async def start_engine(settings: EngineSettings | None = None,
                       listener: ListenerConfig | None = None) -> EngineUnderTest:
    engine = Engine(settings or EngineSettings(namespace_grace_ms=GRACE_MS))
    engine.start()
    config = listener or ListenerConfig(host="127.0.0.1", port=0)
    server = Listener(engine, config)
    await server.start()
    return EngineUnderTest(engine, server)


@pytest.fixture
async def engine() -> AsyncIterator[EngineUnderTest]:
    running = await start_engine()
    try:
        yield running
    finally:
        await running.listener.close()
        await running.engine.stop()


class Raw:
    """A raw client: JSON frames over a plain WebSocket, nothing automatic."""

    def __init__(self, ws: ClientConnection, greeting: dict[str, Any]) -> None:
        self.ws = ws
        self.greeting = greeting
        self.worker_id: str = greeting["worker_id"]
        self.token: str = greeting["reattach_token"]

    @classmethod
    async def open(cls, url: str, path: str = "/", **kw: Any) -> "Raw":
        ws = await connect(url + path, max_size=None, compression=None, **kw)
        greeting = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return cls(ws, greeting)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame

    async def no_frame(self, timeout: float = NO_FRAME_S) -> None:
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    async def sync(self) -> None:
        """Round trip a ping: every frame sent before it has been applied by the engine."""
        await self.send({"type": "ping"})
        await self.recv_type("pong")

    async def register(self, name: str | None = None, **data: Any) -> None:
        payload: dict[str, Any] = {"features": ["large-messages.v1"], **data}
        if name is not None:
            payload["name"] = name
        await self.send({"type": "invokefunction", "function_id": "engine::workers::register",
                         "action": {"type": "void"}, "data": payload})

    async def call(self, function_id: str, data: Any = None, invocation_id: str = "",
                   timeout: float = 5.0, **extra: Any) -> dict[str, Any]:
        """Send a call and wait for its result frame."""
        import uuid
        iid = invocation_id or str(uuid.uuid4())
        frame = {"type": "invokefunction", "invocation_id": iid, "function_id": function_id,
                 **extra}
        if data is not None:
            frame["data"] = data
        await self.send(frame)
        while True:
            got = await self.recv(timeout)
            if got["type"] == "invocationresult" and got["invocation_id"] == iid:
                return got

    async def serve_one(self, result: Any = None, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for one delivered call and answer it with ``result``."""
        call = await self.recv_type("invokefunction", timeout)
        await self.send({"type": "invocationresult", "invocation_id": call["invocation_id"],
                         "function_id": call["function_id"], "result": result})
        return call

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the engine to close the socket; return the close code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed:
            pass
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
async def raw(engine: EngineUnderTest) -> AsyncIterator[Any]:
    """Factory of raw clients connected to the test engine; all closed at teardown."""
    opened: list[Raw] = []

    async def make(name: str | None = None, register: bool = True, **data: Any) -> Raw:
        client = await Raw.open(engine.url)
        opened.append(client)
        if register:
            await client.register(name or f"raw-{len(opened)}", **data)
        return client

    yield make
    for client in opened:
        try:
            await client.ws.close()
        except Exception:  # already torn down by the engine (e.g. close 1009)
            pass


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
