"""The clock: replay ticks (`advance_time`), live ticks, and orders resting until their fill time.

Each tick, in order: the venue settles funding and liquidations, the desk copies them into
the ledger, orders due at this time are sent, the basis is sampled, and the watchdog runs
over the book. The caller holds the desk lock. Calls `Recovery`, `Execution`, `Watchdog`,
`MarketData`, `Book` and `Events`.

A replay fast-forwards (`fast_forward`): hours with nothing open are skipped at once but for their
basis samples, the others tick with the book's reads cached. The hour-by-hour loop (`hour_by_hour`,
``reference=True``) is kept as the reference both must match, book for book.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
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
Ticked = tuple[list[FundingSettlementOut], list[dict[str, Any]], list[dict[str, Any]]]  # (funding, liquidations, actions)
SAMPLES_FLUSH_TICKS = 168  # a replay saves its samples and clock at least once a simulated week
LOOK_OUT_S = 0.005  # the fast path yields to other calls and looks for other processes' commits this often (wall clock)
EVENTS_BACKSTOP_S = 300.0
FLAT_CHECK_S = 60.0
PAYMENT_GRACE_S = 600.0  # after a settlement, a perp leg without its payment is looked for again for this long
PAYMENT_RETRY_S = 10.0  # ... first after this long (wall clock), then twice as long each time (venues post late)


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
        self._payment_retry = (float("nan"), float("-inf"), PAYMENT_RETRY_S)  # (settlement, next look, then the wait)
        self.reference = False  # advance_time hour by hour (the reference loop) instead of fast_forward

    def has_book(self) -> bool:
        return self.book.has_open() or self.store.get_meta("close_all_when_reachable") is not None

    # ------------------------------------------------------------------ replay

    async def advance(self, hours: float, progress: ProgressFn | None = None, reference: bool | None = None) -> AdvanceTimeOutput:
        """Move the simulated clock ``hours`` on. ``reference`` (default `self.reference`): the hour-by-hour loop,
        kept as the reference the fast path (`fast_forward`) is checked against; both leave the same book."""
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
        fast = not (self.reference if reference is None else reference)
        with self.store.patient():
            with self.fast_mode() if fast else self.reference_mode():
                funding, liqs, actions = await (self.fast_forward if fast else self.hour_by_hour)(ticks, progress)
                self.clock.set(target)
                if target != (ticks[-1] if ticks else t0) and self.has_book():
                    actions += await self.watchdog.tick()  # between bars too: settlement-aware exits see the real clock
                self.market.flush_samples({"replay_time": repr(target)})
            # (durable: in WAL mode this commit takes every earlier one of the replay to the disk with it)
            self.events.audit("desk", "advance_time", {"from": iso(t0), "to": iso(target), "ticks": len(ticks)}, "ok")
        return AdvanceTimeOutput(from_time=iso(t0) or "", to_time=iso(target) or "", hours=hours, ticks=len(ticks), funding=funding,
                                 liquidations=liqs, watchdog_actions=actions, replay_end_time=iso(end) or "")

    async def hour_by_hour(self, ticks: list[float], progress: ProgressFn | None) -> Ticked:
        """The reference replay: every hour a full `tick`."""
        out: Ticked = ([], [], [])
        for n, t in enumerate(ticks, 1):
            self.clock.set(t)
            await self.after_tick(n, ticks, await self.tick(t), out, progress)
        return out

    async def fast_forward(self, ticks: list[float], progress: ProgressFn | None) -> Ticked:
        """The same replay, cheaper. Hours with a position still run a full `tick` each, with the book's
        reads cached between writes (`basis_mcp.readcache`: the store is read about once an hour) and
        commits that do not wait for the disk until the stop (`Database.relaxed`: a process dying keeps
        them all; a power cut can only take the book back to an earlier hour of this replay, which the
        next advance_time replays the same way). Once nothing is open (no position, nothing resting,
        every venue flat) no hour until the stop can change the book but for its basis samples: they
        are computed for the rest of the stop at once (`skip_idle`)."""
        out: Ticked = ([], [], [])
        looked = float("-inf")
        for n, t in enumerate(ticks, 1):
            if time.monotonic() - looked >= LOOK_OUT_S:  # other calls served, an operator's command (halt) seen
                await anyio.lowlevel.checkpoint()
                self.store.revalidate()
                looked = time.monotonic()
            if self.idle():
                await self.skip_idle(ticks, n - 1, progress)
                break
            self.clock.set(t)
            await self.after_tick(n, ticks, await self.tick(t), out, progress, yields=False)
        return out

    @contextmanager
    def reference_mode(self) -> Iterator[None]:
        """The replay feeds read the funding schedule with NumPy, as the hour-by-hour loop always has."""
        feeds = [f for f in self.market.feeds.values() if hasattr(f, "reference")]
        for f in feeds:
            f.reference = True
        try:
            yield
        finally:
            for f in feeds:
                f.reference = False

    @contextmanager
    def fast_mode(self) -> Iterator[None]:
        """The book's and the paper venues' databases with their read cache on and relaxed commits; the paper
        venues open no transaction for an hour with nothing to write."""
        paper = [ex for ex in (self.venue.exchanges() if hasattr(self.venue, "exchanges") else [self.venue]) if hasattr(ex, "lazy")]
        with ExitStack() as stack:
            for db in [self.store, *(ex.db for ex in paper)]:
                stack.enter_context(db.read_cache())
                stack.enter_context(db.relaxed())
            for ex in paper:
                ex.lazy = True
            try:
                yield
            finally:
                for ex in paper:
                    ex.lazy = False

    async def after_tick(self, n: int, ticks: list[float], ticked: Ticked, out: Ticked, progress: ProgressFn | None,
                         yields: bool = True) -> None:
        for into, got in zip(out, ticked, strict=True):
            into += got  # type: ignore[operator]
        if n % SAMPLES_FLUSH_TICKS == 0:
            self.market.flush_samples({"replay_time": repr(ticks[n - 1])})
        if progress is not None and (n % 24 == 0 or n == len(ticks)):
            await progress(n, len(ticks), f"replayed to {iso(ticks[n - 1])}")
        if yields:
            # long replays yield after every bar, so other calls (risk_status, portfolio_status)
            # are served within about one tick's time instead of after the whole replay
            await anyio.lowlevel.checkpoint()

    def idle(self) -> bool:
        """Nothing open anywhere: no position (opening, open, closing, or to close when reachable) and
        every venue flat, so an hour settles, fills and watches nothing; only basis samples are taken."""
        flat = getattr(self.venue, "flat", None)
        return flat is not None and hasattr(self.market.feed, "observed") and not self.has_book() and flat()

    async def skip_idle(self, ticks: list[float], done: int, progress: ProgressFn | None) -> None:
        """Hours ``ticks[done:]`` with nothing open, at once: the basis samples each hour would take (data
        gaps included: an hour without both legs fresh takes none), queued for the stop's flush."""
        self.market.queue_samples_at(ticks[done:])
        self.clock.set(ticks[-1])
        self.venue.on_tick(ticks[-1])  # (a flat venue only notes the time)
        if progress is not None:
            await progress(len(ticks), len(ticks), f"replayed to {iso(ticks[-1])}")

    async def tick(self, t: float) -> Ticked:
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
        resting = self.store.q("SELECT * FROM positions WHERE execute_at IS NOT NULL AND status IN ('opening','closing') ORDER BY id")
        for row in (r for r in resting if r["execute_at"] <= t):
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
            if now - prev < PAYMENT_GRACE_S and self._payment_missing(getattr(feed, "venue", ""), sym, prev):
                # read after the settlement but this symbol's leg has no payment yet (a venue posts it late, or a
                # second venue settled after the read): look again, backing off, not only at the 5-minute backstop
                settled, next_at, wait = self._payment_retry
                if settled != prev:
                    next_at, wait = time.monotonic() + PAYMENT_RETRY_S, PAYMENT_RETRY_S
                if time.monotonic() >= next_at:
                    self._payment_retry = (prev, time.monotonic() + wait * 2, wait * 2)
                    return True
                self._payment_retry = (prev, next_at, wait)
        return False

    def _payment_missing(self, venue: str, symbol: str, settled_at: float) -> bool:
        """An open perp leg of ``symbol`` on ``venue``, held across the settlement at ``settled_at``, without a
        payment for it."""
        return self.store.one(
            "SELECT 1 FROM legs l JOIN positions p ON p.id = l.position_id WHERE p.status = 'open' AND l.market = 'perp' "
            "AND l.venue IN (?, ?) AND l.symbol = ? AND p.opened_at < ? AND NOT EXISTS (SELECT 1 FROM funding_payments f "
            "WHERE f.leg_id = l.id AND f.ts >= ?) LIMIT 1",
            (venue, f"live:{venue}", symbol.split("@")[0], settled_at - 1.0, settled_at - 60.0)) is not None
