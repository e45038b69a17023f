"""`iii registry serve DIR [--host H] [--port P]`: serve a registry folder over HTTP
(spec/cli.md §4.14). The first stdout line is the base URL; requests are logged on stderr."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.output import CliError
from pyiii.manager.registry.urls import is_loopback


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("registry", help="work with worker registry folders",
                              description="Worker registry folders (see `iii worker publish`).")
    sub = p.add_subparsers(dest="registry_command", metavar="COMMAND", required=True,
                           parser_class=p.__class__)
    s = sub.add_parser("serve", help="serve a registry folder over HTTP, read-only")
    s.add_argument("dir", help="the registry folder")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    s.set_defaults(run=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    from pyiii.manager.registry.serve import is_registry_folder, serve

    folder = Path(args.dir)
    if not folder.is_dir() or not is_registry_folder(folder):
        raise CliError(f"{args.dir} is not a registry folder",
                       hint="it needs index.json or meta/; create one with `iii worker publish --to DIR`")
    if not is_loopback(args.host):
        output.warning("clients on other hosts refuse plain HTTP; put this server behind HTTPS")

    def ready(url: str) -> None:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()

    try:
        asyncio.run(serve(folder, args.host, args.port, ready))
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
