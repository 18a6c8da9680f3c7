"""SQLite state: positions, orders, fills, funding, basis samples, alerts, audit.

WAL mode, ``synchronous=FULL`` (a committed fill survives power loss, not just a process crash), foreign
keys on. The connection runs in autocommit mode and every multi-row change goes through `Store.tx()`
(``BEGIN IMMEDIATE`` … ``COMMIT``), so a rejected call or a crash leaves nothing half-written.

The paper venue keeps its own tables (``paper_*``) in the same file, written in its own transactions: it plays the
exchange, whose state the desk must reconcile against.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basis_mcp import audit
from basis_mcp.readcache import MISS, ReadCache, call_cache, for_call, uncached
from basis_mcp.redact import bound_args, scrub

log = logging.getLogger("basis_mcp")

LEGS_DDL = """
CREATE TABLE IF NOT EXISTS legs (
    id           INTEGER PRIMARY KEY,
    position_id  INTEGER NOT NULL REFERENCES positions(id),
    idx          INTEGER NOT NULL,  -- its place in the strategy's declaration
    role         TEXT NOT NULL,     -- the strategy's name for it ('spot', 'perp', ...)
    market       TEXT NOT NULL CHECK (market IN ('spot','margin_spot','perp','future')),
    venue        TEXT NOT NULL,
    symbol       TEXT NOT NULL,     -- base asset
    expiry       REAL,              -- dated futures: settlement time
    side         TEXT NOT NULL CHECK (side IN ('long','short')),
    ratio        REAL NOT NULL,     -- base units per unit of the position's quantity, fixed at entry
    quantity     REAL NOT NULL,     -- target base quantity (what the leg holds when the position is hedged)
    entry_price  REAL,              -- average open fill price
    exit_price   REAL,              -- last close fill price
    margin_usd   REAL,              -- leveraged legs: isolated margin at entry
    UNIQUE (position_id, idx)
);
CREATE INDEX IF NOT EXISTS legs_instrument ON legs(venue, market, symbol);
CREATE INDEX IF NOT EXISTS legs_position ON legs(position_id);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS positions (
    id               INTEGER PRIMARY KEY,
    symbol           TEXT NOT NULL,   -- the symbol the agent named (a leg may name another)
    strategy         TEXT NOT NULL,   -- a registered strategy (basis_mcp.strategies): its legs and rules
    playbook         TEXT NOT NULL DEFAULT 'convergence',
    venue            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('opening','open','closing','closed','liquidated','failed')),
    quantity         REAL NOT NULL,   -- the reference (first) leg's base quantity
    leverage         REAL NOT NULL,
    notional_usd     REAL NOT NULL,   -- the reference leg's notional at entry: what the caps count
    margin_usd       REAL,            -- margin posted on the leveraged legs at entry
    entry_basis_pct  REAL,
    exit_basis_pct   REAL,
    opened_at        REAL NOT NULL,
    closed_at        REAL,
    entry_key        TEXT UNIQUE,
    exit_key         TEXT UNIQUE,
    realized_pnl_usd REAL,
    close_reason     TEXT,
    reserved_usd     REAL NOT NULL DEFAULT 0,
    args_json        TEXT,
    execute_at       REAL  -- replay with a fill delay: the intents rest until this market time
);
CREATE INDEX IF NOT EXISTS positions_status ON positions(status);
""" + LEGS_DDL + """
CREATE TABLE IF NOT EXISTS orders (
    id              INTEGER PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    position_id     INTEGER NOT NULL REFERENCES positions(id),
    leg_id          INTEGER NOT NULL REFERENCES legs(id),
    purpose         TEXT NOT NULL CHECK (purpose IN ('open','close','unwind','rebalance','liquidation')),
    market          TEXT NOT NULL CHECK (market IN ('spot','margin_spot','perp','future')),
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
    leg_id      INTEGER NOT NULL REFERENCES legs(id),
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
    leg_id      INTEGER NOT NULL REFERENCES legs(id),
    symbol      TEXT NOT NULL,
    ts          REAL NOT NULL,
    rate        REAL NOT NULL,
    mark_price  REAL NOT NULL,
    quantity    REAL NOT NULL,
    amount_usd  REAL NOT NULL,
    UNIQUE (leg_id, ts)
);
CREATE INDEX IF NOT EXISTS funding_position ON funding_payments(position_id);

