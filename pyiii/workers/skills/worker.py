"""skills: a registry of agent-facing markdown (skills) and prompt templates, and the resolver
of ``iii://`` URIs (spec/workers.md §9). Everything is stored through ``state::*``."""

from __future__ import annotations

from typing import Any

from ...sdk import III, InvocationError, register_worker
from ..base import WorkerContext, go_live
from . import inputs
from .changes import ChangeBindings
from .content import (
    INDEX_URI, MARKDOWN, MAX_SKILL_BYTES, PREFIX, as_content, check_id, id_problem,
    now_rfc3339, render_index, resolve, title_of,
)
from .prompts import Prompts
from .storage import SkillsSettings, Storage, parse_settings

TEMPLATES = [
    {"uriTemplate": "iii://{skill_id}", "name": "skill",
     "description": "The markdown body of a registered skill", "mimeType": MARKDOWN},
    {"uriTemplate": "iii://{skill_id}/{function_id}", "name": "skill-section",
     "description": "A section of a skill, produced by calling the function when it is read"},
]


class SkillsWorker:
    def __init__(self, iii: III, config: SkillsSettings) -> None:
        self.iii = iii
        self.storage = Storage(iii, config)
        self.skill_changes = ChangeBindings(iii, "skills::on-change")
        self.prompt_changes = ChangeBindings(iii, "prompts::on-change")
        self.prompts = Prompts(self.storage, self.prompt_changes)

    @property
    def scope(self) -> str:
        return self.storage.settings.skills_scope

    def register(self) -> None:
        for name, handler, description in (
            ("skills::register", self.register_skill, "Store a skill served at iii://<id>"),
            ("skills::unregister", self.unregister_skill, "Remove a skill by id"),
            ("skills::list", self.list_skills, "Registered skills without their bodies"),
            ("skills::resources-list", self.resources_list, "Skills as MCP resources"),
            ("skills::resources-read", self.resources_read, "Read an iii:// URI"),
            ("skills::resources-templates", self.resources_templates,
             "The iii:// URI templates (MCP resources/templates/list)"),
            *self.prompts.functions(),
        ):
            self.iii.register_function(name, handler, description=description)
        self.iii.register_trigger_type(
            {"id": "skills::on-change",
             "description": "Fires {op, id} when a skill is registered or removed"},
            self.skill_changes)
        self.iii.register_trigger_type(
            {"id": "prompts::on-change",
             "description": "Fires {op, name} when a prompt is registered or removed"},
            self.prompt_changes)

    async def register_skill(self, data: Any) -> dict[str, Any]:
        fid = "skills::register"
        data = inputs.request(data, fid)
        skill_id = inputs.text(data, "id", fid)
        body = inputs.text(data, "skill", fid)
        assert skill_id is not None and body is not None
        check_id(skill_id, fid)
        if not body.strip():
            raise InvocationError("SKILL_EMPTY", "skill must not be empty", fid)
        size = len(body.encode())
        if size > MAX_SKILL_BYTES:
            raise InvocationError("SKILL_TOO_LARGE", f"skill is {size} bytes; the limit is "
                                  f"{MAX_SKILL_BYTES} bytes (256 KiB)", fid)
        record = {"id": skill_id, "skill": body, "registered_at": now_rfc3339()}
        await self.storage.put(self.scope, skill_id, record, fid)
        self.skill_changes.dispatch({"op": "register", "id": skill_id})
        return {"id": skill_id, "registered_at": record["registered_at"]}

    async def unregister_skill(self, data: Any) -> dict[str, Any]:
        fid = "skills::unregister"
        skill_id = inputs.text(inputs.request(data, fid), "id", fid)
        assert skill_id is not None
        check_id(skill_id, fid)
        removed = await self.storage.delete(self.scope, skill_id, fid)
        if removed:
            self.skill_changes.dispatch({"op": "unregister", "id": skill_id})
        return {"id": skill_id, "removed": removed}

    async def _skills(self, caller: str) -> list[dict[str, Any]]:
        records = await self.storage.all(self.scope, caller, "id")
        return [r for r in records if isinstance(r.get("skill"), str)]

    async def list_skills(self, data: Any) -> dict[str, Any]:
        return {"skills": [{"id": r["id"], "bytes": len(r["skill"].encode()),
                            "registered_at": r.get("registered_at")}
                           for r in await self._skills("skills::list")]}

    async def resources_list(self, data: Any) -> dict[str, Any]:
        resources = [{"uri": INDEX_URI, "name": "skills",
                      "description": "Index of every registered skill", "mimeType": MARKDOWN}]
        for record in await self._skills("skills::resources-list"):
            resources.append({"uri": PREFIX + record["id"],
                              "name": title_of(record["skill"]) or record["id"],
                              "mimeType": MARKDOWN})
        return {"resources": resources}

    def resources_templates(self, data: Any) -> dict[str, Any]:
        return {"resourceTemplates": [dict(t) for t in TEMPLATES]}

    async def resources_read(self, data: Any) -> dict[str, Any]:
        fid = "skills::resources-read"
        uri = inputs.text(inputs.request(data, fid), "uri", fid)
        assert uri is not None
        target = resolve(uri, fid)
        if target.kind == "index":
            mime, text = MARKDOWN, render_index(await self._skills(fid))
        elif target.kind == "section":
            mime, text = await self._section(target.name, fid)
        else:
            mime, text = MARKDOWN, await self._body(target.name, fid)
        return {"contents": [{"uri": uri, "mimeType": mime, "text": text}]}

    async def _body(self, skill_id: str, caller: str) -> str:
        record = None
        if id_problem(skill_id) is None:  # other ids cannot have been registered
            record = await self.storage.get(self.scope, skill_id, caller)
        if not isinstance(record, dict) or not isinstance(record.get("skill"), str):
            raise InvocationError("NOT_FOUND", f"Skill not found: {skill_id}", caller)
        return record["skill"]

    async def _section(self, function_id: str, caller: str) -> tuple[str, str]:
        """A lazy leaf: the function runs only now, with ``{}``."""
        try:
            result = await self.storage.call(function_id, {})
        except InvocationError as exc:
            raise InvocationError("SECTION_FAILED", f"section function '{function_id}' "
                                  f"failed: {exc.code}: {exc.message}", caller) from None
        return as_content(result)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        self.storage.settings = parse_settings(config)  # ValueError keeps the old settings

    async def stop(self) -> None:
        self.skill_changes.cancel()
        self.prompt_changes.cancel()
        await self.iii.shutdown_async()


async def start(ctx: WorkerContext) -> SkillsWorker:
    config = parse_settings(ctx.config)
    iii = register_worker(ctx.url, ctx.sdk_options())
    return await go_live(SkillsWorker(iii, config))
