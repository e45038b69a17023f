"""`iii worker`: manage the project's workers like packages (spec/cli.md §3, §4).

This module only assembles the subcommands; each lives in its own module:
  worker_add      add, reinstall              worker_remove   remove (rm), clear
  worker_runtime  list (ls), status, logs     worker_control  start, stop, restart, exec
  worker_init     init                        worker_registry publish, sync, verify, update
Every handler runs through `run_wrapped`, which applies `--json`, `-q` and `--no-color` and
reports failures (`error:` on stderr, the `--json` error document on stdout, the exit code).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from pyiii.cli.output import UsageError
from pyiii.cli.worker_common import run_wrapped

# Modules exposing add_parser(subparsers, run_wrapped).
SUBCOMMAND_MODULES = ("pyiii.cli.worker_add", "pyiii.cli.worker_remove", "pyiii.cli.worker_runtime",
                      "pyiii.cli.worker_control", "pyiii.cli.worker_init")
# Modules exposing add_subcommands(subparsers); absent ones are skipped.
OPTIONAL_MODULES = ("pyiii.cli.worker_registry",)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("worker", help="add, remove, run and inspect the project's workers",
                              description="Manage the workers declared in config.yaml and iii.lock.")
    p.add_argument("-c", "--config", metavar="PATH", help="the project's config file")
    sub = p.add_subparsers(dest="worker_command", metavar="SUBCOMMAND", parser_class=type(p))
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub, run_wrapped)
    for name in OPTIONAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        wrapped = {id(parser) for parser in sub.choices.values()}
        module.add_subcommands(sub)
        for parser in sub.choices.values():
            handler = parser.get_default("run")
            if id(parser) not in wrapped and handler is not None and not hasattr(handler, "__wrapped__"):
                parser.set_defaults(run=run_wrapped(handler))
    p.set_defaults(run=_missing, intermixed=False)
    return p


def _missing(args: argparse.Namespace) -> int:
    raise UsageError("which worker command? (add, remove, list, start, stop, restart, status, logs, "
                     "exec, init, ...)", hint="see `iii worker --help`")
