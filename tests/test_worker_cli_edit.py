"""Round-trip editing of config.yaml (spec/cli.md §5.3, §4.2, scenario 24) and the §3.2
transaction (project lock, atomic commit, restore on failure, recovery), on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyiii.engine.config import parse_config
from pyiii.manager import transaction as txn_mod
from pyiii.manager.config_edit import ConfigEditError, add_entry, entry_names, remove_entry, scalar, set_fields
from pyiii.manager.transaction import ProjectBusyError, Transaction, recover

# A hand-written corpus: header comment, blank lines, inline comments, quoting, ${VAR}, flow
# mappings, other top-level keys after the list, odd indentation, no final newline.
CORPUS = {
    "rich": (
        "# header comment: my project\n"
        "\n"
        "workers:\n"
        "  - name: iii-http   # the HTTP worker\n"
        "    config:\n"
        "      port: ${HTTP_PORT:0}\n"
        "      host: \"127.0.0.1\"\n"
        "\n"
        "  # state lives in data/\n"
        "  - name: iii-state\n"
        "    config: {adapter: memory, note: 'quoted'}\n"
        "\n"
        "# registries come last\n"
        "registries: []\n"
    ),
    "zero-indent": "workers:\n- name: iii-state\n  config: {adapter: memory}\n",
    "wide-indent": "workers:\n    -   name: iii-state\n        enabled: true",
    "flow-empty": "# nothing yet\nworkers: []   # filled by iii worker add\n",
    "starter": parse_config.__globals__["STARTER_CONFIG"],
}


@pytest.mark.parametrize("key", sorted(CORPUS))
@pytest.mark.parametrize("crlf", [False, True])
def test_add_then_remove_restores_original_bytes(key: str, crlf: bool) -> None:
    original = CORPUS[key].replace("\n", "\r\n") if crlf else CORPUS[key]
    added = add_entry(original, {"name": "zero", "version": "^0.3.0"})
    assert entry_names(added) == entry_names(original) + ["zero"]
    parse_config(added, "/p/config.yaml", env={})  # still a valid config file
    assert remove_entry(added, "zero") == original
    if crlf:
        assert "\n" not in added.replace("\r\n", "")


def test_add_only_appends_lines_after_the_last_entry() -> None:
    original = CORPUS["rich"]
    added = add_entry(original, {"name": "zero", "version": "^0.3.0"})
    before, after = original.splitlines(keepends=True), added.splitlines(keepends=True)
    assert after == before[:11] + ["  - name: zero\n", "    version: ^0.3.0\n"] + before[11:]


def test_indentation_follows_the_first_entry() -> None:
    assert add_entry(CORPUS["zero-indent"], {"name": "a", "worker_path": "./a"}).endswith(
        "- name: a\n  worker_path: ./a\n")
    wide = add_entry(CORPUS["wide-indent"], {"name": "a", "worker_path": "./a"})
    assert wide == CORPUS["wide-indent"] + "\n    -   name: a\n        worker_path: ./a"


def test_flow_empty_list_becomes_block_and_back() -> None:
    added = add_entry("workers: []\n", {"name": "c"}, comment="dependency of d")
    assert added == "workers:\n  - name: c  # dependency of d\n"
    assert remove_entry(added, "c") == "workers: []\n"


def test_missing_or_null_list_and_empty_file() -> None:
    assert add_entry("", {"name": "iii-state"}) == "workers:\n  - name: iii-state\n"
    assert add_entry("registries: []\n", {"name": "a", "image": "x/a:1"}) == (
        "registries: []\nworkers:\n  - name: a\n    image: x/a:1\n")
    assert add_entry("workers:\n", {"name": "a"}) == "workers:\n  - name: a\n"
    assert remove_entry("workers:\n  - name: a\n", "a") == "workers: []\n"


def test_remove_takes_comments_above_and_inline_but_not_neighbours() -> None:
    text = CORPUS["rich"]
    assert remove_entry(text, "state") == (
        "# header comment: my project\n\nworkers:\n  - name: iii-http   # the HTTP worker\n"
        "    config:\n      port: ${HTTP_PORT:0}\n      host: \"127.0.0.1\"\n\n"
        "\n# registries come last\nregistries: []\n")
    assert remove_entry(text, "iii-http") == (
        "# header comment: my project\n\nworkers:\n\n  # state lives in data/\n  - name: iii-state\n"
        "    config: {adapter: memory, note: 'quoted'}\n\n# registries come last\nregistries: []\n")
    with pytest.raises(ConfigEditError, match="no worker named 'nosuch'"):
        remove_entry(text, "nosuch")


def test_set_fields_changes_only_the_owned_key() -> None:
    text = "workers:\n  - name: hello   # greets\n    version: '^1.0.0'   # pinned\n    config: {a: 1}\n"
    assert set_fields(text, "hello", {"version": "2.0.0"}) == (
        "workers:\n  - name: hello   # greets\n    version: 2.0.0   # pinned\n    config: {a: 1}\n")
    assert set_fields(text, "hello", {"version": None}) == (
        "workers:\n  - name: hello   # greets\n    config: {a: 1}\n")
    plain = "workers:\n  - name: hello\n    config: {a: 1}\n"
    assert set_fields(plain, "hello", {"version": ">=1.2 <2"}) == (
        "workers:\n  - name: hello\n    version: \">=1.2 <2\"\n    config: {a: 1}\n")


def test_unusual_layouts_fall_back_to_the_round_trip_dumper() -> None:
    added = add_entry("workers: [{name: a}]\n", {"name": "b"})
    assert added == "workers:\n  - {name: a}\n  - name: b\n"
    assert entry_names(remove_entry(added, "a")) == ["b"]


def test_scalar_quotes_only_when_needed() -> None:
    assert [scalar(v) for v in ("^1.2.0", "*", "1.2", "./svc", "127.0.0.1:5000/demo/echo:1.0",
                                ">=1 <2", "true", {"host": "0.0.0.0", "port": 49134})] == [
        "^1.2.0", '"*"', '"1.2"', "./svc", "127.0.0.1:5000/demo/echo:1.0", '">=1 <2"', '"true"',
        '{host: 0.0.0.0, port: 49134}']


# --------------------------------------------------------------------------- transaction

def _project(tmp_path: Path, config: bytes | None = b"workers: []\n", lock: bytes | None = None) -> Path:
    if config is not None:
        (tmp_path / "config.yaml").write_bytes(config)
    if lock is not None:
        (tmp_path / "iii.lock").write_bytes(lock)
    return tmp_path / "config.yaml"


def test_commit_writes_changed_files_only_and_keeps_mode(tmp_path: Path) -> None:
    cfg = _project(tmp_path, lock=b"version: 1\n")
    os.chmod(cfg, 0o600)
    lock_stat = (tmp_path / "iii.lock").stat()
    with Transaction(cfg, argv=["iii", "worker", "add", "x"]) as txn:
        assert txn.config_bytes == b"workers: []\n" and txn.lock_bytes == b"version: 1\n"
        assert txn.commit(config=b"workers:\n  - name: x\n", lock=b"version: 1\n") == ["config.yaml"]
    assert cfg.read_bytes() == b"workers:\n  - name: x\n"
    assert cfg.stat().st_mode & 0o777 == 0o600
    after = (tmp_path / "iii.lock").stat()
    assert (after.st_ino, after.st_mtime_ns) == (lock_stat.st_ino, lock_stat.st_mtime_ns)
    assert (tmp_path / ".iii" / ".gitignore").read_text() == "*\n"
    assert not (tmp_path / ".iii" / "txn" / "journal.json").exists()


def test_failure_inside_commit_restores_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _project(tmp_path, config=b"# mine\nworkers: []\n")  # no iii.lock yet
    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):  # the config rename fails after iii.lock was written
        if str(dst) == str(cfg):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **k)

    with Transaction(cfg) as txn:
        stage = txn.staging_dir("hello")
        (stage / "file").write_text("x")
        txn.stage_install("hello", stage, "1.0.0-abc")
        monkeypatch.setattr(txn_mod.os, "replace", failing_replace)
        with pytest.raises(OSError, match="No space left"):
            txn.commit(config=b"workers:\n  - name: hello\n", lock=b"version: 1\n")
        monkeypatch.setattr(txn_mod.os, "replace", real_replace)
    assert cfg.read_bytes() == b"# mine\nworkers: []\n"
    assert not (tmp_path / "iii.lock").exists()
    assert not (tmp_path / ".iii" / "txn" / "journal.json").exists()


def test_exception_before_commit_removes_staging(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    with pytest.raises(RuntimeError):
        with Transaction(cfg) as txn:
            stage = txn.staging_dir("hello")
            raise RuntimeError("download failed")
    assert not stage.exists()
    assert cfg.read_bytes() == b"workers: []\n"


def test_staged_install_is_moved_into_place(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    with Transaction(cfg) as txn:
        stage = txn.staging_dir("hello")
        (stage / ".complete").write_text("ok")
        txn.stage_install("hello", stage, "1.2.0-3f2a9c1d0e4b")
        txn.commit()
    assert (tmp_path / ".iii/install/hello/1.2.0-3f2a9c1d0e4b/.complete").read_text() == "ok"
    assert [p.name for p in (tmp_path / ".iii/install/hello").iterdir()] == ["1.2.0-3f2a9c1d0e4b"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_recovery_restores_an_interrupted_commit(tmp_path: Path) -> None:
    cfg = _project(tmp_path, config=b"half-written: [\n", lock=b"garbage\n")
    txn_dir = tmp_path / ".iii" / "txn"
    txn_dir.mkdir(parents=True)
    (txn_dir / "config.yaml.orig").write_bytes(b"workers: []\n")
    stage = tmp_path / ".iii/install/x/.staging-abc"
    stage.mkdir(parents=True)
    pid = _dead_pid()
    (txn_dir / "journal.json").write_text(json.dumps({"pid": pid, "files": [
        {"path": str(cfg), "backup": "config.yaml.orig"},
        {"path": str(tmp_path / "iii.lock"), "backup": None}]}))
    with Transaction(cfg) as txn:
        assert txn.recovered_pid == pid
        assert txn.config_bytes == b"workers: []\n" and txn.lock_bytes is None
    assert not (tmp_path / "iii.lock").exists() and not stage.exists()
    assert list(txn_dir.iterdir()) == []
    assert recover(tmp_path / ".iii") is None


def test_busy_project_lock_waits_then_gives_up(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    waits: list[str] = []
    holder = Transaction(cfg, argv=["iii", "worker", "add", "zero"]).__enter__()
    try:
        started = time.monotonic()
        with pytest.raises(ProjectBusyError) as info:
            Transaction(cfg, lock_timeout=0.3, on_wait=waits.append).__enter__()
        assert 0.25 <= time.monotonic() - started < 2.0
        assert str(info.value) == (f"another iii worker command is changing this project "
                                   f"(pid {os.getpid()}: iii worker add zero)")
        assert waits == [f"waiting for another iii worker command (pid {os.getpid()}: iii worker add zero)"]
        threading.Timer(0.3, lambda: holder.__exit__(None, None, None)).start()
        with Transaction(cfg, lock_timeout=5) as second:  # acquired once the holder lets go
            assert second.config_bytes == b"workers: []\n"
    finally:
        holder.__exit__(None, None, None)


# --------------------------------------------------------------------------- log files

def test_follow_log_file_across_rotation_without_gap_or_repeat(tmp_path: Path) -> None:
    """`iii worker logs -f` without an engine (§4.7, §9.3): lines appended before and after
    the supervisor renames `.log` to `.log.1` are each printed once, in order."""
    from pyiii.cli.worker_logfiles import follow_file, log_files, tail_lines

    log = tmp_path / "w.log"
    log.write_text("old 1\nold 2\n")
    seen: list[str] = []
    done = threading.Event()

    def writer() -> None:
        with open(log, "a") as fh:
            for i in range(1, 21):
                fh.write(f"line {i}\n")
                fh.flush()
                time.sleep(0.01)
        os.replace(log, tmp_path / "w.log.1")  # rotation: the old file keeps its last lines
        with open(log, "a") as fh:
            for i in range(21, 41):
                fh.write(f"line {i}\n")
                fh.flush()
                time.sleep(0.01)

    follower = threading.Thread(target=follow_file, args=(log, seen.extend, done.is_set), daemon=True)
    follower.start()
    time.sleep(0.2)  # the follower starts at the end of the file: "old" lines are not repeated
    writer()
    deadline = time.monotonic() + 5
    while len(seen) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    follower.join(2)
    assert seen == [f"line {i}" for i in range(1, 41)]
    assert [p.name for p in log_files(tmp_path, "w")] == ["w.log.1", "w.log"]
    assert tail_lines(log_files(tmp_path, "w"), 3) == ["line 38", "line 39", "line 40"]
