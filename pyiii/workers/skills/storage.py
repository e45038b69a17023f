"""Skills and prompts are kept through ``state::*`` calls (so their durability is the state
adapter's); a failing or missing state worker becomes ``STATE_ERROR``. Calls to the functions
behind sections and prompts share the same time bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...sdk import III, InvocationError
from .. import settings

NAME = "skills"


@dataclass(frozen=True)
class SkillsSettings:
    skills_scope: str = "skills"
    prompts_scope: str = "prompts"
    state_timeout_ms: int = 10_000


def _scope(scopes: dict[str, Any], key: str) -> str:
    value = scopes.get(key, key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"config.scopes.{key} must be a non-empty string, got {value!r}")
    return value


def parse_settings(config: dict[str, Any]) -> SkillsSettings:
    settings.check_keys(NAME, config, ("scopes", "state_timeout_ms"))
    scopes = config.get("scopes") or {}
    if not isinstance(scopes, dict):
        raise ValueError("config.scopes must be a mapping {skills, prompts}")
    unknown = [k for k in scopes if k not in ("skills", "prompts")]
    if unknown:
        raise ValueError(f"unknown key config.scopes.{unknown[0]}; accepted: skills, prompts")
    timeout = settings.integer(config, "state_timeout_ms", 10_000, minimum=1)
    return SkillsSettings(_scope(scopes, "skills"), _scope(scopes, "prompts"),
                          timeout if timeout is not None else 10_000)


class Storage:
    """Records of one kind in one state scope."""

    def __init__(self, iii: III, config: SkillsSettings) -> None:
        self.iii = iii
        self.settings = config

    async def call(self, function_id: str, payload: Any) -> Any:
        """Invoke ``function_id`` bounded by ``state_timeout_ms``; errors propagate."""
        return await self.iii.trigger_async({"function_id": function_id, "payload": payload,
                                             "timeout_ms": self.settings.state_timeout_ms})

    async def state(self, operation: str, payload: dict[str, Any], caller: str) -> Any:
        try:
            return await self.call(f"state::{operation}", payload)
        except InvocationError as exc:
            raise InvocationError("STATE_ERROR", f"state::{operation} failed: {exc.code}: "
                                  f"{exc.message}", caller) from None

    async def put(self, scope: str, key: str, value: Any, caller: str) -> None:
        await self.state("set", {"scope": scope, "key": key, "value": value}, caller)

    async def get(self, scope: str, key: str, caller: str) -> Any:
        return await self.state("get", {"scope": scope, "key": key}, caller)

    async def delete(self, scope: str, key: str, caller: str) -> bool:
        return await self.state("delete", {"scope": scope, "key": key}, caller) is not None

    async def all(self, scope: str, caller: str, key: str) -> list[dict[str, Any]]:
        """Every record of ``scope`` that carries a string ``key`` field, sorted by it."""
        values = await self.state("list", {"scope": scope}, caller)
        records = [v for v in values or [] if isinstance(v, dict) and isinstance(v.get(key), str)]
        return sorted(records, key=lambda record: record[key])
