"""The `iii` console script: picks the command and turns failures into exit codes (cli.md §0).

Bare `iii [flags]` runs the engine (same as `iii serve`). Options such as `-c/--config` may
precede or follow the command (`iii -c x.yaml trigger f` ≡ `iii trigger f -c x.yaml`), so the
command is found first and the whole argument list handed to that command's own parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
import uuid
from typing import Any, NoReturn

from pyiii import __version__
from pyiii.cli import output
from pyiii.cli.output import EXIT_FAILED, EXIT_INTERRUPTED, CliError, UsageError

# Each module exposes add_parser(subparsers). Modules not written yet are simply absent, so a
# new command is one line here.
COMMAND_MODULES = ("pyiii.cli.serve", "pyiii.cli.trigger", "pyiii.cli.worker", "pyiii.cli.registry")

# Options that may come before the command and take a value (so their value is not mistaken
# for the command name).
_VALUE_OPTIONS = {"-c", "--config", "--log-level", "--log-format"}


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors the iii way (`error: ...`, exit 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def build_parser() -> tuple[Parser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and every command's parser by name and alias."""
    top = Parser(prog="iii", description="The iii engine and its command line (pyiii).",
                 epilog="Bare `iii` runs the engine for the project in this folder: see `iii serve --help`.")
    top.add_argument("--version", action="version", version=f"iii (pyiii) {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # a broken command module must not vanish silently
            continue
        module.add_parser(sub)
    commands: dict[str, argparse.ArgumentParser] = dict(sub.choices)
    return top, commands


def split_command(argv: list[str], commands: dict[str, Any]) -> tuple[str | None, list[str]]:
    """Find the command word; return it and the other arguments in their original order."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            break
        if token in _VALUE_OPTIONS:
            i += 2
            continue
        if token.startswith("-"):
            i += 1
            continue
        if token in commands:
            return token, argv[:i] + argv[i + 1:]
        break
    return None, argv


def dispatch(argv: list[str]) -> int:
    top, commands = build_parser()
    command, rest = split_command(argv, commands)
    if command is None:
        if any(a in ("-h", "--help", "--version") for a in argv) or (argv and not argv[0].startswith("-")):
            top.parse_args(argv)  # help, version, or an unknown command word: argparse says so
        command = "serve"
    parser = commands[command]
    if parser.get_default("intermixed"):
        args = parser.parse_intermixed_args(rest)
    else:
        args = parser.parse_args(rest)
    return int(args.run(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `iii` console script; returns the exit code (cli.md §0.3)."""
    from pyiii.engine.config import ConfigError

    from_console = argv is None  # embedded callers (tests) keep their process
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = dispatch(argv)
    except CliError as exc:
        code = output.report(exc)
    except ConfigError as exc:
        output.error(str(exc))
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse --help / --version
        code = exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:
        code = EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - W900: a bug, reported with an id
        incident = uuid.uuid4().hex[:8]
        output.error(f"internal error {incident}: {type(exc).__name__}: {exc}",
                     hint="this is a bug in pyiii; please report it with the id above")
        if os.environ.get("III_DEBUG"):
            import traceback

            traceback.print_exc()
        code = EXIT_FAILED
    if from_console:
        _exit_now_if_threads_linger(code)
    return code


def _exit_now_if_threads_linger(code: int) -> None:
    """A command is done when it returns: do not let a non-daemon SDK thread keep the process
    alive after the result was printed."""
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
