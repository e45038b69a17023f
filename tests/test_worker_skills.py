"""The skills worker: skills, iii:// URIs, prompts and change triggers (spec/workers.md §9,
scenarios 40 and 41), in-process next to iii-state, with an official-SDK peer, and out of
process under a real `iii` engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, register_worker
from pyiii.workers import skills, state
from pyiii.workers.base import WorkerContext
from pyiii.workers.skills.content import description_of, render_index
from pyiii.workers.skills.storage import SkillsSettings, parse_settings

from .conftest_peers import fn, make_spec
from .iii_process import iii_procs, manager_config  # noqa: F401

DEMO = "# Demo\n\nShort summary.\n\nSee [g](iii://demo/demo::guide)"
INDEX_INTRO = "Every registered skill; read one through its iii:// link."


def _ctx(engine: Any, tmp_path: Any, name: str, config: dict[str, Any]) -> WorkerContext:
    return WorkerContext(name, config, tmp_path, False, url=engine.url,
                         connector=local_connector(engine.engine))


@pytest.fixture
async def state_worker(engine, tmp_path):
    worker = await state.start(_ctx(engine, tmp_path, "iii-state", {"adapter": "memory"}))
    yield worker
    await worker.stop()


@pytest.fixture
async def skills_worker(engine, tmp_path, state_worker):
    worker = await skills.start(_ctx(engine, tmp_path, "skills", {}))
    yield worker
    await worker.stop()


@pytest.fixture
async def w(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="W"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


async def call(iii: Any, function_id: str, payload: Any = None) -> Any:
    return await iii.trigger_async({"function_id": function_id, "payload": payload})


async def fails(iii: Any, function_id: str, payload: Any) -> tuple[str, str]:
    with pytest.raises(InvocationError) as err:
        await call(iii, function_id, payload)
    return err.value.code, err.value.message


async def read(iii: Any, uri: str) -> tuple[str, str]:
    answer = await call(iii, "skills::resources-read", {"uri": uri})
    [content] = answer["contents"]
    assert content["uri"] == uri
    return content["mimeType"], content["text"]


async def until(check: Any, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _rfc3339(text: str) -> bool:
    from datetime import datetime
    return text.endswith("Z") and datetime.fromisoformat(text.replace("Z", "+00:00")) is not None


async def test_scenario_40_skills_and_uris(skills_worker, w):
    events: list[Any] = []
    w.register_function("w::changed", events.append)
    guide: dict[str, Any] = {"result": {"content": "# Guide"}}
    w.register_function("demo::guide", lambda data: guide["result"])
    w.register_trigger({"type": "skills::on-change", "function_id": "w::changed", "config": {}})
    await asyncio.sleep(0.1)

    registered = await call(w, "skills::register", {"id": "demo", "skill": DEMO})
    assert registered["id"] == "demo" and _rfc3339(registered["registered_at"])
    await until(lambda: events)
    assert events == [{"op": "register", "id": "demo"}]

    mime, index = await read(w, "iii://skills")
    assert mime == "text/markdown"
    assert "# Skills" in index
    assert "[`demo`](iii://demo) — Demo — Short summary." in index
    assert index == f"# Skills\n\n{INDEX_INTRO}\n\n- [`demo`](iii://demo) — Demo — Short summary.\n"
    assert await read(w, "iii://demo") == ("text/markdown", DEMO)
    assert await read(w, "iii://demo/demo::guide") == ("text/markdown", "# Guide")
    guide["result"] = {"n": 1}
    assert await read(w, "iii://demo/demo::guide") == ("application/json", '{\n  "n": 1\n}')
    assert await fails(w, "skills::resources-read", {"uri": "iii://x/state::set"}) == (
        "INTERNAL_NAMESPACE",
        "'state::set' is in an internal namespace and cannot back a skill resource")

    await call(w, "skills::register", {"id": "demo/advanced", "skill": "# Advanced\n\nDeep."})
    assert await read(w, "iii://demo/advanced") == ("text/markdown", "# Advanced\n\nDeep.")
    await until(lambda: len(events) == 2)
    assert events[1] == {"op": "register", "id": "demo/advanced"}


async def test_scenario_41_bad_input_and_prompts(skills_worker, w):
    events: list[Any] = []
    w.register_function("w::changed", events.append)
    w.register_trigger({"type": "skills::on-change", "function_id": "w::changed"})
    w.register_function("p::mail", lambda args: f"Write a mail to {args['to']}")
    await asyncio.sleep(0.1)

    code, message = await fails(w, "skills::register", {"id": "Demo!", "skill": "# x"})
    assert (code, message) == ("INVALID_ID", "invalid skill id 'Demo!': use 1 to 8 segments "
                               "joined by '/', each 1-64 characters of lowercase letters, "
                               "digits, '_' or '-'")
    code, message = await fails(w, "skills::register", {"id": "big", "skill": "x" * 300 * 1024})
    assert (code, message) == ("SKILL_TOO_LARGE", "skill is 307200 bytes; the limit is 262144 "
                               "bytes (256 KiB)")
    assert await call(w, "skills::unregister", {"id": "zzz"}) == {"id": "zzz", "removed": False}
    code, message = await fails(w, "skills::resources-read", {"uri": "http://x"})
    assert (code, message) == ("INVALID_URI", "invalid URI 'http://x': it must start with iii://")

    registered = await call(w, "prompts::register", {"name": "mail", "description": "d",
                                                     "function_id": "p::mail"})
    assert registered["name"] == "mail" and _rfc3339(registered["registered_at"])
    got = await call(w, "prompts::mcp-get", {"name": "mail", "arguments": {"to": "x"}})
    assert got == {"description": "d", "messages": [
        {"role": "user", "content": {"type": "text", "text": "Write a mail to x"}}]}
    assert await fails(w, "prompts::mcp-get", {"name": "nope"}) == (
        "NOT_FOUND", "Prompt not found: nope")
    await asyncio.sleep(0.2)
    assert events == []  # the unregister removed nothing, so nothing fired


async def test_skill_listing_resources_and_refusals(skills_worker, w):
    assert await read(w, "iii://skills") == (
        "text/markdown", "# Skills\n\nNo skills are registered yet.\n")
    long = "word " * 40
    await call(w, "skills::register", {"id": "zeta", "skill": "no heading here"})
    await call(w, "skills::register", {"id": "alpha", "skill": f"# Alpha\n## Sub\n\n{long}\n"})
    await call(w, "skills::register", {"id": "alpha", "skill": "# Alpha\n\nFirst.\nSecond liné."})
    listed = (await call(w, "skills::list", {}))["skills"]
    assert [(s["id"], s["bytes"]) for s in listed] == [("alpha", 29), ("zeta", 15)]
    assert all(_rfc3339(s["registered_at"]) for s in listed)
    assert await call(w, "skills::resources-list", {}) == {"resources": [
        {"uri": "iii://skills", "name": "skills", "description": "Index of every registered skill",
         "mimeType": "text/markdown"},
        {"uri": "iii://alpha", "name": "Alpha", "mimeType": "text/markdown"},
        {"uri": "iii://zeta", "name": "zeta", "mimeType": "text/markdown"}]}
    _, index = await read(w, "iii://skills")
    assert index.splitlines()[4:] == ["- [`alpha`](iii://alpha) — Alpha — First. Second liné.",
                                      "- [`zeta`](iii://zeta) — zeta — no heading here"]
    templates = (await call(w, "skills::resources-templates", {}))["resourceTemplates"]
    assert [t["uriTemplate"] for t in templates] == ["iii://{skill_id}",
                                                     "iii://{skill_id}/{function_id}"]

    w.register_function("docs::facts", lambda data: "plain *markdown*")
    await asyncio.sleep(0.05)
    assert await read(w, "iii://fn/docs::facts") == ("text/markdown", "plain *markdown*")
    code, message = await fails(w, "skills::resources-read", {"uri": "iii://a/b/nope::x"})
    assert code == "SECTION_FAILED" and message.startswith(
        "section function 'nope::x' failed: function_not_found")
    assert (await fails(w, "skills::resources-read", {"uri": "iii://fn/engine::logs::list"}))[0] \
        == "INTERNAL_NAMESPACE"
    assert await fails(w, "skills::resources-read", {"uri": "iii://missing"}) == (
        "NOT_FOUND", "Skill not found: missing")
    assert await fails(w, "skills::resources-read", {"uri": "iii://Bad!"}) == (
        "NOT_FOUND", "Skill not found: Bad!")
    for uri, why in (("iii://", "the skill id is empty"), ("iii://a//b", "it has an empty segment"),
                     ("iii://fn", "iii://fn/ must be followed by a function id")):
        assert await fails(w, "skills::resources-read", {"uri": uri}) == (
            "INVALID_URI", f"invalid URI '{uri}': {why}")

    assert await fails(w, "skills::register", {"id": "fn/x", "skill": "x"}) == (
        "INVALID_ID", "invalid skill id 'fn/x': 'fn' is reserved as a first segment")
    assert (await fails(w, "skills::register", {"id": "/".join("a" * 9), "skill": "x"}))[0] == \
        "INVALID_ID"
    assert (await fails(w, "skills::register", {"id": "a" * 65, "skill": "x"}))[0] == "INVALID_ID"
    assert await fails(w, "skills::register", {"id": "e", "skill": "  \n"}) == (
        "SKILL_EMPTY", "skill must not be empty")
    assert await fails(w, "skills::register", {"skill": "x"}) == (
        "deserialization_error",
        "Failed to deserialize input for skills::register: missing field `id`")
    assert await fails(w, "skills::register", {"id": "a", "skill": 5}) == (
        "deserialization_error",
        "Failed to deserialize input for skills::register: `skill` must be a string")
    assert await fails(w, "skills::unregister", {"id": "A"}) == (
        "INVALID_ID", "invalid skill id 'A': use 1 to 8 segments joined by '/', each 1-64 "
        "characters of lowercase letters, digits, '_' or '-'")

    events: list[Any] = []
    w.register_function("w::changed", events.append)
    w.register_function("w::only_zeta", lambda data: data["id"] == "zeta")
    w.register_trigger({"type": "skills::on-change", "function_id": "w::changed",
                        "config": {"condition_function_id": "w::only_zeta"}})
    await asyncio.sleep(0.1)
    assert await call(w, "skills::unregister", {"id": "alpha"}) == {"id": "alpha", "removed": True}
    assert await call(w, "skills::unregister", {"id": "zeta"}) == {"id": "zeta", "removed": True}
    await until(lambda: events)
    await asyncio.sleep(0.1)
    assert events == [{"op": "unregister", "id": "zeta"}]  # the condition skipped alpha
    assert (await call(w, "skills::list", {})) == {"skills": []}


async def test_prompts_listing_shapes_and_refusals(skills_worker, w):
    events: list[Any] = []
    w.register_function("w::changed", events.append)
    w.register_trigger({"type": "prompts::on-change", "function_id": "w::changed"})
    w.register_function("p::chat", lambda args: {"messages": [{"role": "assistant", "content": {
        "type": "text", "text": f"hi {args.get('who', 'you')}"}}]})
    w.register_function("p::content", lambda args: {"content": "from content"})
    w.register_function("p::number", lambda args: 5)
    w.register_function("p::broken", lambda args: 1 / 0)
    await asyncio.sleep(0.1)
    args = [{"name": "who", "description": "whom to greet", "required": True}, {"name": "tone"}]
    await call(w, "prompts::register", {"name": "chat", "description": "Chat", "arguments": args,
                                        "function_id": "p::chat"})
    for name in ("content", "number", "broken"):
        await call(w, "prompts::register", {"name": name, "description": name,
                                            "function_id": f"p::{name}"})
    listed = (await call(w, "prompts::list", {}))["prompts"]
    assert [(p["name"], p["function_id"], p["arguments"]) for p in listed] == [
        ("broken", "p::broken", 0), ("chat", "p::chat", 2), ("content", "p::content", 0),
        ("number", "p::number", 0)]
    mcp = (await call(w, "prompts::mcp-list", {}))["prompts"]
    assert mcp[1] == {"name": "chat", "description": "Chat", "arguments": [
        {"name": "who", "required": True, "description": "whom to greet"},
        {"name": "tone", "required": False}]}

    assert await call(w, "prompts::mcp-get", {"name": "chat", "arguments": {"who": "ann"}}) == {
        "description": "Chat",
        "messages": [{"role": "assistant", "content": {"type": "text", "text": "hi ann"}}]}
    assert (await call(w, "prompts::mcp-get", {"name": "content"}))["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "from content"}}]
    assert await fails(w, "prompts::mcp-get", {"name": "number"}) == (
        "INVALID_PROMPT_OUTPUT", "prompt function 'p::number' returned neither a string, "
        "{content} nor {messages: [...]}")
    code, message = await fails(w, "prompts::mcp-get", {"name": "broken"})
    assert code == "SECTION_FAILED" and message.startswith("prompt function 'p::broken' failed:")

    base = {"name": "x", "description": "d", "function_id": "p::chat"}
    for change, expected in (
            ({"name": "X"}, ("INVALID_ID", "invalid prompt name 'X': use 1-64 characters of "
                             "lowercase letters, digits, '_' or '-'")),
            ({"description": " "}, ("INVALID_PROMPT", "description must not be blank")),
            ({"function_id": ""}, ("INVALID_PROMPT", "function_id must not be blank")),
            ({"arguments": [{"name": "a"}, {"name": "a"}]},
             ("INVALID_PROMPT", "argument 'a' is declared twice")),
            ({"arguments": [{"name": " "}]},
             ("INVALID_PROMPT", "argument names must not be blank")),
            ({"function_id": "engine::log::info"},
             ("INTERNAL_NAMESPACE", "'engine::log::info' is in an internal namespace and cannot "
                                    "back a skill resource")),
            ({"arguments": "who"}, ("deserialization_error", "Failed to deserialize input for "
                                    "prompts::register: `arguments` must be a list"))):
        assert await fails(w, "prompts::register", {**base, **change}) == expected

    await until(lambda: len(events) == 4)
    assert await call(w, "prompts::unregister", {"name": "number"}) == {"name": "number",
                                                                         "removed": True}
    assert await call(w, "prompts::unregister", {"name": "number"}) == {"name": "number",
                                                                         "removed": False}
    await until(lambda: len(events) == 5)
    await asyncio.sleep(0.1)
    assert sorted(e["name"] for e in events[:4]) == ["broken", "chat", "content", "number"]
    assert events[4] == {"op": "unregister", "name": "number"}


async def test_state_error_without_the_state_worker(engine, tmp_path, w):
    worker = await skills.start(_ctx(engine, tmp_path, "skills", {"state_timeout_ms": 500}))
    try:
        code, message = await fails(w, "skills::register", {"id": "a", "skill": "x"})
        assert code == "STATE_ERROR" and message.startswith("state::set failed: function_not_found")
        assert (await fails(w, "skills::list", {}))[0] == "STATE_ERROR"
        assert (await fails(w, "prompts::list", {}))[0] == "STATE_ERROR"
    finally:
        await worker.stop()


async def test_scopes_and_timeout_apply_live(engine, tmp_path, state_worker, w):
    worker = await skills.start(_ctx(engine, tmp_path, "skills",
                                     {"scopes": {"skills": "my-skills"}}))
    try:
        await call(w, "skills::register", {"id": "a", "skill": "# A"})
        stored = await call(w, "state::get", {"scope": "my-skills", "key": "a"})
        assert (stored["id"], stored["skill"]) == ("a", "# A")
        await worker.reconfigure({"scopes": {"skills": "other", "prompts": "p2"},
                                  "state_timeout_ms": 300})
        assert await call(w, "skills::list", {}) == {"skills": []}

        async def slow(data: Any) -> str:
            await asyncio.sleep(1.0)
            return "late"
        w.register_function("slow::section", slow)
        await asyncio.sleep(0.05)
        code, message = await fails(w, "skills::resources-read", {"uri": "iii://fn/slow::section"})
        assert code == "SECTION_FAILED" and "TIMEOUT" in message
        with pytest.raises(ValueError, match="state_timeout_ms"):
            await worker.reconfigure({"state_timeout_ms": 0})
        assert worker.storage.settings == SkillsSettings("other", "p2", 300)
    finally:
        await worker.stop()


def test_settings_and_text_rules():
    assert parse_settings({}) == SkillsSettings("skills", "prompts", 10_000)
    with pytest.raises(ValueError, match=r"^unknown key config\.scope \(did you mean 'scopes'\?\)"):
        parse_settings({"scope": {}})
    with pytest.raises(ValueError, match=r"unknown key config\.scopes\.tools"):
        parse_settings({"scopes": {"tools": "t"}})
    with pytest.raises(ValueError, match=r"config\.scopes\.skills must be a non-empty string"):
        parse_settings({"scopes": {"skills": ""}})
    text = "x" * 150
    assert description_of(f"# T\n\n{text}") == "x" * 140 + "..."
    assert description_of("# Only a title") == ""
    assert render_index([{"id": "t", "skill": "# Only a title"}]).endswith("- [`t`](iii://t) — "
                                                                           "Only a title\n")


async def test_official_sdk_section_and_change_binding(skills_worker, w, engine, peers):
    """An S25 worker hosts the section behind an iii:// URI and binds skills::on-change."""
    peer = await peers.astart("s25", engine.url, make_spec(
        "s25-docs", [fn("docs::guide", "big", n=12), fn("docs::on_change", "echo")],
        triggers=[{"type": "skills::on-change", "function_id": "docs::on_change"}]))
    await call(w, "skills::register", {"id": "docs", "skill": "# Docs\n\niii://docs/docs::guide"})
    event = await peer.event("invoke", function_id="docs::on_change")
    assert event["data"] == {"op": "register", "id": "docs"}
    assert await read(w, "iii://docs/docs::guide") == ("text/markdown", "x" * 12)
    # and the S25 worker reads through the registry itself
    answer = await peer.acall("skills::resources-read", {"uri": "iii://docs"})
    assert answer == {"result": {"contents": [{"uri": "iii://docs", "mimeType": "text/markdown",
                                               "text": "# Docs\n\niii://docs/docs::guide"}]}}


