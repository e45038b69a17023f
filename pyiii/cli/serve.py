"""`iii` / `iii serve`: run the engine (spec/cli.md §1).

The CLI only decides *which* configuration to run: it finds the config file, creates the
starter file when there is none (asking first on a terminal), and refuses contradictory flags.
Loading, locking and running belong to `pyiii.manager.server.serve`, imported lazily so that
`iii trigger` and `iii --version` never pay for the engine's imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.locate import find_project
from pyiii.cli.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CliError, UsageError

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")


@dataclass(frozen=True)
class ServeOptions:
    """What `pyiii.manager.server.serve` is asked to run.

    `config_path` is absolute and the file exists, unless `use_default_config` is set, in which
    case it is None and nothing may be written (no config file, no `.iii/`, no `data/`).
    `log_level` / `log_format` are None when not given on the command line: the engine then
    applies `III_LOG_LEVEL` and the `iii-observability` entry (cli.md §1.7).
    """

    config_path: Path | None
    use_default_config: bool = False
    log_level: str | None = None
    log_format: str | None = None
    no_reload: bool = False
    no_worker_output: bool = False
    created_config: bool = False  # the starter file was written by this run


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The engine flags, shared by bare `iii` and `iii serve`."""
    p.add_argument("-c", "--config", metavar="PATH", help="config file (default ./config.yaml or $III_CONFIG_PATH)")
    p.add_argument("--use-default-config", action="store_true",
                   help="run the default worker set in memory; writes nothing")
    p.add_argument("--log-level", metavar="LEVEL", type=_log_level, help="trace, debug, info, warn or error")
    p.add_argument("--log-format", choices=("text", "json"), help="log line format")
    p.add_argument("--no-reload", action="store_true", help="do not watch config.yaml and iii.lock")
    p.add_argument("--no-worker-output", action="store_true", help="do not echo worker output")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="run the engine (same as bare `iii`)",
                              description="Run the iii engine for this project.")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level '{text}' (use trace, debug, info, warn or error)")
    return "warn" if level == "warning" else level


def _interactive() -> bool:
    """Prompts need a person: both stdin and stderr must be terminals (cli.md §1.1)."""
    return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()


def prepare(args: argparse.Namespace, env: dict[str, str] | None = None) -> ServeOptions:
    """Turn the flags into ServeOptions, creating the starter config.yaml if needed."""
    from pyiii.engine.config import write_starter

    env = dict(os.environ) if env is None else env
    common = dict(log_level=args.log_level, log_format=args.log_format, no_reload=args.no_reload,
                  no_worker_output=args.no_worker_output)
    if args.use_default_config:
        if args.config or env.get("III_CONFIG_PATH"):
            raise UsageError("--use-default-config and --config cannot be used together")
        return ServeOptions(None, use_default_config=True, **common)
    project = find_project(args.config, env)
    path = project.config_path
    if path.is_dir():
        raise CliError(f"{path} is a folder, not a config file", hint="pass --config PATH/config.yaml")
    if path.exists():
        return ServeOptions(path, **common)
    if not path.parent.is_dir():
        raise CliError(f"cannot create {path}: the folder {path.parent} does not exist")
    if _interactive():
        sys.stderr.write(f"No {path.name} in {path.parent}. Create it and start the engine? [Y/n] ")
        sys.stderr.flush()
        raw = sys.stdin.readline()
        if not raw or raw.strip().lower() not in ("", "y", "yes"):  # EOF (Ctrl-D) declines
            if not raw:
                sys.stderr.write("\n")
            raise CliError("Aborted. Run `iii` in your project folder or pass --config PATH.", plain=True)
    try:
        created = write_starter(path)
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror or exc}") from None
    if created:
        output.ok(f"created {path.name} — add workers with `iii worker add <name>`; "
                  "this engine reloads the file on save.")
    return ServeOptions(path, created_config=created, **common)


def run(args: argparse.Namespace) -> int:
    from pyiii.engine.config import ConfigError

    options = prepare(args)
    from pyiii.manager import server  # lazy: the engine is only needed to serve

    try:
        from pyiii.runtime import run as run_loop

        code = run_loop(server.serve(options))
    except ConfigError as exc:  # the engine reports these itself; this is the safety net
        output.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else int(code)
