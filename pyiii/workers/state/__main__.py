"""Run iii-state out of process (``isolation: process``): config from ``III_WORKER_CONFIG``."""

from ..runner import run_standalone

run_standalone("iii-state", "pyiii.workers.state")
