"""WorkerStatus documents (spec/cli.md §9.4): what ``worker::list`` and friends answer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..engine.firstparty import ALWAYS_ON
from .local import state_path
from .oci.run import image_install_dir

if TYPE_CHECKING:
    from .supervisor import Record, Supervisor

_LOCK_TYPE = {"builtin": "builtin", "oci": "image"}


def _rootfs(isolation: str | None, launched: bool, image: bool) -> str | None:
    """What a namespace sandbox's root is: the host's, or the image's (read-only: this bwrap
    mounts no overlay, spec/cli.md §9.6 "Run")."""
    if isolation != "namespace" or not launched:
        return None
    return "read-only" if image else "host"


def worker_status(sup: "Supervisor", record: "Record") -> dict[str, Any]:
    entry = record.entry
    process = record.process
    launch = process.launch if process is not None else None
    choice = record.choice
    isolation = launch.isolation if launch is not None else (choice.isolation if choice else None)
    version = entry.version
    if entry.kind == "builtin":
        version = __version__
    elif entry.kind == "local" and launch is not None:
        version = launch.env.get("III_WORKER_VERSION")
    install_path = None
    locked = sup.locked(entry.name) if entry.kind in ("registry", "oci") else None
    image = locked is not None and locked.type == "image"
    if entry.kind == "local" and not sup.ephemeral:
        install_path = str(state_path(sup.project.project_dir, entry.name).parent)
    elif image:
        version = locked.version
        if not sup.ephemeral:  # III_WORKER_DIR is the image's WorkingDir, a path inside its root
            install_path = str(image_install_dir(sup.project.project_dir, entry.name, locked.digest))
    elif locked is not None:
        version = locked.version
        if launch is not None and isolation != "in-process":
            install_path = launch.env.get("III_WORKER_DIR")
    if locked is not None and launch is not None and launch.env.get("III_WORKER_VERSION"):
        # what the process actually runs: during a reload the lock may already name the next pin
        version = launch.env["III_WORKER_VERSION"]
    log_path = None if isolation == "in-process" else sup.log_path(entry.name)
    state = record.state
    reason = process.reason if process is not None and process.reason else record.reason
    return {
        "name": entry.name, "kind": entry.kind,
        "type": locked.type if locked is not None else _LOCK_TYPE.get(entry.kind),
        "version": version, "state": state, "connected": bool(sup.connections(entry.name)),
        "pid": process.pid if process is not None else None,
        "isolation": isolation,
        "isolation_reason": choice.reason if choice is not None else None,
        "limits": launch.limits if launch is not None else None,
        "rootfs": _rootfs(isolation, launch is not None, image),
        "restarts": process.restarts if process is not None else 0,
        "started_at": process.started_at if process is not None else None,
        "last_exit": process.last_exit if process is not None else None,
        "reason": reason if state == "failed" else None,
        "log_path": str(log_path) if log_path is not None else None,
        "install_path": install_path,
    }


def always_on_status(sup: "Supervisor", name: str) -> dict[str, Any]:
    """The engine's own always-on parts, listed so ``list`` mirrors config.yaml."""
    return {
        "name": name, "kind": "builtin", "type": "builtin", "version": __version__,
        "state": "running", "connected": bool(sup.connections(name)), "pid": None,
        "isolation": "in-process", "isolation_reason": None, "limits": None, "rootfs": None,
        "restarts": 0, "started_at": None, "last_exit": None, "reason": None,
        "log_path": None, "install_path": None,
    }


def undeclared_status(sup: "Supervisor", name: str) -> dict[str, Any]:
    """A worker that connected on its own (not in config.yaml)."""
    conns = sup.connections(name)
    info = conns[0].info if conns else None
    return {
        "name": name, "kind": None, "type": None, "version": info.version if info else None,
        "state": "running", "connected": True, "pid": info.pid if info else None,
        "isolation": None, "isolation_reason": None, "limits": None, "rootfs": None,
        "restarts": 0, "started_at": None, "last_exit": None, "reason": None,
        "log_path": None, "install_path": None,
    }


def list_document(sup: "Supervisor") -> dict[str, Any]:
    workers: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in sup.project.workers:
        if entry.name in seen:
            continue
        seen.add(entry.name)
        record = sup.records.get(entry.name)
        if record is not None:
            workers.append(worker_status(sup, record))
        elif entry.name in ALWAYS_ON:
            workers.append(always_on_status(sup, entry.name))
    for name, record in sup.records.items():  # kept running from the last valid config
        if name not in seen:
            workers.append(worker_status(sup, record))
    error = sup.config_error
    return {
        "config_path": str(sup.project.config_path) if sup.project.config_path else None,
        "config_error": None if error is None else {
            "code": getattr(error, "code", "W131"), "message": str(error),
            "line": getattr(error, "line", None), "col": getattr(error, "col", None)},
        "isolation_probe": sup.probe.as_dict(),
        "engine_pid": os.getpid(),
        "workers": workers,
    }
