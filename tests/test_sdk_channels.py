"""Channels (with a fake socket opener) and the WebSocket transport (with a tiny server)."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import serve

from pyiii.protocol import Frame, decode, encode
from pyiii.sdk import ChannelReader, ChannelWriter, InitOptions, ReconnectionConfig, register_worker
from pyiii.sdk.channels import StreamChannelRef, build_channel_url, is_channel_ref, resolve_channel_refs
from pyiii.sdk.transport import TransportClosed, websocket_connector

try:
    from tests.test_sdk_fakes import FakeEngine
except ImportError:
    from test_sdk_fakes import FakeEngine

REF = {"channel_id": "c1", "access_key": "k/+ =", "direction": "write"}


class FakeSocket:
    def __init__(self, incoming: list | None = None) -> None:
        self.sent: list = []
        self.closed = False
        self.incoming = list(incoming or [])

    async def send(self, message) -> None:
        await asyncio.sleep(0)  # yield, so unordered ops would interleave
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True
        self.sent.append("<close>")

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.incoming:
            raise StopAsyncIteration
        return self.incoming.pop(0)


def opener_for(sock: FakeSocket, urls: list):
    async def opener(url, headers):
        urls.append((url, headers))
        return sock
    return opener


def test_url_and_refs():
    assert build_channel_url("ws://h:1/", "c1", "a b/c", "read") == "ws://h:1/ws/channels/c1?key=a%20b%2Fc&dir=read"
    assert build_channel_url("ws://h:1?token=t", "c", "k", "write") == "ws://h:1/ws/channels/c?token=t&key=k&dir=write"
    ref = StreamChannelRef("c", "k", "read")
    assert is_channel_ref(ref) and ref.channel_id == "c" and ref.model_dump() == dict(ref)
    assert decode(encode({"type": "x", "ref": ref}))["ref"] == {"channel_id": "c", "access_key": "k",
                                                                 "direction": "read"}
    data = {"a": [1, {"body": dict(ref)}], "b": {"x": 1}}
    out = resolve_channel_refs(data, lambda r: ("END", r["direction"]))
    assert out == {"a": [1, {"body": ("END", "read")}], "b": {"x": 1}}
    assert out["b"] is data["b"]  # untouched containers are not copied
    plain = {"a": [1, 2], "b": {"c": "d"}}
    assert resolve_channel_refs(plain, lambda r: 1) is plain


async def test_writer_chunks_and_keeps_order():
    sock, urls = FakeSocket(), []
    writer = ChannelWriter("ws://e:1", REF, {"h": "v"}, opener=opener_for(sock, urls))
    writer.send_message('{"type":"set_status","status_code":201}')  # fire and forget
    await writer.write(b"x" * 70_000)
    await writer.close()
    await writer.close()
    assert urls == [("ws://e:1/ws/channels/c1?key=k%2F%2B%20%3D&dir=write", {"h": "v"})]
    assert sock.sent[0] == '{"type":"set_status","status_code":201}'
    assert [len(m) for m in sock.sent[1:3]] == [65_536, 4_464]
    assert sock.sent[3:] == ["<close>"]


async def test_writer_from_sync_thread():
    sock, urls = FakeSocket(), []
    loop = asyncio.get_running_loop()
    writer = ChannelWriter("ws://e:1", REF, opener=opener_for(sock, urls), loop=loop)

    def in_thread():
        writer.send_message("a")
        writer.close().result(2)

    await asyncio.to_thread(in_thread)
    assert sock.sent == ["a", "<close>"]


async def test_reader_bytes_and_messages():
    sock, urls = FakeSocket([b"ab", "hello", b"cd"]), []
    reader = ChannelReader("ws://e:1", {**REF, "direction": "read"}, opener=opener_for(sock, urls))
    got: list[str] = []
    reader.on_message(got.append)
    assert await reader.read_all() == b"abcd"
    assert got == ["hello"] and urls[0][0].endswith("dir=read")


async def test_incoming_refs_become_live_ends():
    engine = FakeEngine()
    client = register_worker("ws://e:9", InitOptions(connector=engine.connector, worker_name="c"))
    await client.wait_connected(1)
    link = engine.links[0]
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    seen = {}

    async def handler(data):
        seen.update(data)
        return "ok"

    client.register_function("ch::fn", handler)
    await link.expect(Frame.REGISTER_FUNCTION)
    link.push({"type": Frame.INVOKE_FUNCTION, "invocation_id": "i1", "function_id": "ch::fn",
               "data": {"req": {"body": {**REF, "direction": "read"}}, "response": REF}})
    await link.expect(Frame.INVOCATION_RESULT, invocation_id="i1", result="ok")
    assert isinstance(seen["req"]["body"], ChannelReader) and isinstance(seen["response"], ChannelWriter)
    assert seen["response"]._url.startswith("ws://e:9/ws/channels/c1?")

    created = asyncio.ensure_future(client.create_channel_async(8))
    frame = await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::channels::create",
                              data={"buffer_size": 8}, namespace="default")
    link.push({"type": Frame.INVOCATION_RESULT, "invocation_id": frame["invocation_id"],
               "result": {"writer": REF, "reader": {**REF, "direction": "read"}}})
    channel = await created
    assert channel.reader_ref.direction == "read" and isinstance(channel.writer, ChannelWriter)
    await client.shutdown_async()


async def test_websocket_transport_against_a_server():
    received: list = []

    async def handler(ws):
        await ws.send('{"type":"workerregistered","worker_id":"w","reattach_token":"t"}')
        await ws.send("   ")  # ignored
        await ws.send("not json")  # dropped, link stays
        async for message in ws:
            received.append(message)
            frame = decode(message)
            if frame["type"] == Frame.INVOKE_FUNCTION and frame.get("invocation_id"):
                await ws.send(encode({"type": Frame.INVOCATION_RESULT,
                                      "invocation_id": frame["invocation_id"], "result": frame["data"]}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        link = await websocket_connector(url, None)()
        assert (await link.recv())["worker_id"] == "w"
        await link.close()
        with pytest.raises(TransportClosed):
            await link.recv()

        client = register_worker(url, InitOptions(worker_name="wst", reconnection_config=ReconnectionConfig(
            initial_delay_ms=10, jitter_factor=0)))
        await client.wait_connected(2)
        assert await client.trigger_async({"function_id": "echo::x", "payload": {"é": [1, 2]}}) == {"é": [1, 2]}
        assert all(isinstance(m, str) for m in received)  # text frames
        await client.shutdown_async()
