"""Run iii-pubsub out of process (``isolation: process``)."""

from ..runner import run_standalone

run_standalone("iii-pubsub", "pyiii.workers.pubsub")
