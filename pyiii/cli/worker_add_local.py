"""`iii worker add ./path`: the local-folder half of `add` (spec/cli.md §4.1, §8, §9.7).

A local worker needs a valid `iii.worker.yaml`; it is declared with `worker_path:` (`./relative`
inside the project) and never locked. Its setup/install scripts run now, under the isolation
the worker will have, so that a broken install fails the command instead of the first boot.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.output import CliError
from pyiii.cli.worker_common import check_name, opt, refuse_first_party


def _worker_path(plan: Any, folder: Path) -> str:
    """`./relative` inside the project folder, absolute otherwise (§4.1)."""
    project_dir = Path(os.path.abspath(plan.project.project_dir))
    try:
        inside = folder.relative_to(project_dir)
    except ValueError:
        return str(folder)
    return "./" + inside.as_posix() if str(inside) != "." else "."


def add_local(plan: Any, req: Any, args: argparse.Namespace) -> tuple[str, Any]:
    """Validate the folder's manifest and declare it; returns (name, manifest). The caller
    declares the manifest's dependencies."""
    from pyiii.manager.config_edit import add_entry
    from pyiii.manager.manifest import MANIFEST_NAME, load_manifest

    folder = req.folder
    assert folder is not None
    if not folder.is_dir():
        raise CliError(f"{req.text} is not a folder", wcode="W110",
                       hint="pass the folder of a worker (created with `iii worker init`)")
    if not (folder / MANIFEST_NAME).is_file():
        raise CliError(f"no {MANIFEST_NAME} in {req.text}", wcode="W180",
                       hint="create one with `iii worker init`")
    manifest = load_manifest(folder)
    name = opt(args, "name") or manifest.name
    check_name(name)
    refuse_first_party(name)
    declared = plan.declared().get(name)
    if declared is not None:
        same = (declared.kind == "local" and
                plan.project.project_dir.joinpath(os.path.expanduser(declared.worker_path)).resolve() == folder.resolve())
        if not same:
            raise conflict(name, declared)
        plan.unchanged.append(name)
        version = f" {manifest.version}" if manifest.version else ""
        forced = opt(args, "force") or opt(args, "force_default")
        plan.messages.append(f"reinstalled {name}{version}" if forced else f"{name}{version} is already installed")
    else:
        fields: dict[str, Any] = {"name": name, "worker_path": _worker_path(plan, folder)}
        if opt(args, "isolation"):
            fields["isolation"] = args.isolation
        plan.text = add_entry(plan.text, fields)
        plan.added.append(name)
    return name, manifest


def _isolation_for(args: argparse.Namespace, name: str) -> str:
    """The isolation the setup/install scripts run under; `namespace` is checked up front."""
    wanted = opt(args, "isolation")
    if wanted == "process":
        return "process"
    from pyiii.manager.sandbox import probe

    found = probe()
    if found.available:
        return "namespace"
    if wanted == "namespace":
        raise CliError(f"{name} cannot run with isolation: namespace: {found.reason}", wcode="W161",
                       hint="install bubblewrap and enable user namespaces, or pass --isolation process")
    return "process"


def prepare(plan: Any, name: str, manifest: Any, args: argparse.Namespace) -> None:
    """Run setup/install now so a broken install fails the command, not the first boot."""
    from pyiii.manager import local
    from pyiii.manager.envbuild import EnvInputs, worker_environment
    from pyiii.manager.sandbox import SandboxSpec, bwrap_args, find_bwrap

    project_dir = plan.project.project_dir.resolve()
    folder = manifest.folder.resolve()
    if opt(args, "force") or opt(args, "force_default"):
        local.state_path(project_dir, name).unlink(missing_ok=True)  # lose the prepared marker
    isolation = _isolation_for(args, name)
    work_dir = project_dir / "data" / "managed" / name
    env = worker_environment(EnvInputs(name=name, engine_url="ws://127.0.0.1:49134", project_dir=project_dir,
                                       worker_dir=folder, work_dir=work_dir, isolation=isolation,
                                       manifest_env=dict(manifest.env), version=manifest.version,
                                       config_path=plan.project.config_path))
    wrap: list[str] = []
    if isolation == "namespace":
        for folder_ in (project_dir / "data", project_dir / "data" / "managed", work_dir):
            if not folder_.exists():
                plan.created_files.append(folder_)
                break
        work_dir.mkdir(parents=True, exist_ok=True)
        spec = SandboxSpec(name, project_dir, folder, work_dir)
        wrap = [find_bwrap() or "bwrap", *bwrap_args(spec), "--chdir", str(folder), "--"]
    install_dir = project_dir / ".iii" / "install" / name
    if not install_dir.exists():
        plan.created_files.append(install_dir)
    # setup/install output goes to stderr live and to the worker's log (§8.1, §9.3), so
    # `iii worker logs` shows what the install printed; the engine rotates the file later
    log_path = project_dir / ".iii" / "logs" / f"{name}.log"
    if not log_path.parent.exists():
        plan.created_files.append(log_path.parent)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log_file:
        def show(line: str) -> None:
            if not output.Mode.quiet:
                output.plain(line)
            log_file.write(line + "\n")
            log_file.flush()

        local.prepare_local_sync(name, folder, project_dir, env=env, wrap=wrap, manifest=manifest,
                                 output=show)


def describe(entry: Any) -> str:
    """`<kind>: <detail>` of a declared entry, for the already-declared error."""
    if entry.kind == "local":
        return f"local: {entry.worker_path}"
    if entry.kind == "oci":
        return f"oci: {entry.image}"
    return f"registry: {entry.version or '*'}" if entry.kind == "registry" else "first-party"


def conflict(name: str, entry: Any) -> CliError:
    return CliError(f"a worker named '{name}' is already declared ({describe(entry)})", wcode="W112",
                    hint="remove it first, or pass --name")
