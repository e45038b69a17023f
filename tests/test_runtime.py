"""pyiii.runtime: the event loop and collector settings `iii` and first-party worker processes apply once
started. Each case runs in a fresh interpreter: the settings are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = """
import gc, json
from pyiii.runtime import tune_for_serving
before = gc.get_threshold()
applied = tune_for_serving()
print(json.dumps({"before": before, "after": gc.get_threshold(), "applied": applied,
                  "frozen": gc.get_freeze_count()}))
"""


def probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_tuning_freezes_start_up_objects_and_raises_the_young_threshold():
    result = probe(PYIII_GC_DEFAULTS="0")
    assert result["before"] != [50_000, 20, 100]  # the interpreter's own defaults
    assert result["applied"] is True
    assert result["after"] == [50_000, 20, 100]
    assert result["frozen"] > 1_000  # the objects of the modules imported so far


def test_defaults_kept_on_request():
    result = probe(PYIII_GC_DEFAULTS="1")
    assert result["applied"] is False and result["frozen"] == 0
    assert result["after"] == result["before"] != [50_000, 20, 100]
