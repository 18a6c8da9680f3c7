"""The audit chain's status for the dashboard, without rehashing the whole chain on every refresh.

The first look runs the full `audit.verify` (what ``basis-mcp audit verify`` runs). After that, a
refresh rehashes the last verified row (content and hash unchanged?) and only the rows added
since (each against its predecessor, with the book's key), and checks that the journal's newest
checkpoint is still on the chain (`audit.quick_check`, O(1)). An edit further back is found by
the full check, which runs again every `FULL_EVERY` seconds, and at once when a quick check
fails or rows vanished. A chain longer than `SYNC_ROWS` is fully checked in a background thread
(the page says "checking" meanwhile), so no refresh waits on it.

A full check that finds a problem runs once more a moment later and reports only what that
second check still finds: a server appending rows between the check's read of the table and its
read of the journal can look like a cut chain for an instant.
"""

from __future__ import annotations

import hmac
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from basis_mcp import audit
from basis_mcp.clock import iso
from basis_mcp.dashboard.reader import ro_uri

FULL_EVERY = 600.0
SYNC_ROWS = 20_000


class ChainWatch:
    def __init__(self, db: Path | str, paths: audit.AuditPaths, full_every: float = FULL_EVERY, sync_rows: int = SYNC_ROWS):
        self.db = Path(db)
        self.paths = paths
        self.full_every = full_every
        self.sync_rows = sync_rows
        self._lock = threading.Lock()
        self._verified: tuple[int, str] | None = None  # (rows, hash of the last one) the last checks vouched for
        self._full: audit.Verdict | None = None
        self._full_at = 0.0  # wall time of the last full check
        self._full_due = True
        self._running = False
        self._incremental_rows = 0

    # ------------------------------------------------------------------ full check

    def _verify(self) -> audit.Verdict:
        """`audit.verify` (what ``basis-mcp audit verify`` runs), over the dashboard's own read-only connection
        (`ro_uri`: nothing created beside a book no server holds)."""
        v = audit.Verdict(ok=False)
        try:
            key = audit.load_key(self.paths.key, create=False)
        except audit.AuditKeyError:
            return audit.verify(self.db, self.paths)  # (a v1 book, or the key's own message: audit.verify says which)
        try:
            conn = sqlite3.connect(ro_uri(self.db), uri=True)
        except sqlite3.Error as e:
            v.problems.append(f"cannot verify: cannot open {self.db}: {e}")
            return v
        try:
            return audit._verify(conn, key, self.paths, v)  # noqa: SLF001 - the same check over this connection
        except sqlite3.DatabaseError as e:
            v.problems.append(f"cannot read the audit table: {e}")
            return v
        finally:
            conn.close()

    def _full_check(self) -> None:
        v = self._verify()
        if not v.ok:
            time.sleep(0.3)
            v = self._verify()
        head = None
        if v.ok and v.rows:
            conn = sqlite3.connect(ro_uri(self.db), uri=True)
            try:
                row = conn.execute("SELECT hash FROM audit WHERE id = ?", (v.rows,)).fetchone()
            finally:
                conn.close()
            head = row[0] if row else None
        with self._lock:
            self._full = v
            self._full_at = time.time()
            self._full_due = False
            self._running = False
            self._incremental_rows = 0
            self._verified = (v.rows, head) if v.ok and head else None

    def _start_full(self, rows: int) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        if rows <= self.sync_rows:
            self._full_check()
        else:
            threading.Thread(target=self._full_check, name="dashboard-audit-verify", daemon=True).start()

    # ------------------------------------------------------------------ every refresh

    def status(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """The chain's status now. ``conn`` must not be inside a read transaction (the journal is read first,
        then the table, so a checkpoint written meanwhile is always of a row the table already shows)."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is None:
            return {"state": "tampered", "rows": 0, "summary": "TAMPERED: the audit table is gone (dropped)", "notes": []}
        rows = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]
        with self._lock:
            due = self._full_due or (time.time() - self._full_at > self.full_every)
        if due:
            self._start_full(rows)
        with self._lock:
            full, verified, running = self._full, self._verified, self._running
        if full is None:
            return {"state": "checking", "rows": rows, "summary": f"verifying the chain of {rows} rows…", "notes": []}
        checked = {"full_check_at": iso(self._full_at), "rows": rows}
        if not full.ok:
            if any(p.startswith("cannot verify") for p in full.problems):  # no key: neither intact nor tampered
                return {**checked, "state": "unverifiable", "summary": "UNVERIFIABLE: " + full.problems[0],
                        "notes": full.problems[1:] + full.notes}
            return {**checked, "state": "tampered", "summary": full.text().splitlines()[0],
                    "notes": full.problems[1:] + full.notes}
        problem = self._incremental(conn, verified) if verified else None
        if problem is None:
            try:
                key = audit.load_key(self.paths.key, create=False)
                problem = audit.quick_check(conn, key, self.paths.journal)
            except audit.AuditKeyError as e:
                with self._lock:
                    self._full_due = True
                return {**checked, "state": "unverifiable", "summary": f"UNVERIFIABLE: cannot verify: {e}", "notes": full.notes}
        if problem is not None:
            with self._lock:
                self._full_due = True  # the next refresh runs the full check, which has the last word
            return {**checked, "state": "checking" if running else "suspect", "summary": problem, "notes": full.notes}
        since = f", {self._incremental_rows} added since were checked one by one" if self._incremental_rows else ""
        return {**checked, "state": "ok", "summary": f"OK: {rows} audit rows, chain intact (full check of {full.rows} rows"
                f"{since})", "notes": full.notes}

    def _incremental(self, conn: sqlite3.Connection, verified: tuple[int, str]) -> str | None:
        n, head = verified
        try:
            key = audit.load_key(self.paths.key, create=False)
        except audit.AuditKeyError as e:
            return str(e)
        fields = ", ".join(audit.FIELDS)
        row = conn.execute(f"SELECT {fields}, prev_hash, hash FROM audit WHERE id = ?", (n,)).fetchone()
        if row is None:
            return f"audit row {n}, verified before, is gone"
        data = dict(zip(audit.FIELDS, row[: len(audit.FIELDS)], strict=True))
        if not hmac.compare_digest(row[-1], head) or not hmac.compare_digest(head, audit.row_hash(key, row[-2], data)):
            return f"audit row {n} no longer matches the keyed hash it was verified with"
        prev, expected = head, n + 1
        for r in conn.execute(f"SELECT {fields}, prev_hash, hash FROM audit WHERE id > ? ORDER BY id", (n,)):
            data = dict(zip(audit.FIELDS, r[: len(audit.FIELDS)], strict=True))
            if data["id"] != expected:
                return f"audit row id {data['id']} follows {expected - 1}: a row was deleted or inserted"
            if r[-2] != prev or not hmac.compare_digest(r[-1], audit.row_hash(key, prev, data)):
                return f"audit row {data['id']} does not match its keyed hash"
            prev, expected = r[-1], expected + 1
        with self._lock:
            if self._verified == verified:
                self._incremental_rows += expected - 1 - n
                self._verified = (expected - 1, prev)
        return None
