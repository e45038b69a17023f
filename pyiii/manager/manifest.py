"""Reading and validating a worker's ``iii.worker.yaml`` (spec/cli.md §8.1).

``load_manifest(folder)`` is used wherever a manifest matters: ``iii worker add ./path``,
``publish``, and the supervisor before it runs a local worker's scripts. Every refusal is a
``ManifestError`` (W180) naming the file, the line and column, and the dotted field, so the
same message reads well on the CLI and in a worker's ``failed`` reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

# config.yaml's reader already knows where a ruamel.yaml node sits (1-based line, column)
from ..engine.config import node_position
from ..engine.config_model import NAME_RE, NAME_RULE

log = logging.getLogger("pyiii.manager")

MANIFEST_NAME = "iii.worker.yaml"
MAX_BYTES = 64 * 1024
SUPPORTED = ("name", "description", "version", "runtime", "scripts", "env", "dependencies",
             "resources", "skills", "tags")
# written for the reference system (iii, deploy, manifest) or by pyiii's first-party workers
# (provides: what the worker registers, read by the first-party index): accepted, not validated
IGNORED = ("iii", "deploy", "manifest", "provides")
LANGUAGES = ("python", "node", "binary", "other")
SCRIPTS = ("setup", "install", "start")
RUNTIME_KEYS = ("language", "base_image")
RESOURCE_KEYS = ("memory", "cpus", "pids")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")


class ManifestError(Exception):
    """An invalid or missing ``iii.worker.yaml`` (W180); str() is ``<file>:<line>:<col>: <msg>``."""

    code = "W180"

    def __init__(self, message: str, path: Path, line: int | None = None,
                 col: int | None = None, field: str | None = None) -> None:
        self.message, self.path, self.line, self.col, self.field = message, path, line, col, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}" + (f":{self.col}" if self.col is not None else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; ``folder`` is the worker folder it was read from."""

    name: str
    folder: Path
    description: str | None = None
    version: str | None = None
    language: str | None = None
    base_image: str | None = None
    setup: str | None = None
    install: str | None = None
    start: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    dependencies: dict[str, str] = field(default_factory=dict)
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    skills: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME


