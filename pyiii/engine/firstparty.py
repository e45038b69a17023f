"""The first-party worker table: names, aliases, always-on workers, default set.

This is the single place that knows which workers ship inside pyiii (spec/workers.md §1.1,
spec/cli.md §3.3). The config loader, the engine, the supervisor and the CLI all read it from
here so an alias or a new first-party worker is added once and recognised everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FirstPartyWorker:
    """One first-party worker as config.yaml names it.

    `module` is the Python module that runs the worker (in-process or, with `isolation:
    process`, as `python -m <module>`); None for the parts that are engine code and have no
    worker of their own (`iii-worker-manager`, `iii-http-functions`).
    """

    name: str
    aliases: tuple[str, ...] = ()
    always_on: bool = False
    module: str | None = None
    default_port: int | None = None


FIRST_PARTY: dict[str, FirstPartyWorker] = {
    w.name: w
    for w in (
        FirstPartyWorker("iii-worker-manager", always_on=True, default_port=49134),
        FirstPartyWorker("iii-observability", always_on=True, module="pyiii.workers.observability"),
        FirstPartyWorker("iii-http-functions", always_on=True),
        FirstPartyWorker("iii-state", ("state",), module="pyiii.workers.state"),
        FirstPartyWorker("iii-http", ("http",), module="pyiii.workers.http", default_port=3111),
        FirstPartyWorker("iii-queue", ("queue",), module="pyiii.workers.queue"),
        FirstPartyWorker("iii-cron", ("cron",), module="pyiii.workers.cron"),
        FirstPartyWorker("iii-pubsub", ("pubsub",), module="pyiii.workers.pubsub"),
        FirstPartyWorker("iii-stream", ("stream",), module="pyiii.workers.stream", default_port=3112),
        FirstPartyWorker("skills", module="pyiii.workers.skills"),
    )
}

# alias -> canonical name; the reference system's newer standalone names (cli.md §3.3).
ALIASES: dict[str, str] = {alias: w.name for w in FIRST_PARTY.values() for alias in w.aliases}

# Workers that run whether or not config.yaml lists them; they only ever run in-process.
ALWAYS_ON: frozenset[str] = frozenset(w.name for w in FIRST_PARTY.values() if w.always_on)

# The starter config.yaml and `iii --use-default-config` run exactly these, in this order
# (cli.md §1.1-1.2; the queue is included because TriggerAction.Enqueue needs it).
DEFAULT_SET: tuple[str, ...] = (
    "iii-http",
    "iii-stream",
    "iii-state",
    "iii-pubsub",
    "iii-cron",
    "iii-queue",
)

# The only first-party name that may appear several times: one entry per listener.
MULTI_ENTRY: frozenset[str] = frozenset({"iii-worker-manager"})


def canonical_name(name: str) -> str:
    """Resolve an alias (`state`) to its canonical name (`iii-state`); other names unchanged."""
    return ALIASES.get(name, name)


def is_first_party(name: str) -> bool:
    """True for a first-party name or one of its aliases (these names are reserved)."""
    return canonical_name(name) in FIRST_PARTY


def is_always_on(name: str) -> bool:
    """True for the workers that always run in the engine process."""
    return canonical_name(name) in ALWAYS_ON
