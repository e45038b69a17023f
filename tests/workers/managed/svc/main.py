"""Managed test worker (tests/test_supervisor*.py, tests/test_sandbox*.py).

MODE (from config: or env:) picks the behaviour:
  serve (default)  register <name>::hello, <name>::env, <name>::probe; SIGTERM: print "bye", exit 0
  crash            print "crashing" and exit with CODE (default 1) at once
  ticker           serve, and print "tick <n>" every TICK_MS (default 50) ms
  stubborn         serve, but ignore SIGTERM (only SIGKILL ends it)
  silent           never connect; sleep until SIGTERM
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from pyiii.sdk import InitOptions, register_worker

NAME = os.environ.get("III_WORKER_NAME", "svc")
MODE = os.environ.get("MODE", "serve")
print(f"{NAME} starting in mode {MODE}", flush=True)
if MODE == "crash":
    print("crashing", flush=True)
    sys.exit(int(os.environ.get("CODE", "1")))

if MODE == "silent":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)

done = threading.Event()
if MODE == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: done.set())

iii = register_worker(os.environ.get("III_URL"), InitOptions(worker_name=NAME))


def hello(data):
    return {"message": f"hello, {(data or {}).get('who', 'world')}"}


def env(data):
    return dict(os.environ)


def try_write(path: Path) -> str:
    try:
        path.write_text("x")
        path.unlink()
        return "ok"
    except OSError as exc:
        return f"error: {exc.strerror}"


def probe(data):
    data = data or {}
    home_marker = data.get("home_marker")
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "home_marker_visible": bool(home_marker) and os.path.exists(home_marker),
        "write_project": try_write(Path(os.environ["III_PROJECT_DIR"]) / "intruder.txt"),
        "write_own": try_write(Path(os.environ["III_WORKER_DIR"]) / "own.txt"),
        "write_work": try_write(Path(os.environ["III_WORK_DIR"]) / "work.txt"),
        "cwd": os.getcwd(),
    }


iii.register_function(f"{NAME}::hello", hello)
iii.register_function(f"{NAME}::env", env)
iii.register_function(f"{NAME}::probe", probe)

if MODE == "ticker":
    n = 0
    period = int(os.environ.get("TICK_MS", "50")) / 1000
    while not done.is_set():
        n += 1
        print(f"tick {n}", flush=True)
        time.sleep(period)
else:
    while not done.wait(0.2):
        pass
try:
    print("bye", flush=True)
except OSError:  # the engine (reading our output) is gone
    pass
closer = threading.Thread(target=iii.shutdown, daemon=True)
closer.start()
closer.join(5)
os._exit(0)
