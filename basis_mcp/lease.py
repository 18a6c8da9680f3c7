"""One writer per book: an exclusive, crash-safe lease on the book's database.

A server takes an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on
``<db>.lease`` before it opens the book, and holds it until the process ends. The kernel
drops the lock when the process dies, however it dies, so a crash never leaves a stale
lease behind (unlike a PID file). The holder writes who it is into the file (pid, since
when, transport, command line) so a second server can name it when it refuses to start.

Operator commands (`status`, `halt`, `resume`, `audit`) do not take the lease: they work
beside a running server through SQLite's own locking, in short transactions.

Within one process the lease is counted: the serve command holds it for the process's
whole life, and the desk it opens holds it too; a *second* desk on the same book in the
same process is refused like a second process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BookLeaseHeld(Exception):
    """Another server holds this book."""

    def __init__(self, db: Path, holder: dict[str, Any] | None):
        self.db = db
        self.holder = holder or {}
        super().__init__(self._message())

    def _message(self) -> str:
        h = self.holder
        if not h:
            who = "another basis-mcp server (it has not written its details yet)"
        else:
            since = h.get("since", "?")
            who = f"pid {h.get('pid', '?')} since {since} (transport {h.get('transport', '?')}"
            who += f", host {h['hostname']})" if h.get("hostname") else ")"
        return (f"the book {self.db} is already served by {who}. One server per book: connect your MCP client to "
                "that server, stop it first, or give this one another --db. (status, halt, resume and audit work "
                "beside a running server.)")


def lease_path(db: Path) -> Path:
    return db.with_name(db.name + ".lease")


def _lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def read_holder(path: Path, attempts: int = 20) -> dict[str, Any] | None:
    """The holder's details (it writes them right after locking: retry briefly for a fresh holder)."""
    for _ in range(attempts):
        try:
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return None


@dataclass
class _Held:
    fd: int
    count: int
    desk_open: bool = False


_held: dict[str, _Held] = {}
_guard = threading.Lock()


class BookLease:
    """A counted hold on the book's lease. `acquire` raises `BookLeaseHeld` if another process has it."""

    def __init__(self, db: Path, key: str, desk: bool):
        self.db = db
        self._key = key
        self._desk = desk
        self._released = False

    @classmethod
    def acquire(cls, db: Path | str, transport: str = "in-process", desk: bool = False) -> BookLease:
        """Take (or join this process's hold on) the lease of ``db``. ``desk``: this hold is a desk,
        and a book has at most one open desk per process."""
        db = Path(db)
        db.parent.mkdir(parents=True, exist_ok=True)
        path = lease_path(db)
        key = str(path.resolve())
        with _guard:
            held = _held.get(key)
            if held is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if not _lock(fd):
                    os.close(fd)
                    raise BookLeaseHeld(db, read_holder(path))
                info = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "transport": transport, "hostname": _hostname(), "command": " ".join(sys.argv)[:300],
                        "database": str(db.resolve())}
                data = (json.dumps(info) + "\n").encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
                held = _held[key] = _Held(fd, 0)
            if desk:
                if held.desk_open:
                    if held.count == 0:  # pragma: no cover - defensive
                        _held.pop(key, None)
                    raise BookLeaseHeld(db, {**(read_holder(path) or {}), "transport": "another desk in this process"})
                held.desk_open = True
            held.count += 1
        return cls(db, key, desk)

    def release(self) -> None:
        with _guard:
            if self._released:
                return
            self._released = True
            held = _held.get(self._key)
            if held is None:
                return
            if self._desk:
                held.desk_open = False
            held.count -= 1
            if held.count <= 0:
                _held.pop(self._key, None)
                try:
                    os.ftruncate(held.fd, 0)
                finally:
                    os.close(held.fd)  # closing the descriptor drops the lock

    def __enter__(self) -> BookLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _hostname() -> str:
    try:
        import socket

        return socket.gethostname()
    except OSError:  # pragma: no cover
        return ""
