"""`iii worker init`: scaffold a worker folder (spec/cli.md §4.12, §8.2).

The templates live in `pyiii/manager/templates/<language>/` as ordinary files in which
`{{name}}` stands for the worker's name (`gitignore` is written as `.gitignore`, so the
template folder itself is not affected by it). init never touches config.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.output import CliError, UsageError
from pyiii.cli.worker_common import check_name, interactive, opt, refuse_first_party

TEMPLATES = Path(__file__).resolve().parent.parent / "manager" / "templates"
LANGUAGES = ("python", "node")
# template file -> file written in the worker folder
RENAMES = {"gitignore": ".gitignore"}


def add_parser(sub: Any, run_wrapped: Any) -> None:
    p = sub.add_parser("init", help="create a new worker folder from a template",
                       description="Scaffold a worker that registers <name>::hello.")
    p.add_argument("name", nargs="?")
    p.add_argument("--language", choices=LANGUAGES, help="python (default) or node")
    p.add_argument("--dir", metavar="DIR", help="folder to create (default ./<name>)")
    p.add_argument("--force", action="store_true", help="add only the missing files to a non-empty folder")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(run=run_wrapped(run))


def template_files(language: str) -> list[tuple[Path, str]]:
    """(template path, relative destination) of every file of a language's template."""
    root = TEMPLATES / language
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(root)
            dest = Path(*relative.parts[:-1], RENAMES.get(relative.name, relative.name))
            files.append((path, dest.as_posix()))
    return files


def render(text: str, name: str) -> str:
    return text.replace("{{name}}", name)


def _language(args: argparse.Namespace) -> str:
    if args.language:
        return args.language
    if interactive() and not opt(args, "json"):
        sys.stderr.write("Language of the new worker (python/node) [python]: ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer in ("", "py", "python"):
            return "python"
        if answer in ("node", "js", "javascript"):
            return "node"
        raise UsageError(f"unknown language '{answer}' (use python or node)")
    return "python"


def run(args: argparse.Namespace) -> int:
    if args.dir:
        folder = Path(os.path.expanduser(args.dir))
    elif args.name:
        folder = Path(args.name)
    else:
        folder = Path(".")
    folder = Path(os.path.abspath(folder))
    name = args.name or folder.name
    check_name(name)
    refuse_first_party(name)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{folder} is not a folder")
    shown = _shown(folder)
    if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()) and not args.force:
        raise CliError(f"{shown} is not empty", hint="pass --force to add only the missing files")
    language = _language(args)
    written = []
    for source, dest in template_files(language):
        target = folder / dest
        if target.exists():
            continue  # --force adds only what is missing
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(source.read_text(encoding="utf-8"), name), encoding="utf-8")
        written.append(dest)
    output.ok(f"created {language} worker '{name}' in {shown}")
    if not opt(args, "quiet"):
        output.plain("next steps:")
        output.plain(f"  iii worker add {shown}")
        output.plain(f"  iii trigger {name}::hello who=world")
    if opt(args, "json"):
        output.emit_json({"ok": True, "name": name, "language": language, "folder": str(folder),
                          "files": written})
    return 0


def _shown(folder: Path) -> str:
    try:
        relative = folder.relative_to(Path.cwd())
    except ValueError:
        return str(folder)
    return "./" + relative.as_posix() if str(relative) != "." else "."