CREATE TABLE IF NOT EXISTS borrow_payments (
    id          INTEGER PRIMARY KEY,
    position_id INTEGER NOT NULL REFERENCES positions(id),
    leg_id      INTEGER NOT NULL REFERENCES legs(id),
    asset       TEXT NOT NULL,
    ts          REAL NOT NULL,
    rate        REAL NOT NULL,   -- per hour, a fraction of the borrowed quantity
    quantity    REAL NOT NULL,   -- base units borrowed over the hour
    price       REAL NOT NULL,
    amount_usd  REAL NOT NULL,   -- negative: paid
    UNIQUE (leg_id, ts)
);

CREATE TABLE IF NOT EXISTS borrow_rates (
    asset   TEXT NOT NULL,
    ts      REAL NOT NULL,
    rate    REAL NOT NULL,   -- per hour, a fraction of the borrowed value
    source  TEXT NOT NULL,   -- the venue it was read from, or 'modelled:<scenario>' (paper)
    PRIMARY KEY (asset, ts)
) WITHOUT ROWID;

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

class DatabaseBusy(Exception):
    """Another process holds the book's database longer than a call may wait. Nothing was written."""


class SchemaTooNew(Exception):
    """The database was written by a newer basis-mcp than this one."""


BUSY_QUICK_MS = 3_000  # a call's first write: fail fast, with nothing done, if another process holds the file
BUSY_PATIENT_MS = 120_000  # once orders are in flight, a write waits (an unrecorded fill is worse than a slow one)


