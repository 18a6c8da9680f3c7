"""The clock: replay ticks (`advance_time`), live ticks, and orders resting until their fill time.

Each tick, in order: the venue settles funding and liquidations, the desk copies them into
the ledger, orders due at this time are sent, the basis is sampled, and the watchdog runs
over the book. The caller holds the desk lock. Calls `Recovery`, `Execution`, `Watchdog`,
`MarketData`, `Book` and `Events`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.lowlevel

from basis_mcp.clock import Clock, SimClock, iso
from basis_mcp.config import Settings
from basis_mcp.desk.book import Book
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.desk.execution import Execution
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.recovery import Recovery
from basis_mcp.desk.watchdog import Watchdog
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.history import HOUR
from basis_mcp.models import AdvanceTimeOutput, FundingSettlementOut
from basis_mcp.store import Store
from basis_mcp.venue.base import VenueError, VenueTimeout

ProgressFn = Callable[[float, float, str], Awaitable[None]]
EVENTS_BACKSTOP_S = 300.0
FLAT_CHECK_S = 60.0


class Clockwork:
    def __init__(self, settings: Settings, store: Store, venue: Any, clock: Clock, events: Events, health: VenueHealth,
                 market: MarketData, book: Book, execution: Execution, recovery: Recovery, watchdog: Watchdog):
        self.settings = settings
        self.store = store
        self.venue = venue
        self.clock = clock
        self.events = events
        self.health = health
        self.market = market
        self.book = book
        self.execution = execution
        self.recovery = recovery
        self.watchdog = watchdog
        self.events_synced_at: float | None = None
        self._flat_checked_at = float("-inf")  # monotonic time of the last ledger check on a flat live book

    def has_book(self) -> bool:
        return self.book.has_open() or self.store.get_meta("close_all_when_reachable") is not None

    # ------------------------------------------------------------------ replay

    async def advance(self, hours: float, progress: ProgressFn | None = None) -> AdvanceTimeOutput:
        if not isinstance(self.clock, SimClock):
            raise Rejected("hours", hours, "advance_time exists only in replay mode")
        if not math.isfinite(hours) or hours <= 0:
            raise Rejected("hours", hours, "must be a positive number of hours")
        if hours > self.settings.max_advance_hours:
            raise Rejected("hours", hours, f"at most {self.settings.max_advance_hours:g} hours per call")
        t0 = self.clock.now()
        target = t0 + hours * 3600.0
        end = float(self.market.feed.end)
        if target > end:
            raise Rejected("hours", hours, f"replay data ends at {iso(end)}; at most {(end - t0) / 3600:.2f} hours are left")
        ticks = [float(t) for t in range(int(math.floor(t0 / HOUR) + 1) * HOUR, int(target) + 1, HOUR)]
        funding: list[FundingSettlementOut] = []
        liqs: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        with self.store.patient():
            for n, t in enumerate(ticks, 1):
                self.clock.set(t)
                f, lq, acts = await self.tick(t)
                funding += f
                liqs += lq
                actions += acts
                if n % 168 == 0:
                    self.market.flush_samples({"replay_time": repr(t)})
                if progress is not None and (n % 24 == 0 or n == len(ticks)):
                    await progress(n, len(ticks), f"replayed to {iso(t)}")
                # long replays yield after every bar, so other calls (risk_status, portfolio_status)
                # are served within about one tick's time instead of after the whole replay
                await anyio.lowlevel.checkpoint()
            self.clock.set(target)
            if target != (ticks[-1] if ticks else t0) and self.has_book():
                actions += await self.watchdog.tick()  # between bars too: settlement-aware exits see the real clock
            self.market.flush_samples({"replay_time": repr(target)})
            self.events.audit("desk", "advance_time", {"from": iso(t0), "to": iso(target), "ticks": len(ticks)}, "ok")
        return AdvanceTimeOutput(from_time=iso(t0) or "", to_time=iso(target) or "", hours=hours, ticks=len(ticks), funding=funding,
                                 liquidations=liqs, watchdog_actions=actions, replay_end_time=iso(end) or "")

    async def tick(self, t: float) -> tuple[list[FundingSettlementOut], list[dict[str, Any]], list[dict[str, Any]]]:
        """One market tick: the venue settles funding and liquidations, the desk copies them,
        sends orders due now, samples the basis, then the watchdog runs over the book."""
        report = self.venue.on_tick(t)
        funding: list[FundingSettlementOut] = []
        liqs: list[dict[str, Any]] = []
        if report.funding or report.liquidations:
            funding, liqs = await self.recovery.sync_venue_events()
        elif report.borrow:
            await self.recovery.sync_borrow()
        await self.execute_due(t)
        self.market.sample_all()
        if self.has_book() or report.funding or report.liquidations or report.borrow:
            self.market.flush_samples()
            actions = await self.watchdog.tick()
        else:
            actions = []
        return funding, liqs, actions

    async def execute_due(self, t: float) -> None:
        """Orders resting until ``t`` (replay with a fill delay) go to the venue now, after the
        settlements at ``t`` and before the watchdog looks at the book; the outcome is an alert."""
        due = self.store.q("SELECT * FROM positions WHERE execute_at IS NOT NULL AND execute_at <= ? AND status IN"
                           " ('opening','closing') ORDER BY id", (t,))
        for row in due:
            pid, sym = row["id"], row["symbol"]
            with self.store.tx():
                self.store.x("UPDATE positions SET execute_at = NULL WHERE id = ?", (pid,))
            try:
                if row["status"] == "opening":
                    out = await self.execution.execute_entry(pid, row["entry_key"] or "", self.execution.entry_args(row), row["leverage"])
                    self.events.alert("info", "entry_filled", f"position {pid} {sym}: the entry filled at {iso(t)}",
                                      {"position_id": pid, "entry_basis_pct": out.position.entry_basis_pct if out.position else None})
                else:
                    out2 = await self.execution.execute_exit(pid, row["exit_key"] or "", row["close_reason"] or "exit",
                                                             emergency=(row["close_reason"] or "").startswith("watchdog"))
                    realized = out2.realized.total_usd if out2.realized else None
                    self.events.alert("info", "exit_filled", f"position {pid} {sym}: the exit filled at {iso(t)}, realized "
                                      f"${realized or 0:,.2f}", {"position_id": pid, "realized_pnl_usd": realized})
            except Rejected as e:  # filed by the execution path itself (failed entry, incomplete exit): say so
                self.events.alert("warning", "scheduled_order_failed", f"position {pid} {sym}: {e}", {"position_id": pid})

    # ------------------------------------------------------------------ live

    async def live_tick(self) -> list[dict[str, Any]]:
        """One live market tick: refresh, settle (paper), copy venue events, sample, watchdog."""
        try:
            await self.market.feed.refresh()
        except (VenueError, VenueTimeout) as e:
            self.health.down(str(e))
            return await self.watchdog.tick() if self.has_book() else []
        for venue, feed in self.market.feeds.items():  # every other venue's market too (its legs, its settlements)
            if feed is self.market.feed or not hasattr(feed, "refresh"):
                continue
            try:
                await feed.refresh()
            except (VenueError, VenueTimeout) as e:  # that venue down: the watchdog's per-venue rules take it from here
                self.events.note_once(f"feed_down:{venue}", "warning", "market_data_unavailable",
                                      f"{venue} market data did not refresh ({str(e)[:200]})", {"venue": venue})
            else:
                self.events.clear_note(f"feed_down:{venue}")
        await self.market.observe_borrow_rates()
        now = self.clock.now()
        report = self.venue.on_tick(now)
        if self.venue_events_due(now):
            await self.recovery.sync_venue_events()
            self.events_synced_at = now
        self.market.sample_all()
        self.market.flush_samples()
        if self.has_book() or report.funding or report.liquidations:
            return await self.watchdog.tick()
        if time.monotonic() - self._flat_checked_at >= FLAT_CHECK_S:
            # a flat book still reconciles now and then: a fill that arrived late, or a leg
            # opened by hand in the desk's account, must not go unnoticed until the next trade
            self._flat_checked_at = time.monotonic()
            return await self.watchdog.tick()
        return []

    def venue_events_due(self, now: float) -> bool:
        """Funding and liquidation history are heavy reads on a real venue: read them when a
        settlement time has passed since the last read, and every 5 minutes as a backstop. (The
        paper venue's are local and read every tick; a vanished perp leg shows in the positions,
        which the watchdog reads every tick.)"""
        if not getattr(self.venue, "remote", False):
            return True
        last = self.events_synced_at
        if self.store.one("SELECT 1 FROM positions WHERE closed_at IS NULL OR closed_at >= ? LIMIT 1", (last or 0.0,)) is None:
            return False  # no position since the last read: the venue cannot have paid or liquidated anything
        if last is None or now - last >= EVENTS_BACKSTOP_S:
            return True
        for feed, sym in [(f, s) for f in self.market.feeds.values() for s in f.symbols]:  # every venue's schedule
            try:
                snap = feed.snapshot(sym)
            except MarketDataUnavailable:
                continue
            prev = snap.next_funding_time - snap.funding_interval_hours * 3600.0
            if last < prev <= now:
                return True
        return False
