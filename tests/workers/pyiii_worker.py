#!/usr/bin/env python3
"""Test worker built with pyiii.sdk: the same stdout/stdin protocol as tests/peers/s25_worker.py,
so tests/conftest_peers.py drives it as language "pyiii".

Usage: pyiii_worker.py '<spec json>'   (engine URL: env III_URL, or spec "url")
Spec keys: name, namespace, description, barrier (default true), invocation_timeout_ms,
  functions [{"id", "behaviour"}]
Behaviours: echo, add ({"c": a+b}), slow ({"ms"} -> {"slept": ms}), boom (raises ValueError),
  none (returns None), size ({"s"} -> {"len"}).
stdout: READY {...}, {"event": "state"|"invoke"|"command_result"|"exit", ...}
stdin commands (one JSON per line, "seq" echoed back in command_result):
  {"op": "call", "function_id", "payload", "timeout_ms"?}       one blocking trigger()
  {"op": "gather", "function_id", "payloads": [...]}           concurrent trigger_async calls
                                                              (asyncio.gather on another loop)
  {"op": "threads", "function_id", "payloads": [...]}          one thread per sync trigger()
  {"op": "state"}, {"op": "exit"}
Results of call: "result" or "error" {code, message}; of gather/threads: "result" = list of
{"ok": value} / {"error": {code, message}} in payload order.
SIGTERM / SIGINT: shut the SDK down and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

_OUT_LOCK = threading.Lock()
_SMALL = 4096

logging.basicConfig(level=os.environ.get("PEER_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")

from pyiii.sdk import III, InitOptions, InvocationError  # noqa: E402


def emit(obj: dict[str, Any]) -> None:
    line = obj if isinstance(obj, str) else json.dumps(obj, default=repr)
    with _OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def small(value: Any) -> Any:
    text = json.dumps(value, default=repr)
    return value if len(text) <= _SMALL else {"_json_len": len(text)}


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, InvocationError):
        return {"code": exc.code, "message": exc.message}
    return {"code": type(exc).__name__, "message": str(exc)}


def make_handler(function_id: str, behaviour: str, spec: dict[str, Any]):
    async def handler(data: Any) -> Any:
        emit({"event": "invoke", "function_id": function_id, "data": small(data)})
        d = data if isinstance(data, dict) else {}
        if behaviour == "echo":
            return data
        if behaviour == "add":
            return {"c": d["a"] + d["b"]}
        if behaviour == "slow":
            ms = d.get("ms", spec.get("ms", 1000))
            await asyncio.sleep(ms / 1000)
            return {"slept": ms}
        if behaviour == "boom":
            raise ValueError(spec.get("message", "boom"))
        if behaviour == "none":
            return None
        if behaviour == "size":
            return {"len": len(d.get("s", ""))}
        raise ValueError(f"unknown behaviour {behaviour!r}")

    return handler


def main() -> int:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")
    url = spec.get("url") or os.environ.get("III_URL") or "ws://127.0.0.1:49134"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    worker = III(url, InitOptions(worker_name=spec.get("name"), namespace=spec.get("namespace"),
                                  worker_description=spec.get("description"),
                                  invocation_timeout_ms=int(spec.get("invocation_timeout_ms", 30000))))
    worker.add_connection_state_listener(lambda state: emit({"event": "state", "state": state}))
    worker._wait_until_connected()
    for fn in spec.get("functions", []):
        worker.register_function(fn["id"], make_handler(fn["id"], fn.get("behaviour", "echo"), fn))
    for _ in range(300):
        if worker.worker_id or stop.wait(0.05):
            break
    barrier = "skipped"
    if spec.get("barrier", True):
        try:  # answered after the registrations above: the engine applies frames in order
            worker.trigger({"function_id": "engine::functions::list", "payload": {},
                            "timeout_ms": 10000})
            barrier = "ok"
        except Exception as exc:  # noqa: BLE001
            barrier = getattr(exc, "code", type(exc).__name__)
    emit("READY " + json.dumps({"worker_id": worker.worker_id, "sdk": "pyiii", "pid": os.getpid(),
                                "barrier": barrier, "state": worker.get_connection_state(),
                                "triggers": []}))

    def one(function_id: str, payload: Any, timeout_ms: Any = None) -> dict[str, Any]:
        req = {"function_id": function_id, "payload": payload}
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        try:
            return {"ok": worker.trigger(req)}
        except Exception as exc:  # noqa: BLE001
            return {"error": error_body(exc)}

    async def gather(function_id: str, payloads: list[Any]) -> list[dict[str, Any]]:
        async def call(p: Any) -> dict[str, Any]:
            try:
                return {"ok": await worker.trigger_async({"function_id": function_id, "payload": p})}
            except Exception as exc:  # noqa: BLE001
                return {"error": error_body(exc)}
        return list(await asyncio.gather(*(call(p) for p in payloads)))

    def threads(function_id: str, payloads: list[Any]) -> list[dict[str, Any]]:
        out: list[Any] = [None] * len(payloads)

        def run(i: int) -> None:
            out[i] = one(function_id, payloads[i])
        ts = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out

    def command(cmd: dict[str, Any]) -> None:
        op = cmd.get("op")
        out: dict[str, Any] = {"event": "command_result", "op": op, "seq": cmd.get("seq")}
        try:
            if op == "call":
                res = one(cmd["function_id"], cmd.get("payload"), cmd.get("timeout_ms"))
                out.update({"result": res["ok"]} if "ok" in res else res)
            elif op == "gather":
                out["result"] = asyncio.run(gather(cmd["function_id"], cmd["payloads"]))
            elif op == "threads":
                out["result"] = threads(cmd["function_id"], cmd["payloads"])
            elif op == "state":
                out["result"] = worker.get_connection_state()
            elif op == "exit":
                stop.set()
                return
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # noqa: BLE001
            out["error"] = error_body(exc)
        emit(out)

    def command_loop() -> None:
        for line in sys.stdin:
            if line.strip():
                cmd = json.loads(line)
                threading.Thread(target=command, args=(cmd,), daemon=True).start()

    threading.Thread(target=command_loop, daemon=True).start()
    while not stop.wait(0.2):
        pass
    done = threading.Event()

    def _shutdown() -> None:
        try:
            worker.shutdown()
        finally:
            done.set()
    threading.Thread(target=_shutdown, daemon=True).start()
    done.wait(5)
    emit({"event": "exit"})
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
