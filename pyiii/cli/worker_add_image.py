"""`iii worker add <image reference>` (spec/cli.md §4.1 "OCI", §9.6): one source of an add plan.

Kept apart from `worker_add` like the local source: pulling is `pyiii.manager.oci`'s job, this
module only turns its result into the plan's config.yaml entry, lock entry and messages.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyiii.cli import output
from pyiii.cli.worker_add_local import conflict
from pyiii.cli.worker_common import check_name, opt, refuse_first_party
from pyiii.engine.firstparty import canonical_name


def add_image_worker(plan: Any, req: Any, args: argparse.Namespace) -> None:
    """An image reference (§4.1 "OCI"): pull it, pin its digest in the lock, declare `image:`."""
    from pyiii.cli.worker_add import add_dependency  # the plan's own module (no cycle at import)
    from pyiii.manager.config_edit import add_entry
    from pyiii.manager.oci.declare import add_image, check_isolation
    from pyiii.manager.oci.reference import parse_reference
    from pyiii.manager.registry.progress import Progress

    ref = parse_reference(req.text)
    name = opt(args, "name") or ref.name
    check_name(name)
    refuse_first_party(name)
    isolation = opt(args, "isolation")
    check_isolation(name, isolation)
    declared = plan.declared().get(name)
    if declared is not None and (declared.kind != "oci" or declared.image != req.text):
        raise conflict(name, declared)
    force = bool(opt(args, "force") or opt(args, "force_default"))
    result = add_image(ref, name, plan.lock.workers.get(name) if declared is not None else None, force=force,
                       progress=Progress(sys.stderr, fancy=output.fancy(), quiet=output.Mode.quiet))
    plan.lock.workers[name] = result.entry
    version = result.entry.version
    if declared is None:
        fields: dict[str, Any] = {"name": name, "image": req.text}
        if isolation:
            fields["isolation"] = isolation
        plan.text = add_entry(plan.text, fields)
        plan.added.append(name)
        plan.messages.append(f"added {name} {version} to config.yaml and iii.lock")
    elif result.unchanged:
        plan.unchanged.append(name)
        plan.messages.append(f"reinstalled {name} {version}" if force else f"{name} {version} is already installed")
    else:
        plan.updated.append(name)
        plan.messages.append(f"locked {name} {version} in iii.lock")
    for dep, spec in (result.manifest.dependencies.items() if result.manifest is not None else ()):
        add_dependency(plan, canonical_name(dep), spec, name)
