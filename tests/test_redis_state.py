"""iii-state on the redis adapter, alone and shared by two in-process engines
(spec/workers.md §1.3, §1.7, §2.4). Also holds the small cluster helper the other
``test_redis_*`` files import."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import redis.asyncio as aioredis

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import III, InitOptions, InvocationError, register_worker
from pyiii.workers import cron, pubsub, state, stream
from pyiii.workers.base import WorkerContext

from .conftest import EngineUnderTest, start_engine
from .conftest_peers import fn, make_spec
from .iii_process import free_port, iii_procs, manager_config  # noqa: F401
from .redis_server import start_redis

MODULES = {"iii-state": state, "iii-stream": stream, "iii-pubsub": pubsub, "iii-cron": cron}


def redis_adapter(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"name": "redis", "config": {"redis_url": url, "key_prefix": prefix, **extra}}


@dataclass
class Node:
    """One engine with first-party workers and a pyiii.sdk client connected to it."""

    under: EngineUnderTest
    client: III
    workers: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.under.url

    async def call(self, function_id: str, payload: Any) -> Any:
        return await self.client.trigger_async({"function_id": function_id, "payload": payload})


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []

    async def node(self, configs: dict[str, dict[str, Any]]) -> Node:
        under = await start_engine()
        client = register_worker(under.url, InitOptions(worker_name=f"tester-{len(self.nodes)}"))
        node = Node(under, client)
        self.nodes.append(node)
        await client.wait_connected(5)
        project = self.root / f"e{len(self.nodes)}"
        project.mkdir(parents=True, exist_ok=True)
        for name, config in configs.items():
            if name == "iii-stream":
                config = {"port": 0, **config}
            ctx = WorkerContext(name, config, project, False, url=under.url,
                                connector=local_connector(under.engine))
            node.workers[name] = await MODULES[name].start(ctx)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            for worker in node.workers.values():
                await worker.stop()
            await node.client.shutdown_async()
            await node.under.listener.close()
            await node.under.engine.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        await made.close()


async def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


async def wait_subscribers(url: str, channel: str, count: int, exact: bool = False) -> None:
    """Wait until ``count`` connections (at least, or ``exact``ly) subscribe to ``channel``."""
    probe = aioredis.Redis.from_url(url)
    try:
        async def enough() -> bool:
            found = dict(await probe.pubsub_numsub(channel))
            have = found.get(channel.encode(), 0)
            return have == count if exact else have >= count
        await wait_until(enough, 5, f"{count} subscribers on {channel}")
    finally:
        await probe.aclose()


def recorder(client: III, function_id: str, calls: list[Any]) -> None:
    async def handler(data: Any, metadata: Any = None) -> None:
        calls.append(data)

    client.register_function(function_id, handler)


# -- one engine -----------------------------------------------------------------------------

async def test_functions_store_in_the_reference_layout(cluster, redis_server, redis_prefix):
    node = await cluster.node({"iii-state": {"adapter": redis_adapter(redis_server.url,
                                                                      redis_prefix)}})
    assert await node.call("state::set", {"scope": "u", "key": "a", "value": {"n": 1}}) == \
        {"old_value": None, "new_value": {"n": 1}}
    assert await node.call("state::set", {"scope": "u", "key": "b", "data": [1, "x"]}) == \
        {"old_value": None, "new_value": [1, "x"]}
    assert await node.call("state::set", {"scope": "u", "key": "a", "value": {"n": 2}}) == \
        {"old_value": {"n": 1}, "new_value": {"n": 2}}
    assert await node.call("state::get", {"scope": "u", "key": "a"}) == {"n": 2}
    assert await node.call("state::get", {"scope": "u", "key": "nope"}) is None
    assert sorted(await node.call("state::list", {"scope": "u"}), key=str) == [[1, "x"], {"n": 2}]
    assert await node.call("state::list", {"scope": "empty"}) == []
    await node.call("state::set", {"scope": "v*[x]", "key": "k", "value": None})
    assert await node.call("state::list_groups", {}) == {"groups": ["u", "v*[x]"]}
    assert await node.call("state::update", {"scope": "u", "key": "c", "ops": [
        {"type": "increment", "path": "n", "by": 2**63 - 1},
        {"type": "increment", "path": "n", "by": 1},
        {"type": "append", "path": "tags", "value": "t"},
        {"type": "set", "path": "", "value": 5}]}) == {
        "old_value": None, "new_value": 5}
    failed = await node.call("state::update", {"scope": "u", "key": "a", "ops": [
        {"type": "append", "path": "n", "value": 1}]})
    assert failed["old_value"] == failed["new_value"] == {"n": 2}
    assert [e["code"] for e in failed["errors"]] == ["append.type_mismatch"]
    assert await node.call("state::delete", {"scope": "u", "key": "a"}) == {"n": 2}
    assert await node.call("state::delete", {"scope": "u", "key": "a"}) is None
    assert await node.call("state::delete", {"scope": "v*[x]", "key": "k"}) is None
    assert await node.call("state::list_groups", {}) == {"groups": ["u"]}

    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await raw.hgetall(f"{redis_prefix}state:u") == {b"b": b'[1,"x"]', b"c": b"5"}
    finally:
        await raw.aclose()


async def test_concurrent_updates_keep_every_increment(cluster, redis_server, redis_prefix):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-state": adapter})
    b = await cluster.node({"iii-state": adapter})
    op = {"scope": "c", "key": "n", "ops": [{"type": "increment", "path": "v", "by": 1}]}
    results = await asyncio.gather(*(node.call("state::update", op)
                                     for node in [a, b] * 20))
    assert await a.call("state::get", {"scope": "c", "key": "n"}) == {"v": 40}
    # each update saw the value it replaced: the old values are exactly 0..39
    olds = sorted(0 if r["old_value"] is None else r["old_value"]["v"] for r in results)
    assert olds == list(range(40))
    assert sorted(r["new_value"]["v"] for r in results) == list(range(1, 41))


# -- several engines ------------------------------------------------------------------------

async def test_identical_bindings_fire_once_and_remote_changes_fire(cluster, redis_server,
                                                                    redis_prefix):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-state": adapter})
    b = await cluster.node({"iii-state": adapter})
    await wait_subscribers(redis_server.url, f"{redis_prefix}state::events", 2)
    on_a: list[Any] = []
    on_b: list[Any] = []
    only_b: list[Any] = []
    recorder(a.client, "t::replica", on_a)
    recorder(b.client, "t::replica", on_b)
    recorder(b.client, "t::only_b", only_b)
    for node in (a, b):  # a replica on each engine: identical bindings, different ids
        node.client.register_trigger({"type": "state", "function_id": "t::replica",
                                      "config": {"scope": "s"}})
    b.client.register_trigger({"type": "state", "function_id": "t::only_b",
                               "config": {"scope": "s", "key": "k1"}})
    await asyncio.sleep(0.2)
    for i in range(10):
        await a.call("state::set", {"scope": "s", "key": f"k{i}", "value": i})
    await a.call("state::update", {"scope": "s", "key": "k1", "ops": [
        {"type": "set", "path": "", "value": {"x": 1}}]})
    await b.call("state::delete", {"scope": "s", "key": "k1"})
    await wait_until(lambda: len(on_a) + len(on_b) >= 12 and len(only_b) >= 3)
    await asyncio.sleep(0.3)  # room for a duplicate to show up
    fired = sorted(((d["key"], d["event_type"]) for d in on_a + on_b))
    assert fired == sorted([(f"k{i}", "state:created") for i in range(10)]
                           + [("k1", "state:updated"), ("k1", "state:deleted")])
    assert only_b == [
        {"type": "state", "event_type": "state:created", "scope": "s", "key": "k1",
         "old_value": None, "new_value": 1},
        {"type": "state", "event_type": "state:updated", "scope": "s", "key": "k1",
         "old_value": 1, "new_value": {"x": 1}},
        {"type": "state", "event_type": "state:deleted", "scope": "s", "key": "k1",
         "old_value": {"x": 1}, "new_value": None}]


async def test_official_sdk_binding_on_one_engine_sees_writes_on_another(
        cluster, redis_server, redis_prefix, peers):
    adapter = {"adapter": redis_adapter(redis_server.url, redis_prefix)}
    a = await cluster.node({"iii-state": adapter})
    b = await cluster.node({"iii-state": adapter})
    await wait_subscribers(redis_server.url, f"{redis_prefix}state::events", 2)
    peer = await peers.astart("s25", b.url, make_spec(
        "state-s25", [fn("s25::on_change", "echo", record_full=True)],
        triggers=[{"type": "state", "function_id": "s25::on_change",
                   "config": {"scope": "w", "key": "k"}}]))
    await asyncio.sleep(0.2)
    await a.call("state::set", {"scope": "w", "key": "k", "value": {"n": 1}})
    event = await peer.event("invoke", function_id="s25::on_change")
    assert event["data"] == {"type": "state", "event_type": "state:created", "scope": "w",
                             "key": "k", "old_value": None, "new_value": {"n": 1}}
    await peer.no_event("invoke", within=0.3)


# -- Redis down -----------------------------------------------------------------------------

async def test_unreachable_redis_then_reconnect(cluster, tmp_path, redis_prefix):
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    node = await cluster.node({"iii-state": {"adapter": redis_adapter(
        url, redis_prefix, connect_timeout_ms=500)}})
    calls: list[Any] = []
    recorder(node.client, "t::seen", calls)
    node.client.register_trigger({"type": "state", "function_id": "t::seen",
                                  "config": {"scope": "s"}})
    for function_id, payload, code in (
            ("state::set", {"scope": "s", "key": "k", "value": 1}, "SET_ERROR"),
            ("state::get", {"scope": "s", "key": "k"}, "GET_ERROR"),
            ("state::update", {"scope": "s", "key": "k", "ops": []}, "UPDATE_ERROR"),
            ("state::list_groups", {}, "LIST_GROUPS_ERROR")):
        with pytest.raises(InvocationError) as err:
            await node.call(function_id, payload)
        assert err.value.code == code
        assert err.value.message.startswith("redis unavailable: ")
    server = start_redis(tmp_path / "late-redis", port)
    try:
        async def works() -> bool:
            try:
                await node.call("state::get", {"scope": "s", "key": "k"})
                return True
            except InvocationError:
                return False
        await wait_until(works, 5, "state::get after redis started")
        await wait_subscribers(url, f"{redis_prefix}state::events", 1)  # resubscribed
        assert await node.call("state::set", {"scope": "s", "key": "k", "value": 2}) == \
            {"old_value": None, "new_value": 2}
        await wait_until(lambda: len(calls) == 1)
        assert calls[0]["new_value"] == 2
        server.stop()  # Redis goes away while the engine runs, then comes back
        with pytest.raises(InvocationError) as err:
            await node.call("state::get", {"scope": "s", "key": "k"})
        assert (err.value.code, err.value.message[:19]) == ("GET_ERROR", "redis unavailable: ")
        server = start_redis(tmp_path / "late-redis", port)
        await wait_until(works, 10, "state::get after redis restarted")
        await wait_subscribers(url, f"{redis_prefix}state::events", 1)
        await node.call("state::set", {"scope": "s", "key": "k", "value": 3})
        await wait_until(lambda: len(calls) == 2)
        assert calls[1]["new_value"] == 3
    finally:
        server.stop()


async def test_hot_swap_to_redis_needs_a_reachable_server(cluster, redis_server, redis_prefix):
    node = await cluster.node({"iii-state": {"adapter": "memory"}})
    worker = node.workers["iii-state"]
    await node.call("state::set", {"scope": "s", "key": "k", "value": "in memory"})
    down = redis_adapter(f"redis://127.0.0.1:{free_port()}", redis_prefix, connect_timeout_ms=300)
    with pytest.raises(ValueError, match="^config.adapter: redis unavailable: "):
        await worker.reconfigure({"adapter": down})
    assert await node.call("state::get", {"scope": "s", "key": "k"}) == "in memory"
    await worker.reconfigure({"adapter": redis_adapter(redis_server.url, redis_prefix)})
    assert await node.call("state::get", {"scope": "s", "key": "k"}) is None  # nothing copied
    calls: list[Any] = []
    recorder(node.client, "t::seen", calls)
    node.client.register_trigger({"type": "state", "function_id": "t::seen",
                                  "config": {"scope": "s"}})
    await wait_subscribers(redis_server.url, f"{redis_prefix}state::events", 1)
    await asyncio.sleep(0.1)
    await node.call("state::set", {"scope": "s", "key": "k", "value": "in redis"})
    await wait_until(lambda: len(calls) == 1)
    assert calls[0]["new_value"] == "in redis"


@pytest.mark.timeout(60)
def test_two_iii_engines_share_state_from_config_yaml(iii_procs, redis_server, redis_prefix):
    """config.yaml selects the adapter; a write through one `iii` engine is read on the other."""
    import json

    block = ("  - name: iii-state\n    config:\n      adapter:\n        name: redis\n"
             f"        config: {{redis_url: '{redis_server.url}', key_prefix: '{redis_prefix}'}}\n")
    urls, projects = [], []
    for name in ("one", "two"):
        port = free_port()
        project = iii_procs.project(name, manager_config(port, block))
        iii_procs.engine(project).wait_ready()
        urls.append(f"ws://127.0.0.1:{port}")
        projects.append(project)

    def trigger(index: int, *args: str) -> Any:
        res = iii_procs.run("trigger", *args, "--engine", urls[index], "--compact",
                            cwd=projects[index], timeout=20)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    assert trigger(0, "state::set", "scope=s", "key=k", "--json", '{"value": {"n": 1}}') == \
        {"old_value": None, "new_value": {"n": 1}}
    assert trigger(1, "state::get", "scope=s", "key=k") == {"n": 1}
    assert not (projects[0] / "data" / "state.db").exists()
