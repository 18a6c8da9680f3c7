"""Where the dashboard's boards come from.

- ``Boards(db=…, settings=…, paths=…)``: the book file alone (``basis-mcp dashboard``, beside a
  stdio server): prices are the book's last basis samples, margin is read from the paper venue's
  isolated books, the clock is the book's replay time (or the wall clock for a live book).
- ``Boards(desk_of=…)``: inside ``serve --transport http``: the same file, priced by the running
  desk's market data, margin read from its venue (`Risk.leg_margin`, what ``check_delta``
  shows), its clock. A live venue is asked at most every `LIVE_TTL` seconds, however many
  browsers poll.

Nothing here writes: the desk is only read (no alert is raised, nothing is flushed), the file
is opened ``mode=ro``. Reading the file and drawing charts run in a worker thread, so a refresh
never stalls the MCP server sharing the event loop.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from basis_mcp.audit import AuditPaths
from basis_mcp.config import Settings
from basis_mcp.dashboard.chain import ChainWatch
from basis_mcp.dashboard.charts import CHART_DAYS, basis_png, equity_svg
from basis_mcp.dashboard.reader import LegMargin, Prices, Reader, ReadOnlyStore, price_kind, sampled_prices

LIVE_TTL = 10.0
CHART_CACHE = 16


class NotReady(Exception):
    """The server's desk is not open (yet, or any more)."""


@dataclass(frozen=True)
class Live:
    """What the running desk says now: its clock, the prices of the open legs, their margin."""

    now: float
    prices: Prices
    margins: dict[tuple[int, int], LegMargin | None]
    key: tuple


