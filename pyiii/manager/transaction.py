"""Transactions of the mutating `iii worker` commands (spec/cli.md §3.2).

A failed `add`, `remove`, `update`, `sync` ... must leave config.yaml and iii.lock byte-for-byte
as they were, even when the command is killed half-way, and two commands must never interleave.
This module is the one place that guarantees it.

API::

    from pyiii.manager.transaction import Transaction, ProjectBusyError

    with Transaction(config_path, lock_timeout=60, argv=sys.argv, on_wait=print_line) as txn:
        txn.config_bytes          # config.yaml as read under the lock (None: absent)
        txn.lock_bytes            # iii.lock likewise
        txn.recovered_pid         # pid of an interrupted command whose files were restored, or None
        stage = txn.staging_dir("hello")       # .iii/install/hello/.staging-<random>/, yours to fill
        txn.stage_install("hello", stage, "1.2.0-3f2a9c1d0e4b")   # moved into place at commit
        txn.commit(config=new_config_bytes, lock=new_lock_bytes)  # None keeps a file as it is
    # leaving the block with an exception before commit() deletes every staging folder

- Entering takes `.iii/lock` (an exclusive flock whose file records the holder's pid and argv),
  waiting up to `lock_timeout` seconds (`on_wait` gets the "waiting for another iii worker
  command (pid <pid>: <argv>)" line once); past it `ProjectBusyError` (W120, exit 5). Then it
  recovers an interrupted commit and only then reads both files.
- `commit()` writes, under `.iii/commit.lock` (the engine's hot reload reads under a shared lock
  on it, so it never sees half a pair), a journal `.iii/txn/journal.json` beside copies of both
  files, moves the staged installs into place, writes iii.lock then config.yaml atomically
  (temporary file, fsync, rename, folder fsync, previous mode kept) and deletes the journal. Any
  failure inside restores both files from the copies before the exception propagates. A file
  whose new content equals the old is not rewritten (its mtime stays).
- `recover(state_dir)` is the recovery step on its own, for the engine at startup: a journal
  left by a dead process has both files restored (one that did not exist is deleted).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCK_FILE = "lock"
COMMIT_LOCK_FILE = "commit.lock"
TXN_DIR = "txn"
JOURNAL = "journal.json"
STAGING_PREFIX = ".staging-"
_POLL_S = 0.05
_COMMIT_LOCK_WAIT_S = 30.0


class ProjectBusyError(Exception):
    """Another `iii worker` command held `.iii/lock` past the timeout (W120, exit 5)."""

    code = "W120"

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"another iii worker command is changing this project ({holder})")


class TransactionError(Exception):
    """The transaction could not run (e.g. `.iii/` cannot be created)."""


def describe_holder(info: dict[str, Any] | None) -> str:
    """`pid <pid>: <argv>` as the waiting and busy messages show the lock holder."""
    if not info:
        return "pid unknown"
    argv = info.get("argv") or []
    text = " ".join(str(a) for a in argv) if isinstance(argv, list) else str(argv)
    return f"pid {info.get('pid', '?')}: {text}" if text else f"pid {info.get('pid', '?')}"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so a reader sees the old or the new file, never a mix.

    The previous file's permission bits are kept (else `mode`, else 0644).
    """
    try:
        keep = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        keep = 0o644 if mode is None else mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, keep)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def ensure_state_dir(project_dir: Path) -> Path:
    """`.iii/` with its `.gitignore` of `*` (nothing in it belongs in version control)."""
    state = project_dir / ".iii"
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        with contextlib.suppress(OSError):
            ignore.write_text("*\n")
    return state


