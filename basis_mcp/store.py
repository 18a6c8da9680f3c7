"""SQLite state: positions, orders, fills, funding, basis samples, alerts, audit.

WAL mode, ``synchronous=FULL`` (a committed fill survives power loss, not just a process
crash), foreign keys on. The connection runs in autocommit mode and every multi-row
change goes through `Store.tx()` (``BEGIN IMMEDIATE`` … ``COMMIT``), so a rejected call or
a crash leaves nothing half-written.

The paper venue keeps its own tables (``paper_*``) in the same file, written in its own
transactions: it plays the exchange, whose state the desk must reconcile against.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS positions (
    id               INTEGER PRIMARY KEY,
    symbol           TEXT NOT NULL,
    strategy         TEXT NOT NULL,
    venue            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('opening','open','closing','closed','liquidated','failed')),
    quantity         REAL NOT NULL,
    leverage         REAL NOT NULL,
    notional_usd     REAL NOT NULL,
    margin_usd       REAL,
    entry_spot       REAL,
    entry_perp       REAL,
    entry_basis_pct  REAL,
    exit_spot        REAL,
    exit_perp        REAL,
    exit_basis_pct   REAL,
    opened_at        REAL NOT NULL,
    closed_at        REAL,
    entry_key        TEXT UNIQUE,
    exit_key         TEXT UNIQUE,
    realized_pnl_usd REAL,
    close_reason     TEXT,
    reserved_usd     REAL NOT NULL DEFAULT 0,
    args_json        TEXT
);
CREATE INDEX IF NOT EXISTS positions_status ON positions(status);

CREATE TABLE IF NOT EXISTS orders (
    id              INTEGER PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    position_id     INTEGER NOT NULL REFERENCES positions(id),
    purpose         TEXT NOT NULL CHECK (purpose IN ('open','close','unwind','rebalance','liquidation')),
    market          TEXT NOT NULL CHECK (market IN ('spot','perp')),
    side            TEXT NOT NULL CHECK (side IN ('buy','sell')),
    quantity        REAL NOT NULL CHECK (quantity > 0),
    reduce_only     INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('intent','sent','filled','partially_filled','rejected','unknown','cancelled')),
    venue_order_id  TEXT,
    filled_qty      REAL NOT NULL DEFAULT 0,
    avg_price       REAL,
    reason          TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    created_wall    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_position ON orders(position_id);
CREATE INDEX IF NOT EXISTS orders_created ON orders(created_at);

CREATE TABLE IF NOT EXISTS fills (
    id          INTEGER PRIMARY KEY,
    order_id    INTEGER NOT NULL UNIQUE REFERENCES orders(id),
    position_id INTEGER NOT NULL REFERENCES positions(id),
    market      TEXT NOT NULL,
    side        TEXT NOT NULL,
    quantity    REAL NOT NULL,
    price       REAL NOT NULL,
    mid_price   REAL NOT NULL,
    fee_usd     REAL NOT NULL,
    ts          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fills_position ON fills(position_id);

CREATE TABLE IF NOT EXISTS funding_payments (
    id          INTEGER PRIMARY KEY,
    position_id INTEGER NOT NULL REFERENCES positions(id),
    symbol      TEXT NOT NULL,
    ts          REAL NOT NULL,
    rate        REAL NOT NULL,
    mark_price  REAL NOT NULL,
    quantity    REAL NOT NULL,
    amount_usd  REAL NOT NULL,
    UNIQUE (position_id, ts)
);

CREATE TABLE IF NOT EXISTS basis_samples (
    symbol    TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    spot      REAL NOT NULL,
    perp      REAL NOT NULL,
    basis_pct REAL NOT NULL,
    PRIMARY KEY (symbol, ts)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    tool        TEXT NOT NULL,
    args_hash   TEXT NOT NULL,
    result_json TEXT NOT NULL,
    created_at  REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS confirmations (
    token_hash TEXT PRIMARY KEY,
    tool       TEXT NOT NULL,
    args_hash  TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL
);

CREATE TABLE IF NOT EXISTS alerts (
    id         INTEGER PRIMARY KEY,
    ts         REAL NOT NULL,
    market_ts  REAL NOT NULL,
    severity   TEXT NOT NULL,
    rule       TEXT NOT NULL,
    message    TEXT NOT NULL,
    data_json  TEXT NOT NULL,
    delivered  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY,
    ts          REAL NOT NULL,
    market_ts   REAL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    args_json   TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT,
    duration_ms REAL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
"""

