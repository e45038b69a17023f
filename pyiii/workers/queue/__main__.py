"""Run iii-queue out of process (``isolation: process``): config from ``III_WORKER_CONFIG``."""

from ..runner import run_standalone

run_standalone("iii-queue", "pyiii.workers.queue")
