"""iii-queue: named queues, durable topics, retries, FIFO groups and a DLQ (see README.md)."""

from .worker import QueueWorker, start

__all__ = ["QueueWorker", "start"]