class Boards:
    def __init__(self, *, db: Path | str | None = None, settings: Settings | None = None, paths: AuditPaths | None = None,
                 desk_of: Callable[[], Any] | None = None, live_ttl: float = LIVE_TTL):
        self.desk_of = desk_of
        self.live_ttl = live_ttl
        self._lock = threading.Lock()
        self._desk: Any = None
        self._live: tuple[float, Live] | None = None
        self._cached: tuple[tuple, str, dict[str, Any]] | None = None
        self._charts: dict[tuple, bytes] = {}
        self.reader: Reader | None = None
        self.chain: ChainWatch | None = None
        if db is not None:
            self._attach(Path(db), settings or Settings(), paths or AuditPaths.for_db(db))

    def _attach(self, db: Path, settings: Settings, paths: AuditPaths) -> None:
        self.reader = Reader(db, settings)
        self.chain = ChainWatch(db, paths)
        self._cached = None
        self._charts.clear()

    def _parts(self) -> tuple[Any, Reader, ChainWatch]:
        """(the desk or None, the reader, the chain watch); NotReady while the server's desk is not open."""
        desk = None
        if self.desk_of is not None:
            desk = self.desk_of()
            if desk is None:
                raise NotReady("the server's desk is not open")
            with self._lock:
                if desk is not self._desk:
                    self._desk = desk
                    self._live = None
                    self._attach(Path(desk.store.path), desk.settings, desk.store.audit_paths)
        assert self.reader is not None and self.chain is not None
        return desk, self.reader, self.chain

    # ------------------------------------------------------------------ the running desk

    async def _desk_readings(self, desk: Any) -> Live:
        cached = self._live
        if cached is not None and desk.mode == "live" and time.monotonic() - cached[0] < self.live_ttl:
            return cached[1]
        prices: dict[tuple[str, str], tuple[float, float]] = {}
        margins: dict[tuple[int, int], LegMargin | None] = {}
        for row in desk.book.positions():
            for i, leg in enumerate(desk.book.legs(row["id"])):
                try:
                    mark, mid = desk.market.mark(leg.market, leg.symbol), desk.market.mid(leg.market, leg.symbol)
                except Exception:  # noqa: BLE001 - no price for this leg now: the book values it at its last fill
                    continue
                prices[(price_kind(leg.market), leg.symbol)] = (mark, mid)
                if not leg.leveraged:
                    continue
                try:
                    lp, ratio, _ = await desk.risk.leg_margin(leg, mark)
                except Exception:  # noqa: BLE001 - the venue does not answer: shown as unknown, nothing raised
                    margins[(row["id"], i)] = None
                    continue
                lp = lp if lp is not None and math.isfinite(lp) and lp > 0 else None
                ratio = ratio if ratio is not None and math.isfinite(ratio) else None
                dist = None if lp is None or mark <= 0 else ((lp - mark) if leg.side == "short" else (mark - lp)) / mark * 100
                margins[(row["id"], i)] = LegMargin(None if ratio is None else ratio * 100.0, lp, dist)
        now = desk.now()
        live = Live(now=now, prices=Prices(prices, f"the server's {desk.mode} market data"), margins=margins,
                    key=(now, tuple(sorted(prices.items())), tuple(sorted(margins.items(), key=lambda kv: kv[0]))))
        self._live = (time.monotonic(), live)
        return live

    # ------------------------------------------------------------------ boards

    async def board(self) -> tuple[str, dict[str, Any]]:
        """(an ETag, the board)."""
        desk, reader, chain = self._parts()
        live = await self._desk_readings(desk) if desk is not None else None
        return await anyio.to_thread.run_sync(self._read, reader, chain, live)

    @staticmethod
    def _book_now(ro: ReadOnlyStore) -> tuple[float, Any]:
        """(the book's clock, what of it the board's version depends on): replay time, else the wall clock."""
        t = ro.get_meta("replay_time")
        if (ro.get_meta("mode") or "replay") == "replay" and t is not None:
            return float(t), None
        now = time.time()
        return now, int(now // 5)

    def _read(self, reader: Reader, chain: ChainWatch, live: Live | None) -> tuple[str, dict[str, Any]]:
        ro = reader.connect()
        try:
            status = chain.status(ro.conn)  # before the board's read transaction (see ChainWatch.status)
            now, tick = (live.now, live.key) if live is not None else self._book_now(ro)
            version = (reader.version(ro), tick, status["state"], status["summary"])
            with self._lock:
                if self._cached is not None and self._cached[0] == version:
                    return self._cached[1], self._cached[2]
            prices = live.prices if live is not None else sampled_prices(ro, now)
            board = reader.board(ro, prices, now, live.margins if live is not None else None)
        finally:
            ro.conn.close()
        board["chain"] = status
        board["book"]["source"] = "the running server" if live is not None else "the book's database file (read-only)"
        board["equity_svg"] = equity_svg(board["equity_curve"], board["money"]["capital_usd"])
        etag = hashlib.sha256(repr(version).encode()).hexdigest()[:20]
        with self._lock:
            self._cached = (version, etag, board)
        return etag, board

    # ------------------------------------------------------------------ charts

    def _desk_funding(self, desk: Any, sym: str, t0: float, t1: float) -> tuple[list[float], list[float]] | None:
        """The settled funding of ``sym`` from the desk's feed (the series ``plot_basis`` draws), or None."""
        try:
            feed = desk.market.feed
            if desk.clock.simulated:
                h = feed.h[sym]
                sel = (h.funding_time > t0) & (h.funding_time <= t1)
                return [float(t) for t in h.funding_time[sel]], [float(r) for r in h.funding_rate[sel]]
            hist = [(t, r) for t, r, _ in feed.settled.get(sym, []) if t0 < t <= t1]
            return [t for t, _ in hist], [r for _, r in hist]
        except Exception:  # noqa: BLE001 - not a feed symbol: the book's own funding payments instead
            return None

    async def chart(self, symbol: str) -> bytes | None:
        desk, reader, _ = self._parts()
        funding = None
        if desk is not None:
            now = desk.now()
            funding = self._desk_funding(desk, symbol, now - CHART_DAYS * 86400.0, now)
        return await anyio.to_thread.run_sync(self._chart, reader, symbol, funding, desk.now() if desk is not None else None)

    def _chart(self, reader: Reader, symbol: str, funding: tuple[list[float], list[float]] | None,
               now: float | None) -> bytes | None:
        ro = reader.connect()
        try:
            if now is None:
                now = self._book_now(ro)[0]
            t0 = now - CHART_DAYS * 86400.0
            rows = ro.q("SELECT ts, basis_pct FROM basis_samples WHERE symbol = ? AND ts > ? AND ts <= ? ORDER BY ts",
                        (symbol, t0, now))
            if not rows:
                return None
            if funding is None:
                paid = ro.q("SELECT ts, MAX(rate) AS rate FROM funding_payments WHERE symbol = ? AND ts > ? AND ts <= ?"
                            " GROUP BY ts ORDER BY ts", (symbol, t0, now))
                funding = ([r["ts"] for r in paid], [r["rate"] for r in paid])
        finally:
            ro.conn.close()
        key = (symbol, rows[-1]["ts"], len(rows), len(funding[0]), funding[0][-1] if funding[0] else None)
        with self._lock:
            png = self._charts.get(key)
        if png is None:
            png = basis_png(symbol, [r["ts"] for r in rows], [r["basis_pct"] for r in rows], funding[0], funding[1],
                            reader.settings.zscore_window)
            with self._lock:
                if len(self._charts) >= CHART_CACHE:
                    self._charts.pop(next(iter(self._charts)))
                self._charts[key] = png
        return png
