"""Loading and validating config.yaml (spec/cli.md §5, spec/workers.md §1.2 and §8.1).

The engine and the CLI both load config files through this one module, so they accept and
reject exactly the same files. The file is read with ruamel.yaml in round-trip mode because
that keeps a line/column on every node: every error names `config.yaml:<line>:<col>`.
`${VAR}` references are expanded after parsing, on string scalars only, so an environment
value can never change the document's structure.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from pyiii.engine.config_texts import DEFAULT_CONFIG_TEXT as _DEFAULT_CONFIG
from pyiii.engine.config_texts import STARTER_CONFIG
from pyiii.engine.firstparty import ALWAYS_ON, FIRST_PARTY, MULTI_ENTRY, canonical_name
from pyiii.engine.config_expand import _REF, UnsetVariable, core_scalar, expand_scalar, expand_text
from pyiii.engine.config_model import (
    ENTRY_KEYS, ISOLATIONS, NAME_RE, NAME_RULE, RESTART_POLICIES, TOP_LEVEL_KEYS,
    ConfigError, Listener, LogSettings, ProjectConfig, Resources, RestartPolicy, SandboxSettings,
    WorkerEntry, _did_you_mean, _is_int, _is_num,
)

__all__ = [
    "STARTER_CONFIG", "ConfigError", "UnsetVariable", "ProjectConfig", "WorkerEntry", "Listener",
    "RestartPolicy", "Resources", "LogSettings", "SandboxSettings", "load_config", "parse_config",
    "default_config", "write_starter", "expand_text", "expand_scalar", "core_scalar",
]

def _plain(v: Any) -> Any:
    """Round-trip nodes to plain Python (dict, list, str, int, float, bool, None)."""
    if isinstance(v, Mapping):
        return {(k if isinstance(k, str) else _key_text(k)): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()  # JSON has no dates; III_WORKER_CONFIG must stay serialisable
    return str(getattr(v, "value", v))


def _key_text(k: Any) -> str:
    return "true" if k is True else "false" if k is False else "null" if k is None else str(_plain(k))


def node_position(node: Any, key: Any = None, of_key: bool = False) -> tuple[int | None, int | None]:
    """1-based (line, col) of a node, of a mapping value / key, or of a sequence item."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return None, None
    try:
        if key is not None:
            line, col = lc.item(key) if isinstance(node, list) else lc.key(key) if of_key else lc.value(key)
            return line + 1, col + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        pass  # merged (<<) keys have no position of their own: use the mapping's
    return (lc.line + 1, lc.col + 1) if lc.line is not None else (None, None)


_NOUN = {"str": "a string", "int": "an integer", "num": "a number", "bool": "true or false"}


