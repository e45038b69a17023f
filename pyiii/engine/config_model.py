"""The normalised shape of a loaded config.yaml: entries, listeners, the project (spec/cli.md §5.1).

Plain frozen dataclasses, so two loads compare with ``==`` (the hot-reload diff).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyiii.engine.firstparty import canonical_name
from pyiii.engine.rbac_rules import RuleError, parse_rbac

TOP_LEVEL_KEYS = ("workers", "modules", "registries")
ENTRY_KEYS = ("name", "version", "image", "worker_path", "config", "env", "enabled", "isolation",
              "namespace", "restart", "resources", "stop_timeout_ms", "logs", "sandbox")
ISOLATIONS = ("auto", "in-process", "process", "namespace")
RESTART_POLICIES = ("always", "on-failure", "never")
LISTENER_KEYS = ("port", "host", "middleware_function_id", "rbac", "handshake_timeout_ms", "token")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_RULE = ("use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit "
             "(at most 64 characters)")


class ConfigError(Exception):
    """An invalid config file (W131); str() is `config.yaml:<line>:<col>: <message>`."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None,
                 path: str | os.PathLike[str] | None = None, key_path: str | None = None) -> None:
        self.message, self.line, self.col, self.key_path = message, line, col, key_path
        self.path = Path(path) if path is not None else None
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path.name if self.path is not None else "default configuration"
        if self.line is not None:
            where += f":{self.line}" + (f":{self.col}" if self.col is not None else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class RestartPolicy:
    """`restart:` of an entry (cli.md §9.1); a bare string sets only `policy`."""

    policy: str = "on-failure"
    max_restarts: int = 5
    reset_after_s: float = 60.0
    backoff_initial_ms: int = 1000
    backoff_max_ms: int = 30000


@dataclass(frozen=True)
class Resources:
    """`resources:`; None means "the manifest's value, else 2048 MiB / 2 cpus / 512 pids".

    None is kept (not replaced by the default) because an explicit memory limit changes how
    limits are enforced (RLIMIT_AS only when set explicitly, cli.md §9.5).
    """

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class LogSettings:
    """`logs:` rotation settings (cli.md §9.3)."""

    max_bytes: int = 10 * 1024 * 1024
    keep: int = 3


@dataclass(frozen=True)
class SandboxSettings:
    """`sandbox:` namespace mounts (cli.md §9.5); paths as written (relative to the project)."""

    hide_home: bool = True
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerEntry:
    """One normalised, expanded entry of `workers:` (every §5.1 field, defaults filled in).

    Equality ignores where the entry sits in the file and how its name was spelled, so the hot
    reload diff (cli.md §1.5) can compare two loads with `==`.
    """

    name: str
    kind: str  # builtin | registry | oci | local
    version: str | None = None
    image: str | None = None
    worker_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    isolation: str = "auto"
    namespace: str | None = None
    restart: RestartPolicy = RestartPolicy()
    resources: Resources = Resources()
    stop_timeout_ms: int = 10000
    logs: LogSettings = LogSettings()
    sandbox: SandboxSettings = SandboxSettings()
    declared_name: str = field(default="", compare=False)
    index: int = field(default=0, compare=False)
    line: int | None = field(default=None, compare=False)
    col: int | None = field(default=None, compare=False)
    # dotted path inside the entry ("config.port", "env.PORT") -> 1-based (line, col) of its
    # value; lets a worker validating its own `config:` block report the exact position.
    positions: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def locate(self, dotted: str) -> tuple[int | None, int | None]:
        """Position of `dotted` (or of its closest recorded parent, else of the entry)."""
        while dotted:
            if dotted in self.positions:
                return self.positions[dotted]
            dotted = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", dotted) if re.search(r"[.\[]", dotted) else ""
        return self.line, self.col


@dataclass(frozen=True)
class Listener:
    """One engine WebSocket listener, from an `iii-worker-manager` entry (workers.md §8.1)."""

    host: str = "0.0.0.0"
    port: int = 49134
    handshake_timeout_ms: int = 10000
    rbac: dict[str, Any] | None = None
    middleware_function_id: str | None = None
    index: int = 0
    token: str | None = None  # bearer token required from workers (None or "": no token)

    @property
    def trusted(self) -> bool:
        """A listener without `rbac` is trusted: no authentication, no gates."""
        return self.rbac is None


@dataclass
class ProjectConfig:
    """A loaded config file. `config_path` is None for `--use-default-config` (nothing on disk)."""

    workers: list[WorkerEntry]
    registries: list[str]
    project_dir: Path
    config_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def worker(self, name: str) -> WorkerEntry | None:
        """The first entry called `name` (aliases accepted)."""
        name = canonical_name(name)
        return next((w for w in self.workers if w.name == name), None)

    def worker_dir(self, entry: WorkerEntry) -> Path | None:
        """The absolute folder of a local worker (relative paths are relative to the project)."""
        if entry.worker_path is None:
            return None
        return (self.project_dir / os.path.expanduser(entry.worker_path)).resolve()

    def listeners(self) -> list[Listener]:
        """The engine's WebSocket listeners; the first is the main, trusted one.

        Validated here rather than at load time because a bad listener block is that worker's
        own error: at startup the engine turns it into a failure, on reload it keeps the old one.
        """
        entries = [w for w in self.workers if w.name == "iii-worker-manager"]
        if not entries:
            return [Listener()]
        return [self._listener(w, i) for i, w in enumerate(entries)]

    def _listener(self, entry: WorkerEntry, index: int) -> Listener:
        cfg = entry.config

        def fail(key: str, message: str) -> ConfigError:
            line, col = entry.locate(f"config.{key}")
            return ConfigError(message, line, col, self.config_path, f"config.{key}")

        for key in cfg:
            if key not in LISTENER_KEYS:
                raise fail(str(key), f"unknown key '{key}' in iii-worker-manager config"
                           f"{_did_you_mean(str(key), LISTENER_KEYS)} (accepted: {', '.join(LISTENER_KEYS)})")
        port, host = cfg.get("port", 49134), cfg.get("host", "0.0.0.0")
        timeout = cfg.get("handshake_timeout_ms", 10000)
        rbac, middleware = cfg.get("rbac"), cfg.get("middleware_function_id")
        if not _is_int(port) or not 0 <= port <= 65535:
            raise fail("port", "config.port must be an integer from 0 to 65535")
        if not isinstance(host, str) or not host:
            raise fail("host", "config.host must be a non-empty string")
        if not _is_int(timeout) or timeout <= 0:
            raise fail("handshake_timeout_ms", "config.handshake_timeout_ms must be a positive integer")
        if rbac is not None:
            try:
                parse_rbac(rbac)  # kept raw (comparable for the reload diff), checked now
            except RuleError as exc:
                text = str(exc)
                raise fail(exc.key, f"config.{text}" if text.startswith(exc.key)
                           else f"config.{exc.key}: {text}") from None
        token = cfg.get("token")
        if token is not None and not isinstance(token, str):
            raise fail("token", "config.token must be a string (for example ${III_TOKEN:})")
        if middleware is not None and (not isinstance(middleware, str) or not middleware):
            raise fail("middleware_function_id", "config.middleware_function_id must be a function id")
        return Listener(host, port, timeout, rbac, middleware, index, token or None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _did_you_mean(key: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""
