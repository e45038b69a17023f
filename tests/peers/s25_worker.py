#!/usr/bin/env python3
"""Test peer: a worker built with the official Python SDK (iii-sdk 0.25, "S25").

Usage: s25_worker.py '<spec json>'   (or the spec in env PEER_SPEC)
Engine URL: env III_URL (default ws://127.0.0.1:49134), or spec "url".

Spec keys (all optional):
  name           worker name (InitOptions.worker_name)
  namespace      worker namespace (InitOptions.namespace)
  description    worker description
  otel           true to keep telemetry on (default: OTEL_ENABLED=false)
  barrier        false to skip the round-trip call made before READY (default true)
  functions      [{"id": "math::add", "behaviour": "add", "description"?, "metadata"?,
                   "record_full"?: true (invoke events carry the whole data, never a size marker),
                   "observe"?: true (registered with observe=ObserveHooks(...))}]
  trigger_types  [{"id": "webhook", "description"?, "fail"?: "message to raise on register"}]
  triggers       [{"type", "function_id", "config"?, "metadata"?, "namespace"?, "trigger_namespace"?}]
  log            ["message", ...] logged with the SDK Logger (info) right after READY

Behaviours: echo, add, boom, slow, call, size, big, none, meta, read_channel, send_channel,
log, caller, http_reply (an iii-http handler: returns {status_code, headers} from the function
spec and a body echoing sdk, method, path, path_params, query_params and body of the request).

stdout protocol (one line each, flushed):
  READY {"worker_id", "sdk", "triggers": [{"id","type","function_id"}], "barrier"}
  {"event": "state", "state": ...}                        connection state changes
  {"event": "register_trigger"|"unregister_trigger", "trigger_type", "id", "function_id",
   "config", "metadata", "namespace"?}                     provider handler calls
  {"event": "invoke", "function_id", "data"?, "metadata"?, "caller"?}
  {"event": "command_result", "seq", "result"|"error"}     answers to stdin commands
  {"event": "frame", "frame": {...}}   incoming workerregistered / registrationrejected /
                                       triggerregistrationresult / error frames
  {"event": "rejected", ...}           the SDK raised RegistrationRejectedError while connecting
stdin commands (one JSON per line): {"op": "call", "function_id", "payload", "namespace"?,
  "timeout_ms"?, "seq"?}, {"op": "unregister_trigger", "index"|"id"}, {"op":
  "unregister_trigger_type", "id"}, {"op": "unregister_function", "id"}, {"op": "log",
  "message", "level"?}, {"op": "observe", "function_id", "target", "timeout"?} (-> {"id",
  "state", "reason"}), {"op": "state"}, {"op": "exit"}.
SIGTERM / SIGINT: shut the SDK down and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any

_OUT_LOCK = threading.Lock()
_SMALL = 4096
_TAP_MAX = 65536
# Incoming frames echoed as {"event": "frame", "frame": ...} lines.
_TAP_TYPES = {"workerregistered", "registrationrejected", "triggerregistrationresult", "error"}


def emit_line(line: str) -> None:
    with _OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def emit(obj: dict[str, Any]) -> None:
    emit_line(json.dumps(obj, default=repr))


def small(value: Any) -> Any:
    """The value itself if its JSON is small, else a size marker."""
    try:
        text = json.dumps(value, default=repr)
    except Exception:
        return {"_unserialisable": repr(value)[:200]}
    if len(text) <= _SMALL:
        return value
    return {"_json_len": len(text)}


def load_spec() -> dict[str, Any]:
    raw = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PEER_SPEC", "{}")
    spec = json.loads(raw or "{}")
    if not isinstance(spec, dict):
        raise SystemExit("spec must be a JSON object")
    return spec


SPEC = load_spec()
os.environ["OTEL_ENABLED"] = "true" if SPEC.get("otel") else "false"

import logging  # noqa: E402

logging.basicConfig(
    level=os.environ.get("PEER_LOG_LEVEL", "WARNING"),
    stream=sys.stderr,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

import warnings  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)

from iii import InitOptions, InvocationError, RegistrationRejectedError  # noqa: E402
from iii.iii import III  # noqa: E402
from iii.triggers import TriggerConfig, TriggerHandler  # noqa: E402

try:
    from iii_helpers.observability.logger import Logger  # noqa: E402
except Exception:  # pragma: no cover
    Logger = None  # type: ignore[assignment,misc]

try:
    from importlib.metadata import version as _pkg_version

    SDK_VERSION = _pkg_version("iii-sdk")
except Exception:  # pragma: no cover
    SDK_VERSION = "unknown"

WORKER: Any = None


def _caller_info() -> Any:
    try:
        inv = WORKER.current_invocation() if WORKER is not None else None
    except Exception:
        return None
    if inv is None:
        return None
    caller = getattr(inv, "caller", None)
    if caller is None:
        return None
    if isinstance(caller, dict):
        return dict(caller)
    if hasattr(caller, "model_dump"):
        return caller.model_dump()
    if hasattr(caller, "__dict__"):
        return {k: v for k, v in vars(caller).items() if not k.startswith("_")}
    return repr(caller)


def make_handler(function_id: str, behaviour: str, fn_spec: dict[str, Any]):
    async def record(data: Any, metadata: Any) -> None:
        ev: dict[str, Any] = {"event": "invoke", "function_id": function_id}
        if behaviour not in ("read_channel",):
            ev["data"] = data if fn_spec.get("record_full") else small(data)
        if metadata is not None:
            ev["metadata"] = small(metadata)
        caller = _caller_info()
        if caller is not None:
            ev["caller"] = caller
        emit(ev)

    async def handler(data: Any, metadata: Any = None) -> Any:
        await record(data, metadata)
        d = data if isinstance(data, dict) else {}
        if behaviour == "echo":
            return data
        if behaviour == "add":
            return {"c": d["a"] + d["b"]}
        if behaviour == "boom":
            raise ValueError(fn_spec.get("message", "boom"))
        if behaviour == "slow":
            ms = d.get("ms", fn_spec.get("ms", 1000))
            await asyncio.sleep(ms / 1000.0)
            return {"slept": ms}
        if behaviour == "call":
            req: dict[str, Any] = {"function_id": d["function_id"], "payload": d.get("payload")}
            if d.get("namespace") is not None:
                req["namespace"] = d["namespace"]
            if d.get("timeout_ms") is not None:
                req["timeout_ms"] = d["timeout_ms"]
            return await WORKER.trigger_async(req)
        if behaviour == "size":
            return {"len": len(d.get("s", ""))}
        if behaviour == "big":
            return "x" * int(d.get("n", fn_spec.get("n", 0)))
        if behaviour == "none":
            return None
        if behaviour == "meta":
            return {"data": data, "metadata": metadata}
        if behaviour == "http_reply":
            # an iii-http handler: {status_code, headers, body} from the spec, echoing the request
            return {"status_code": fn_spec.get("status_code", 200),
                    "headers": fn_spec.get("headers", {}),
                    "body": {"sdk": "s25", "method": d.get("method"), "path": d.get("path"),
                             "path_params": d.get("path_params"),
                             "query_params": d.get("query_params"), "body": d.get("body")}}
        if behaviour == "caller":
            return {"caller": _caller_info()}
        if behaviour == "log":
            if Logger is None:
                raise RuntimeError("iii_helpers Logger unavailable")
            Logger().info(str(d.get("message", "")))
            return {"logged": True}
        if behaviour == "read_channel":
            # input {"reader": <ChannelRef read>} -> the SDK hands us a ChannelReader.
            reader = d.get("reader")
            if reader is None or not hasattr(reader, "read_all"):
                raise ValueError(f"no channel reader in input: {type(reader).__name__}")
            messages: list[str] = []
            reader.on_message(messages.append)
            chunks: list[int] = []
            total = 0
            async for chunk in reader:
                chunks.append(len(chunk))
                total += len(chunk)
            return {"bytes": total, "chunks": chunks, "messages": messages}
        if behaviour == "send_channel":
            # input {"function_id", "n", "messages"?: [str], "namespace"?}: create a channel, pass
            # the reader ref to function_id as {"reader": ref}, send the text messages, write n
            # bytes, close; return {"callee": <callee result>}.
            from iii.helpers import create_channel_async

            ch = await create_channel_async(WORKER)
            req = {"function_id": d["function_id"], "payload": {"reader": ch.reader_ref.model_dump()}}
            if d.get("namespace") is not None:
                req["namespace"] = d["namespace"]
            call = asyncio.ensure_future(WORKER.trigger_async(req))
            for msg in d.get("messages", []):
                await ch.writer.send_message_async(msg if isinstance(msg, str) else json.dumps(msg))
            n = int(d.get("n", 0))
            if n:
                await ch.writer.write(b"y" * n)
            await ch.writer.close_async()
            return {"callee": await call}
        raise ValueError(f"unknown behaviour {behaviour!r}")

    return handler


class RecordingTriggerHandler(TriggerHandler[Any]):
    def __init__(self, type_id: str, fail: str | None) -> None:
        self.type_id = type_id
        self.fail = fail

    def _event(self, kind: str, config: TriggerConfig[Any]) -> dict[str, Any]:
        ev = {
            "event": kind,
            "trigger_type": self.type_id,
            "id": config.id,
            "function_id": config.function_id,
            "config": small(config.config),
            "metadata": small(config.metadata),
        }
        ns = getattr(config, "namespace", None)
        if ns is not None:
            ev["namespace"] = ns
        return ev

    async def register_trigger(self, config: TriggerConfig[Any]) -> None:
        emit(self._event("register_trigger", config))
        if self.fail:
            raise Exception(self.fail)

    async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        emit(self._event("unregister_trigger", config))


def error_body(exc: BaseException) -> dict[str, Any]:
    return {
        "code": getattr(exc, "code", None) or type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc),
        "stacktrace": (exc.stacktrace if isinstance(exc, InvocationError) else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))),
    }


def main() -> int:
    global WORKER
    url = SPEC.get("url") or os.environ.get("III_URL") or "ws://127.0.0.1:49134"
    opts = InitOptions(
        worker_name=SPEC.get("name"),
        worker_description=SPEC.get("description"),
        namespace=SPEC.get("namespace"),
        invocation_timeout_ms=int(SPEC.get("invocation_timeout_ms", 30000)),
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Built like register_worker() does, but the listener and the frame tap go in before the
    # first connection completes, so tests see every state change and a registration rejection.
    worker = III(url, opts)
    WORKER = worker
    emit({"event": "state", "state": worker.get_connection_state()})
    worker.add_connection_state_listener(lambda state: emit({"event": "state", "state": state}))
    orig_handle = worker._handle_message

    async def tapped_handle(raw: Any) -> None:
        if len(raw) <= _TAP_MAX:
            try:
                frame = json.loads(raw)
            except Exception:
                frame = None
            if isinstance(frame, dict) and frame.get("type") in _TAP_TYPES:
                emit({"event": "frame", "frame": frame})
        await orig_handle(raw)

    worker._handle_message = tapped_handle  # type: ignore[method-assign]
    rejected: dict[str, Any] | None = None
    try:
        worker._wait_until_connected()
    except RegistrationRejectedError as exc:
        rejected = {"code": exc.code, "namespace": exc.namespace, "worker_name": exc.worker_name,
                    "owner_worker_id": exc.owner_worker_id}
        emit({"event": "rejected", **rejected})
    except ConnectionError as exc:
        emit({"event": "connect_failed", "message": str(exc)})

    for tt in SPEC.get("trigger_types", []):
        tt = {"id": tt} if isinstance(tt, str) else tt
        worker.register_trigger_type(
            {"id": tt["id"], "description": tt.get("description", f"{tt['id']} (test peer)")},
            RecordingTriggerHandler(tt["id"], tt.get("fail")),
        )
    fn_refs: dict[str, Any] = {}
    for fn in SPEC.get("functions", []):
        behaviour = fn.get("behaviour") or fn.get("behavior") or fn.get("kind") or "echo"
        kwargs: dict[str, Any] = {}
        if fn.get("description") is not None:
            kwargs["description"] = fn["description"]
        if fn.get("metadata") is not None:
            kwargs["metadata"] = fn["metadata"]
        if fn.get("observe"):
            from iii import ObserveHooks

            kwargs["observe"] = ObserveHooks(
                on_observer_added=lambda obs, fid=fn["id"]: emit(
                    {"event": "observer_added", "function_id": fid, "observer": repr(obs)}))
        fn_refs[fn["id"]] = worker.register_function(
            fn["id"], make_handler(fn["id"], behaviour, fn), **kwargs
        )
    triggers: list[dict[str, Any]] = []
    for tr in SPEC.get("triggers", []):
        before = set(worker._triggers)  # the SDK keeps bindings by the id it generated
        req = {"type": tr["type"], "function_id": tr["function_id"], "config": tr.get("config")}
        for key in ("metadata", "namespace", "trigger_namespace"):
            if tr.get(key) is not None:
                req[key] = tr[key]
        handle = worker.register_trigger(req)
        new_ids = [i for i in worker._triggers if i not in before]
        triggers.append(
            {"id": new_ids[0] if new_ids else None, "type": tr["type"],
             "function_id": tr["function_id"], "_handle": handle}
        )

    # Wait for the engine-assigned worker id (workerregistered), up to 15 s.
    for _ in range(300):
        if worker.worker_id:
            break
        if stop.wait(0.05):
            break

    barrier = "skipped"
    if SPEC.get("barrier", True) and not stop.is_set():
        # The engine applies a connection's frames in order, so any answered call sent after
        # the registrations proves they have been applied. The outcome itself is irrelevant.
        try:
            worker.trigger({"function_id": "engine::functions::list", "payload": {},
                            "timeout_ms": int(SPEC.get("barrier_timeout_ms", 10000))})
            barrier = "ok"
        except Exception as exc:  # noqa: BLE001
            barrier = f"{getattr(exc, 'code', type(exc).__name__)}"

    emit_line("READY " + json.dumps({
        "worker_id": worker.worker_id,
        "sdk": f"python/{SDK_VERSION}",
        "pid": os.getpid(),
        "barrier": barrier,
        "rejected": rejected,
        "state": worker.get_connection_state(),
        "triggers": [{k: v for k, v in t.items() if k != "_handle"} for t in triggers],
    }))

    for msg in SPEC.get("log", []):
        if Logger is not None:
            Logger().info(msg)

    def command_loop() -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                op = cmd.get("op")
                seq = cmd.get("seq")
                out: dict[str, Any] = {"event": "command_result", "op": op, "seq": seq}
                try:
                    if op == "call":
                        req = {"function_id": cmd["function_id"], "payload": cmd.get("payload")}
                        for key in ("namespace", "timeout_ms", "metadata", "action"):
                            if cmd.get(key) is not None:
                                req[key] = cmd[key]
                        out["result"] = worker.trigger(req)
                    elif op == "unregister_trigger":
                        if "index" in cmd:
                            t = triggers[cmd["index"]]
                        else:
                            t = next(t for t in triggers if t["id"] == cmd["id"])
                        t["_handle"].unregister()
                        out["result"] = True
                    elif op == "unregister_trigger_type":
                        worker.unregister_trigger_type({"id": cmd["id"], "namespace": cmd.get("namespace")})
                        out["result"] = True
                    elif op == "unregister_function":
                        fn_refs.pop(cmd["id"]).unregister()
                        out["result"] = True
                    elif op == "log":
                        level = cmd.get("level", "info")
                        getattr(Logger(), level)(cmd.get("message", ""))
                        out["result"] = True
                    elif op == "observe":
                        # {"function_id", "target", "timeout"?}: create an observer, wait until
                        # it settles; result {"state", "reason"} (reason: {"code","message"}).
                        from iii import ObserveRejection

                        handle = worker.observe({"function_id": cmd["function_id"]}, cmd["target"])
                        try:
                            handle.ready(float(cmd.get("timeout", 5)))
                        except (ObserveRejection, TimeoutError):
                            pass
                        reason = handle.reason
                        out["result"] = {"id": handle.id, "state": handle.state,
                                         "reason": dict(reason) if reason else None}
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
            except Exception as exc:  # noqa: BLE001
                emit({"event": "command_error", "error": repr(exc)})
        # stdin closed: keep running until a signal arrives.

    threading.Thread(target=command_loop, daemon=True).start()

    while not stop.wait(0.2):
        pass
    try:
        done = threading.Event()

        def _shutdown() -> None:
            try:
                worker.shutdown()
            finally:
                done.set()

        threading.Thread(target=_shutdown, daemon=True).start()
        done.wait(5)
    finally:
        emit({"event": "exit"})
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
