"""Worker registries: documents, version ranges, resolution, downloads, installs, publishing
(spec/cli.md §6-7, §4.9-4.14).

Modules, each with one job: `model` (registry documents), `semver` (npm ranges), `urls` (where
bytes may come from), `httpget` and `sources` (fetching documents), `cache`, `download`
(verified artifacts), `archive` (safe unpacking, reproducible packing), `firstparty` (the
built-in index), `resolver`, `install`, `plan` (add/update), `lockops` (verify/sync),
`publish` and `serve` (registry folders).
"""

from .errors import ManagerError

__all__ = ["ManagerError"]
