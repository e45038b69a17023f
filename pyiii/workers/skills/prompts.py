"""``prompts::*``: slash-command templates whose text comes from a function at read time
(spec/workers.md §9.2)."""

from __future__ import annotations

from typing import Any

from ...sdk import InvocationError
from ..errors import bad_input
from . import inputs
from .changes import ChangeBindings
from .content import as_messages, check_not_internal, check_prompt_name, is_segment, now_rfc3339
from .storage import Storage


class Prompts:
    def __init__(self, storage: Storage, changes: ChangeBindings) -> None:
        self.storage = storage
        self.changes = changes

    @property
    def scope(self) -> str:
        return self.storage.settings.prompts_scope

    def functions(self) -> list[tuple[str, Any, str]]:
        return [
            ("prompts::register", self.register, "Register a prompt template backed by a function"),
            ("prompts::unregister", self.unregister, "Remove a prompt by name"),
            ("prompts::list", self.list, "Registered prompts, without descriptions"),
            ("prompts::mcp-list", self.mcp_list, "Prompts in the MCP prompts/list shape"),
            ("prompts::mcp-get", self.mcp_get, "Render a prompt (MCP prompts/get)"),
        ]

    async def register(self, data: Any) -> dict[str, Any]:
        fid = "prompts::register"
        data = inputs.request(data, fid)
        name = inputs.text(data, "name", fid)
        description = inputs.text(data, "description", fid)
        target = inputs.text(data, "function_id", fid)
        arguments = inputs.arguments(data, fid)
        assert name is not None and description is not None and target is not None
        check_prompt_name(name, fid)
        problem = None
        names = [a["name"] for a in arguments]
        if not description.strip():
            problem = "description must not be blank"
        elif not target.strip():
            problem = "function_id must not be blank"
        elif any(not n.strip() for n in names):
            problem = "argument names must not be blank"
        elif len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            problem = f"argument '{duplicate}' is declared twice"
        if problem is not None:
            raise InvocationError("INVALID_PROMPT", problem, fid)
        check_not_internal(target, fid)
        record = {"name": name, "description": description, "arguments": arguments,
                  "function_id": target, "registered_at": now_rfc3339()}
        await self.storage.put(self.scope, name, record, fid)
        self.changes.dispatch({"op": "register", "name": name})
        return {"name": name, "registered_at": record["registered_at"]}

    async def unregister(self, data: Any) -> dict[str, Any]:
        fid = "prompts::unregister"
        name = inputs.text(inputs.request(data, fid), "name", fid)
        assert name is not None
        check_prompt_name(name, fid)
        removed = await self.storage.delete(self.scope, name, fid)
        if removed:
            self.changes.dispatch({"op": "unregister", "name": name})
        return {"name": name, "removed": removed}

    async def list(self, data: Any) -> dict[str, Any]:
        records = await self.storage.all(self.scope, "prompts::list", "name")
        return {"prompts": [{"name": r["name"], "function_id": r.get("function_id"),
                             "arguments": len(r.get("arguments") or []),
                             "registered_at": r.get("registered_at")} for r in records]}

    async def mcp_list(self, data: Any) -> dict[str, Any]:
        records = await self.storage.all(self.scope, "prompts::mcp-list", "name")
        return {"prompts": [{"name": r["name"], "description": r.get("description"),
                             "arguments": [_mcp_argument(a) for a in r.get("arguments") or []]}
                            for r in records]}

    async def mcp_get(self, data: Any) -> dict[str, Any]:
        fid = "prompts::mcp-get"
        data = inputs.request(data, fid)
        name = inputs.text(data, "name", fid)
        arguments = data.get("arguments")
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, dict):
            raise bad_input(fid, "`arguments` must be an object")
        assert name is not None
        record = None
        if is_segment(name):  # other names cannot have been registered
            record = await self.storage.get(self.scope, name, fid)
        if not isinstance(record, dict) or not isinstance(record.get("function_id"), str):
            raise InvocationError("NOT_FOUND", f"Prompt not found: {name}", fid)
        target = record["function_id"]
        try:
            result = await self.storage.call(target, arguments)
        except InvocationError as exc:
            raise InvocationError("SECTION_FAILED", f"prompt function '{target}' failed: "
                                  f"{exc.code}: {exc.message}", fid) from None
        messages = as_messages(result)
        if messages is None:
            raise InvocationError("INVALID_PROMPT_OUTPUT", f"prompt function '{target}' "
                                  "returned neither a string, {content} nor {messages: [...]}",
                                  fid)
        return {"description": record.get("description"), "messages": messages}


def _mcp_argument(argument: Any) -> dict[str, Any]:
    if not isinstance(argument, dict):
        return {"name": str(argument), "required": False}
    out = {"name": argument.get("name"), "required": bool(argument.get("required", False))}
    if argument.get("description") is not None:
        out["description"] = argument["description"]
    return out
