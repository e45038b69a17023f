"""In-memory engine stand-in for unit-testing pyiii.sdk without an engine.

``FakeEngine.connector`` is an ``InitOptions.connector``: each call opens a ``FakeLink``
whose first frame is ``workerregistered``. Tests read what the SDK sent with
``await engine.expect(...)`` and push frames to it with ``link.push(...)``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

from pyiii.protocol import Frame
from pyiii.sdk.transport import TransportClosed

_CLOSE = object()
_ids = itertools.count(1)


class FakeLink:
    def __init__(self, engine: "FakeEngine", worker_id: str, token: str) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.token = token
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()  # frames the SDK sent
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()  # frames for the SDK
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    # -- Transport (SDK side) --
    async def send(self, frame: dict[str, Any]) -> None:
        if self.engine.slow:
            await asyncio.sleep(0)  # yield like a real socket's drain
        if self.closed:
            raise TransportClosed(1006, "fake link closed")
        self.sent.append(frame)
        answer = self.engine.auto_answer(frame)
        if answer is not None:
            self.outbox.put_nowait(answer)
        else:
            self.inbox.put_nowait(frame)

    async def recv(self) -> dict[str, Any]:
        item = await self.outbox.get()
        if item is _CLOSE:
            self.outbox.put_nowait(_CLOSE)
            raise TransportClosed(1000, "closed")
        return item

    async def close(self) -> None:
        self.drop()

    # -- engine side --
    def push(self, frame: dict[str, Any]) -> None:
        self.outbox.put_nowait(frame)

    def drop(self) -> None:
        """The engine closes the link (any close: the SDK must reconnect)."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(_CLOSE)

    async def next(self, timeout: float = 2.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def expect(self, frame_type: str, timeout: float = 2.0, **match: Any) -> dict[str, Any]:
        """Next frame the SDK sent, skipping pongs; asserts its type and fields."""
        frame = await self.next(timeout)
        assert frame["type"] == frame_type, frame
        for key, value in match.items():
            assert frame.get(key) == value, (key, frame)
        return frame

    async def nothing(self, wait: float = 0.1) -> None:
        try:
            frame = await asyncio.wait_for(self.inbox.get(), wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")


class FakeEngine:
    def __init__(self, refuse: int = 0) -> None:
        self.links: list[FakeLink] = []
        self.refuse = refuse
        self.slow = False
        self.answers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.new_link = asyncio.Event()
        self.gate: asyncio.Event | None = None  # when set, connects wait until it opens

    async def connector(self) -> FakeLink:
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse > 0:
            self.refuse -= 1
            raise ConnectionRefusedError("fake engine down")
        n = next(_ids)
        link = FakeLink(self, f"00000000-0000-4000-8000-{n:012d}", f"11111111-0000-4000-8000-{n:012d}")
        link.push({"type": Frame.WORKER_REGISTERED, "worker_id": link.worker_id,
                   "reattach_token": link.token})
        self.links.append(link)
        self.new_link.set()
        return link

    def auto_answer(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """Answer calls to functions in ``answers`` directly (for the blocking-API tests)."""
        if frame.get("type") != Frame.INVOKE_FUNCTION or frame.get("function_id") not in self.answers:
            return None
        result = self.answers[frame["function_id"]](frame)
        if not frame.get("invocation_id"):
            return None
        return {"type": Frame.INVOCATION_RESULT, "invocation_id": frame["invocation_id"],
                "function_id": frame["function_id"], "result": result}

    async def link(self, index: int, timeout: float = 3.0) -> FakeLink:
        async def wait() -> FakeLink:
            while len(self.links) <= index:
                self.new_link.clear()
                await self.new_link.wait()
            return self.links[index]

        return await asyncio.wait_for(wait(), timeout)
