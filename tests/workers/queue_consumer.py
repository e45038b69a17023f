#!/usr/bin/env python3
"""Consumer of the queue crash acceptance test (tests/test_queue_crash_acceptance.py).

Usage: queue_consumer.py <engine url> <completions file>
Registers `jobs::work`: each call appends "<payload n>\\n" to the completions file (O_APPEND,
fdatasync'd) BEFORE returning, so a job acknowledged by the engine is always recorded. Prints
"READY <pid>" once registered; reconnects by itself (fast backoff) when the engine restarts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from pyiii.sdk import InitOptions, ReconnectionConfig, register_worker


def main() -> int:
    url, path = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def work(data):
        os.write(fd, f"{int(data['n'])}\n".encode())
        await asyncio.to_thread(os.fdatasync, fd)
        return {"ok": data["n"]}

    iii = register_worker(url, InitOptions(
        worker_name="jobs-consumer",
        reconnection_config=ReconnectionConfig(initial_delay_ms=100, max_delay_ms=500,
                                               backoff_multiplier=1.5, jitter_factor=0.1)))
    iii._wait_until_connected()
    iii.register_function("jobs::work", work)
    # barrier: the engine applies frames in order, so this answer follows the registration
    iii.trigger({"function_id": "engine::functions::list", "payload": {}, "timeout_ms": 10000})
    sys.stdout.write(f"READY {os.getpid()}\n")
    sys.stdout.flush()
    threading.Event().wait()  # until killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
