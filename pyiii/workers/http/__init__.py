"""iii-http: serves HTTP and invokes the function bound to each matching ``http`` route."""

from .worker import HttpWorker, start

__all__ = ["HttpWorker", "start"]
