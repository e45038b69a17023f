"""{{name}}: a worker for the iii engine.

It connects to the engine at $III_URL as $III_WORKER_NAME (both set by the engine when it runs
this worker; the defaults suit running it by hand next to `iii`) and registers one function:

    iii trigger {{name}}::hello who=world
"""

from __future__ import annotations

import os
import signal
import threading

from pyiii.sdk import InitOptions, register_worker

NAME = os.environ.get("III_WORKER_NAME", "{{name}}")
URL = os.environ.get("III_URL", "ws://127.0.0.1:49134")


def hello(payload: dict | None) -> dict:
    """Answer {"message": "hello, <who>"}; `who` defaults to "world"."""
    who = (payload or {}).get("who", "world")
    return {"message": f"hello, {who}"}


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    iii = register_worker(URL, InitOptions(worker_name=NAME))
    iii.register_function("{{name}}::hello", hello)
    print(f"{NAME} is serving {{name}}::hello", flush=True)
    stop.wait()
    iii.shutdown()  # close the connection cleanly before exiting


if __name__ == "__main__":
    main()
