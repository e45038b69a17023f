"""Run iii-observability out of process (it then sees only its own process's records)."""

from ..runner import run_standalone

run_standalone("iii-observability", "pyiii.workers.observability")