@pytest.mark.timeout(60)
async def test_out_of_process_under_a_real_engine(iii_procs):
    """`isolation: process`: the supervisor runs `python -m pyiii.workers.skills`."""
    project = iii_procs.project("proj", manager_config(0, (
        "  - name: iii-state\n    config: {adapter: memory}\n"
        "  - name: skills\n    isolation: process\n")))
    engine = iii_procs.engine(project)
    url = await asyncio.to_thread(engine.wait_ready)
    await asyncio.to_thread(engine.wait_line, r"started skills \(builtin, process\)", 15)
    iii = register_worker(url, InitOptions(worker_name="client"))
    try:
        await iii.wait_connected(5)

        async def ready() -> None:
            while True:
                try:
                    await call(iii, "skills::resources-templates", {})
                    return
                except InvocationError as exc:
                    assert exc.code == "function_not_found"
                    await asyncio.sleep(0.1)
        await asyncio.wait_for(ready(), 15)
        await call(iii, "skills::register", {"id": "far", "skill": "# Far\n\nAway."})
        assert await read(iii, "iii://far") == ("text/markdown", "# Far\n\nAway.")
        workers = (await call(iii, "engine::workers::list", {}))["workers"]
        assert [x["isolation"] for x in workers if x["name"] == "skills"] == ["process"]
    finally:
        await iii.shutdown_async()
