"""What the dashboard shows, read from the book's SQLite file over a read-only connection.

The money comes from the desk's own code, never re-derived here: `Book` (positions, legs, P&L
and equity, the `basis_mcp.ledger` sums `portfolio_status` reports) over a read-only store, and
the margin of leveraged legs from `basis_mcp.margin` on the paper venue's isolated books (the
formulas `check_delta` applies), unless the caller brings the desk's own readings (the
dashboard inside a running server does). Prices come from the caller too: the running desk's
market data in the server, the book's last recorded basis sample standalone.

One board is read in one read transaction, so every figure on it is of the same moment.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basis_mcp import margin as mm
from basis_mcp.clock import iso
from basis_mcp.config import Settings
from basis_mcp.desk.book import OPEN_STATES, Book
from basis_mcp.guardrails import drawdown
from basis_mcp.ledger import held_by_leg, pnl
from basis_mcp.strategies.base import SPOT_LIKE

RECENT = 20  # fills, alerts and watchdog actions shown
AUDIT_TAIL = 15
CURVE_POINTS = 300
CHART_SYMBOLS = 4
PAPER_BOOKS = {"perp": "perp", "margin_spot": "margin", "future": "future"}  # the paper venue's isolated books (venue.paper)


def server_holds(db: Path | str) -> bool:
    """Does a server hold the book's lease (`basis_mcp.lease`: an ``flock`` on the database file on Linux)? Read
    from ``/proc/locks``, without taking any lock (a probe lock could make a starting server refuse the book).
    True when it cannot be told (elsewhere than Linux): the safe answer."""
    try:
        st = Path(db).resolve().stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return True
    me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(len(f) > 5 and f[1] == "FLOCK" and f[5] == me for f in (line.split() for line in text.splitlines()))


def ro_uri(db: Path | str) -> str:
    """``mode=ro``; plus ``immutable=1`` when no server holds the book and no WAL is pending (immutable ignores the
    WAL), so reading a closed book creates no -wal/-shm beside it and works in a directory this user cannot write.
    Decided per connection (one per refresh)."""
    real = Path(db).resolve()
    uri = real.as_uri() + "?mode=ro"
    wal = real.with_name(real.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # a writer (an operator command, a crashed server) left a WAL
    return uri if pending or server_holds(real) else uri + "&immutable=1"


def connect_ro(db: Path | str) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``: SQLite refuses any write on it; see `ro_uri`), autocommit."""
    conn = sqlite3.connect(ro_uri(db), uri=True, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def has_table(ro: ReadOnlyStore, name: str) -> bool:
    return ro.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None


class ReadOnlyStore:
    """What `Book` reads of a `Store` (``q``, ``one``, ``get_meta``), over a read-only connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def q(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def get_meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else row["value"]


def price_kind(market: str) -> str:
    return "spot" if market in SPOT_LIKE else market


class Prices:
    """Prices as `Book` asks for them (``mark`` and ``mid`` of a market and symbol), from a table of
    (spot|perp|future, symbol) → (mark, mid) taken once per board. An instrument without a price raises
    KeyError, and `Book` values that leg at its last fill."""

    def __init__(self, table: Mapping[tuple[str, str], tuple[float, float]], source: str):
        self.table = dict(table)
        self.source = source

    def mark(self, market: str, symbol: str) -> float:
        return self.table[(price_kind(market), symbol)][0]

    def mid(self, market: str, symbol: str) -> float:
        return self.table[(price_kind(market), symbol)][1]


def sampled_prices(ro: ReadOnlyStore, now: float) -> Prices:
    """A book without its server: each symbol's last basis sample at or before ``now`` (spot, and the perp's close
    for the perp's mark); a dated future has none (valued at its last fill)."""
    table: dict[tuple[str, str], tuple[float, float]] = {}
    for r in ro.q("SELECT DISTINCT symbol FROM legs"):
        s = ro.one("SELECT spot, perp FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT 1",
                   (r["symbol"], now))
        if s is not None:
            table[("spot", r["symbol"])] = (s["spot"], s["spot"])
            table[("perp", r["symbol"])] = (s["perp"], s["perp"])
    return Prices(table, "the book's last basis sample (the perp's close stands in for its mark)")


@dataclass(frozen=True)
class LegMargin:
    """A leveraged leg's margin: ratio in percent (liquidation at 100), liquidation price, distance in % of mark."""

    margin_ratio_pct: float | None
    liquidation_price: float | None
    distance_pct: float | None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def paper_margin(ro: ReadOnlyStore, tables: set[str], settings: Settings, market: str, venue: str, symbol: str,
                 mark: float) -> LegMargin | None:
    """From the paper venue's isolated book of the leg (``paper_perp``, or ``paper_<venue>_perp`` for a second
    venue), as `Risk.leg_margin` reads it from the venue; None for a book without one (a live venue's)."""
    kind = PAPER_BOOKS.get(market)
    if kind is None:
        return None
    name = venue.partition(":")[2]
    table = next((t for t in (f"paper_{name}_{kind}", f"paper_{kind}") if t in tables), None)
    if table is None:
        return None
    row = ro.one(f"SELECT quantity, entry_price, isolated_wallet FROM {table} WHERE symbol = ?", (symbol,))
    if row is None or not row["quantity"]:
        return LegMargin(None, None, None)
    brackets = settings.spec(symbol).brackets
    q, entry, wallet = row["quantity"], row["entry_price"], row["isolated_wallet"]
    lp = _finite(mm.liquidation_price(wallet, q, entry, brackets))
    ratio = _finite(mm.margin_ratio(wallet, q, entry, mark, brackets))
    if lp is not None and lp <= 0:
        lp = None
    dist = None if lp is None or mark <= 0 else ((lp - mark) if q < 0 else (mark - lp)) / mark * 100.0
    return LegMargin(None if ratio is None else ratio * 100.0, lp, dist)


def _row(r: sqlite3.Row | None) -> dict[str, Any]:
    return {} if r is None else dict(r)


def _clip(text: Any, n: int = 240) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


class Reader:
    """Reads boards of one book. Keeps what is cheap to keep between refreshes: the watchdog's actions (the
    audit rows are scanned once, then only the rows added since) and the equity curve (recomputed only when
    the book's fills, funding or clock moved)."""

    def __init__(self, db: Path | str, settings: Settings):
        self.db = Path(db)
        self.settings = settings
        self._lock = threading.Lock()
        self._watchdog: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._audit_cursor = 0
        self._curve_key: tuple | None = None
        self._curve: list[tuple[float, float]] = []

    def connect(self) -> ReadOnlyStore:
        return ReadOnlyStore(connect_ro(self.db))

    # ------------------------------------------------------------------ what changed

    @staticmethod
    def version(ro: ReadOnlyStore) -> tuple:
        """Changes whenever anything the board shows can have changed (with the clock for a live book)."""
        audit = "(SELECT MAX(id) FROM audit)" if has_table(ro, "audit") else "NULL"
        r = ro.one(f"SELECT {audit} AS a, (SELECT MAX(id) FROM alerts) AS al,"
                   " (SELECT MAX(id) FROM fills) AS f, (SELECT MAX(id) FROM funding_payments) AS fp,"
                   " (SELECT MAX(id) FROM borrow_payments) AS bp,"
                   " (SELECT group_concat(id || status) FROM positions WHERE status IN ('opening','open','closing')) AS p,"
                   " (SELECT group_concat(key || '=' || value) FROM meta WHERE key IN"
                   "  ('replay_time','trading_state','trading_state_reason','capital_usd')) AS m")
        return tuple(r) if r is not None else ()

    # ------------------------------------------------------------------ the board

    def board(self, ro: ReadOnlyStore, prices: Prices, now: float,
              margins: Mapping[tuple[int, int], LegMargin | None] | None = None) -> dict[str, Any]:
        """Everything the page shows, in one read transaction. ``margins``: the desk's readings per (position id,
        leg index); without them the paper venue's isolated books are read."""
        with self._lock:
            ro.conn.execute("BEGIN")
            try:
                return self._board(ro, prices, now, margins)
            finally:
                ro.conn.execute("COMMIT")

    def _board(self, ro: ReadOnlyStore, prices: Prices, now: float,
               margins: Mapping[tuple[int, int], LegMargin | None] | None) -> dict[str, Any]:
        meta = {r["key"]: r["value"] for r in ro.q("SELECT key, value FROM meta")}
        tables = {r["name"] for r in ro.q("SELECT name FROM sqlite_master WHERE type = 'table'")}
        book = Book(self.settings, ro, prices)  # type: ignore[arg-type]  # a read-only store and a price table
        cap = book.capital_usd
        realized, opens = book.book_pnl()
        equity = cap + realized + sum(p.total_usd for p in opens)  # = Book.equity_usd(), without reading it twice
        sums = _row(ro.one("SELECT (SELECT COALESCE(SUM(amount_usd), 0) FROM funding_payments) AS funding,"
                           " (SELECT COALESCE(SUM(fee_usd), 0) FROM fills) AS fees,"
                           " (SELECT COALESCE(SUM(amount_usd), 0) FROM borrow_payments) AS borrow,"
                           " (SELECT COUNT(*) FROM positions WHERE status IN ('closed','liquidated','failed')) AS closed"))
        positions = [self._position(ro, book, tables, prices, r, margins) for r in book.positions(OPEN_STATES)]
        state = meta.get("trading_state") or "ACTIVE"
        since = meta.get("trading_state_since")
        return {
            "book": {"database": self.db.name, "mode": meta.get("mode", "?"), "market_time": iso(now) or "",
                     "market_ts": now, "prices": prices.source},
            "state": {"state": state, "reason": meta.get("trading_state_reason") or "",
                      "since": iso(float(since)) if since else None},
            "money": {
                "capital_usd": cap, "equity_usd": equity, "pnl_since_start_usd": equity - cap,
                "realized_pnl_usd": realized, "unrealized_pnl_usd": sum(p.price_pnl_usd for p in opens),
                "funding_received_usd": float(sums.get("funding", 0.0)), "fees_paid_usd": float(sums.get("fees", 0.0)),
                "borrow_usd": float(sums.get("borrow", 0.0)), "drawdown_pct": drawdown(equity, cap) * 100.0,
                "closed_positions": int(sums.get("closed", 0)),
            },
            "positions": positions,
            "fills": self._fills(ro),
            "alerts": [{"id": r["id"], "market_time": iso(r["market_ts"]), "severity": r["severity"], "rule": r["rule"],
                        "message": _clip(r["message"], 500)}
                       for r in ro.q("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (RECENT,))],
            "watchdog": self._watchdog_actions(ro) if "audit" in tables else [],
            "audit_tail": [self._audit_row(r) for r in ro.q(
                "SELECT id, ts, market_ts, kind, name, args_json, outcome, detail FROM audit ORDER BY id DESC LIMIT ?",
                (AUDIT_TAIL,))] if "audit" in tables else [],  # a dropped audit table: the chain status says tampered
            "equity_curve": self._equity_curve(ro, cap, now, equity),
            "charts": self._chart_symbols(ro, now, [p["symbol"] for p in positions]),
        }

    def _position(self, ro: ReadOnlyStore, book: Book, tables: set[str], prices: Prices, row: sqlite3.Row,
                  margins: Mapping[tuple[int, int], LegMargin | None] | None) -> dict[str, Any]:
        out = book.position_out(row)
        fills = book.fills(row["id"])
        marks = book.marks(row["id"], fills=fills)
        mtm = book.position_pnl(row["id"], mark_to_market=True)
        legs = []
        worst: dict[str, Any] | None = None
        for i, (leg, rec) in enumerate(zip(out.legs, book.legs(row["id"]), strict=True)):
            mark = marks.get(rec.id)
            if margins is not None:
                m = margins.get((row["id"], i))
            else:
                m = paper_margin(ro, tables, self.settings, leg.market, leg.venue, leg.symbol, mark) if mark else None
            item = {"role": leg.role, "market": leg.market, "venue": leg.venue, "symbol": leg.symbol, "side": leg.side,
                    "quantity": leg.held_quantity, "entry_price": leg.entry_price, "mark": mark,
                    "margin_ratio_pct": m.margin_ratio_pct if m else None,
                    "liquidation_price": m.liquidation_price if m else None,
                    "distance_to_liquidation_pct": m.distance_pct if m else None,
                    "leveraged": leg.market in PAPER_BOOKS}
            legs.append(item)
            if item["margin_ratio_pct"] is not None and (worst is None or item["margin_ratio_pct"] < worst["margin_ratio_pct"]):
                worst = item
        return {
            "position_id": out.position_id, "symbol": out.symbol, "strategy": out.strategy, "playbook": out.playbook,
            "status": out.status, "opened_at": out.opened_at, "notional_usd": out.notional_usd, "leverage": out.leverage,
            "entry_basis_pct": out.entry_basis_pct, "funding_usd": out.pnl.funding_usd, "fees_usd": out.pnl.fees_usd,
            "borrow_usd": out.pnl.borrow_usd, "pnl_usd": mtm.total_usd,
            "margin_ratio_pct": worst["margin_ratio_pct"] if worst else None,
            "distance_to_liquidation_pct": worst["distance_to_liquidation_pct"] if worst else None,
            "legs": legs,
        }

    @staticmethod
    def _fills(ro: ReadOnlyStore) -> list[dict[str, Any]]:
        rows = ro.q("SELECT f.id, f.position_id, f.market, f.side, f.quantity, f.price, f.fee_usd, f.ts, l.symbol, l.role,"
                    " l.venue, o.purpose FROM fills f JOIN legs l ON l.id = f.leg_id JOIN orders o ON o.id = f.order_id"
                    " ORDER BY f.id DESC LIMIT ?", (RECENT,))
        return [{**dict(r), "time": iso(r["ts"])} for r in rows]

    @staticmethod
    def _audit_row(r: sqlite3.Row) -> dict[str, Any]:
        return {"id": r["id"], "time": iso(r["ts"]), "market_time": iso(r["market_ts"]), "kind": r["kind"],
                "name": r["name"], "outcome": r["outcome"], "detail": _clip(r["detail"]), "args": _clip(r["args_json"])}

    def _watchdog_actions(self, ro: ReadOnlyStore) -> list[dict[str, Any]]:
        """Newest first. The audit is append-only: only the rows added since the last board are scanned."""
        top = ro.one("SELECT COALESCE(MAX(id), 0) AS n FROM audit")["n"]
        if top < self._audit_cursor:  # rows vanished (the chain status says so): start over
            self._watchdog.clear()
            self._audit_cursor = 0
        for r in ro.q("SELECT id, ts, market_ts, kind, name, args_json, outcome, detail FROM audit"
                      " WHERE id > ? AND id <= ? AND kind = 'watchdog' ORDER BY id", (self._audit_cursor, top)):
            item = self._audit_row(r)
            try:
                item["data"] = json.loads(r["args_json"])
            except ValueError:
                item["data"] = {}
            self._watchdog.append(item)
        self._audit_cursor = top
        return list(reversed(self._watchdog))

    # ------------------------------------------------------------------ series

    def _equity_curve(self, ro: ReadOnlyStore, capital: float, now: float, equity_now: float) -> list[tuple[float, float]]:
        key = _row(ro.one("SELECT (SELECT MAX(id) FROM fills) AS f, (SELECT MAX(id) FROM funding_payments) AS fp,"
                          " (SELECT MAX(id) FROM borrow_payments) AS bp, (SELECT COUNT(*) FROM positions) AS p"))
        last = [ro.one("SELECT MAX(ts) AS t FROM basis_samples WHERE symbol = ? AND ts <= ?", (r["symbol"], now))["t"]
                for r in ro.q("SELECT DISTINCT symbol FROM legs")]
        ck = (tuple(key.values()), capital, tuple(last))  # the curve moves with the ledger and the samples, not the clock
        if ck != self._curve_key:
            self._curve = equity_curve(ro, capital, now)
            self._curve_key = ck
        return [*self._curve, (now, equity_now)]  # it ends at the equity the board states

    @staticmethod
    def _chart_symbols(ro: ReadOnlyStore, now: float, held: list[str]) -> list[dict[str, Any]]:
        """The symbols with a basis/funding chart: those held first, then the others the book samples; each with
        the time of its last sample (the chart's version: it is redrawn only when that moves)."""
        have = [r["symbol"] for r in ro.q("SELECT DISTINCT symbol FROM basis_samples ORDER BY symbol")]
        order = [s for s in dict.fromkeys(held) if s in have] + [s for s in have if s not in held]
        out = []
        for sym in order[:CHART_SYMBOLS]:
            r = ro.one("SELECT MAX(ts) AS t FROM basis_samples WHERE symbol = ? AND ts <= ?", (sym, now))
            if r is not None and r["t"] is not None:
                out.append({"symbol": sym, "version": int(r["t"])})
        return out


def equity_curve(ro: ReadOnlyStore, capital: float, now: float, points: int = CURVE_POINTS) -> list[tuple[float, float]]:
    """Capital + every position's P&L (`basis_mcp.ledger.pnl` of its fills, funding and borrow up to t, open
    quantity marked at the book's basis samples at t) at up to ``points`` times from the first fill to ``now``."""
    fills = [dict(r) for r in ro.q(
        "SELECT f.position_id, f.leg_id, f.market, f.side, f.quantity, f.price, f.mid_price, f.fee_usd, f.ts, l.symbol"
        " FROM fills f JOIN legs l ON l.id = f.leg_id WHERE f.ts <= ? ORDER BY f.ts, f.id", (now,))]
    if not fills:
        return []
    t0 = fills[0]["ts"]
    by_pos: dict[int, list[dict[str, Any]]] = {}
    for f in fills:
        by_pos.setdefault(f["position_id"], []).append(f)
    flows: dict[int, list[tuple[float, float]]] = {}
    for table in ("funding_payments", "borrow_payments"):
        for r in ro.q(f"SELECT position_id, ts, amount_usd FROM {table} WHERE ts <= ? ORDER BY ts", (now,)):
            flows.setdefault(r["position_id"], []).append((r["ts"], r["amount_usd"]))
    samples: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for sym in {f["symbol"] for f in fills}:
        rows = ro.q("SELECT ts, spot, perp FROM basis_samples WHERE symbol = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                    (sym, t0 - 3 * 3600, now))
        samples[sym] = ([r["ts"] for r in rows], [r["spot"] for r in rows], [r["perp"] for r in rows])
    grid_all = sorted({t for ts, _, _ in samples.values() for t in ts if t0 <= t <= now} | {t0})
    step = max(1, math.ceil(len(grid_all) / points))
    grid = sorted(set(grid_all[::step]) | {f["ts"] for f in fills[-points:]})
    # Each position is marked only at the points between its first fill and its last event (fill, funding or
    # borrow); after that a flat position contributes a constant (its P&L needs no mark), so a book of thousands
    # of closed round trips costs O(points + its events), not O(points x positions).
    n_grid = len(grid)
    per_point = [0.0] * n_grid
    from_here = [0.0] * (n_grid + 1)  # a flat position's final P&L, added from its first point after its last event
    for pid, fs in by_pos.items():
        fl = flows.get(pid, [])
        fts = [f["ts"] for f in fs]
        flow_ts = [t for t, _ in fl]
        last = max(fts[-1], flow_ts[-1] if flow_ts else fts[-1])
        held = held_by_leg(fs)
        scale = max((f["quantity"] for f in fs), default=0.0)
        flat = all(abs(q) <= 1e-9 * max(1.0, scale) for q in held.values())
        i0 = bisect_left(grid, fts[0])
        i1 = bisect_right(grid, last) if flat else n_grid
        for i in range(i0, i1):
            per_point[i] += _pnl_at(grid[i], fs, fts, fl, flow_ts, samples)
        if flat and i1 < n_grid:
            from_here[i1] += _pnl_at(grid[i1], fs, fts, fl, flow_ts, samples)
    out = []
    constant = 0.0
    for i, t in enumerate(grid):
        constant += from_here[i]
        out.append((t, capital + constant + per_point[i]))
    return out


def _pnl_at(t: float, fs: list[dict[str, Any]], fts: list[float], fl: list[tuple[float, float]], flow_ts: list[float],
            samples: dict[str, tuple[list[float], list[float], list[float]]]) -> float:
    """One position's P&L at ``t``: its fills and flows up to t, open quantity at the basis samples at t."""
    done = fs[: bisect_right(fts, t)]
    marks: dict[Hashable, float] = {}
    for f in done:
        ts, spot, perp = samples[f["symbol"]]
        k = bisect_right(ts, t) - 1
        if k >= 0 and f["market"] in ("spot", "margin_spot", "perp"):
            marks[f["leg_id"]] = spot[k] if f["market"] in SPOT_LIKE else perp[k]
        else:
            marks[f["leg_id"]] = f["price"]  # no sample: at its last fill
    amounts = [a for _, a in fl[: bisect_right(flow_ts, t)]]
    return pnl(done, amounts, marks).total_usd
