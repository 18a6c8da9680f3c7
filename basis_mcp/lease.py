"""One writer per book: an exclusive, crash-safe lease on the book's database.

A server takes an OS file lock before it opens the book and holds it until the process
ends. On Linux the lock (``flock``) is on the database file itself, so every path that
reaches the same file — a symlink, a hard link, ``..`` — meets it, and deleting a sidecar
cannot lift it (``flock`` and SQLite's own ``fcntl`` locks do not interact on Linux);
elsewhere it is on ``<real path of db>.lease`` (``msvcrt.locking`` on Windows). The kernel
drops the lock when the process dies, however it dies, so a crash never leaves a stale
lease behind (unlike a PID file). The holder writes who it is into ``<real path>.lease``
(pid, since when, transport, command line) so a second server can name it when it refuses.

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
    info_path: Path | None = None


def _write_info(path: Path, info: dict[str, Any]) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, (json.dumps(info) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:  # the details are for the refusal message; the lock is what counts
        pass


def _close_quietly(fd: int) -> None:
    """Close a descriptor of the database file (on Linux the lock lives on it). Closing any
    descriptor of a file drops this process's fcntl locks on it, so this happens only when the
    lease is not taken or when the desk's own SQLite connections are already closed."""
    try:
        os.close(fd)
    except OSError:
        pass


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
        real = Path(os.path.realpath(db))
        info_path = lease_path(real)
        on_db = sys.platform.startswith("linux")
        target = real if on_db else info_path
        with _guard:
            if not target.exists():
                os.close(os.open(target, os.O_RDWR | os.O_CREAT, 0o644))  # a new file: nobody has it open yet
            st = os.stat(target)
            key = f"{st.st_dev}:{st.st_ino}"  # one identity for every path to the same file
            held = _held.get(key)
            if held is None:  # (never open a second descriptor of a file this process holds: see _close_quietly)
                fd = os.open(target, os.O_RDWR, 0o644)
                if not _lock(fd):
                    _close_quietly(fd)
                    raise BookLeaseHeld(db, read_holder(info_path))
                info = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "transport": transport, "hostname": _hostname(), "command": " ".join(sys.argv)[:300],
                        "database": str(real)}
                _write_info(info_path, info)
                held = _held[key] = _Held(fd, 0, info_path=info_path)
            if desk:
                if held.desk_open:
                    if held.count == 0:  # pragma: no cover - defensive
                        _held.pop(key, None)
                    raise BookLeaseHeld(db, {**(read_holder(info_path) or {}), "transport": "another desk in this process"})
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
                if held.info_path is not None:
                    try:
                        os.truncate(held.info_path, 0)
                    except OSError:
                        pass
                _close_quietly(held.fd)  # closing the descriptor drops the lock

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