class _Loader:
    """Turns config text into a ProjectConfig, raising ConfigError at the first problem."""

    def __init__(self, text: str, path: Path | None, env: Mapping[str, str]) -> None:
        self.text, self.path, self.env = text, path, env
        self.lines = text.splitlines()
        self.expanded: set[int] = set()

    def error(self, message: str, pos: tuple[int | None, int | None], key_path: str | None = None) -> ConfigError:
        return ConfigError(message, pos[0], pos[1], self.path, key_path)

    def load(self) -> ProjectConfig:
        yaml = YAML(typ="rt")
        yaml.preserve_quotes = True  # quoted scalars keep their type: they are never re-typed
        try:
            doc = yaml.load(self.text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            pos = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
            raise self.error(f"invalid YAML: {exc.problem or exc.context}", pos) from None
        except YAMLError as exc:
            raise self.error(f"invalid YAML: {exc}", (None, None)) from None
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise self.error("the top level must be a mapping (workers: ...)", node_position(doc) if hasattr(doc, "lc") else (1, 1))
        for key in doc:
            if key not in TOP_LEVEL_KEYS:
                raise self.error(f"unknown key '{key}'{_did_you_mean(str(key), TOP_LEVEL_KEYS)}",
                                 node_position(doc, key, of_key=True), str(key))
        self.expand(doc)
        warnings: list[str] = []
        entries: list[WorkerEntry] = []
        for section in ("workers", "modules"):
            seq = doc.get(section)
            if seq is None:
                continue
            if not isinstance(seq, list):
                raise self.error(f"{section} must be a list of worker entries", node_position(doc, section), section)
            if section == "modules" and seq:
                warnings.append("'modules' is the old name of 'workers'; its entries are read as workers")
            for i in range(len(seq)):
                entries.append(self.entry(seq, i, section, len(entries)))
        self.check_duplicates(entries)
        registries = self.string_list(doc, "registries", "registries")
        project_dir = self.path.parent if self.path is not None else Path.cwd().absolute()
        return ProjectConfig(entries, registries, project_dir, self.path, warnings)

    # ----------------------------------------------------------------- expansion

    def expand(self, node: Any) -> None:
        """Expand every string value in place (keys never); anchors are visited once."""
        if id(node) in self.expanded:
            return
        self.expanded.add(id(node))
        for key, value in list(node.items() if isinstance(node, Mapping) else enumerate(node)):
            if isinstance(value, str):
                if "$" in value:
                    node[key] = self.expand_value(node, key, value)
            elif isinstance(value, (Mapping, list)):
                self.expand(value)

    def expand_value(self, node: Any, key: Any, value: str) -> Any:
        # preserve_quotes loads quoted and block scalars as str subclasses: only an exact str
        # was written plain, and only plain scalars are re-typed (cli.md §5.2).
        try:
            return expand_scalar(value, self.env, plain=type(value) is str)
        except UnsetVariable as exc:
            line, col = node_position(node, key)
            ref = _REF.match(value, exc.offset)
            if line is not None and col is not None and ref is not None and line <= len(self.lines):
                found = self.lines[line - 1].find(ref.group(0), col - 1)
                col = found + 1 if found >= 0 else col  # point at the reference itself
            raise self.error(str(exc), (line, col)) from None

    # ----------------------------------------------------------------- typed fields

    def source_text(self, node: Any, key: Any) -> str:
        """The scalar as written, for `quote it:` hints."""
        line, col = node_position(node, key)
        if line is not None and col is not None and line <= len(self.lines):
            text = re.match(r"[^,\]}#]*", self.lines[line - 1][col - 1:])
            if text and text.group(0).strip():
                return text.group(0).strip()
        return _key_text(node[key])

    def get(self, node: Any, key: str, dotted: str, kind: str, default: Any = None,
            minimum: float | None = None) -> Any:
        """A typed scalar field; absent or null gives the default."""
        value = node.get(key)
        if value is None:
            return default
        ok = {"str": isinstance(value, str), "int": _is_int(value), "num": _is_num(value),
              "bool": isinstance(value, bool)}[kind]
        if not ok:
            hint = ""
            if kind == "str" and not isinstance(value, (Mapping, list)):
                hint = f'; quote it: {key}: "{self.source_text(node, key)}"'
            raise self.error(f"{dotted} must be {_NOUN[kind]}{hint}", node_position(node, key), dotted)
        if kind == "str" and not value:
            raise self.error(f"{dotted} must not be empty", node_position(node, key), dotted)
        if minimum is not None and value < minimum:
            raise self.error(f"{dotted} must be at least {minimum}", node_position(node, key), dotted)
        return str(value) if kind == "str" else float(value) if kind == "num" else value

    def choice(self, node: Any, key: str, dotted: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.get(node, key, dotted, "str", default)
        if value is not None and value not in choices:
            raise self.error(f"{dotted} must be one of {', '.join(choices)} (got '{value}')", node_position(node, key), dotted)
        return value

    def mapping(self, node: Any, key: str, dotted: str, allowed: tuple[str, ...] | None) -> Mapping[str, Any] | None:
        """A nested mapping (None when absent or null); unknown keys refused when `allowed`."""
        value = node.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.error(f"{dotted} must be a mapping", node_position(node, key), dotted)
        for k in value if allowed is not None else ():
            if k not in allowed:
                raise self.error(f"unknown key '{k}' in {dotted}{_did_you_mean(str(k), allowed)}",
                                 node_position(value, k, of_key=True), f"{dotted}.{k}")
        return value

    def string_list(self, node: Any, key: str, dotted: str) -> list[str]:
        value = node.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(f"{dotted} must be a list of strings", node_position(node, key), dotted)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{dotted}[{i}] must be a non-empty string", node_position(value, i), f"{dotted}[{i}]")
        return [str(item) for item in value]

    # ----------------------------------------------------------------- entries

    def entry(self, seq: list[Any], i: int, section: str, index: int) -> WorkerEntry:
        node, where, pos = seq[i], f"{section}[{i}]", node_position(seq, i)
        if not isinstance(node, Mapping):
            raise self.error(f"{where} must be a mapping with a 'name' key", pos, where)
        for key in node:
            if key not in ENTRY_KEYS:
                raise self.error(f"unknown key '{key}'{_did_you_mean(str(key), ENTRY_KEYS)}",
                                 node_position(node, key, of_key=True), f"{where}.{key}")
        if node.get("name") is None:
            raise self.error(f"{where}: missing required key 'name'", pos, where)
        name = self.get(node, "name", "name", "str")
        if not NAME_RE.fullmatch(name) or ".." in name:
            raise self.error(f"invalid worker name '{name}': {NAME_RULE}", node_position(node, "name"), f"{where}.name")
        canon = canonical_name(name)
        first_party = canon in FIRST_PARTY
        image = self.get(node, "image", "image", "str")
        worker_path = self.get(node, "worker_path", "worker_path", "str")
        version = self.get(node, "version", "version", "str")
        if image is not None and worker_path is not None:
            raise self.error("'image' and 'worker_path' cannot both be set", node_position(node, "worker_path", True))
        if version is not None and (image is not None or worker_path is not None):
            other = "image" if image is not None else "worker_path"
            raise self.error(f"'version' cannot be combined with '{other}'", node_position(node, "version", True))
        if first_party and (image is not None or worker_path is not None):
            key = "image" if image is not None else "worker_path"
            raise self.error(f"'{name}' is the name of a first-party worker; it cannot have '{key}'",
                             node_position(node, key, True))
        kind = ("builtin" if first_party else "oci" if image is not None
                else "local" if worker_path is not None else "registry")
        isolation = self.isolation(node, canon, first_party)
        config = self.mapping(node, "config", "config", None)
        return WorkerEntry(
            name=canon, kind=kind, version=version, image=image, worker_path=worker_path,
            config=_plain(config) if config is not None else {}, env=self.env_block(node),
            enabled=self.get(node, "enabled", "enabled", "bool", True), isolation=isolation,
            namespace=self.get(node, "namespace", "namespace", "str"), restart=self.restart(node),
            resources=self.resources(node), stop_timeout_ms=self.get(node, "stop_timeout_ms", "stop_timeout_ms", "int", 10000, 0),
            logs=self.logs(node), sandbox=self.sandbox(node), declared_name=name, index=index,
            line=pos[0], col=pos[1], positions=_positions(node),
        )

    def isolation(self, node: Any, canon: str, first_party: bool) -> str:
        iso = self.choice(node, "isolation", "isolation", ISOLATIONS, None)
        if iso == "in-process" and not first_party:
            raise self.error("isolation: in-process is only for first-party workers", node_position(node, "isolation"), "isolation")
        if canon in ALWAYS_ON and iso not in (None, "in-process"):
            raise self.error(f"{canon} always runs in-process; isolation: {iso} is not allowed",
                             node_position(node, "isolation"), "isolation")
        return iso or ("in-process" if first_party else "auto")

    def env_block(self, node: Any) -> dict[str, str]:
        block = self.mapping(node, "env", "env", None)
        env: dict[str, str] = {}
        for key, value in (block or {}).items():
            if not isinstance(value, str):
                hint = "" if isinstance(value, (Mapping, list)) else f'; quote it: {key}: "{self.source_text(block, key)}"'
                raise self.error(f"env.{key} must be a string{hint}", node_position(block, key), f"env.{key}")
            env[_key_text(key) if not isinstance(key, str) else str(key)] = str(value)
        return env

    def restart(self, node: Any) -> RestartPolicy:
        value = node.get("restart")
        if value is None:
            return RestartPolicy()
        if isinstance(value, str):
            return RestartPolicy(policy=self.choice(node, "restart", "restart", RESTART_POLICIES, None) or "on-failure")
        if not isinstance(value, Mapping):
            raise self.error("restart must be always, on-failure, never or a mapping", node_position(node, "restart"), "restart")
        m = self.mapping(node, "restart", "restart", tuple(RestartPolicy.__dataclass_fields__))
        return RestartPolicy(
            self.choice(m, "policy", "restart.policy", RESTART_POLICIES, "on-failure") or "on-failure",
            self.get(m, "max_restarts", "restart.max_restarts", "int", 5, 0),
            self.get(m, "reset_after_s", "restart.reset_after_s", "num", 60.0, 0),
            self.get(m, "backoff_initial_ms", "restart.backoff_initial_ms", "int", 1000, 0),
            self.get(m, "backoff_max_ms", "restart.backoff_max_ms", "int", 30000, 0),
        )

    def resources(self, node: Any) -> Resources:
        m = self.mapping(node, "resources", "resources", ("memory", "cpus", "pids"))
        if m is None:
            return Resources()
        cpus = self.get(m, "cpus", "resources.cpus", "num", None)
        if cpus is not None and cpus <= 0:
            raise self.error("resources.cpus must be greater than 0", node_position(m, "cpus"), "resources.cpus")
        return Resources(self.get(m, "memory", "resources.memory", "int", None, 1), cpus,
                         self.get(m, "pids", "resources.pids", "int", None, 1))

    def logs(self, node: Any) -> LogSettings:
        m = self.mapping(node, "logs", "logs", ("max_bytes", "keep"))
        if m is None:
            return LogSettings()
        return LogSettings(self.get(m, "max_bytes", "logs.max_bytes", "int", LogSettings.max_bytes, 1),
                           self.get(m, "keep", "logs.keep", "int", LogSettings.keep, 0))

    def sandbox(self, node: Any) -> SandboxSettings:
        m = self.mapping(node, "sandbox", "sandbox", ("hide_home", "ro_paths", "rw_paths"))
        if m is None:
            return SandboxSettings()
        return SandboxSettings(self.get(m, "hide_home", "sandbox.hide_home", "bool", True),
                               tuple(self.string_list(m, "ro_paths", "sandbox.ro_paths")),
                               tuple(self.string_list(m, "rw_paths", "sandbox.rw_paths")))

    def check_duplicates(self, entries: list[WorkerEntry]) -> None:
        """Names are unique after alias resolution, except one entry per listener."""
        first: dict[str, WorkerEntry] = {}
        for e in entries:
            if e.name in MULTI_ENTRY:
                continue
            other = first.setdefault(e.name, e)
            if other is e:
                continue
            if other.declared_name != e.declared_name:
                alias = other.declared_name if other.declared_name != e.name else e.declared_name
                message = f"duplicate worker '{e.name}' (also declared as '{alias}')"
            else:
                message = f"duplicate worker '{e.name}' (also declared on line {other.line})"
            raise self.error(message, e.locate("name"), "name")


def _positions(node: Any, prefix: str = "", out: dict[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    """Record the 1-based position of every value below an entry, by dotted path."""
    out = {} if out is None else out
    items = node.items() if isinstance(node, Mapping) else enumerate(node)
    for key, value in items:
        dotted = f"{prefix}[{key}]" if isinstance(node, list) else f"{prefix}.{key}" if prefix else str(key)
        line, col = node_position(node, key)
        if line is not None and col is not None:
            out[dotted] = (line, col)
        if isinstance(value, (Mapping, list)) and len(out) < 10000:
            _positions(value, dotted, out)
    return out


def parse_config(text: str, path: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None) -> ProjectConfig:
    """Parse config text; `path` names the file in errors and sets the project folder."""
    env = os.environ if env is None else env
    p = Path(path).absolute() if path is not None else None
    return _Loader(text, p, env).load()


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> ProjectConfig:
    """Load, expand and validate a config file; raises ConfigError (W131)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", None, None, p) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}", None, None, p) from None
    return parse_config(text, p, env)


def default_config(env: Mapping[str, str] | None = None) -> ProjectConfig:
    """The in-memory `--use-default-config` set: six first-party workers on memory adapters."""
    cfg = parse_config(_DEFAULT_CONFIG, None, env)
    return replace(cfg, project_dir=Path.cwd().absolute(), config_path=None)


def write_starter(path: str | os.PathLike[str]) -> bool:
    """Create the starter config.yaml at `path`; False (nothing written) if it already exists.

    Written to a temporary file then hard-linked into place, so a watcher never sees a
    half-written file and a file created concurrently is never overwritten.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(STARTER_CONFIG, encoding="utf-8", newline="\n")
    try:
        os.link(tmp, p)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
