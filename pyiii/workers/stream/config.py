"""The ``config:`` block of iii-stream (spec/workers.md §7.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...storage.redis_link import redis_config
from .. import settings

WORKER = "iii-stream"
ACCEPTED = ("port", "host", "auth_function", "adapter", "channel_size")
DEFAULT_FILE = "data/stream.db"
DEFAULT_PORT = 3112
DEFAULT_HOST = "127.0.0.1"
DEFAULT_CHANNEL_SIZE = 256
MAX_CHANNEL_SIZE = 1_048_576


@dataclass
class StreamSettings:
    port: int
    host: str
    auth_function: str | None
    adapter: settings.Adapter
    channel_size: int


def parse_settings(config: dict[str, Any], ephemeral: bool) -> StreamSettings:
    """Validate a block; ``ValueError`` names the key (the old settings stay on reload)."""
    config = {} if config is None else config
    settings.check_keys(WORKER, config, ACCEPTED)
    port = settings.integer(config, "port", DEFAULT_PORT, minimum=0)
    assert port is not None
    if port > 65535:
        raise ValueError(f"config.port must be an integer between 0 and 65535, got {port!r}")
    host = config.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not host:
        raise ValueError(f"config.host must be a non-empty string, got {host!r}")
    auth = config.get("auth_function")
    if auth is not None and (not isinstance(auth, str) or not auth):
        raise ValueError(f"config.auth_function must be a function id, got {auth!r}")
    adapter = settings.adapter(WORKER, config, "sqlite", ephemeral)
    # the reference keeps channel_size inside the adapter's config; the top level wins
    adapter.config = dict(adapter.config)  # never edit the caller's mapping
    inner = adapter.config.pop("channel_size", None)
    if adapter.name == "redis":
        redis_config(adapter.config)  # refuse a bad redis block before anything starts
    source = config if "channel_size" in config else {"channel_size": inner}
    size = settings.integer(source, "channel_size", None, minimum=1)
    size = DEFAULT_CHANNEL_SIZE if size is None else size
    if size > MAX_CHANNEL_SIZE:
        raise ValueError(f"config.channel_size must be between 1 and {MAX_CHANNEL_SIZE}, got {size}")
    return StreamSettings(port, host, auth, adapter, size)
