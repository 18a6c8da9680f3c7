"""The audit chain: every row keyed with a secret kept outside the database, and anchored
in a journal outside it too, so no rewrite of the database alone goes unnoticed.

- Each row's ``hash`` is ``HMAC-SHA256(key, prev_hash ‖ canonical JSON of the row)``.
  Without the key nobody can recompute the chain after editing, inserting or deleting a row.
- The key is a file (``<db>.audit-key`` by default, or ``--audit-key`` /
  ``$BASIS_MCP_AUDIT_KEY_FILE``), 32 random bytes created with owner-only permissions on the
  book's first start, and never again: a book that already has keyed rows and no key file
  is refused, never silently given a new key.
- After every commit that added audit rows, a checkpoint line goes to the journal
  (``<db>.audit-journal`` by default, or ``--audit-journal`` / ``$BASIS_MCP_AUDIT_JOURNAL_FILE``):
  an append-only file of ``{"n": rows, "head": hash of row n, "at": time, "mac": …}``
  lines. Cutting the chain's tail (with or without rewriting anything in the database),
  emptying or dropping the table, all leave the journal pointing at rows that are gone.
- Books from schema version 1 have an unkeyed chain (plain SHA-256). The upgrade appends
  one keyed ``audit_keyed`` row whose ``prev_hash`` is the old head and whose arguments
  name the number of old rows: the old rows stay checkable and can no longer be
  recomputed unnoticed.

What an operator keeps where is in the README ("Audit log"): for real money, copy the
key somewhere the server's machine cannot write, and ship the journal off the machine
as it grows (it is append-only: ``tail -F`` into remote storage works).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
FIELDS = ("id", "ts", "market_ts", "kind", "name", "args_json", "outcome", "detail", "duration_ms")
KEY_ENV = "BASIS_MCP_AUDIT_KEY_FILE"
JOURNAL_ENV = "BASIS_MCP_AUDIT_JOURNAL_FILE"
FSYNC_EVERY = 32


class AuditKeyError(Exception):
    """The audit key is missing, unreadable or malformed."""


@dataclass(frozen=True)
class AuditPaths:
    key: Path
    journal: Path

    @classmethod
    def for_db(cls, db: Path | str, key: Path | str | None = None, journal: Path | str | None = None,
               env: dict[str, str] | None = None) -> AuditPaths:
        """Explicit paths, else the environment, else beside the database's real path (a symlinked
        or relative --db reaches the same key and journal)."""
        env = dict(os.environ) if env is None else env
        real = Path(os.path.realpath(db))
        k = key or env.get(KEY_ENV) or real.with_name(real.name + ".audit-key")
        j = journal or env.get(JOURNAL_ENV) or real.with_name(real.name + ".audit-journal")
        for name, value in (("audit key", k), ("audit journal", j)):
            text = str(value)
            if len(text) >= 32 and all(c in "0123456789abcdefABCDEF" for c in text) and not Path(text).exists():
                raise AuditKeyError(f"the {name} setting holds 64 hex characters, not a file path: give the path of the "
                                    "file that holds the key, never the key itself")
        return cls(Path(k), Path(j))


def load_key(path: Path, create: bool) -> bytes:
    """Read the key; with ``create``, make one (owner-only) if the file does not exist."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise AuditKeyError(f"no audit key at {path} (pass --audit-key with the book's key file)") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_key(path, create=False)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return load_key(path, create=False)
    except OSError as e:
        raise AuditKeyError(f"cannot read the audit key {path}: {e.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise AuditKeyError(f"the audit key {path} is not 64 hex characters") from None
    if len(key) < 16:
        raise AuditKeyError(f"the audit key {path} is too short ({len(key)} bytes, need ≥ 16)")
    return key


def key_is_private(path: Path) -> bool:
    if sys.platform == "win32":  # pragma: no cover - POSIX permissions only
        return True
    try:
        return not (path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def canonical(row: dict[str, Any]) -> bytes:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()


def row_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + canonical(row), hashlib.sha256).hexdigest()


def legacy_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """Schema-version-1 books: SHA-256 without a key."""
    return hashlib.sha256((prev_hash + json.dumps(row, sort_keys=True, separators=(",", ":"), default=str)).encode()).hexdigest()


def _checkpoint_mac(key: bytes, n: int, head: str, at: str) -> str:
    return hmac.new(key, f"basis-mcp-audit-checkpoint:{n}:{head}:{at}".encode(), hashlib.sha256).hexdigest()


_os_write = os.write  # (tests swap it for a full disk)


class JournalError(OSError):
    """A checkpoint could not be written (disk full, permissions): the database write stands."""


class Journal:
    """Append-only checkpoint lines, one write per line, safe for several writing processes.

    A short write (a full disk) leaves a torn line; the next append starts on a fresh line, and
    `verify` reads torn lines as unreadable, not as tampering."""

    def __init__(self, path: Path, key: bytes):
        self.path = path
        self.key = key
        self._fd: int | None = None
        self._since_sync = 0
        self._needs_newline = False

    def _open(self) -> int:
        if self._fd is None:
            if self.path.exists() and not self.path.is_file():
                raise OSError(21, f"{self.path} is not a regular file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            size = os.fstat(self._fd).st_size
            if size:
                self._needs_newline = os.pread(self._fd, 1, size - 1) != b"\n"
        return self._fd

    def append(self, n: int, head: str) -> None:
        now = time.time()
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z"
        line = json.dumps({"n": n, "head": head, "at": at, "mac": _checkpoint_mac(self.key, n, head, at)},
                          separators=(",", ":")) + "\n"
        try:
            fd = self._open()
            data = (b"\n" if self._needs_newline else b"") + line.encode()
            written = _os_write(fd, data)  # O_APPEND: one write of a short line lands whole, after every other writer's
        except OSError as e:
            self._needs_newline = True
            raise JournalError(e.errno, f"cannot write the audit journal {self.path}: {e.strerror}") from None
        if written != len(data):
            self._needs_newline = True
            raise JournalError(28, f"short write to the audit journal {self.path} ({written} of {len(data)} bytes)")
        self._needs_newline = False
        self._since_sync += 1
        if self._since_sync >= FSYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            self._since_sync = 0

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None


# ----------------------------------------------------------------------------- writing


def append_row(conn: sqlite3.Connection, key: bytes, *, ts: float, market_ts: float | None, kind: str, name: str,
               args_json: str, outcome: str, detail: str | None, duration_ms: float | None) -> tuple[int, str]:
    """Insert one keyed row after the current head (call inside ``BEGIN IMMEDIATE``). Returns (id, hash)."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    prev = last[1] if last else GENESIS_HASH
    new_id = (last[0] + 1) if last else 1
    row = {"id": new_id, "ts": ts, "market_ts": market_ts, "kind": kind, "name": name, "args_json": args_json,
           "outcome": outcome, "detail": detail, "duration_ms": duration_ms}
    h = row_hash(key, prev, row)
    conn.execute(
        "INSERT INTO audit(id, ts, market_ts, kind, name, args_json, outcome, detail, duration_ms, prev_hash, hash)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (new_id, ts, market_ts, kind, name, args_json, outcome, detail, duration_ms, prev, h),
    )
    return new_id, h


def anchor_legacy_chain(conn: sqlite3.Connection, key: bytes) -> tuple[int, str] | None:
    """Schema v1 → v2: key the chain from here on, anchored on the old head. Returns the new row (id, hash)."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    if last is None:
        return None
    ok, msg, _ = _walk_legacy(conn)
    args = {"legacy_rows": last[0], "legacy_head": last[1], "scheme": "hmac-sha256", "legacy_chain_ok": ok,
            "legacy_check": msg}
    return append_row(conn, key, ts=time.time(), market_ts=None, kind="system", name="audit_keyed",
                      args_json=json.dumps(args, sort_keys=True), outcome="ok" if ok else "warning",
                      detail="schema v2: audit rows are keyed (HMAC-SHA256) from here on; the rows before are the v1 chain",
                      duration_ms=None)


def _walk_legacy(conn: sqlite3.Connection) -> tuple[bool, str, int]:
    prev, expected = GENESIS_HASH, 1
    for r in conn.execute(f"SELECT {', '.join(FIELDS)}, prev_hash, hash FROM audit ORDER BY id"):
        row = dict(zip(FIELDS, r[: len(FIELDS)], strict=True))
        if row["id"] != expected or r[-2] != prev or legacy_hash(prev, row) != r[-1]:
            return False, f"v1 chain broken at row {row['id']}", expected - 1
        prev, expected = r[-1], expected + 1
    return True, f"{expected - 1} v1 rows intact", expected - 1


# ----------------------------------------------------------------------------- verifying


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: int = 0

    def text(self) -> str:
        head = ("OK: " if self.ok else "TAMPERED: ") + (self.problems[0] if self.problems else f"{self.rows} audit rows, chain intact")
        return "\n".join([head] + [f"  - {p}" for p in self.problems[1:]] + [f"  · {n}" for n in self.notes])


def quick_check(conn: sqlite3.Connection, key: bytes, journal: Path) -> str | None:
    """At start-up: does the chain still reach the journal's newest checkpoint? (O(1); `verify` is the full check.)"""
    rows = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    if journal.exists() and not journal.is_file():
        return f"the audit journal {journal} is not a regular file"
    try:
        with open(journal, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 4096, 0))
            tail = fh.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return f"the audit journal {journal} is missing but the book has {rows} audit rows" if rows else None
    except OSError as e:
        return f"cannot read the audit journal {journal}: {e.strerror}"
    if rows and not any(line.strip().startswith("{") for line in tail):
        return f"the audit journal {journal} has no checkpoints but the book has {rows} audit rows"
    for line in reversed(tail):
        try:
            c = json.loads(line)
            n, head, at, mac = int(c["n"]), str(c["head"]), str(c["at"]), str(c["mac"])
        except (ValueError, KeyError, TypeError):
            continue
        if not hmac.compare_digest(mac, _checkpoint_mac(key, n, head, at)):
            return f"the audit journal's last checkpoint (row {n}) has no valid MAC for this key"
        row = conn.execute("SELECT hash FROM audit WHERE id = ?", (n,)).fetchone()
        if row is None:
            return f"the audit journal checkpoints row {n}, which is no longer in the database (rows cut or table emptied)"
        if row[0] != head:
            return f"audit row {n} no longer matches its journal checkpoint (the chain was rewritten)"
        return None
    return None


def _read_journal(path: Path, key: bytes, v: Verdict) -> list[tuple[int, int, str]]:
    """[(line number, n, head)] of the journal's valid checkpoints; bad lines are problems."""
    out = []
    if path.exists() and not path.is_file():
        v.problems.append(f"the audit journal {path} is not a regular file")
        return out
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        v.problems.append(f"the audit journal {path} is missing: the chain cannot be checked against its checkpoints "
                          "(pass --audit-journal if it lives elsewhere)")
        return out
    except OSError as e:
        v.problems.append(f"cannot read the audit journal {path}: {e.strerror}")
        return out
    unreadable = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            c = json.loads(line)
            n, head, at, mac = int(c["n"]), str(c["head"]), str(c["at"]), str(c["mac"])
        except (ValueError, KeyError, TypeError):
            unreadable.append(i)  # a torn write (crash, full disk) vouches for nothing, and cannot hide anything
            continue
        if not hmac.compare_digest(mac, _checkpoint_mac(key, n, head, at)):
            v.problems.append(f"journal line {i} (row {n}) does not carry a valid MAC: forged, edited, or another key")
            continue
        out.append((i, n, head))
    if unreadable:
        v.notes.append(f"{len(unreadable)} unreadable journal line(s) ({', '.join(map(str, unreadable[:5]))}): torn writes, "
                       "ignored (they vouch for nothing)")
    return out


def verify(db: Path, paths: AuditPaths) -> Verdict:
    """Check the chain in ``db`` with the key and the journal in ``paths``. Opens the database read-only."""
    v = Verdict(ok=False)
    try:
        conn = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as e:
        v.problems.append(f"cannot open {db}: {e}")
        return v
    try:
        # only a book that has never been opened by this version (no key, no journal) is checked the old, unkeyed way;
        # with a key or a journal in reach, an unkeyed chain is a rewritten one
        if version is not None and version[0] == "1" and not paths.journal.exists() and not paths.key.exists():
            ok, msg, n = _walk_legacy(conn)  # a v1 book this version has not opened yet: the old, unkeyed check
            v.ok, v.rows = ok, n
            (v.notes if ok else v.problems).append(msg)
            v.notes.append("schema-v1 book, not yet upgraded: its chain is unkeyed until this version opens it")
            return v
        try:
            key = load_key(paths.key, create=False)
        except AuditKeyError as e:
            v.problems.append(f"cannot verify: {e}")
            return v
        return _verify(conn, key, paths, v)
    except sqlite3.DatabaseError as e:
        v.problems.append(f"cannot read the audit table: {e}")
        return v
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection, key: bytes, paths: AuditPaths, v: Verdict) -> Verdict:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is None:
        v.problems.append("the audit table is gone (dropped)")
        _read_journal(paths.journal, key, v)
        return v
    # the journal is read BEFORE the table: a checkpoint is written after its rows commit, so every checkpoint
    # read now names rows the table snapshot below holds. (Read after, a server committing during a long walk
    # left checkpoints past the snapshot, which looked like rows cut from the end.)
    jv = Verdict(ok=False)
    checkpoints = _read_journal(paths.journal, key, jv)  # its findings are reported after the chain's own
    heads: dict[int, str] = {}
    prev, expected = GENESIS_HASH, 1
    legacy = 0
    first_keyed: dict[str, Any] | None = None
    open_calls: dict[int, str] = {}
    for r in conn.execute(f"SELECT {', '.join(FIELDS)}, prev_hash, hash FROM audit ORDER BY id"):
        row = dict(zip(FIELDS, r[: len(FIELDS)], strict=True))
        rid, prev_hash, h = row["id"], r[-2], r[-1]
        if rid != expected:
            v.problems.append(f"row id {rid} follows {expected - 1}: a row was deleted or inserted")
            break
        if prev_hash != prev:
            v.problems.append(f"row {rid}: prev_hash does not match row {rid - 1}'s hash (row removed, inserted or reordered)")
            break
        if hmac.compare_digest(h, row_hash(key, prev, row)):
            if first_keyed is None:
                first_keyed = {**row, "prev_hash": prev_hash}
        elif first_keyed is None and h == legacy_hash(prev, row):
            legacy += 1
        else:
            v.problems.append(f"row {rid}: content does not match its keyed hash (row edited, or the chain was "
                              "recomputed without the key)")
            break
        if row["kind"] == "tool":
            if row["outcome"] == "started":
                open_calls[rid] = row["name"]
            else:
                try:
                    open_calls.pop(int(json.loads(row["args_json"]).get("call", 0)), None)
                except (ValueError, AttributeError, TypeError):
                    pass
        heads[rid] = h
        prev, expected = h, expected + 1
    n = expected - 1
    v.rows = n
    if not v.problems and legacy:
        args = json.loads(first_keyed["args_json"]) if first_keyed else {}
        if first_keyed is None or first_keyed["name"] != "audit_keyed" or args.get("legacy_rows") != legacy \
                or args.get("legacy_head") != first_keyed["prev_hash"]:
            v.problems.append(f"rows 1..{legacy} are not keyed and no keyed upgrade row vouches for them: "
                              "the chain was recomputed without the key")
        else:
            v.notes.append(f"rows 1..{legacy} are the book's schema-v1 chain (unkeyed), anchored by keyed row {legacy + 1}")
    if not v.problems and n == 0:
        v.problems.append("the audit table is empty: a book that has ever been served has at least its start row")
    walked = not v.problems  # after a break in the chain, the rows past it prove nothing either way
    v.problems += jv.problems
    v.notes += jv.notes
    if n and paths.journal.exists() and not checkpoints and walked:
        v.problems.append(f"the audit journal {paths.journal} holds no valid checkpoint for a chain of {n} rows: "
                          "the journal was emptied or replaced")
    if checkpoints and walked:
        last_line, last_n, _ = max(checkpoints, key=lambda c: c[1])
        for line, cn, head in checkpoints:
            if cn > n:
                v.problems.append(f"journal line {line} checkpoints row {cn} but the chain ends at row {n}: "
                                  "rows were cut from the end")
                break
            if cn in heads and not hmac.compare_digest(heads[cn], head):
                v.problems.append(f"row {cn} differs from its checkpoint on journal line {line}: the chain was rewritten")
                break
        if n > last_n:
            v.notes.append(f"{n - last_n} row(s) after the last checkpoint (row {last_n}) are anchored only in the "
                           "database (a stop before the journal write)")
        v.notes.append(f"{len(checkpoints)} journal checkpoints match the chain")
    if open_calls:
        first = sorted(open_calls.items())[:5]
        v.notes.append(f"{len(open_calls)} tool call(s) started without a recorded outcome (the server stopped mid-call): "
                       + ", ".join(f"row {i} {name}" for i, name in first))
    v.ok = not v.problems
    return v
