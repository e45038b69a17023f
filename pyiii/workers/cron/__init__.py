"""iii-cron: the `cron` trigger type (see README.md in this folder)."""

from .worker import CronWorker, start

__all__ = ["CronWorker", "start"]
