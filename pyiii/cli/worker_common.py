"""What every `iii worker` subcommand shares (spec/cli.md §3): common options, the project and
its files, names, confirmation, and the error handling that turns library errors into `error:`
lines, `--json` documents and exit codes.

Subcommand modules (including the registry ones) build their parsers with `add_common` and
may rely on `run_wrapped` having set the output mode before their handler runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.locate import Project, find_project
from pyiii.cli.output import EXIT_USAGE, CliError, UsageError
from pyiii.engine.config_model import NAME_RE, NAME_RULE
from pyiii.engine.firstparty import canonical_name, is_first_party

DEFAULT_LOCK_TIMEOUT_S = 60.0


def add_common(p: argparse.ArgumentParser, *, runtime: bool = False, mutating: bool = False,
               resolving: bool = False, json_flag: bool = True) -> None:
    """The §3.1 options. Defaults are SUPPRESSed so a value given before the subcommand
    (`iii worker -c x.yaml list`) is not overwritten by the subcommand's own default."""
    S = argparse.SUPPRESS
    p.add_argument("-c", "--config", metavar="PATH", default=S, help="the project's config file")
    if json_flag:
        p.add_argument("--json", action="store_true", default=S, help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", default=S, help="no progress or confirmation lines")
    p.add_argument("--no-color", action="store_true", default=S, help="plain output even on a terminal")
    if runtime:
        p.add_argument("--engine", metavar="URL", default=S, help="engine WebSocket URL")
    if mutating:
        p.add_argument("--lock-timeout", metavar="SECONDS", type=_seconds, default=S,
                       help="how long to wait for another iii worker command (default 60)")
    if resolving:
        p.add_argument("--registry", metavar="URL", action="append", default=S,
                       help="registry URL or folder (repeatable)")
        p.add_argument("--offline", action="store_true", default=S,
                       help="first-party index and registry cache only")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    """An option that may be absent from the namespace (SUPPRESSed default)."""
    return getattr(args, name, default)


def project_of(args: argparse.Namespace) -> Project:
    return find_project(opt(args, "config"))


def rel(path: Path, base: Path | None = None) -> str:
    """A path as shown to the user: `./x` inside the project (or cwd), absolute otherwise."""
    base = base or Path.cwd()
    try:
        return "./" + str(Path(path).absolute().relative_to(base.absolute()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- names

def check_name(name: str) -> str:
    """§3.3 name rule (W100, exit 2); returns the canonical name (aliases resolved)."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(f"invalid worker name '{name}': {NAME_RULE}", wcode="W100")
    return canonical_name(name)


def note_alias(name: str) -> str:
    """Canonical name, with the `note:` when an alias was typed."""
    canon = canonical_name(name)
    if canon != name:
        output.note(f"'{name}' is another name for '{canon}'")
    return canon


def refuse_first_party(name: str) -> None:
    if is_first_party(name):
        raise UsageError(f"'{name}' is the name of a first-party worker; pass --name to choose another",
                         wcode="W100")


# --------------------------------------------------------------------------- files

def load_config_text(project: Project, text: bytes | None, mutating: bool = True) -> Any:
    """Validate config.yaml's bytes (as read under the project lock) with the engine's loader.

    Returns the ProjectConfig, or None for an absent file. An invalid file is W131, exit 1,
    with the hint that nothing was changed.
    """
    from pyiii.engine.config import ConfigError, parse_config

    if text is None:
        return None
    try:
        return parse_config(text.decode("utf-8-sig"), project.config_path)
    except UnicodeDecodeError as exc:
        err: Exception = ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", None, None,
                                     project.config_path)
    except ConfigError as exc:
        err = exc
    hint = f"fix {project.config_path.name} first; nothing was changed" if mutating else None
    raise CliError(str(err), wcode="W131", hint=hint)


def read_config(project: Project, required: bool = True) -> Any:
    """Read and validate config.yaml outside a transaction (read-only commands)."""
    try:
        data = project.config_path.read_bytes()
    except FileNotFoundError:
        if required:
            raise CliError(f"no config file at {project.config_path}", wcode="W131",
                           hint="run `iii` once to create it, or pass --config PATH") from None
        return None
    except OSError as exc:
        raise CliError(f"cannot read {project.config_path}: {exc.strerror or exc}", wcode="W131") from None
    return load_config_text(project, data, mutating=False)


def validate_lock(project: Project, data: bytes | None) -> Any:
    """Validate iii.lock with the lock module when it is available; returns its object."""
    if data is None:
        return None
    try:
        from pyiii.manager import lockfile
    except ImportError:
        return None
    parse = getattr(lockfile, "parse_lock", None) or getattr(lockfile, "loads", None)
    if parse is None:
        return None
    try:
        return parse(data.decode("utf-8-sig") if isinstance(data, bytes) else data)
    except Exception as exc:  # noqa: BLE001 - the lock module's own error (W132)
        code = getattr(exc, "code", "W132")
        raise CliError(str(exc), wcode=code if isinstance(code, str) else "W132",
                       hint="fix iii.lock first; nothing was changed") from None


@contextmanager
def transaction(args: argparse.Namespace, project: Project) -> Iterator[Any]:
    """The §3.2 transaction with CLI presentation: waiting line, busy error, recovery warning,
    and validation of both files before anything else happens."""
    from pyiii.manager.transaction import ProjectBusyError, Transaction, TransactionError

    if not project.config_path.parent.is_dir():
        raise CliError(f"the folder {project.config_path.parent} does not exist")
    txn = Transaction(project.config_path, lock_timeout=opt(args, "lock_timeout", DEFAULT_LOCK_TIMEOUT_S),
                      argv=["iii", *sys.argv[1:]] if sys.argv else ["iii"], on_wait=output.plain)
    try:
        txn.__enter__()
    except ProjectBusyError as exc:
        raise CliError(str(exc), wcode="W120",
                       hint="wait for it to finish, or raise --lock-timeout") from None
    except TransactionError as exc:
        raise CliError(str(exc)) from None
    try:
        if txn.recovered_pid is not None:
            output.warning("restored config.yaml and iii.lock from an interrupted iii worker command "
                           f"(pid {txn.recovered_pid})")
        yield txn
    except BaseException as exc:
        txn.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        txn.__exit__(None, None, None)


# --------------------------------------------------------------------------- confirmation

def interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()


def confirm(args: argparse.Namespace, command: str, reason: str, question: str) -> None:
    """§3.4: `-y` skips; a terminal is asked; otherwise W104 (exit 2). Declining: exit 1."""
    if opt(args, "yes"):
        return
    if opt(args, "json") or not interactive():
        raise CliError(f"{command} needs confirmation: {reason}", EXIT_USAGE, wcode="W104", hint="pass -y")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("Aborted.", plain=True, wcode="W170")


# --------------------------------------------------------------------------- running

def run_wrapped(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Set the output mode from the common options and report every failure the iii way."""

    def run(args: argparse.Namespace) -> int:
        from pyiii.engine.config import ConfigError

        output.set_mode(json_output=bool(opt(args, "json")), quiet=bool(opt(args, "quiet")),
                        no_color=bool(opt(args, "no_color")))
        try:
            return int(handler(args))
        except CliError as exc:
            return output.report(exc)
        except ConfigError as exc:
            return output.report(CliError(str(exc), wcode="W131"))
        except Exception as exc:  # noqa: BLE001 - typed library errors carry a W-code
            code = getattr(exc, "code", None)
            if isinstance(code, str) and code in output.W_EXIT:
                return output.report(CliError(str(exc), wcode=code, hint=getattr(exc, "hint", None),
                                              details=getattr(exc, "details", None) or ()))
            if output.Mode.json:
                output.emit_json({"ok": False, "error": {"code": "W900", "message": f"{type(exc).__name__}: {exc}"}})
            raise
        finally:
            output.Mode.reset()

    run.__wrapped__ = handler  # type: ignore[attr-defined]
    return run


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
