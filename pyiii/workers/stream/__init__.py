"""iii-stream: stream items with live WebSocket sync and triggers (see README.md in this folder)."""

from .worker import StreamWorker, start

__all__ = ["StreamWorker", "start"]
