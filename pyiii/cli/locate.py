"""Finding the project's config file and the engine to talk to (spec/cli.md §0.1, §0.6).

Shared by `iii` (serve), `iii trigger` and the runtime `iii worker` subcommands so they all agree
on which project they are in and which engine serves it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyiii.cli.output import EXIT_NO_ENGINE, CliError, UsageError
from pyiii.manager.runrecord import pid_alive

DEFAULT_ENGINE_PORT = 49134
HANDSHAKE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Project:
    """The config file in use and where it came from.

    `explicit` is True when the path came from `--config` or `III_CONFIG_PATH` (which conflict
    with `--use-default-config`), False for the implicit `./config.yaml`.
    """

    config_path: Path
    explicit: bool

    @property
    def project_dir(self) -> Path:
        """Every relative path of the project is relative to this folder, not the cwd."""
        return self.config_path.parent

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".iii"


def find_project(config_flag: str | None, env: Mapping[str, str] | None = None) -> Project:
    """`--config`, then `III_CONFIG_PATH`, then `./config.yaml` (the flag wins)."""
    env = os.environ if env is None else env
    if config_flag:
        return Project(Path(config_flag).expanduser().absolute(), True)
    if env.get("III_CONFIG_PATH"):
        return Project(Path(env["III_CONFIG_PATH"]).expanduser().absolute(), True)
    return Project(Path("config.yaml").absolute(), False)


@dataclass(frozen=True)
class EngineLocation:
    """Where the engine is believed to be, and how that was decided.

    `source` is one of `flag`, `env`, `engine.json`, `default`; only `default` can reach another
    project's engine, so only it needs the config-path check of §0.6.
    """

    url: str
    source: str
    project: Project


def normalise_url(url: str) -> str:
    """Accept `host:port` and http(s) spellings for a WebSocket URL."""
    url = url.strip()
    if "://" not in url:
        return f"ws://{url}"
    scheme, rest = url.split("://", 1)
    return {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower()) + "://" + rest


def lock_held(path: Path) -> bool:
    """True when some process holds a flock on `path` (the running engine holds engine.lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_engine_record(project: Project) -> dict[str, Any] | None:
    """`.iii/engine.json` if its pid is alive and holds `.iii/engine.lock`, else None."""
    try:
        record = json.loads((project.state_dir / "engine.json").read_text(encoding="utf-8"))
        pid = int(record["pid"])
        url = str(record["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not url or not pid_alive(pid) or not lock_held(project.state_dir / "engine.lock"):
        return None  # a stale record left by an engine that died
    return record


def configured_port(project: Project, env: Mapping[str, str] | None = None) -> int:
    """The first `iii-worker-manager` entry's `config.port` (expanded), else 49134.

    An unreadable or invalid config file is not this command's problem: fall back to the
    default port and let the connection attempt say what it finds.
    """
    from pyiii.engine.config import ConfigError, load_config

    if not project.config_path.is_file():
        return DEFAULT_ENGINE_PORT
    try:
        return load_config(project.config_path, env).listeners()[0].port
    except (ConfigError, OSError):
        return DEFAULT_ENGINE_PORT


def locate_engine(project: Project, engine_flag: str | None = None,
                  env: Mapping[str, str] | None = None) -> EngineLocation:
    """The engine URL per §0.6: flag, `III_ENGINE_URL`, live engine.json, configured port."""
    env = os.environ if env is None else env
    if engine_flag:
        return EngineLocation(normalise_url(engine_flag), "flag", project)
    if env.get("III_ENGINE_URL"):
        return EngineLocation(normalise_url(env["III_ENGINE_URL"]), "env", project)
    record = read_engine_record(project)
    if record is not None:
        return EngineLocation(normalise_url(record["url"]), "engine.json", project)
    return EngineLocation(f"ws://127.0.0.1:{configured_port(project, env)}", "default", project)


def no_engine(location: EngineLocation, reason: str) -> CliError:
    """The §0.6 "no iii engine is answering" error (exit 3)."""
    return CliError(
        f"no iii engine is answering at {location.url} ({reason})", EXIT_NO_ENGINE,
        hint=f"start it with `iii` in {location.project.project_dir}, or pass --engine URL",
    )


def not_an_engine(location: EngineLocation) -> CliError:
    return CliError(f"{location.url} answered but is not an iii engine", EXIT_NO_ENGINE)


async def _greeting(url: str, timeout: float) -> Any:
    import websockets

    async with asyncio.timeout(timeout):
        # proxy=None: a loopback engine must never be reached through $HTTP_PROXY.
        async with websockets.connect(url, open_timeout=None, close_timeout=0.5, proxy=None,
                                      max_size=1 << 20) as ws:
            return await ws.recv()


def probe_engine(location: EngineLocation, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Check that an iii engine answers: WebSocket open and `workerregistered` first frame.

    Done with a raw connection before the SDK is involved because the SDK retries quietly for
    a long time, while §0.6 wants a clear answer within 2 s.
    """
    import websockets.exceptions as wse

    try:
        frame = asyncio.run(_greeting(location.url, timeout))
    except wse.InvalidURI:
        raise UsageError(f"invalid engine URL '{location.url}'", hint="use ws://HOST:PORT") from None
    except TimeoutError:
        raise no_engine(location, f"no handshake within {timeout:g}s") from None
    except ConnectionRefusedError:
        raise no_engine(location, "connection refused") from None
    except (wse.InvalidStatus, wse.InvalidHandshake, wse.InvalidMessage):
        raise not_an_engine(location) from None
    except wse.ConnectionClosed as exc:
        raise no_engine(location, f"connection closed during the handshake: {exc}") from None
    except OSError as exc:
        raise no_engine(location, exc.strerror or str(exc)) from None
    try:
        message = json.loads(frame)
    except (TypeError, ValueError):
        raise not_an_engine(location) from None
    if not isinstance(message, dict) or message.get("type") != "workerregistered":
        raise not_an_engine(location)
