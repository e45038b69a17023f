"""iii-state: scoped key/value store with change triggers (see README.md in this folder)."""

from .worker import StateWorker, start

__all__ = ["StateWorker", "start"]
