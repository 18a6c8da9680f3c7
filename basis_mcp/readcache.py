"""A read cache for one SQLite connection, on while a replay fast-forwards (`Database.read_cache`).

A replay hour with a position open asks the same questions of the book every hour (the open
positions, their legs and fills, the venue's balances and isolated positions, the meta keys)
and gets the same answers until something is written. This cache keeps each SELECT's result,
keyed by its text and parameters, and drops it the moment a table it names may have changed:

- a write through `Database.x`/`xmany` drops, on its own connection, every result that names the
  table written (at once: the connection reads its own uncommitted rows), and on the other
  connections of the same file (the paper venue's, the desk's) when it commits;
- a row changed any other way (a trigger, a foreign-key action, an audit row written on the
  connection directly) shows in ``total_changes`` without being accounted for: everything goes;
- a rollback drops everything the connection cached;
- another process's commit shows in ``PRAGMA data_version``, read at the replay's look-outs (every
  few milliseconds of wall time, `revalidate`): everything goes.

A query's tables are every known table name appearing as a word in its text (a column or alias
of the same name only makes it drop more often). Queries naming no known table, or SQLite's own
tables, and anything but SELECT are never cached.

`Reads` records the tables some code read and their versions: code whose every input is a cached
read, and which wrote nothing, would do the same again while none of those tables is written
(`Reconcile.check_ledger` is skipped so).
"""

from __future__ import annotations

import re
import sqlite3
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

