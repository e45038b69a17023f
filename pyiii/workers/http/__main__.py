"""Run iii-http out of process (``isolation: process``): config from ``III_WORKER_CONFIG``."""

from ..runner import run_standalone

run_standalone("iii-http", "pyiii.workers.http")
