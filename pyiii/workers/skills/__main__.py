"""Run the skills worker out of process (``isolation: process``)."""

from ..runner import run_standalone

run_standalone("skills", "pyiii.workers.skills")