GENESIS_HASH = "0" * 64


def audit_hash(prev_hash: str, row: dict[str, Any]) -> str:
    body = json.dumps(row, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


AUDIT_FIELDS = ("id", "ts", "market_ts", "kind", "name", "args_json", "outcome", "detail", "duration_ms")


def connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Database:
    """One SQLite connection with a re-entrant transaction helper."""

    def __init__(self, path: Path | str, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect(self.path)
        self._lock = threading.RLock()
        self._depth = 0
        self.conn.executescript(schema)

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (nested calls join the outer transaction)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            else:
                self._depth = 0
                self.conn.execute("COMMIT")

    def q(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self.conn.execute(sql, params).fetchone()

    def x(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.conn.execute(sql, params)



class Store(Database):
    """The desk's own state (see module docstring)."""

    def __init__(self, path: Path | str):
        super().__init__(path, SCHEMA)
        with self.tx():
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            if self.get_meta("desk_id") is None:  # scopes client order ids to this database (see Desk.client_order_id)
                self.set_meta("desk_id", secrets.token_hex(4))

    def get_meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        self.x("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------------ audit

    def append_audit(
        self,
        *,
        ts: float,
        market_ts: float | None,
        kind: str,
        name: str,
        args: dict[str, Any],
        outcome: str,
        detail: str | None = None,
        duration_ms: float | None = None,
    ) -> int:
        """Append one hash-chained audit row. Each row's hash covers its content and the previous hash."""
        args_json = json.dumps(args, sort_keys=True, default=str)
        with self.tx():
            last = self.one("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
            prev = last["hash"] if last else GENESIS_HASH
            new_id = (last["id"] + 1) if last else 1
            row = {
                "id": new_id,
                "ts": ts,
                "market_ts": market_ts,
                "kind": kind,
                "name": name,
                "args_json": args_json,
                "outcome": outcome,
                "detail": detail,
                "duration_ms": duration_ms,
            }
            h = audit_hash(prev, row)
            self.x(
                "INSERT INTO audit(id, ts, market_ts, kind, name, args_json, outcome, detail, duration_ms, prev_hash, hash)"
                " VALUES (:id, :ts, :market_ts, :kind, :name, :args_json, :outcome, :detail, :duration_ms, :prev, :hash)",
                {**row, "prev": prev, "hash": h},
            )
            self.set_meta("audit_head", f"{new_id}:{h}")
            return new_id


def verify_audit(conn: sqlite3.Connection) -> tuple[bool, str]:
    """Walk the audit chain; report the first row that was edited, inserted or removed."""
    prev = GENESIS_HASH
    expected_id = 1
    n = 0
    for r in conn.execute("SELECT * FROM audit ORDER BY id"):
        row = {k: r[k] for k in AUDIT_FIELDS}
        if r["id"] != expected_id:
            return False, f"row id {r['id']} follows {expected_id - 1}: a row was deleted or inserted"
        if r["prev_hash"] != prev:
            return False, f"row {r['id']}: prev_hash does not match row {r['id'] - 1}'s hash (row removed or reordered)"
        if audit_hash(prev, row) != r["hash"]:
            return False, f"row {r['id']}: content does not match its hash (row edited)"
        prev = r["hash"]
        expected_id += 1
        n += 1
    head = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
    if head is not None and head[0] != f"{n}:{prev}":
        return False, f"chain ends at row {n} but the recorded head is row {head[0].split(':')[0]}: rows were removed from the end"
    if head is None and n:
        return False, "audit rows exist but the recorded head is missing"
    return True, f"{n} audit rows, chain intact"
