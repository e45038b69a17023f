"""skills: skills registry, iii:// URIs and prompts (see README.md in this folder)."""

from .worker import SkillsWorker, start

__all__ = ["SkillsWorker", "start"]
