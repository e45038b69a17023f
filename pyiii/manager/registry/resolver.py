"""Choosing one version per worker name (spec/cli.md §7.3, §7.4).

config.yaml runs one instance per name, so unlike npm there are no nested copies: every
constraint on a name (its own `version:`, each dependent's range, a new request) must be met
by a single version. The algorithm is the spec's fixed-point loop: a name whose current choice
breaks a constraint is chosen again (keeping a satisfying lock pin when it may), a new choice
withdraws the old version's dependency constraints and adds its own, and names nothing needs
any more drop out. There is no backtracking over other names, so a conflict is reported with
every constraint and where it came from, for the user to settle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiii.engine.firstparty import canonical_name, is_first_party

from ..lockfile import Lock, LockEntry
from .errors import ManagerError
from .firstparty import builtin_satisfies, shipped_version
from .model import VersionInfo, WorkerDocument, host_platform
from .semver import is_dist_tag, is_exact, is_prerelease, is_range, newest_first, satisfies
from .sources import Registries
from .urls import RegistrySource

MAX_STEPS = 1000
REQUEST, CONFIG = "request", "config.yaml"


@dataclass(frozen=True)
class Declared:
    """A worker declared in config.yaml, as resolution sees it. `spec` is its `version:`
    (builtin and registry kinds); `version`/`dependencies` describe local and OCI workers."""

    name: str
    kind: str  # builtin | registry | oci | local
    spec: str | None = None
    version: str | None = None
    dependencies: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """A new `name[@spec]` (spec: None, an exact version, a range or a dist-tag)."""

    name: str
    spec: str | None = None


@dataclass(frozen=True)
class Constraint:
    spec: str
    origin: str  # REQUEST, CONFIG, or "<requirer> <version>"

    def describe(self, name: str) -> str:
        if self.origin == REQUEST:
            return f"you asked for {name} {self.spec}"
        if self.origin == CONFIG:
            return f"config.yaml declares {name} {self.spec}"
        return f"{self.origin} requires {name} {self.spec}"


@dataclass
class Choice:
    """The version picked for one name and where it comes from."""

    name: str
    version: str
    kind: str  # builtin | registry | local | oci
    dependencies: dict[str, str]
    locked: LockEntry | None = None       # kept from iii.lock (no fetch)
    info: VersionInfo | None = None       # picked from a registry document
    document: WorkerDocument | None = None
    registry: RegistrySource | None = None


@dataclass
class Resolution:
    choices: dict[str, Choice]
    requested: dict[str, str]  # request name -> its spec after dist-tag lookup
    tagged: set[str]           # requests that named a dist-tag (saved as ^<version>)
    constraints: dict[str, list[Constraint]]
    warnings: list[str]

    def required_by(self, name: str) -> list[str]:
        """Names of the chosen workers whose dependencies include `name`."""
        return sorted(c.name for c in self.choices.values() if name in c.dependencies)


def _deps(raw: dict[str, str], owner: str) -> dict[str, str]:
    return {canonical_name(k): v for k, v in raw.items() if canonical_name(k) != owner}


class Resolver:
    """One resolution run. `update` holds the names whose lock pins are ignored (U)."""

    def __init__(self, registries: Registries, lock: Lock, declared: list[Declared], *,
                 update: set[str] | frozenset[str] = frozenset(), platform: str | None = None) -> None:
        self.registries, self.lock = registries, lock
        self.declared = {d.name: d for d in declared}
        self.update = {canonical_name(n) for n in update}
        self.platform = platform or host_platform()
        self.warnings: list[str] = []

    # -- entry point -------------------------------------------------------------------------
    def resolve(self, requests: list[Request] = (), *, latest: set[str] | frozenset[str] = frozenset()) -> Resolution:
        """Resolve everything declared plus `requests`; `latest` names take their `latest`
        dist-tag instead of their own range (`update --latest`)."""
        constraints: dict[str, list[Constraint]] = {}
        requested: dict[str, str] = {}
        tagged: set[str] = set()
        request_names = {canonical_name(r.name) for r in requests}
        for d in self.declared.values():
            if d.kind in ("builtin", "registry") and d.name not in request_names:
                spec = d.spec or "*"
                if d.name in latest:
                    spec = self._latest_tag(d.name)
                constraints.setdefault(d.name, []).append(Constraint(spec, CONFIG))
            if d.kind == "local":
                for dep, spec in _deps(d.dependencies, d.name).items():
                    constraints.setdefault(dep, []).append(Constraint(spec, f"{d.name} {d.version or '(local)'}"))
        for r in requests:
            name = canonical_name(r.name)
            spec = self._request_spec(name, r.spec)
            if r.spec is not None and is_dist_tag(r.spec):
                tagged.add(name)
            requested[name] = spec
            constraints.setdefault(name, []).append(Constraint(spec, REQUEST))
        choices: dict[str, Choice] = {}
        self._settle(constraints, choices, request_names)
        return Resolution(choices, requested, tagged, constraints, self.warnings)

    def _request_spec(self, name: str, spec: str | None) -> str:
        if spec is None:
            d = self.declared.get(name)
            return d.spec if d and d.spec else "*"
        if is_range(spec):
            return spec
        if is_dist_tag(spec):
            doc = self.registries.find(name).document
            if spec not in doc.dist_tags:
                tags = ", ".join(sorted(doc.dist_tags)) or "none"
                raise ManagerError("W110", f"'{name}' has no dist-tag '{spec}' (tags: {tags})")
            return doc.dist_tags[spec]
        raise ManagerError("W100", f"invalid version request '{name}@{spec}': expected a version, a range or a dist-tag")

    def _latest_tag(self, name: str) -> str:
        doc = self.registries.find(name).document
        if "latest" in doc.dist_tags:
            return doc.dist_tags["latest"]
        stable = [v for v, i in doc.versions.items() if not i.yanked and not is_prerelease(v)]
        if not stable:
            raise ManagerError("W111", f"'{name}' has no stable version")
        return newest_first(stable)[0]

    # -- the fixed-point loop ----------------------------------------------------------------
    def _settle(self, constraints: dict[str, list[Constraint]], choices: dict[str, Choice],
                keep: set[str]) -> None:
        steps = 0
        changed = True
        while changed:
            changed = False
            for name in sorted(constraints):
                cons = constraints[name]
                current = choices.get(name)
                if not cons and name not in self.declared and name not in keep:
                    if current is not None:
                        self._withdraw(current, constraints)
                        del choices[name]
                    del constraints[name]
                    changed = True
                    break
                if current is not None and all(self._ok(current, c.spec) for c in cons):
                    continue
                steps += 1
                if steps > MAX_STEPS:
                    raise ManagerError("W112", "dependency resolution did not settle",
                                       hint="pin the workers involved to exact versions")
                new = self._choose(name, cons)
                if current is not None:
                    self._withdraw(current, constraints)
                choices[name] = new
                for dep, spec in new.dependencies.items():
                    constraints.setdefault(dep, []).append(Constraint(spec, f"{name} {new.version}"))
                changed = True
                break  # constraints changed: restart the pass in name order

    @staticmethod
    def _withdraw(choice: Choice, constraints: dict[str, list[Constraint]]) -> None:
        origin = f"{choice.name} {choice.version}"
        for dep in choice.dependencies:
            if dep in constraints:
                constraints[dep] = [c for c in constraints[dep] if c.origin != origin]

    @staticmethod
    def _ok(choice: Choice, spec: str) -> bool:
        return satisfies(choice.version, spec, include_prerelease=choice.kind == "builtin")

    # -- choosing one name -------------------------------------------------------------------
    def _choose(self, name: str, cons: list[Constraint]) -> Choice:
        declared = self.declared.get(name)
        if declared is not None and declared.kind in ("local", "oci"):
            version = declared.version or "0.0.0"
            if all(satisfies(version, c.spec) for c in cons):
                return Choice(name, version, declared.kind, {})
            raise self._conflict(name, cons, [version], f"{name} is declared as a {declared.kind} worker at {version}")
        if is_first_party(name):
            return self._builtin(name, cons)
        entry = self.lock.workers.get(name)
        if name not in self.update and entry is not None and entry.type != "builtin" and \
                all(satisfies(entry.version, c.spec) for c in cons):
            return Choice(name, entry.version, "registry", _deps(entry.dependencies, name), locked=entry)
        found = self.registries.find(name)
        return self._pick(found.document, found.registry, cons)

    def _builtin(self, name: str, cons: list[Constraint]) -> Choice:
        version = shipped_version()
        failing = [c for c in cons if not builtin_satisfies(c.spec)]
        if failing:
            if all(c.origin in (REQUEST, CONFIG) for c in failing):
                raise ManagerError("W111", f"'{name}' is a first-party worker; this pyiii ships {version}, "
                                   f"which does not satisfy '{failing[0].spec}'",
                                   hint=f"ask for a range that includes {version}, or upgrade pyiii")
            raise self._conflict(name, cons, [version], None)
        doc = self.registries.find(name).document
        return Choice(name, version, "builtin", _deps(doc.versions[version].dependencies, name))

    def _candidates(self, doc: WorkerDocument, cons: list[Constraint]) -> list[str]:
        pins = {c.spec.strip().lstrip("=") for c in cons if is_exact(c.spec)}
        return [v for v, info in doc.versions.items()
                if (not info.yanked or v in pins) and all(satisfies(v, c.spec) for c in cons)]

    def _pick(self, doc: WorkerDocument, registry: RegistrySource | None, cons: list[Constraint]) -> Choice:
        name = doc.name
        candidates = self._candidates(doc, cons)
        if not candidates:
            raise self._unsatisfiable(doc, cons)
        latest = doc.dist_tags.get("latest")
        version = latest if latest in candidates else newest_first(candidates)[0]
        info = doc.versions[version]
        if info.yanked:
            self.warnings.append(f"{name} {version} is yanked: {info.yanked}")
        if info.deprecated:
            self.warnings.append(f"{name} {version} is deprecated: {info.deprecated}")
        if info.type == "binary" and self.platform not in info.artifacts:
            raise ManagerError("W110", f"'{name}' {version} has no binary for {self.platform} "
                               f"(available: {', '.join(sorted(info.artifacts))})")
        return Choice(name, version, "registry", _deps(info.dependencies, name), info=info,
                      document=doc, registry=registry)

    def _unsatisfiable(self, doc: WorkerDocument, cons: list[Constraint]) -> ManagerError:
        name = doc.name
        available = newest_first(list(doc.versions))
        for c in cons:
            if not self._candidates(doc, [c]):
                shown = ", ".join(available[:10]) or "none"
                details = [] if c.origin in (REQUEST, CONFIG) else [c.describe(name)]
                hint = None
                if c.spec == "*" and available and all(is_prerelease(v) for v in available):
                    example = "next" if "next" in doc.dist_tags else available[0]
                    hint = f"ask for one explicitly, e.g. {name}@{example}"
                elif c.origin == CONFIG:
                    hint = f"change version: of {name} in config.yaml"
                return ManagerError("W111", f"no version of '{name}' satisfies '{c.spec}' (available: {shown})",
                                    details=details, hint=hint)
        return self._conflict(name, cons, available, None)

    @staticmethod
    def _conflict(name: str, cons: list[Constraint], available: list[str], extra: str | None) -> ManagerError:
        details = [c.describe(name) for c in cons]
        if extra:
            details.append(extra)
        details.append(f"available: {', '.join(available[:10]) or 'none'}")
        requirer = next((c.origin.split(" ")[0] for c in cons if c.origin not in (REQUEST, CONFIG)), name)
        return ManagerError("W112", f"no single version of '{name}' satisfies every worker that needs it:",
                            details=details,
                            hint=f"pin one of them to a version with a compatible dependency, "
                                 f"e.g. iii worker add {requirer}@<version>")
