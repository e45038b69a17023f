"""The two config.yaml documents the engine ships: the starter file `iii` writes into an empty
folder, and the document `--use-default-config` loads in memory."""

from __future__ import annotations

__all__ = ["STARTER_CONFIG", "DEFAULT_CONFIG_TEXT"]

STARTER_CONFIG = """\
# iii project configuration: the workers this engine runs.
# Add workers with `iii worker add <name>`; a running engine reloads this file on save.
# Values may read environment variables: ${VAR} or ${VAR:default}.
workers:
  - name: iii-http
  - name: iii-stream
  - name: iii-state
  - name: iii-pubsub
  - name: iii-cron
  - name: iii-queue
"""

# --use-default-config is this document expanded in memory: going through the normal loader
# keeps its ${VAR} semantics identical to a file's (cli.md §1.2).
DEFAULT_CONFIG_TEXT = """\
workers:
  - name: iii-worker-manager
    config:
      port: ${III_ENGINE_PORT:49134}
  - name: iii-http
    config:
      port: ${III_HTTP_PORT:3111}
  - name: iii-stream
    config:
      port: ${III_STREAM_PORT:3112}
      adapter: memory
  - name: iii-state
    config: {adapter: memory}
  - name: iii-pubsub
    config: {adapter: memory}
  - name: iii-cron
    config: {adapter: memory}
  - name: iii-queue
    config: {adapter: memory}
"""