MISS = object()
MAX_ENTRIES = 4096  # time-keyed queries never hit twice: past this the cache starts over

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TARGET = re.compile(r"\s*(?:INSERT(?:\s+OR\s+[A-Za-z]+)?\s+INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+[A-Za-z]+)?|DELETE\s+FROM)"
                     r"\s+[\"`\[]?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_INERT = ("PRAGMA", "SELECT", "BEGIN", "SAVEPOINT", "RELEASE")  # through x() without changing a row: nothing to drop

_PEERS: dict[str, weakref.WeakSet[ReadCache]] = {}  # the active caches per database file
_RECORDING: list[Reads] = []  # `Reads.recording` blocks open, innermost last
_WRITES = [0]  # changes seen by any cache in this process (a table dropped, a cache started over)
_SCHEMAS: dict[str, tuple[int, set[str], set[str], dict[str, tuple[str, ...] | None]]] = {}  # per file: `_load_schema`


class Reads:
    """What a piece of code read through the caches: each (cache, table) it named and that table's version
    then. `quiet` once the code ran reading only through active caches and writing nothing anywhere;
    `unchanged` while no table it read has been written since: run again, it would read the same rows."""

    def __init__(self) -> None:
        self.seen: dict[tuple[ReadCache, str], tuple[int, int]] = {}
        self.opaque = False  # something read past the caches (none on, a query never cached)
        self.writes = _WRITES[0]

    @classmethod
    @contextmanager
    def recording(cls) -> Iterator[Reads]:
        reads = cls()
        _RECORDING.append(reads)
        try:
            yield reads
        finally:
            _RECORDING.remove(reads)

    @property
    def quiet(self) -> bool:
        return not self.opaque and self.writes == _WRITES[0] and self.unchanged()

    def unchanged(self) -> bool:
        return all(c.active and c.table_version(t) == v for (c, t), v in self.seen.items())


_CALL: ContextVar[tuple[sqlite3.Connection, ReadCache] | None] = ContextVar("basis_mcp_call_cache", default=None)


@contextmanager
def for_call(conn: sqlite3.Connection, path: str) -> Iterator[None]:
    """A cache for one read tool call, seen only by the task running it (and the threads it hands work to):
    the watchdog's loop and other calls keep reading the database itself. Any write on the connection, by any
    task, drops it (``total_changes``); it starts empty and ends with the call, so the call reads one moment's
    book plus its own writes."""
    cache = ReadCache(conn, path)
    token = _CALL.set((conn, cache))
    try:
        yield
    finally:
        _CALL.reset(token)
        cache.close()


def call_cache(conn: sqlite3.Connection) -> ReadCache | None:
    """The current task's `for_call` cache on ``conn``, if any."""
    got = _CALL.get()
    return got[1] if got is not None and got[0] is conn else None


def uncached(result: Any) -> Any:
    """A read that went past the caches (returned as is): any code recording now cannot be judged by its reads."""
    for r in _RECORDING:
        r.opaque = True
    return result


class ReadCache:
    def __init__(self, conn: sqlite3.Connection, path: str):
        self.conn = conn
        self.path = path
        self.rows: dict[tuple, Any] = {}
        self.by_table: dict[str, set[tuple]] = {}
        self.pending: set[str] = set()  # tables written in the connection's open transaction
        self.unknown = False  # rows changed in the open transaction that no statement accounts for
        self._load_schema(reuse=True)
        self.versions: dict[str, int] = {}  # per table: bumped whenever its results are dropped
        self.epoch = 0  # bumped whenever everything is dropped
        self.active = True
        self.changes = conn.total_changes
        self.data_version = self._data_version()
        _PEERS.setdefault(path, weakref.WeakSet()).add(self)

    def close(self) -> None:
        peers = _PEERS.get(self.path)
        if peers is not None:
            peers.discard(self)
        self.clear()
        self.active = False

    def table_version(self, table: str) -> tuple[int, int]:
        return self.epoch, self.versions.get(table, 0)

    # ------------------------------------------------------------------ reads

    def get(self, kind: str, sql: str, params: Any) -> Any:
        if self.conn.total_changes != self.changes:
            self._unaccounted()
        if _RECORDING:
            self._record(sql)
        try:
            return self.rows.get((kind, sql, params if type(params) is tuple else _key(params)), MISS)
        except TypeError:  # unhashable parameters: never cached
            return MISS

    def _record(self, sql: str) -> None:
        deps = self.deps.get(sql, MISS)
        if deps is MISS:
            deps = self.deps[sql] = self._deps_of(sql)
        for r in _RECORDING:
            if deps is None:
                r.opaque = True
            else:
                for t in deps:
                    r.seen.setdefault((self, t), self.table_version(t))

    def put(self, kind: str, sql: str, params: Any, value: Any) -> None:
        deps = self.deps.get(sql, MISS)
        if deps is MISS:
            deps = self.deps[sql] = self._deps_of(sql)
        if deps is None or self.conn.total_changes != self.changes:
            return
        try:
            key = (kind, sql, _key(params))
            hash(key)
        except TypeError:
            return
        if len(self.rows) >= MAX_ENTRIES:
            self.clear()
        self.rows[key] = value
        for t in deps:
            self.by_table.setdefault(t, set()).add(key)

    def _deps_of(self, sql: str) -> tuple[str, ...] | None:
        head = sql.lstrip()[:6].upper()
        if head != "SELECT" and not head.startswith("WITH"):
            return None
        words = {w.lower() for w in _WORD.findall(sql)}
        if any(w.startswith("sqlite_") for w in words) or words & self.views:
            return None
        if head.startswith("WITH") and words & {"insert", "update", "delete", "replace"}:
            return None
        deps = tuple(sorted(words & self.tables))
        return deps or None

    # ------------------------------------------------------------------ writes

    def wrote(self, sql: str, rowcount: int) -> None:
        """After a statement ran through `Database.x` / `xmany` on this connection."""
        delta = self.conn.total_changes - self.changes
        self.changes = self.conn.total_changes
        m = _TARGET.match(sql)
        if m is None:
            if delta == 0 and sql.lstrip()[:9].upper().startswith(_INERT):
                return
            self._load_schema()  # DDL, or a statement this parser does not know: start over
            self._dropped_all()
            return
        if delta == 0:
            return  # nothing changed (INSERT OR IGNORE of a known row, an UPDATE matching nothing)
        table = m.group(1).lower()
        if delta != rowcount or table not in self.tables:  # a trigger or cascade wrote elsewhere too
            self._load_schema()
            self._dropped_all()
            return
        self.invalidate((table,))
        if self.conn.in_transaction:
            self.pending.add(table)
        else:
            self._tell_peers((table,), everything=False)

    def committed(self) -> None:
        if self.conn.total_changes != self.changes:
            self.unknown = True
            self.changes = self.conn.total_changes
            self.clear()
        self._tell_peers(tuple(self.pending), everything=self.unknown)
        self.pending.clear()
        self.unknown = False

    def rolled_back(self) -> None:
        self.clear()
        self.pending.clear()
        self.unknown = False
        self.changes = self.conn.total_changes

    def revalidate(self) -> None:
        """At a fast replay's look-outs: another process's commit since the last look drops everything."""
        v = self._data_version()
        if v != self.data_version:
            self.data_version = v
            self.clear()

    # ------------------------------------------------------------------ dropping

    def invalidate(self, tables: tuple[str, ...]) -> None:
        for t in tables:
            self.versions[t] = self.versions.get(t, 0) + 1
            for key in self.by_table.pop(t, ()):
                self.rows.pop(key, None)
        _WRITES[0] += 1

    def clear(self) -> None:
        self.rows.clear()
        self.by_table.clear()
        self.epoch += 1
        _WRITES[0] += 1

    def _unaccounted(self) -> None:
        self.changes = self.conn.total_changes
        self._dropped_all()

    def _dropped_all(self) -> None:
        self.clear()
        if self.conn.in_transaction:
            self.unknown = True
        else:
            self._tell_peers((), everything=True)

    def _tell_peers(self, tables: tuple[str, ...], everything: bool) -> None:
        if not tables and not everything:
            return
        for peer in list(_PEERS.get(self.path, ())):
            if peer is not self:
                if everything:
                    peer.clear()
                else:
                    peer.invalidate(tables)

    # ------------------------------------------------------------------ the file

    def _load_schema(self, reuse: bool = False) -> None:
        """The file's tables and views, and each query's tables (``deps``). A read tool opens a cache per
        call: with ``reuse``, what an earlier cache of the same file learned is taken over while SQLite's
        schema version says nothing was created, altered or dropped since."""
        version = int(self.conn.execute("PRAGMA schema_version").fetchone()[0])
        memo = _SCHEMAS.get(self.path)
        if reuse and memo is not None and memo[0] == version:
            _, self.tables, self.views, self.deps = memo
            return
        self.tables, self.views = self._tables()
        self.deps: dict[str, tuple[str, ...] | None] = {}
        _SCHEMAS[self.path] = (version, self.tables, self.views, self.deps)

    def _tables(self) -> tuple[set[str], set[str]]:
        """(tables, views) of the file: a query naming a view is never cached (its tables are not in its text)."""
        rows = self.conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table','view')").fetchall()
        return {r[1].lower() for r in rows if r[0] == "table"}, {r[1].lower() for r in rows if r[0] == "view"}

    def _data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])


def _key(params: Any) -> Any:
    if isinstance(params, tuple):
        return params
    if isinstance(params, dict):
        return tuple(sorted(params.items()))
    return tuple(params)
