"""iii-pubsub: publish to a topic, `subscribe` trigger (see README.md in this folder)."""

from .worker import PubSubWorker, start

__all__ = ["PubSubWorker", "start"]