def _is_busy(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def connect(path: Path | str, busy_ms: int = BUSY_QUICK_MS) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Database:
    """One SQLite connection with a re-entrant transaction helper. Busy handling: by default a write waits at
    most `BUSY_QUICK_MS` for another process (an operator command, a backup) and then raises `DatabaseBusy` with
    nothing written. Inside `patient()` (orders in flight) it waits `BUSY_PATIENT_MS`."""

    def __init__(self, path: Path | str, schema: str | None, busy_ms: int = BUSY_QUICK_MS):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._real_path = str(self.path.resolve())  # the file's identity for read caches (a link is the same book)
        self.busy_ms = busy_ms
        self.conn = connect(self.path, busy_ms)
        self._lock = threading.RLock()
        self._depth = 0
        self._patient = 0
        self._after_commit: list[Callable[[], None]] = []
        self.cache: ReadCache | None = None  # on while a replay fast-forwards or a read tool runs (`read_cache`)
        self._relaxed = 0  # open `relaxed` blocks
        if schema:
            self.conn.executescript(schema)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def read_cache(self, call: bool = False) -> Iterator[None]:
        """Reads inside are answered from a cache dropped on every write that may change them (`basis_mcp.readcache`);
        ``call``: one only this task sees (a read tool's call, `readcache.for_call`), unless a replay's is on."""
        if call:
            with for_call(self.conn, self._real_path):
                yield
            return
        with self._lock:
            owner = self.cache is None  # (nested: the outermost one owns it)
            if owner:
                self.cache = ReadCache(self.conn, self._real_path)
        try:
            yield
        finally:
            with self._lock:
                if owner and self.cache is not None:
                    self.cache.close()
                    self.cache = None

    def revalidate(self) -> None:
        """With the read cache on: drop it if another process committed since the last look."""
        with self._lock:
            if self.cache is not None:
                self.cache.revalidate()

    @contextmanager
    def relaxed(self) -> Iterator[None]:
        """Commits inside do not wait for the disk (``synchronous=NORMAL`` in WAL mode: they survive the process
        dying, and reach the disk with the next durable commit); nests. Inside a transaction: no change."""
        with self._lock:
            mine = not self._depth
            if mine:
                self._relaxed += 1
                if self._relaxed == 1:
                    self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            if mine:
                with self._lock:
                    self._relaxed -= 1
                    if self._relaxed == 0:
                        self.conn.execute("PRAGMA synchronous=FULL")

    @contextmanager  # ----------------------------------------------- transactions
    def patient(self) -> Iterator[None]:
        """Writes inside wait up to `BUSY_PATIENT_MS` for a lock held by another process."""
        with self._lock:
            self._patient += 1
            if self._patient == 1:
                self.conn.execute(f"PRAGMA busy_timeout={BUSY_PATIENT_MS}")
        try:
            yield
        finally:
            with self._lock:
                self._patient -= 1
                if self._patient == 0:
                    self.conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")

    @contextmanager
    def brief(self, busy_ms: int = 200) -> Iterator[None]:
        """Writes inside wait at most ``busy_ms`` for a lock held by another process (for rows that can queue)."""
        with self._lock:
            if self._patient:
                yield
                return
            self.conn.execute(f"PRAGMA busy_timeout={busy_ms}")
            try:
                yield
            finally:
                self.conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")

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
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _is_busy(e) and not self._patient:
                    raise DatabaseBusy(f"the book's database {self.path} is locked by another process") from None
                raise
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self._after_commit.clear()
                self.conn.execute("ROLLBACK")
                if self.cache is not None:
                    self.cache.rolled_back()
                raise
            else:
                self._depth = 0
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    self._after_commit.clear()
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    if self.cache is not None:
                        self.cache.rolled_back()
                    if _is_busy(e) and not self._patient:
                        raise DatabaseBusy(f"the book's database {self.path} is locked by another process") from None
                    raise
                if self.cache is not None:
                    self.cache.committed()
                hooks, self._after_commit = self._after_commit, []
                for hook in hooks:
                    try:
                        hook()
                    except Exception:  # the transaction is committed: a failing hook must not turn it into an error
                        log.exception("after-commit hook failed")

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the current transaction commits (dropped if it rolls back)."""
        self._after_commit.append(hook)

    def q(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            if (c := self.cache or call_cache(self.conn)) is None:
                return uncached(self.conn.execute(sql, params).fetchall())
            return list(self._cached(c, "q", sql, params))

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            if (c := self.cache or call_cache(self.conn)) is None:
                return uncached(self.conn.execute(sql, params).fetchone())
            return self._cached(c, "one", sql, params)

    def _cached(self, c: ReadCache, kind: str, sql: str, params: tuple | dict) -> Any:
        got = c.get(kind, sql, params)
        if got is MISS:
            cur = self.conn.execute(sql, params)
            got = cur.fetchall() if kind == "q" else cur.fetchone()
            c.put(kind, sql, params, got)
        return got

    def x(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                cur = self.conn.execute(sql, params)
            except sqlite3.OperationalError as e:
                if _is_busy(e) and not self._depth and not self._patient:
                    raise DatabaseBusy(f"the book's database {self.path} is locked by another process") from None
                raise
            if self.cache is not None:
                self.cache.wrote(sql, cur.rowcount)
            return cur

    def xmany(self, sql: str, rows: list[tuple]) -> sqlite3.Cursor:
        """One statement over many parameter rows (inside the caller's transaction)."""
        with self._lock:
            cur = self.conn.executemany(sql, rows)
            if self.cache is not None:
                self.cache.wrote(sql, cur.rowcount)
            return cur


@dataclass(frozen=True)
class Migration:
    """One schema step. ``rebuilds``: it copies tables into new shapes, so it runs with foreign
    keys off (SQLite ignores that pragma inside a transaction) and checks them before committing."""

    version: int
    name: str
    apply: Callable[[Store], None]
    rebuilds: bool = False


def _v2_keyed_audit(store: Store) -> None:
    """v1 → v2: the audit chain is keyed from here on, anchored on the v1 head."""
    anchored = audit.anchor_legacy_chain(store.conn, store.audit_key)
    if anchored is not None:
        store._checkpoint(*anchored)


def _v3_playbooks(store: Store) -> None:
    """v2 → v3: every position states its playbook; positions opened before are the convergence trade."""
    cols = {r["name"] for r in store.q("PRAGMA table_info(positions)")}
    if "playbook" not in cols:
        store.x("ALTER TABLE positions ADD COLUMN playbook TEXT NOT NULL DEFAULT 'convergence'"
                " CHECK (playbook IN ('convergence','carry'))")


def _v4_scheduled_fills(store: Store) -> None:
    """v3 → v4: orders may rest until a market time (replay with a fill delay)."""
    cols = {r["name"] for r in store.q("PRAGMA table_info(positions)")}
    if "execute_at" not in cols:
        store.x("ALTER TABLE positions ADD COLUMN execute_at REAL")


def _v5_legs(store: Store) -> None:
    """v4 → v5: positions are made of legs. Every existing position (cash-and-carry) gets its
    spot and perp legs, carrying the entry and exit prices and the perp's margin that used to
    be columns of the position; orders, fills and funding payments point at their leg; the
    market of an order may be any instrument kind; the playbook is checked by the code (a
    strategy may declare its own)."""
    c = store.conn
    c.execute(_table_ddl("legs"))
    c.execute("""INSERT INTO legs(position_id, idx, role, market, venue, symbol, side, ratio, quantity, entry_price, exit_price,
                                  margin_usd)
                 SELECT id, 0, 'spot', 'spot', venue, symbol, 'long', 1.0, quantity, entry_spot, exit_spot, NULL FROM positions""")
    c.execute("""INSERT INTO legs(position_id, idx, role, market, venue, symbol, side, ratio, quantity, entry_price, exit_price,
                                  margin_usd)
                 SELECT id, 1, 'perp', 'perp', venue, symbol, 'short', 1.0, quantity, entry_perp, exit_perp, margin_usd
                 FROM positions""")
    leg_of = "(SELECT l.id FROM legs l WHERE l.position_id = t.position_id AND l.market = t.market)"
    perp_leg = "(SELECT l.id FROM legs l WHERE l.position_id = t.position_id AND l.market = 'perp')"
    position_cols = [r["name"] for r in store.q("PRAGMA table_info(positions)")
                     if r["name"] not in ("entry_spot", "entry_perp", "exit_spot", "exit_perp")]
    copies = {
        "positions": (position_cols, ", ".join(position_cols)),
        "orders": (["id", "client_order_id", "position_id", "leg_id", "purpose", "market", "side", "quantity", "reduce_only",
                    "status", "venue_order_id", "filled_qty", "avg_price", "reason", "created_at", "updated_at", "created_wall"],
                   "id, client_order_id, position_id, " + leg_of + ", purpose, market, side, quantity, reduce_only, status,"
                   " venue_order_id, filled_qty, avg_price, reason, created_at, updated_at, created_wall"),
        "fills": (["id", "order_id", "position_id", "leg_id", "market", "side", "quantity", "price", "mid_price", "fee_usd", "ts"],
                  "id, order_id, position_id, " + leg_of + ", market, side, quantity, price, mid_price, fee_usd, ts"),
        "funding_payments": (["id", "position_id", "leg_id", "symbol", "ts", "rate", "mark_price", "quantity", "amount_usd"],
                             "id, position_id, " + perp_leg + ", symbol, ts, rate, mark_price, quantity, amount_usd"),
    }
    for table, (cols, select) in copies.items():
        c.execute(_table_ddl(table, f"{table}_v5"))
        c.execute(f"INSERT INTO {table}_v5({', '.join(cols)}) SELECT {select} FROM {table} t")
        c.execute(f"DROP TABLE {table}")
        c.execute(f"ALTER TABLE {table}_v5 RENAME TO {table}")
    for stmt in _statements(SCHEMA):
        if stmt.startswith("CREATE INDEX") or stmt.startswith("CREATE TABLE IF NOT EXISTS borrow_payments"):
            c.execute(stmt)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "audit chain keyed with HMAC-SHA256 and anchored in a journal outside the database", _v2_keyed_audit),
    Migration(3, "positions state their playbook (convergence or carry)", _v3_playbooks),
    Migration(4, "positions may rest until a fill time (replay fill delay)", _v4_scheduled_fills),
    Migration(5, "positions are made of legs: orders, fills, funding and margin belong to legs", _v5_legs, rebuilds=True),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class Store(Database):
    """The desk's own state (see module docstring).

    Opening a store creates a new book at `SCHEMA_VERSION`, or upgrades an older one by
    running each pending migration in its own transaction, recorded in ``schema_migrations``.
    A book newer than this code is refused (`SchemaTooNew`) before anything is written.
    """

    def __init__(self, path: Path | str, audit_paths: audit.AuditPaths | None = None):
        _refuse_newer(Path(path))  # before anything touches the file (even switching it to WAL)
        super().__init__(path, None)
        try:
            self._open_audit(audit_paths)
        except BaseException:
            self.conn.close()
            raise

    def _open_audit(self, audit_paths: audit.AuditPaths | None) -> None:
        self.audit_paths = audit_paths or audit.AuditPaths.for_db(self.path)
        self.journal_failed: str | None = None
        version = self.schema_version()
        has_audit = self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'") is not None
        rows = int(self.one("SELECT COUNT(*) AS n FROM audit")["n"]) if has_audit else 0
        if version == 1 and rows and self.audit_paths.journal.exists():
            raise audit.AuditKeyError(
                f"{self.path} says it is a schema-v1 book, but an audit journal exists at {self.audit_paths.journal}: a v1 "
                "book never had one. Its audit rows were rewritten, or the journal belongs to another book; refusing to "
                "upgrade it (nothing was changed). Run `basis-mcp audit verify` with the book's key.")
        # a key is created for a new book (or a v1 book's upgrade), never for a book whose rows another key signed
        may_create = version is None or version <= 1 or rows == 0
        if not may_create and not self.audit_paths.key.exists():
            raise audit.AuditKeyError(
                f"no audit key at {self.audit_paths.key}, and this book has {rows} audit rows signed with one: pass "
                "--audit-key with the book's key file (a new key would leave its whole history unverifiable)")
        self.audit_key = audit.load_key(self.audit_paths.key, create=may_create)
        self.journal = audit.Journal(self.audit_paths.journal, self.audit_key)
        self._migrate()
        with self.tx():
            if self.get_meta("desk_id") is None:  # scopes client order ids to this database (see Desk.client_order_id)
                self.set_meta("desk_id", secrets.token_hex(4))

    # ------------------------------------------------------------------ schema versions

    def schema_version(self) -> int | None:
        has_meta = self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
        if has_meta is None:
            return None
        v = self.get_meta("schema_version")
        return None if v is None else int(v)

    def _migrate(self) -> None:
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} is a schema-v{version} book, written by a newer basis-mcp; this version "
                               f"knows up to v{SCHEMA_VERSION}: upgrade basis-mcp (nothing was changed)")
        if version is None:  # a new book: the current schema at once
            with self.tx():
                for stmt in _statements(SCHEMA):
                    self.conn.execute(stmt)
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.x("INSERT OR REPLACE INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                       (SCHEMA_VERSION, f"new book at schema v{SCHEMA_VERSION}", time.time()))
            return
        with self.tx():  # the ledger of migrations itself (a v1 book predates it)
            self.conn.execute(_table_ddl("schema_migrations"))
        for m in MIGRATIONS:
            if m.version <= version:
                continue
            if m.rebuilds:
                self.conn.execute("PRAGMA foreign_keys=OFF")
            try:
                with self.tx():  # one transaction per migration: it lands whole or not at all
                    m.apply(self)
                    if m.rebuilds:
                        broken = self.q("PRAGMA foreign_key_check")
                        if broken:
                            raise RuntimeError(f"migration to v{m.version} left {len(broken)} dangling references "
                                               f"(first: {dict(broken[0])}); nothing was changed")
                    self.set_meta("schema_version", str(m.version))
                    self.x("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                           (m.version, m.name, time.time()))
            finally:
                if m.rebuilds:
                    self.conn.execute("PRAGMA foreign_keys=ON")
        with self.tx():  # anything a later version added that no migration had to shape (IF NOT EXISTS)
            for stmt in _statements(SCHEMA):
                self.conn.execute(stmt)

    def migrations(self) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM schema_migrations ORDER BY version")

    def close(self) -> None:
        try:
            self.journal.close()
        finally:
            super().close()

    def get_meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        self.x("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------------ audit

    def _checkpoint(self, n: int, head: str) -> None:
        """After the commit, write the new head to the journal (only the last head of a transaction)."""
        pending = getattr(self, "_pending_head", None)
        self._pending_head = (n, head)
        if pending is None:
            def flush() -> None:
                n_, h_ = self._pending_head
                self._pending_head = None
                try:
                    self.journal.append(n_, h_)
                    self.journal_failed = None
                except audit.JournalError as e:  # the row is committed; the missing checkpoint is reported, not raised
                    self.journal_failed = str(e)
            self.after_commit(flush)

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
        args_size: int | None = None,
        durable: bool = True,
    ) -> int:
        """Append one keyed audit row (credentials masked, secrets scrubbed, size bounded: see
        `redact.bound_args`; ``args_size`` is the size of the arguments as received); its
        checkpoint goes to the journal when the transaction commits.

        ``durable=False`` (the rows of a read-only tool call) commits without waiting for the disk
        (``synchronous=NORMAL`` in WAL mode): the row survives the process dying at once, and reaches
        the disk with the next durable commit or checkpoint; only a power cut or OS crash before then
        can lose it. Every other write (orders, fills, funding, state) keeps ``synchronous=FULL``."""
        args_json = json.dumps(bound_args(args, args_size), sort_keys=True, default=str)
        detail = None if detail is None else scrub(detail, 4000)
        with self._lock, (nullcontext() if durable else self.relaxed()), self.tx():
            new_id, h = audit.append_row(self.conn, self.audit_key, ts=ts, market_ts=market_ts, kind=kind, name=name[:100],
                                         args_json=args_json, outcome=outcome, detail=detail, duration_ms=duration_ms)
            self._checkpoint(new_id, h)
            return new_id

    def audit_problem(self) -> str | None:
        """O(1) start-up check that the chain still reaches the journal's newest checkpoint."""
        return audit.quick_check(self.conn, self.audit_key, self.audit_paths.journal)


def _refuse_newer(path: Path) -> None:
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return  # not a book yet (or unreadable): the normal open reports it
    if row is not None and str(row[0]).isdigit() and int(row[0]) > SCHEMA_VERSION:
        raise SchemaTooNew(f"{path} is a schema-v{row[0]} book, written by a newer basis-mcp; this version knows up to "
                           f"v{SCHEMA_VERSION}: upgrade basis-mcp (nothing was changed)")


def _statements(script: str) -> list[str]:
    out = []
    for stmt in script.split(";"):
        lines = [ln.split("--", 1)[0].rstrip() for ln in stmt.splitlines()]
        text = "\n".join(ln for ln in lines if ln.strip())
        if text:
            out.append(text)
    return out


def _table_ddl(name: str, as_name: str | None = None) -> str:
    """The current schema's CREATE TABLE statement for ``name`` (optionally creating it as ``as_name``)."""
    head = f"CREATE TABLE IF NOT EXISTS {name} ("
    for stmt in _statements(SCHEMA):
        if stmt.startswith(head):
            return stmt if as_name is None else stmt.replace(head, f"CREATE TABLE {as_name} (", 1)
    raise KeyError(name)