def _valid_range(spec: str) -> bool:
    """An npm range; node-semver decides when installed, else a loose shape check."""
    try:
        import nodesemver
    except ImportError:  # pragma: no cover - the registry code pulls it in
        return bool(spec.strip()) and re.fullmatch(r"[\w.\-+*^~<>=| xX]+", spec) is not None
    try:
        return nodesemver.valid_range(spec, loose=False) is not None
    except Exception:  # noqa: BLE001 - the library raises several types for junk
        return False


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []

    def fail(self, message: str, node: Any = None, key: Any = None, dotted: str | None = None,
             of_key: bool = False) -> ManifestError:
        line, col = node_position(node, key, of_key) if node is not None else (None, None)
        return ManifestError(message, self.path, line, col, dotted)

    def text(self, node: Any, key: str, dotted: str, required: bool = False) -> str | None:
        value = node.get(key)
        if value is None:
            if required:
                raise self.fail(f"missing required key '{dotted}'", node, None, dotted)
            return None
        if not isinstance(value, str):
            raise self.fail(f"{dotted} must be a string", node, key, dotted)
        return str(value)

    def mapping(self, node: Any, key: str, allowed: tuple[str, ...] | None) -> Mapping[str, Any]:
        value = node.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"{key} must be a mapping", node, key, key)
        for k in value if allowed is not None else ():
            if k not in allowed:
                raise self.fail(f"unknown key '{k}' in {key} (supported: {', '.join(allowed)})",
                                value, k, f"{key}.{k}", of_key=True)
        return value

    def strings(self, node: Any, key: str) -> tuple[str, ...]:
        value = node.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{key} must be a list of strings", node, key, key)
        return tuple(str(v) for v in value)

    def read(self, folder: Path) -> Manifest:
        doc = self.parse()
        for key in doc:
            if key not in SUPPORTED and key not in IGNORED:
                raise self.fail(f"unknown key '{key}' in {MANIFEST_NAME} (supported: "
                                f"{', '.join(SUPPORTED)})", doc, key, str(key), of_key=True)
        name = self.text(doc, "name", "name", required=True)
        assert name is not None
        if not NAME_RE.fullmatch(name) or ".." in name:
            raise self.fail(f"invalid worker name '{name}': {NAME_RULE}", doc, "name", "name")
        description = self.text(doc, "description", "description")
        if description is not None and "\n" in description.strip():
            raise self.fail("description must be one line", doc, "description", "description")
        version = self.text(doc, "version", "version")
        if version is not None and not _SEMVER.match(version):
            raise self.fail(f"version '{version}' is not a semantic version (like 1.2.0)",
                            doc, "version", "version")
        language, base_image = self.runtime(doc)
        scripts = self.mapping(doc, "scripts", SCRIPTS)
        for key, value in scripts.items():
            if value is not None and not isinstance(value, str):
                raise self.fail(f"scripts.{key} must be one command string; chain commands "
                                "with &&", scripts, key, f"scripts.{key}")
        start = scripts.get("start")
        if not start and language != "binary":
            raise self.fail("scripts.start is required (the command that runs the worker)",
                            doc, "scripts" if "scripts" in doc else None, "scripts.start")
        return Manifest(
            name=name, folder=folder, description=description.strip() if description else None,
            version=version, language=language, base_image=base_image,
            setup=scripts.get("setup") or None, install=scripts.get("install") or None,
            start=start or None, env=self.env(doc), dependencies=self.dependencies(doc, name),
            **self.resources(doc), skills=self.skills(doc, folder), tags=self.strings(doc, "tags"),
            warnings=tuple(self.warnings))

    def parse(self) -> Mapping[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(f"no {MANIFEST_NAME} in {self.path.parent}", self.path) from None
        except OSError as exc:
            raise ManifestError(f"cannot read it: {exc.strerror or exc}", self.path) from None
        if len(raw) > MAX_BYTES:
            raise ManifestError(f"larger than {MAX_BYTES // 1024} KiB ({len(raw)} bytes)", self.path)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                                self.path) from None
        yaml = YAML(typ="rt")  # duplicate keys are an error in ruamel's default mode
        try:
            doc = yaml.load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
            raise ManifestError(f"invalid YAML: {exc.problem or exc.context}", self.path,
                                line, col) from None
        except YAMLError as exc:
            raise ManifestError(f"invalid YAML: {exc}", self.path) from None
        if not isinstance(doc, Mapping):
            raise ManifestError("the top level must be a mapping (name: ..., scripts: ...)",
                                self.path, 1, 1)
        return doc

    def runtime(self, doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
        value = doc.get("runtime")
        if value is None:
            return None, None
        if isinstance(value, str):
            language, base_image = str(value), None
            node, key = doc, "runtime"
        else:
            m = self.mapping(doc, "runtime", RUNTIME_KEYS)
            language = self.text(m, "language", "runtime.language")
            base_image = self.text(m, "base_image", "runtime.base_image")
            node, key = m, "language"
        if language is not None and language not in LANGUAGES:
            raise self.fail(f"runtime.language must be one of {', '.join(LANGUAGES)} "
                            f"(got '{language}')", node, key, "runtime.language")
        return language, base_image

    def env(self, doc: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        block = self.mapping(doc, "env", None)
        for key, value in block.items():
            if not isinstance(value, str):
                raise self.fail(f"env.{key} must be a string; quote it", block, key, f"env.{key}")
            if str(key).startswith("III_"):
                self.warnings.append(f"env.{key} is ignored: III_* variables are set by the engine")
                continue
            env[str(key)] = str(value)
        return env

    def dependencies(self, doc: Mapping[str, Any], own: str) -> dict[str, str]:
        deps: dict[str, str] = {}
        block = self.mapping(doc, "dependencies", None)
        for key, value in block.items():
            dep = str(key)
            if not NAME_RE.fullmatch(dep) or ".." in dep:
                raise self.fail(f"invalid dependency name '{dep}': {NAME_RULE}", block, key,
                                f"dependencies.{dep}", of_key=True)
            if dep == own:
                raise self.fail(f"{own} cannot depend on itself", block, key, f"dependencies.{dep}",
                                of_key=True)
            if not isinstance(value, str) or not _valid_range(str(value)):
                raise self.fail(f"dependencies.{dep} must be a version range such as \"*\" or "
                                "\"^1.2.0\"", block, key, f"dependencies.{dep}")
            deps[dep] = str(value)
        return deps

    def resources(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        block = self.mapping(doc, "resources", RESOURCE_KEYS)
        out: dict[str, Any] = {}
        for key in RESOURCE_KEYS:
            value = block.get(key)
            if value is None:
                out[key] = None
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value <= 0 or (key != "cpus" and not isinstance(value, int)):
                kind = "a positive number" if key == "cpus" else "a positive integer"
                raise self.fail(f"resources.{key} must be {kind}", block, key, f"resources.{key}")
            out[key] = float(value) if key == "cpus" else int(value)
        return out

    def skills(self, doc: Mapping[str, Any], folder: Path) -> tuple[str, ...]:
        skills = self.strings(doc, "skills")
        root = folder.resolve()
        for i, item in enumerate(skills):
            pure = PurePosixPath(item)
            inside = (root / item).resolve()
            if pure.is_absolute() or ".." in pure.parts or not inside.is_relative_to(root):
                raise self.fail(f"skills[{i}] must be a path inside the worker folder (got "
                                f"'{item}')", doc.get("skills"), i, f"skills[{i}]")
        return skills


def load_manifest(folder: Path) -> Manifest:
    """Read and validate ``<folder>/iii.worker.yaml``; raises ``ManifestError`` (W180)."""
    folder = Path(folder)
    reader = _Reader(folder / MANIFEST_NAME)
    manifest = reader.read(folder)
    for warning in manifest.warnings:
        log.warning("%s: %s", reader.path, warning)
    return manifest
