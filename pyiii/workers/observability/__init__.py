"""iii-observability: the engine's queryable log store (see README.md in this folder)."""

from .worker import ObservabilityWorker, start

__all__ = ["ObservabilityWorker", "start"]
