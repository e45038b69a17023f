"""Environment resolution: engine URL, worker name, namespace, auth header, backoff."""

from __future__ import annotations

import os

import pytest

from pyiii.sdk import ReconnectionConfig
from pyiii.sdk.connection import ConnectionCore
from pyiii.sdk.invoke import metadata_mode
from pyiii.sdk.types import TriggerAction, action_to_wire
from pyiii.sdk.worker_info import (
    resolve_engine_url,
    resolve_headers,
    worker_metadata,
    worker_name,
    worker_namespace,
)


def test_engine_url(monkeypatch):
    monkeypatch.delenv("III_URL", raising=False)
    assert resolve_engine_url() == "ws://127.0.0.1:49134"
    monkeypatch.setenv("III_URL", "ws://e:1")
    assert resolve_engine_url() == "ws://e:1"
    assert resolve_engine_url("ws://x:2") == "ws://x:2"


def test_worker_name_and_namespace(monkeypatch):
    monkeypatch.delenv("III_WORKER_NAME", raising=False)
    monkeypatch.delenv("III_NAMESPACE", raising=False)
    assert worker_name(None).endswith(f":{os.getpid()}")
    assert worker_name("opt") == "opt"
    monkeypatch.setenv("III_WORKER_NAME", "env")
    assert worker_name("opt") == "env"
    assert worker_namespace(None) is None
    monkeypatch.setenv("III_NAMESPACE", "  ")
    assert worker_namespace(None) is None
    monkeypatch.setenv("III_NAMESPACE", "orders")
    assert worker_namespace(None) == "orders" and worker_namespace("mine") == "mine"
    with pytest.raises(ValueError):
        worker_namespace("")


def test_auth_header(monkeypatch):
    monkeypatch.delenv("III_TOKEN", raising=False)
    assert resolve_headers({"x": "1"}) == {"x": "1"}
    monkeypatch.setenv("III_TOKEN", "tok")
    assert resolve_headers(None) == {"Authorization": "Bearer tok"}
    assert resolve_headers({"authorization": "mine"}) == {"authorization": "mine"}


def test_metadata_payload(monkeypatch):
    monkeypatch.delenv("III_ISOLATION", raising=False)
    data = worker_metadata("n", None, None)
    assert data["isolation"] is None and "description" not in data and "namespace" not in data
    assert set(data) == {"runtime", "version", "name", "os", "pid", "isolation", "features"}


def test_backoff_grows_and_caps():
    core = ConnectionCore()
    core._reconnection = ReconnectionConfig(jitter_factor=0)
    assert [core._backoff_s(i) for i in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    core._reconnection = ReconnectionConfig(jitter_factor=0.3)
    assert all(0.7 <= core._backoff_s(0) <= 1.3 for _ in range(100))


def test_actions_and_metadata_modes():
    assert action_to_wire(None) is None
    assert action_to_wire(TriggerAction.Void()) == {"type": "void"}
    assert action_to_wire({"type": "enqueue", "queue": "q"}) == {"type": "enqueue", "queue": "q"}
    with pytest.raises(ValueError):
        action_to_wire(TriggerAction.Enqueue(queue=""))
    assert metadata_mode(lambda data: 1) == "none"
    assert metadata_mode(lambda data, metadata: 1) == "positional"
    assert metadata_mode(lambda data, *, metadata=None: 1) == "keyword"
    assert metadata_mode(lambda data, *args, **kwargs: 1) == "none"