@contextlib.contextmanager
def commit_lock(state_dir: Path, shared: bool = False, timeout: float = _COMMIT_LOCK_WAIT_S) -> Iterator[None]:
    """Hold `.iii/commit.lock`: exclusive while writing the pair, shared while reading it."""
    fd = os.open(state_dir / COMMIT_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flag = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, flag | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise TransactionError("config.yaml and iii.lock are being written by another "
                                           "process for too long (.iii/commit.lock)") from None
                time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _remove_staging(state_dir: Path) -> None:
    install = state_dir / "install"
    if not install.is_dir():
        return
    for worker in install.iterdir():
        if worker.is_dir():
            for stage in worker.glob(STAGING_PREFIX + "*"):
                shutil.rmtree(stage, ignore_errors=True)


def _restore(txn_dir: Path, journal: dict[str, Any]) -> None:
    """Put both files back as the journal's copies say (delete one that did not exist)."""
    for entry in journal.get("files", []):
        target = Path(entry["path"])
        backup = entry.get("backup")
        if backup is None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            continue
        data = (txn_dir / backup).read_bytes()
        if _read(target) != data:
            atomic_write(target, data, entry.get("mode"))


def _clear_journal(txn_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (txn_dir / JOURNAL).unlink()  # the journal goes first: without it the copies mean nothing
    _fsync_dir(txn_dir)
    for leftover in txn_dir.glob("*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def recover(state_dir: Path) -> int | None:
    """Undo a commit interrupted by a dead process; returns its pid, or None if nothing to do.

    Safe to call at any time: a journal whose writer still holds `.iii/commit.lock` is left
    alone (taking the lock waits for it), and a live pid that no longer holds the lock is a
    reused pid, so its journal is stale too.
    """
    txn_dir = state_dir / TXN_DIR
    if not (txn_dir / JOURNAL).exists():
        return None
    with commit_lock(state_dir):
        try:
            journal = json.loads((txn_dir / JOURNAL).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None  # its writer finished while we waited
        except ValueError:
            journal = {}  # written half-way: the live files were not touched yet
        pid = int(journal.get("pid") or 0)
        if pid == os.getpid():
            return None
        _restore(txn_dir, journal)
        _remove_staging(state_dir)
        _clear_journal(txn_dir)
        return pid or None


@dataclass
class _Staged:
    name: str
    staging: Path
    identity: str


@dataclass
class Transaction:
    """One mutating `iii worker` command; see the module docstring for the protocol."""

    config_path: Path
    lock_timeout: float = 60.0
    argv: Sequence[str] = ()
    on_wait: Callable[[str], None] | None = None
    lockfile_name: str = "iii.lock"
    config_bytes: bytes | None = field(default=None, init=False)
    lock_bytes: bytes | None = field(default=None, init=False)
    recovered_pid: int | None = field(default=None, init=False)
    committed: bool = field(default=False, init=False)
    _fd: int | None = field(default=None, init=False, repr=False)
    _staged: list[_Staged] = field(default_factory=list, init=False, repr=False)
    _staging_dirs: list[Path] = field(default_factory=list, init=False, repr=False)

    @property
    def project_dir(self) -> Path:
        return self.config_path.parent

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".iii"

    @property
    def lock_path(self) -> Path:
        return self.project_dir / self.lockfile_name

    # ------------------------------------------------------------------ lock

    def __enter__(self) -> "Transaction":
        try:
            ensure_state_dir(self.project_dir)
        except OSError as exc:
            raise TransactionError(f"cannot create {self.state_dir}: {exc.strerror or exc}") from None
        self._acquire()
        try:
            self.recovered_pid = recover(self.state_dir)
            self.config_bytes = _read(self.config_path)
            self.lock_bytes = _read(self.lock_path)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.committed:
                for stage in self._staging_dirs:
                    shutil.rmtree(stage, ignore_errors=True)
        finally:
            self._release()

    def _acquire(self) -> None:
        path = self.state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, self.lock_timeout)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            holder = describe_holder(self._holder(fd))
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ProjectBusyError(holder)
            if not announced and self.on_wait is not None:
                self.on_wait(f"waiting for another iii worker command ({holder})")
                announced = True
            time.sleep(_POLL_S)
        record = json.dumps({"pid": os.getpid(), "argv": list(self.argv)}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> dict[str, Any] | None:
        try:
            data = os.pread(fd, 65536, 0)
            info = json.loads(data) if data else None
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # while still held: nobody reads a stale holder
        os.close(self._fd)
        self._fd = None

    # ------------------------------------------------------------------ staging

    def staging_dir(self, name: str) -> Path:
        """A fresh `.iii/install/<name>/.staging-<random>/`, deleted unless committed."""
        folder = self.state_dir / "install" / name
        folder.mkdir(parents=True, exist_ok=True)
        stage = folder / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        stage.mkdir()
        self._staging_dirs.append(stage)
        return stage

    def stage_install(self, name: str, staging: Path, identity: str) -> None:
        """Move `staging` to `.iii/install/<name>/<identity>/` at commit (replacing a copy)."""
        self._staged.append(_Staged(name, Path(staging), identity))

    # ------------------------------------------------------------------ commit

    def commit(self, config: bytes | None = None, lock: bytes | None = None) -> list[str]:
        """Write the new pair (None keeps that file); returns the names of files rewritten."""
        if self.committed:
            raise TransactionError("transaction already committed")
        targets = [(p, new, old) for p, new, old in ((self.lock_path, lock, self.lock_bytes),
                                                      (self.config_path, config, self.config_bytes))
                   if new is not None and new != old]
        if not targets and not self._staged:
            self.committed = True
            return []
        txn_dir = self.state_dir / TXN_DIR
        with commit_lock(self.state_dir):
            txn_dir.mkdir(exist_ok=True)
            journal = self._write_journal(txn_dir)
            try:
                self._activate_installs()
                for path, new, _old in targets:
                    atomic_write(path, new)
            except BaseException:
                _restore(txn_dir, journal)
                _clear_journal(txn_dir)
                raise
            _clear_journal(txn_dir)
        self.committed = True
        for stage in self._staging_dirs:
            shutil.rmtree(stage, ignore_errors=True)  # staged folders not activated
        return [path.name for path, _new, _old in targets]

    def _write_journal(self, txn_dir: Path) -> dict[str, Any]:
        """Copies of both files first, then the journal naming them (its presence = complete)."""
        files = []
        for path, data in ((self.config_path, self.config_bytes), (self.lock_path, self.lock_bytes)):
            entry: dict[str, Any] = {"path": str(path), "backup": None}
            if data is not None:
                backup = f"{path.name}.orig"
                atomic_write(txn_dir / backup, data)
                entry["backup"] = backup
                with contextlib.suppress(OSError):
                    entry["mode"] = os.stat(path).st_mode & 0o7777
            files.append(entry)
        journal = {"pid": os.getpid(), "time": time.time(), "argv": list(self.argv), "files": files}
        atomic_write(txn_dir / JOURNAL, json.dumps(journal, indent=2).encode())
        return journal

    def _activate_installs(self) -> None:
        for staged in self._staged:
            final = self.state_dir / "install" / staged.name / staged.identity
            if final.exists():
                old = final.with_name(f".old-{staged.identity}-{secrets.token_hex(4)}")
                os.replace(final, old)
                os.replace(staged.staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged.staging, final)
            if staged.staging in self._staging_dirs:
                self._staging_dirs.remove(staged.staging)
