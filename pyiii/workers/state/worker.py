"""iii-state: a JSON key/value store addressed by (scope, key), with ``state`` change triggers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from ...sdk import III, InvocationError, TriggerConfig, TriggerHandler, register_worker
from ...storage.kv import KeyValueStore, StorageUnavailable, open_kv
from ...storage.redis_events import ChangeFeed, binding_key
from ...storage.redis_kv import RedisKV
from ...storage.redis_link import redis_config
from .. import settings
from ..base import WorkerContext, go_live
from ..conditions import ConditionFailed, fire
from ..errors import bad_input, stored
from ..update_ops import apply_ops, validate_ops

log = logging.getLogger("pyiii.workers.state")

ACCEPTED = ("adapter", "triggers_enabled", "max_value_bytes")
IGNORED = ("save_interval_ms",)


@dataclass
class StateSettings:
    adapter: settings.Adapter
    triggers_enabled: bool
    max_value_bytes: int | None


def parse_settings(config: dict[str, Any], ephemeral: bool) -> StateSettings:
    settings.check_keys("iii-state", config, ACCEPTED, IGNORED)
    adapter = settings.adapter("iii-state", config, "sqlite", ephemeral)
    if adapter.name == "redis":
        redis_config(adapter.config)  # refuse a bad redis block before anything starts
    return StateSettings(
        adapter=adapter,
        triggers_enabled=settings.boolean(config, "triggers_enabled", True),
        max_value_bytes=settings.integer(config, "max_value_bytes", None, minimum=1),
    )


def _address(function_id: str, data: Any) -> tuple[str, str]:
    if not isinstance(data, dict):
        raise bad_input(function_id, "expected an object with `scope` and `key`")
    scope, key = data.get("scope"), data.get("key")
    if not isinstance(scope, str):
        raise bad_input(function_id, "missing or non-string field `scope`")
    if not isinstance(key, str):
        raise bad_input(function_id, "missing or non-string field `key`")
    return scope, key


class StateBindings(TriggerHandler[Any]):
    """The ``state`` trigger type: bindings kept in registration order."""

    def __init__(self) -> None:
        self.bindings: dict[str, TriggerConfig[Any]] = {}

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        cfg = config.config if config.config is not None else {}
        if not isinstance(cfg, dict):
            raise ValueError("state trigger config must be an object {scope?, key?, "
                             "condition_function_id?}")
        for name in ("scope", "key", "condition_function_id"):
            if cfg.get(name) is not None and not isinstance(cfg[name], str):
                raise ValueError(f"state trigger config.{name} must be a string")
        self.bindings.pop(config.id, None)  # a replacement moves to the end, like a new one
        self.bindings[config.id] = config

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        self.bindings.pop(config.id, None)

    def matching(self, scope: str, key: str) -> list[TriggerConfig[Any]]:
        found = []
        for binding in self.bindings.values():
            cfg = binding.config or {}
            if cfg.get("scope") is not None and cfg["scope"] != scope:
                continue
            if cfg.get("key") is not None and cfg["key"] != key:
                continue
            found.append(binding)
        return found


class StateWorker:
    def __init__(self, iii: III, store: KeyValueStore, config: StateSettings,
                 ctx: WorkerContext) -> None:
        self.iii = iii
        self.store = store
        self.settings = config
        self.ctx = ctx
        self.triggers = StateBindings()
        self.tasks: set[asyncio.Task[None]] = set()
        self.feed = self._feed_of(store)

    def _feed_of(self, store: KeyValueStore) -> ChangeFeed | None:
        """With redis, changes go round every engine through ``state::events`` (§1.7)."""
        if not isinstance(store, RedisKV):
            return None
        feed = ChangeFeed(store.link, "state::events", self._on_change)
        feed.start()
        return feed

    def register(self) -> None:
        iii = self.iii
        for name, handler, description in (
            ("state::set", self.set, "Store a value at (scope, key)"),
            ("state::get", self.get, "Read the value at (scope, key), or null"),
            ("state::delete", self.delete, "Remove the value at (scope, key)"),
            ("state::update", self.update, "Apply update operations to the value at (scope, key)"),
            ("state::list", self.list, "All values of a scope, in first-write order"),
            ("state::list_groups", self.list_groups, "All scopes that hold values"),
        ):
            iii.register_function(name, handler, description=description)
        iii.register_trigger_type({"id": "state", "description": "Fires when a state value changes"},
                                  self.triggers)

    # -- functions --------------------------------------------------------------------------

    def _check_size(self, value: Any) -> None:
        limit = self.settings.max_value_bytes
        if limit is not None:
            size = len(orjson.dumps(value))
            if size > limit:
                raise InvocationError("VALUE_TOO_LARGE", f"value of {size} bytes exceeds the "
                                                    f"configured max_value_bytes limit of {limit}")

    async def set(self, data: Any) -> Any:
        scope, key = _address("state::set", data)
        value = data["value"] if "value" in data else data.get("data")
        self._check_size(value)
        existed, old = await stored("SET_ERROR", self.store.set(scope, key, value))
        self._fire(scope, key, "state:updated" if existed else "state:created", old, value)
        return {"old_value": old, "new_value": value}

    async def get(self, data: Any) -> Any:
        scope, key = _address("state::get", data)
        return (await stored("GET_ERROR", self.store.get(scope, key)))[1]

    async def delete(self, data: Any) -> Any:
        scope, key = _address("state::delete", data)
        _, old = await stored("DELETE_ERROR", self.store.delete(scope, key))
        self._fire(scope, key, "state:deleted", old, None)
        return old

    async def update(self, data: Any) -> Any:
        scope, key = _address("state::update", data)
        ops = data.get("ops")
        problem = validate_ops(ops)
        if problem is not None:
            raise bad_input("state::update", problem)
        outcome: dict[str, Any] = {}

        def compute(exists: bool, current: Any) -> tuple[Any, bool]:
            new, errors, applied = apply_ops(current, ops)
            outcome["errors"] = errors
            if applied == 0:
                return current, False
            self._check_size(new)
            return new, True

        existed, old, new, written = await stored(
            "UPDATE_ERROR", self.store.update(scope, key, compute))
        result: dict[str, Any] = {"old_value": old, "new_value": new if written else old}
        if outcome.get("errors"):
            result["errors"] = outcome["errors"]
        if written:
            self._fire(scope, key, "state:updated" if existed else "state:created", old, new)
        return result

    async def list(self, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("scope"), str):
            raise bad_input("state::list", "missing or non-string field `scope`")
        return await stored("LIST_ERROR", self.store.list(data["scope"]))

    async def list_groups(self, data: Any) -> Any:
        return {"groups": await stored("LIST_GROUPS_ERROR", self.store.list_groups())}

    # -- triggers ---------------------------------------------------------------------------

    def _fire(self, scope: str, key: str, event: str, old: Any, new: Any) -> None:
        if not self.settings.triggers_enabled:
            return
        payload = {"type": "state", "event_type": event, "scope": scope, "key": key,
                   "old_value": old, "new_value": new}
        if self.feed is not None:
            self.feed.publish(payload)  # every engine, this one included, dispatches it
            return
        self._start_dispatch(payload, None, None)

    def _on_change(self, change_id: str, payload: Any) -> None:
        """A change made on any engine sharing the redis adapter."""
        if self.settings.triggers_enabled and isinstance(payload, dict):
            self._start_dispatch(payload, self.feed, change_id)

    def _start_dispatch(self, payload: dict[str, Any], feed: ChangeFeed | None,
                        change_id: str | None) -> None:
        bindings = self.triggers.matching(payload["scope"], payload["key"])
        if not bindings:
            return
        task = asyncio.ensure_future(self._dispatch(bindings, payload, feed, change_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _dispatch(self, bindings: list[TriggerConfig[Any]], payload: dict[str, Any],
                        feed: ChangeFeed | None = None, change_id: str | None = None) -> None:
        for binding in bindings:
            if binding.id not in self.triggers.bindings:
                continue  # unregistered meanwhile: no new deliveries
            if feed is not None and change_id is not None and not await feed.claim(
                    change_id, binding_key(binding.namespace, binding.function_id, "state",
                                           binding.config or {})):
                continue  # another engine holding the same binding runs it
            try:
                await fire(self.iii, binding, payload)
            except ConditionFailed as exc:
                log.warning("state trigger %s skipped: %s", binding.id, exc)
            except Exception as exc:
                log.info("state trigger handler %s failed: %s", binding.function_id, exc)

    # -- lifecycle --------------------------------------------------------------------------

    async def reconfigure(self, config: dict[str, Any]) -> None:
        new = parse_settings(config, self.ctx.ephemeral)
        if new.adapter != self.settings.adapter:
            store = open_kv(new.adapter.name, new.adapter.config, self.ctx.project_dir,
                            "data/state.db")
            if isinstance(store, RedisKV):
                try:
                    await store.link.ping()  # connected first; on failure the old one stays
                except StorageUnavailable as exc:
                    await store.close()
                    raise ValueError(f"config.adapter: {exc}") from None
            old, old_feed = self.store, self.feed
            self.store, self.feed = store, self._feed_of(store)
            if old_feed is not None:
                await old_feed.close()
            await old.close()
        self.settings = new

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.iii.shutdown_async()
        if self.feed is not None:
            await self.feed.close()
        await self.store.close()



async def start(ctx: WorkerContext) -> StateWorker:
    config = parse_settings(ctx.config, ctx.ephemeral)
    store = open_kv(config.adapter.name, config.adapter.config, ctx.project_dir, "data/state.db")
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = StateWorker(iii, store, config, ctx)
    return await go_live(worker)
