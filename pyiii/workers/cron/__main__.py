"""Run iii-cron out of process (``isolation: process``)."""

from ..runner import run_standalone

run_standalone("iii-cron", "pyiii.workers.cron")
