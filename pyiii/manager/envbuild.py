"""The environment a managed worker (and its setup/install scripts) runs with (spec/cli.md §9.2).

Layers, later ones winning: the engine's environment minus ``III_*``; the manifest's ``env``;
the entry's ``config:`` flattened into variables; the entry's ``env``; what the engine sets.
Kept in one function so the worker process, its scripts and ``worker::exec`` see the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("pyiii.manager")

_RESERVED = re.compile(r"^(III_.*|PATH|HOME)$")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{api: {key: x}, debug: true, ports: [1, 2]}`` → ``API_KEY=x DEBUG=true PORTS=[1,2]``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = prefix + re.sub(r"[^A-Z0-9_]", "_", str(key).upper())
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "_"))
        elif isinstance(value, str):
            out[name] = value
        elif value is None:
            out[name] = ""
        else:
            out[name] = json.dumps(value, separators=(",", ":"))
    return out


@dataclass
class EnvInputs:
    """Everything §9.2 draws on, gathered by the supervisor for one worker."""

    name: str
    engine_url: str
    project_dir: Path
    worker_dir: Path
    work_dir: Path
    isolation: str  # process | namespace
    config: dict[str, Any] = field(default_factory=dict)
    entry_env: dict[str, str] = field(default_factory=dict)
    manifest_env: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    namespace: str | None = None
    config_path: Path | None = None
    ephemeral: bool = False


def worker_environment(inputs: EnvInputs, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment of one worker process, per cli.md §9.2 (later items win)."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("III_")}
    env.update(inputs.manifest_env)
    for key, value in flatten_config(inputs.config).items():
        if _RESERVED.match(key):
            log.warning("%s: config key %s is not passed as environment (it would override %s)",
                        inputs.name, key, key)
            continue
        env[key] = value
    env.update(inputs.entry_env)
    env.setdefault("PYTHONUNBUFFERED", "1")  # worker output reaches the log line by line
    env.update({
        "III_URL": inputs.engine_url, "III_ENGINE_URL": inputs.engine_url,
        "III_WORKER_NAME": inputs.name,
        "III_WORKER_CONFIG": json.dumps(inputs.config, separators=(",", ":")),
        "III_WORKER_DIR": str(inputs.worker_dir), "III_WORK_DIR": str(inputs.work_dir),
        "III_PROJECT_DIR": str(inputs.project_dir), "III_ISOLATION": inputs.isolation,
        "III_PYTHON": sys.executable, "III_EPHEMERAL": "1" if inputs.ephemeral else "0",
    })
    if inputs.version:
        env["III_WORKER_VERSION"] = inputs.version
    if inputs.config_path is not None:
        env["III_CONFIG_PATH"] = str(inputs.config_path)
    if inputs.namespace:
        env["III_NAMESPACE"] = inputs.namespace
    if inputs.isolation == "namespace":
        env["HOME"] = str(inputs.work_dir)
    return env
