"""iii-stream: items ``stream → group → item`` whose changes reach sockets and triggers (§7)."""

from __future__ import annotations

import logging
from typing import Any

from ...sdk import III, InvocationError, TriggerConfig, register_worker
from ...storage.redis_events import ChangeFeed, binding_key
from ...storage.redis_kv import RedisKV
from ..base import WorkerContext
from ..errors import bad_input, stored
from ..update_ops import apply_ops, validate_ops
from .config import StreamSettings, parse_settings
from .messages import change, custom, fields, required
from .sockets import SocketHub
from .store import StreamStore
from .triggers import Triggers

log = logging.getLogger("pyiii.workers.stream")

ITEM = ("stream_name", "group_id", "item_id")
GROUP = ("stream_name", "group_id")
_ABSENT = object()


class StreamWorker:
    def __init__(self, iii: III, store: StreamStore, config: StreamSettings,
                 ctx: WorkerContext) -> None:
        self.iii = iii
        self.store = store
        self.settings = config
        self.ctx = ctx
        self.triggers = Triggers(iii)
        self.hub = SocketHub(self)
        self.feed = self._feed_of(store)

    def _feed_of(self, store: StreamStore) -> ChangeFeed | None:
        """With redis, every change goes round all engines through ``stream::events`` (§7.6)."""
        if not isinstance(store.kv, RedisKV):
            return None
        feed = ChangeFeed(store.kv.link, "stream::events", self._on_change)
        feed.start()
        return feed

    @property
    def port(self) -> int:
        """The bound WebSocket port (useful with ``port: 0``)."""
        return self.hub.port

    def register(self) -> None:
        for name, handler, description in (
            ("stream::set", self.set, "Store an item; pushes create/update to subscribers"),
            ("stream::get", self.get, "Read an item, or null"),
            ("stream::delete", self.delete, "Remove an item; pushes delete to subscribers"),
            ("stream::update", self.update, "Apply update operations to an item atomically"),
            ("stream::list", self.list, "All items of a group, in first-write order"),
            ("stream::list_groups", self.list_groups, "Sorted group ids of a stream"),
            ("stream::list_all", self.list_all, "Every stream with its groups"),
            ("stream::send", self.send, "Push a custom event to a group's subscribers"),
        ):
            self.iii.register_function(name, handler, description=description)
        self.triggers.register()

    # -- functions --------------------------------------------------------------------------

    async def set(self, data: Any) -> Any:
        stream, group, item = fields("stream::set", data, ITEM)
        value = required("stream::set", data, "data")
        result = await self._custom("set", stream, data, "STREAM_SET_ERROR")
        if result is _ABSENT:
            existed, old = await stored("STREAM_SET_ERROR", self.store.set(stream, group, item,
                                                                           value))
            result, new = {"old_value": old, "new_value": value}, value
        else:
            old, new = _field(result, "old_value"), _field(result, "new_value", value)
            existed = old is not None
        self._emit(change(stream, group, item, "update" if existed else "create", new))
        return result

    async def get(self, data: Any) -> Any:
        stream, group, item = fields("stream::get", data, ITEM)
        return await self._read_item(stream, group, item, "STREAM_GET_ERROR")

    async def delete(self, data: Any) -> Any:
        stream, group, item = fields("stream::delete", data, ITEM)
        result = await self._custom("delete", stream, data, "STREAM_DELETE_ERROR")
        if result is _ABSENT:
            existed, old = await stored("STREAM_DELETE_ERROR",
                                        self.store.delete(stream, group, item))
            result = {"old_value": old}
        else:
            old = _field(result, "old_value")
            existed = old is not None
        if existed:  # deleting a missing item sends nothing
            self._emit(change(stream, group, item, "delete", old))
        return result

    async def update(self, data: Any) -> Any:
        stream, group, item = fields("stream::update", data, ITEM)
        ops = data.get("ops")
        problem = validate_ops(ops)
        if problem is not None:
            raise bad_input("stream::update", problem)
        result = await self._custom("update", stream, data, "STREAM_UPDATE_ERROR")
        if result is not _ABSENT:
            old, new = _field(result, "old_value"), _field(result, "new_value")
            if new != old:
                self._emit(change(stream, group, item, "update" if old is not None else "create",
                                  new))
            return result
        outcome: dict[str, Any] = {}

        def compute(exists: bool, current: Any) -> tuple[Any, bool]:
            new, errors, applied = apply_ops(current, ops)
            outcome["errors"] = errors
            return (new, True) if applied else (current, False)

        existed, old, new, written = await stored(
            "STREAM_UPDATE_ERROR", self.store.update(stream, group, item, compute))
        answer: dict[str, Any] = {"old_value": old, "new_value": new if written else old}
        if outcome.get("errors"):
            answer["errors"] = outcome["errors"]
        if written:
            self._emit(change(stream, group, item, "update" if existed else "create", new))
        return answer

    async def list(self, data: Any) -> Any:
        stream, group = fields("stream::list", data, GROUP)
        return await self._read_group(stream, group, "STREAM_GET_GROUP_ERROR")

    async def list_groups(self, data: Any) -> Any:
        (stream,) = fields("stream::list_groups", data, ("stream_name",))
        result = await self._custom("list_groups", stream, data, "STREAM_LIST_GROUPS_ERROR")
        if result is not _ABSENT:
            return result
        return await stored("STREAM_LIST_GROUPS_ERROR", self.store.list_groups(stream))

    async def list_all(self, data: Any) -> Any:
        groups = await stored("STREAM_LIST_ALL_ERROR", self.store.groups())
        streams = [{"id": stream, "groups": names} for stream, names in groups.items()]
        return {"stream": streams, "count": len(streams)}

    async def send(self, data: Any) -> Any:
        stream, group, kind = fields("stream::send", data, ("stream_name", "group_id", "type"))
        item = data.get("id")
        if item is not None and not isinstance(item, str):
            raise bad_input("stream::send", "field `id` must be a string or null")
        payload = required("stream::send", data, "data")
        try:
            self._emit(custom(stream, group, item, kind, payload))
        except Exception as exc:  # e.g. data that cannot be encoded
            raise InvocationError("STREAM_SEND_ERROR", f"send failed: {exc}") from exc
        return None

    # -- reads shared with the socket join --------------------------------------------------

    async def _read_item(self, stream: str, group: str, item: str, code: str) -> Any:
        request = {"stream_name": stream, "group_id": group, "item_id": item}
        result = await self._custom("get", stream, request, code)
        if result is not _ABSENT:
            return result
        return (await stored(code, self.store.get(stream, group, item)))[1]

    async def _read_group(self, stream: str, group: str, code: str) -> Any:
        request = {"stream_name": stream, "group_id": group}
        result = await self._custom("list", stream, request, code)
        if result is not _ABSENT:
            return result
        return await stored(code, self.store.list(stream, group))

    async def sync_data(self, stream: str, group: str, item: str | None) -> Any:
        """What a join's ``sync`` carries: the item, or the group's item array."""
        if item is not None:
            return await self._read_item(stream, group, item, "STREAM_GET_ERROR")
        return await self._read_group(stream, group, "STREAM_GET_GROUP_ERROR")

    async def _custom(self, op: str, stream: str, request: Any, code: str) -> Any:
        """Call ``stream::<op>(<stream>)`` in ``default`` if registered; ``_ABSENT`` if not."""
        function_id = f"stream::{op}({stream})"
        try:
            return await self.iii.trigger_async({"function_id": function_id, "payload": request,
                                                 "namespace": "default"})
        except InvocationError as exc:
            if exc.code == "function_not_found" and function_id in exc.message:
                return _ABSENT
            raise InvocationError(code, f"{function_id} failed: {exc.code}: {exc.message}") from None

    # -- events -----------------------------------------------------------------------------

    def _emit(self, message: dict[str, Any]) -> None:
        if self.feed is not None:
            self.feed.publish(message)  # every engine, this one included, delivers it
            return
        self.hub.publish(message)
        self.triggers.fire(message)

    def _on_change(self, change_id: str, message: Any) -> None:
        """A change made on any engine sharing the redis adapter."""
        if not isinstance(message, dict):
            return
        feed = self.feed
        self.hub.publish(message)

        async def claim(binding: TriggerConfig[Any]) -> bool:
            key = binding_key(binding.namespace, binding.function_id, "stream",
                              binding.config or {})
            return feed is not None and await feed.claim(change_id, key)

        self.triggers.fire(message, claim)

    # -- lifecycle --------------------------------------------------------------------------

    async def reconfigure(self, config: dict[str, Any]) -> None:
        new = parse_settings(config, self.ctx.ephemeral)  # ValueError keeps the old block
        old = self.settings
        if (new.host, new.port) != (old.host, old.port):
            try:
                await self.hub.rebind(new.host, new.port)
            except OSError as exc:
                log.error("iii-stream: cannot listen on %s:%s (%s); still serving on port %s",
                          new.host, new.port, exc, self.port)
                new.host, new.port = old.host, old.port
        if new.adapter != old.adapter:
            try:
                store = StreamStore.open(new.adapter, self.ctx.project_dir)
                if isinstance(store.kv, RedisKV):
                    try:
                        await store.kv.link.ping()  # connected first, else the old one stays
                    except Exception:
                        await store.close()
                        raise
            except Exception as exc:
                log.error("iii-stream: adapter %s failed to open (%s); keeping %s",
                          new.adapter.name, exc, old.adapter.name)
                new.adapter = old.adapter
            else:
                previous, old_feed = self.store, self.feed
                self.store, self.feed = store, self._feed_of(store)
                if old_feed is not None:
                    await old_feed.close()
                await previous.close()
        self.settings = new

    async def stop(self) -> None:
        await self.hub.close()  # sockets closing now still spawn their leave bindings
        self.triggers.cancel()
        await self.iii.shutdown_async()
        if self.feed is not None:
            await self.feed.close()
        await self.store.close()


def _field(result: Any, name: str, default: Any = None) -> Any:
    return result.get(name, default) if isinstance(result, dict) else default




async def start(ctx: WorkerContext) -> StreamWorker:
    config = parse_settings(ctx.config, ctx.ephemeral)
    store = StreamStore.open(config.adapter, ctx.project_dir)
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = StreamWorker(iii, store, config, ctx)
    try:
        await worker.hub.start(config.host, config.port)
        worker.register()
        await iii.wait_connected(10)
    except BaseException:
        await worker.stop()
        raise
    return worker
