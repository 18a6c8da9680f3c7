"""The desk: one stateful engine per process.

It owns the market feed, the venue, the store and the z-score trackers, and implements
every tool's behaviour. The MCP layer only validates inputs and calls in here.

Concurrency: every state-changing operation (entry, exit, advance, watchdog tick) runs
under one `anyio.Lock`, from its pre-trade checks to its last fill. Two entries can never
both pass the same capital, tier or duplicate check, whatever the agent sends in
parallel. An entry's capital is also written as ``reserved_usd`` on its ``opening`` row, so
a crash mid-entry leaves the reservation visible to recovery.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from basis_mcp import margin as mm
from basis_mcp.audit import AuditPaths
from basis_mcp.clock import Clock, SimClock, iso, parse_time
from basis_mcp.config import HARD, Settings
from basis_mcp.errors import Rejected
from basis_mcp.execution import ExecutionMixin
from basis_mcp.feed import MarketDataUnavailable, ReplayFeed, Snapshot, base_asset
from basis_mcp.guardrails import EntryReadings, TradingState, drawdown, pre_trade_violations
from basis_mcp.history import HOUR, fingerprint, load_any
from basis_mcp.lease import BookLease
from basis_mcp.ledger import PnL, leg_quantities, pnl
from basis_mcp.models import (
    AdvanceTimeOutput,
    Alert,
    BasisSnapshot,
    CapOut,
    CheckDeltaOutput,
    ConfirmationRequest,
    DeltaReport,
    EnterTradeOutput,
    ExitTradeOutput,
    FillOut,
    FundingSettlementOut,
    LimitReading,
    NetApyEstimate,
    PnLBreakdown,
    PortfolioOutput,
    PositionOut,
    RiskStatusOutput,
    ScanBasisOutput,
    SecondsToFundingOutput,
    SizePositionOutput,
    TierUsage,
    Unavailable,
    ZScoreOutput,
)
from basis_mcp.playbooks import PLAYBOOKS, Signals, carry_entry_check, expected_carry_usd, stop_level_pct
from basis_mcp.redact import scrub, scrub_value
from basis_mcp.signals import (
    ZSCORE_MIN_SAMPLES,
    RollingZScore,
    entry_expected_net_usd,
    estimate_net_return,
    funding_8h_pct,
    funding_apr_pct,
    realised_vol_1h_pct,
    settlements_in,
    zscore_stats,
)
from basis_mcp.sizing import Cap, entry_capital_usd, floor_to_step, size_position
from basis_mcp.store import Store
from basis_mcp.venue.base import OrderResult, VenueError, VenueTimeout, VenueUnavailable
from basis_mcp.venue.faults import FaultPlan
from basis_mcp.venue.paper import PaperVenue
from basis_mcp.watchdog import WatchdogMixin

DEFAULT_REPLAY_START = "2024-03-01T00:00:00Z"
# earlier versions of the shipped extract a replay book may have been built on, and what changed since
SHIPPED_EXTRACT_PREDECESSORS = {
    "901c07d8101b4736": "zero-volume flat candles left by exchange outages (BTC 5, ETH 3) are now gaps, not prices",
}
FUND_DIGITS = 12  # funding means are rounded like the backtest's (basis_mcp.backtest.engine.FUND_DIGITS)
OPEN_STATES = ("opening", "open", "closing")
ProgressFn = Callable[[float, float, str], Awaitable[None]]


def _r(x: float | None, nd: int = 10) -> float | None:
    return None if x is None else round(float(x), nd)


def _venue_lot_hints(feed: Any) -> dict[str, tuple[float | None, float | None]]:
    """(lot step, price) per symbol from a live feed's markets: the coarser of the spot and perp steps."""
    hints: dict[str, tuple[float | None, float | None]] = {}
    ex = getattr(feed, "ex", None)
    markets = getattr(ex, "markets", None) or {}
    decimal_places = getattr(ex, "precisionMode", None) == 2  # ccxt.DECIMAL_PLACES; otherwise TICK_SIZE: a step
    for sym in feed.symbols:
        steps = []
        for name in (feed.spot_symbol(sym), feed.perp_symbol(sym)):
            amount = ((markets.get(name) or {}).get("precision") or {}).get("amount")
            if isinstance(amount, int | float) and amount > 0:
                steps.append(10.0 ** -float(amount) if decimal_places else float(amount))
        try:
            price = feed.snapshot(sym).spot
        except MarketDataUnavailable:
            price = None
        hints[sym] = (max(steps) if steps else None, price)
    return hints


class Desk(ExecutionMixin, WatchdogMixin):
    def __init__(
        self, settings: Settings, store: Store, feed: ReplayFeed, venue: PaperVenue, clock: Clock, mode: str,
        faults: FaultPlan | None = None,
    ):
        self.settings = settings
        self.store = store
        self.feed = feed
        self.venue = venue
        self.clock = clock
        self.mode = mode
        self.faults = faults or FaultPlan()
        self.lock = anyio.Lock()
        self.z: dict[str, RollingZScore] = {}
        self._pending_samples: list[tuple[str, int, float, float, float]] = []
        self._last_sample_ts: dict[str, int | None] = {}
        self._venue_down_since: float | None = None
        self._events_synced_at: float | None = None
        self._flat_checked_at = float("-inf")  # monotonic time of the last ledger check on a flat live book
        self._notes: set[str] = set()
        self._desk_id = store.get_meta("desk_id")  # fixed for the database's life: read once, not per order
        self._retry: dict[int, tuple[int, float]] = {}  # position → (failed reconciliations, next attempt at market time)
        self.feeds: dict[str, Any] = {feed.venue: feed}
        self.lease: BookLease | None = None

    # ================================================================== construction

    @classmethod
    def open_replay(
        cls,
        settings: Settings,
        db_path: Path | str,
        data_path: Path | str | None = None,
        start: str | None = None,
        faults: FaultPlan | None = None,
        audit_paths: AuditPaths | None = None,
    ) -> Desk:
        """Paper trading on historical data under a simulated clock (the embedded default)."""
        histories = load_any(data_path)
        lease = BookLease.acquire(db_path, desk=True)
        try:
            return cls._open_replay(settings, db_path, histories, data_path, start, faults, lease, audit_paths)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _open_replay(cls, settings: Settings, db_path: Path | str, histories: Any, data_path: Path | str | None,
                     start: str | None, faults: FaultPlan | None, lease: BookLease, audit_paths: AuditPaths | None) -> Desk:
        store = Store(db_path, audit_paths)
        fp = fingerprint(histories)
        try:
            mode = store.get_meta("mode")
            if mode is not None and mode != "replay":
                raise Rejected("db", str(db_path), f"this database belongs to a '{mode}' desk, not a replay desk")
            stored_fp = store.get_meta("data_fingerprint")
            upgraded_from = None
            if stored_fp is not None and stored_fp != fp:
                if data_path is None and stored_fp in SHIPPED_EXTRACT_PREDECESSORS:
                    upgraded_from = stored_fp  # the same shipped history, only cleaned: the book carries on
                else:
                    raise Rejected("data", str(data_path or "shipped"), "this database was built on different market data; use another --db")
            clock = SimClock(0.0)
            feed = ReplayFeed(histories, clock)
            saved = store.get_meta("replay_time")
            if saved is not None:
                t = float(saved)
            else:
                t = parse_time(start or DEFAULT_REPLAY_START)
                t = math.floor(t / HOUR) * HOUR
                if not feed.start <= t <= feed.end:
                    raise Rejected("start", start, f"outside the data ({iso(feed.start)} .. {iso(feed.end)})")
        except BaseException:
            store.close()
            raise
        clock.set(t)
        with store.tx():
            store.set_meta("mode", "replay")
            store.set_meta("data_fingerprint", fp)
            store.set_meta("replay_time", repr(t))
            if store.get_meta("capital_usd") is None:
                store.set_meta("capital_usd", repr(settings.capital_usd))
        faults = faults or FaultPlan.from_env()
        if faults.stall_market_data:
            feed.frozen_at = t
        settings = settings.with_unknown_symbols({
            sym: (None, float(h.spot[np.flatnonzero(~np.isnan(h.spot))[0]]) if (~np.isnan(h.spot)).any() else None)
            for sym, h in histories.items()})
        venue = PaperVenue(db_path, feed, settings, clock, faults)
        desk = cls(settings, store, feed, venue, clock, "replay", faults)
        desk.lease = lease
        if upgraded_from is not None:
            desk.alert("info", "data_upgraded", f"the shipped history changed under this book: "
                       f"{SHIPPED_EXTRACT_PREDECESSORS[upgraded_from]}", {"from": upgraded_from, "to": fp})
        return desk

    @classmethod
    async def open_live(
        cls,
        settings: Settings,
        db_path: Path | str,
        venues: list[str],
        trading: str,
        credentials: Any = None,
        base_url: str | None = None,
        universe: list[str] | None = None,
        faults: FaultPlan | None = None,
        audit_paths: AuditPaths | None = None,
    ) -> Desk:
        """Live market data from ``venues`` (the first one trades).

        ``trading``: ``paper`` (simulated fills on live prices, the default for live data),
        ``readonly`` (no trading tools) or ``live`` (real orders; needs credentials, which are
        checked against the venue before anything else happens).
        """
        from basis_mcp.live.errors import register_secret
        from basis_mcp.live.exchanges import make_exchange
        from basis_mcp.live.feed import LiveFeed, VenueClock
        from basis_mcp.live.venue import LiveVenue

        if trading not in ("paper", "readonly", "live"):
            raise Rejected("trading", trading, "must be paper, readonly or live")
        if trading == "live" and credentials is None:
            raise Rejected("credentials", "missing", "live trading needs API keys (environment or --key-file)")
        if credentials is not None:
            for secret in (credentials.api_key, credentials.secret, credentials.password):
                register_secret(secret)
        primary = venues[0]
        mode_tag = f"{trading}:{primary}"
        lease = BookLease.acquire(db_path, desk=True)
        try:
            store = Store(db_path, audit_paths)
        except BaseException:
            lease.release()
            raise
        stored = store.get_meta("mode")
        if stored is not None and stored != mode_tag:
            store.close()
            lease.release()
            raise Rejected("db", str(db_path), f"this database belongs to a '{stored}' desk, not '{mode_tag}'; use another --db")
        clock = VenueClock()
        faults = faults or FaultPlan.from_env()
        universe = [u.upper() for u in (universe or settings.symbol_allowlist or ["BTC", "ETH", "SOL"])]
        feeds: dict[str, LiveFeed] = {}
        try:
            for v in venues:
                ex = make_exchange(v, credentials if (v == primary and trading == "live") else None, base_url,
                                   timeout_ms=settings.venue_timeout_ms)
                feeds[v] = LiveFeed(v, ex, clock, universe)
                await feeds[v].start()
            feed = feeds[primary]
            settings = settings.with_unknown_symbols(_venue_lot_hints(feed))
            if trading == "live":
                venue: Any = LiveVenue(primary, feed.ex, feed, settings, clock)
                await venue.verify_credentials()
            else:
                venue = PaperVenue(db_path, feed, settings, clock, faults)
        except BaseException:
            for f in feeds.values():
                await f.close()
            store.close()
            lease.release()
            raise
        with store.tx():
            store.set_meta("mode", mode_tag)
            if store.get_meta("capital_usd") is None:
                store.set_meta("capital_usd", repr(settings.capital_usd))
        desk = cls(settings, store, feed, venue, clock, trading, faults)  # type: ignore[arg-type]
        desk.feeds = feeds
        desk.lease = lease
        return desk

    async def start(self) -> None:
        """Before any tool is served: warm the z-score history, then reconcile with the venue.

        Venue events missed while down are copied into the ledger, every position caught
        mid-entry or mid-exit is completed or unwound, and the ledger is checked against the
        venue's balances. Anything that cannot be reconciled leaves the desk REDUCING, with
        the reason in the alert and the audit log (fail closed).
        """
        self._warm_history()
        if not self.clock.simulated:
            await self._warm_history_live()
            await self.feed.preload_funding_history(self.feed.symbols)
        for sym in self.feed.symbols:
            self._load_tracker(sym)
        async with self.lock:
            try:
                with self.store.patient():
                    await self._sync_venue_events()
                    self._events_synced_at = self.now()
                    await self._recover_all()
                    await self._check_ledger()
            except (VenueError, VenueTimeout) as e:
                self.set_trading_state("REDUCING", f"could not reconcile with the venue at start-up: {e}", {})
        problem = self.store.audit_problem()
        if problem:
            self.alert("critical", "audit_tampered", f"audit log check at start-up failed: {problem}. Run `basis-mcp audit "
                       "verify` for the full report; trading continues, the operator should investigate.", {"problem": problem})
        state, reason = self.trading_state()
        self.audit("system", "desk_start", {"mode": self.mode, "market_time": iso(self.clock.now()), "state": state,
                                             "reason": reason}, "ok")

    def close(self) -> None:
        try:
            try:
                self._flush_samples()
            finally:
                self.venue.close()
                self.store.close()
        finally:
            if self.lease is not None:
                self.lease.release()

    async def aclose(self) -> None:
        for f in self.feeds.values():
            if hasattr(f, "close"):
                await f.close()
        self.close()

    # ================================================================== live ticks

    @property
    def live(self) -> bool:
        return not self.clock.simulated

    async def ensure_fresh(self, max_age_s: float = 1.0) -> None:
        """Live: refresh the feeds if the last refresh is older than ``max_age_s``."""
        if not self.live:
            return
        for f in self.feeds.values():
            if f.last_refresh is None or self.now() - f.last_refresh > max_age_s:
                try:
                    await f.refresh()
                except (VenueError, VenueTimeout) as e:
                    self._venue_down(str(e))
                    if f is self.feed:
                        return
        self._venue_up()

    async def live_tick(self) -> list[dict[str, Any]]:
        """One live market tick: refresh, settle (paper), copy venue events, sample, watchdog."""
        async with self.lock:
            with self.store.patient():
                return await self._live_tick()

    async def _live_tick(self) -> list[dict[str, Any]]:
        try:
            await self.feed.refresh()
        except (VenueError, VenueTimeout) as e:
            self._venue_down(str(e))
            return await self.watchdog_tick() if self._has_book() else []
        now = self.now()
        report = self.venue.on_tick(now)
        if self._venue_events_due(now):
            await self._sync_venue_events()
            self._events_synced_at = now
        for sym in self.feed.symbols:
            try:
                self._queue_sample(self.feed.snapshot(sym))
            except MarketDataUnavailable:
                continue
        self._flush_samples()
        if self._has_book() or report.funding or report.liquidations:
            return await self.watchdog_tick()
        if time.monotonic() - self._flat_checked_at >= self.FLAT_CHECK_S:
            # a flat book still reconciles now and then: a fill that arrived late, or a leg
            # opened by hand in the desk's account, must not go unnoticed until the next trade
            self._flat_checked_at = time.monotonic()
            return await self.watchdog_tick()
        return []

    EVENTS_BACKSTOP_S = 300.0
    FLAT_CHECK_S = 60.0

    def _venue_events_due(self, now: float) -> bool:
        """Funding and liquidation history are heavy reads on a real venue: read them when a
        settlement time has passed since the last read, and every 5 minutes as a backstop. (The
        paper venue's are local and read every tick; a vanished perp leg shows in the positions,
        which the watchdog reads every tick.)"""
        if not getattr(self.venue, "remote", False):
            return True
        last = self._events_synced_at
        if self.store.one("SELECT 1 FROM positions WHERE closed_at IS NULL OR closed_at >= ? LIMIT 1", (last or 0.0,)) is None:
            return False  # no position since the last read: the venue cannot have paid or liquidated anything
        if last is None or now - last >= self.EVENTS_BACKSTOP_S:
            return True
        for sym in self.feed.symbols:
            try:
                nxt = self.feed.snapshot(sym).next_funding_time
            except MarketDataUnavailable:
                continue
            prev = nxt - self.feed.snapshot(sym).funding_interval_hours * 3600.0
            if last < prev <= now:
                return True
        return False

    async def run_live_loop(self, poll_seconds: float) -> None:
        """The watchdog's heartbeat in live modes: ticks whether or not the agent calls tools."""
        while True:
            try:
                await self.live_tick()
            except Exception as e:  # noqa: BLE001 - the loop must survive anything; the audit log says what
                self.audit("system", "live_tick_failed", {"error": type(e).__name__}, "error", str(e)[:500])
            await anyio.sleep(poll_seconds)

    # ================================================================== helpers

    @property
    def capital_usd(self) -> float:
        return float(self.store.get_meta("capital_usd") or self.settings.capital_usd)

    def now(self) -> float:
        return self.clock.now()

    def audit(self, kind: str, name: str, args: dict[str, Any], outcome: str, detail: str | None = None) -> None:
        self.store.append_audit(ts=time.time(), market_ts=self.now(), kind=kind, name=name, args=args, outcome=outcome, detail=detail)

    def alert(self, severity: str, rule: str, message: str, data: dict[str, Any] | None = None) -> None:
        data = scrub_value(data or {})
        message = scrub(message)
        with self.store.tx():
            self.store.x(
                "INSERT INTO alerts(ts, market_ts, severity, rule, message, data_json) VALUES (?,?,?,?,?,?)",
                (time.time(), self.now(), severity, rule, message, json.dumps(data, default=str)),
            )
            self.audit("alert", rule, data, severity, message)

    def pop_alerts(self) -> list[Alert]:
        failed = self.store.journal_failed
        if failed and "journal_failed" not in self._notes:
            self._notes.add("journal_failed")
            self.alert("critical", "audit_journal_failed", f"{failed}: audit rows are still written to the database, but "
                       "without checkpoints outside it until this is fixed (free the disk, fix the permissions)",
                       {"journal": str(self.store.audit_paths.journal)})
        with self.store.tx():
            rows = self.store.q("SELECT * FROM alerts WHERE delivered = 0 ORDER BY id")
            if rows:
                self.store.x("UPDATE alerts SET delivered = 1 WHERE id <= ? AND delivered = 0", (rows[-1]["id"],))
        return [
            Alert(
                id=r["id"],
                time=iso(r["ts"]) or "",
                market_time=iso(r["market_ts"]) or "",
                severity=r["severity"],
                rule=r["rule"],
                message=r["message"],
                data=json.loads(r["data_json"]),
            )
            for r in rows
        ]

    def _known_symbols(self) -> list[str]:
        return sorted(set(self.feed.symbols) | set(getattr(self.feed, "listed", [])))

    def resolve(self, raw: str, field: str = "symbol") -> str:
        try:
            base = base_asset(raw)
        except ValueError as e:
            raise Rejected(field, raw, str(e)) from None
        if base not in self._known_symbols():
            listed = self.feed.symbols
            raise Rejected(field, raw, f"unknown symbol on {self.feed.venue}; this desk trades {', '.join(listed)}")
        return base

    def snapshot(self, symbol: str, field: str = "symbol") -> Snapshot:
        try:
            return self.feed.snapshot(symbol)
        except MarketDataUnavailable as e:
            raise Rejected(field, symbol, f"no market data at {iso(self.now())}: {e}") from None

    def _stale_limit(self) -> float:
        return self.settings.max_stale_seconds_replay if self.clock.simulated else self.settings.max_stale_seconds_live

    def _check_leverage(self, leverage: float | None) -> float:
        lev = self.settings.default_leverage if leverage is None else float(leverage)
        cap = min(self.settings.max_leverage, HARD.max_leverage)
        if not math.isfinite(lev) or lev < 1:
            raise Rejected("leverage", leverage, "must be a finite number >= 1")
        if lev > HARD.max_leverage:
            raise Rejected("leverage", leverage, f"above the hard ceiling of {HARD.max_leverage:g}x (never allowed)")
        if lev > cap:
            raise Rejected("leverage", leverage, f"above the operator's cap of {cap:g}x")
        return lev

    def _open_position(self, symbol: str):
        return self.store.one(
            "SELECT * FROM positions WHERE symbol = ? AND status IN ('opening','open','closing') ORDER BY id DESC LIMIT 1",
            (symbol,),
        )

    def _tier_in_use(self, tier: str) -> float:
        total = 0.0
        for r in self.store.q("SELECT symbol, notional_usd FROM positions WHERE status IN ('opening','open','closing')"):
            if self.settings.tier_of(r["symbol"]) == tier:
                total += r["notional_usd"]
        return total

    async def _free_cash(self) -> float:
        return (await self.venue.fetch_balances()).get("USDT", 0.0)

    async def _free_capital_or_zero(self) -> float:
        try:
            return await self.free_capital_usd()
        except (VenueUnavailable, VenueTimeout) as e:
            self._venue_down(str(e))
            return 0.0

    async def free_capital_usd(self) -> float:
        """Venue cash minus what in-flight entries have reserved."""
        reserved = float(self.store.one(
            "SELECT COALESCE(SUM(reserved_usd), 0) AS s FROM positions WHERE status = 'opening'")["s"])
        return await self._free_cash() - reserved

    def _funding_amounts(self, position_id: int) -> list[float]:
        return [r["amount_usd"] for r in self.store.q("SELECT amount_usd FROM funding_payments WHERE position_id = ?", (position_id,))]

    # ------------------------------------------------------------------ trading state

    def trading_state(self) -> tuple[TradingState, str]:
        """Read from the database every time, so `basis-mcp resume` takes effect on a running server."""
        return (self.store.get_meta("trading_state") or "ACTIVE"), (self.store.get_meta("trading_state_reason") or "")  # type: ignore[return-value]

    def set_trading_state(self, state: TradingState, reason: str, data: dict[str, Any]) -> None:
        current, _ = self.trading_state()
        if current == "HALTED" and state == "REDUCING":
            return  # HALTED is the stronger state; only the operator leaves it
        if current == state and self.store.get_meta("trading_state_reason") == reason:
            return
        with self.store.tx():
            self.store.set_meta("trading_state", state)
            self.store.set_meta("trading_state_reason", reason)
            self.store.set_meta("trading_state_since", repr(self.now()))
        self.alert("critical", f"state_{state.lower()}", f"trading state {current} → {state}: {reason}", {"from": current, "to": state, **data})

    def allowlist(self) -> list[str]:
        allowed = self.settings.symbol_allowlist
        return [s for s in self.feed.symbols if allowed is None or s in allowed]

    def orders_last_minute(self) -> int:
        """Orders in the last 60 s of market time (wall time live; simulated time in replay, so a fast
        replay is judged by the pace of its own market, not by how quickly the machine runs it)."""
        return int(self.store.one("SELECT COUNT(*) AS n FROM orders WHERE created_at > ?", (self.now() - 60.0,))["n"])

    def realised_vol_1h_pct(self, snap: Snapshot) -> float | None:
        if snap.prev_perp is None:
            return None
        return realised_vol_1h_pct(snap.mark_high, snap.mark_low, snap.prev_perp, snap.perp)

    async def _venue_holdings(self) -> tuple[dict[str, float], dict[str, Any]]:
        balances = await self.venue.fetch_balances()
        perps = {}
        for sym in self.feed.symbols:
            p = await self.venue.fetch_perp_position(sym)
            if p is not None:
                perps[sym] = p
        return balances, perps

    def _marks(self, row) -> dict[str, float]:
        """Prices an open position is valued at: spot mid and the perp's mark price (what the venue
        values the perp at), or the last fill prices when there is no market data."""
        try:
            snap = self.feed.snapshot(row["symbol"])
            return {"spot": snap.spot, "perp": snap.mark}
        except MarketDataUnavailable:
            last = {f["market"]: f["price"] for f in self._fills(row["id"])}
            return {"spot": last.get("spot", 0.0), "perp": last.get("perp", 0.0)}

    def book_pnl(self) -> tuple[float, list[PnL]]:
        """(realized P&L of finished positions, the mark-to-market P&L of each open one), from the
        desk's own ledger: fills, fees and funding. This — not the account's total value — is
        what the drawdown limit is measured on, so assets in the account that the desk does not
        manage (or deposits and withdrawals) never move it."""
        realized = float(self.store.one(
            "SELECT COALESCE(SUM(realized_pnl_usd), 0) AS s FROM positions WHERE status IN ('closed','liquidated','failed')"
        )["s"])
        opens = [pnl(self._fills(r["id"]), self._funding_amounts(r["id"]), self._marks(r))
                 for r in self.store.q("SELECT * FROM positions WHERE status IN ('opening','open','closing') ORDER BY id")]
        return realized, opens

    def equity_usd(self) -> float:
        """Capital plus everything the desk has made or lost on it (realized + open mark-to-market)."""
        realized, opens = self.book_pnl()
        return self.capital_usd + realized + sum(p.total_usd for p in opens)

    async def account_equity_usd(self) -> float:
        """Everything in the venue account at mid/mark: USDT, spot coins, isolated margin and
        unrealised perp P&L. On paper it equals `equity_usd`; live the account may hold more."""
        balances, perps = await self._venue_holdings()
        equity = balances.get("USDT", 0.0)
        for asset, qty in balances.items():
            if asset != "USDT" and abs(qty) > 1e-12:
                try:
                    equity += qty * self.feed.snapshot(asset).spot
                except (MarketDataUnavailable, KeyError):
                    pass
        for sym, p in perps.items():
            mark = self.feed.snapshot(sym).mark
            equity += p.isolated_wallet_usd + p.quantity * (mark - p.entry_price)
        return equity

    async def cash_discrepancy_usd(self) -> float:
        """(venue USDT + isolated wallets) − what the desk's fills and funding imply.

        Identity: USDT + Σ wallets = capital + Σ fill cash flows − fees + funding
        + Σ over open perps of (signed quantity × venue entry price).
        """
        balances, perps = await self._venue_holdings()
        venue_side = balances.get("USDT", 0.0) + sum(p.isolated_wallet_usd for p in perps.values())
        flows = self.store.one(
            "SELECT COALESCE(SUM(CASE WHEN side = 'sell' THEN quantity * price ELSE -quantity * price END), 0) AS cash,"
            " COALESCE(SUM(fee_usd), 0) AS fees FROM fills")
        funding = float(self.store.one("SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")["s"])
        open_perp = sum(p.quantity * p.entry_price for p in perps.values())
        desk_side = self.capital_usd + flows["cash"] - flows["fees"] + funding + open_perp
        return venue_side - desk_side

    # ================================================================== z-score history

    def _sample_bucket(self, t: float) -> int:
        step = self.settings.zscore_sample_seconds
        return int(t // step * step)

    def _warm_history(self) -> None:
        """First start in replay: backfill one window of samples (the last ``window`` fresh bars) before now."""
        if not self.clock.simulated:
            return
        now = self.now()
        w = self.settings.zscore_window
        rows = []
        for sym in self.feed.symbols:
            have = self.store.one("SELECT COUNT(*) AS n FROM basis_samples WHERE symbol = ? AND ts <= ?", (sym, now))["n"]
            if have >= w:
                continue
            # the window is the last `w` fresh samples, not the last `w` hours: reach back past any gaps
            h = self.feed.h[sym]
            times, basis = self.feed.basis_series(sym, h.t0, now)
            times, basis = times[-w:], basis[-w:]
            for t, b in zip(times.tolist(), basis.tolist(), strict=True):
                i = h.index_at(t)
                rows.append((sym, int(t), float(h.spot[i]), float(h.perp[i]), float(b)))
        if rows:
            with self.store.tx():
                self.store.conn.executemany(
                    "INSERT OR IGNORE INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES (?,?,?,?,?)", rows
                )

    async def _warm_history_live(self) -> None:
        """Live: backfill one window of hourly samples from the venue's klines (best effort)."""
        w = min(self.settings.zscore_window, 1000)
        for sym in self.feed.symbols:
            have = self.store.one("SELECT COUNT(*) AS n FROM basis_samples WHERE symbol = ?", (sym,))["n"]
            if have >= w:
                continue
            try:
                rows = await self.feed.basis_history(sym, w)
            except (VenueError, VenueTimeout) as e:
                self.audit("system", "zscore_warmup_skipped", {"symbol": sym}, "warning", str(e))
                continue
            with self.store.tx():
                self.store.conn.executemany(
                    "INSERT OR IGNORE INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES (?,?,?,?,?)",
                    [(sym, t, sp, pp, (pp - sp) / sp * 100.0) for t, sp, pp in rows],
                )

    def _load_tracker(self, symbol: str) -> None:
        tr = RollingZScore(self.settings.zscore_window)
        rows = self.store.q(
            "SELECT basis_pct FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
            (symbol, self.now(), self.settings.zscore_window),
        )
        for r in reversed(rows):
            tr.add(r["basis_pct"])
        self.z[symbol] = tr
        last = self.store.one("SELECT MAX(ts) AS t FROM basis_samples WHERE symbol = ?", (symbol,))
        self._last_sample_ts[symbol] = last["t"] if last and last["t"] is not None else None

    def _queue_sample(self, snap: Snapshot) -> None:
        """Queue a basis sample if both legs were observed in the current bucket."""
        bucket = self._sample_bucket(snap.now)
        if self._sample_bucket(snap.spot_time) != bucket or self._sample_bucket(snap.perp_time) != bucket:
            return
        if self._last_sample_ts.get(snap.symbol) is not None and bucket <= self._last_sample_ts[snap.symbol]:
            return
        self._last_sample_ts[snap.symbol] = bucket
        self._pending_samples.append((snap.symbol, bucket, snap.spot, snap.perp, snap.basis_pct))

    def _flush_samples(self, extra_meta: dict[str, str] | None = None) -> int:
        rows = self._pending_samples
        if not rows and not extra_meta:
            return 0
        self._pending_samples = []
        with self.store.tx():
            self.store.conn.executemany(
                "INSERT OR IGNORE INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES (?,?,?,?,?)", rows
            )
            for k, v in (extra_meta or {}).items():
                self.store.set_meta(k, v)
        for sym, _, _, _, b in rows:
            self.z[sym].add(b)
        return len(rows)

    # ================================================================== read-only tools

    async def scan(self, symbols: list[str] | None, venues: list[str] | None = None) -> ScanBasisOutput:
        syms = self.feed.symbols if not symbols else list(dict.fromkeys(self.resolve(s, "symbols") for s in symbols))
        feeds = list(self.feeds.values())
        if venues:
            unknown = [v for v in venues if v.lower() not in self.feeds]
            if unknown:
                raise Rejected("venues", unknown[0], f"not a venue this server watches ({', '.join(self.feeds)})")
            feeds = [self.feeds[v.lower()] for v in venues]
        await self.ensure_fresh()
        snaps: list[BasisSnapshot] = []
        unavailable: list[Unavailable] = []
        for feed in feeds:
            for sym in syms:
                try:
                    snap = feed.snapshot(sym)
                except MarketDataUnavailable as e:
                    unavailable.append(Unavailable(symbol=sym, reason=str(e)))
                    continue
                if feed is self.feed:
                    self._queue_sample(snap)
                snaps.append(self._snapshot_out(snap))
        self._flush_samples()
        for s in snaps:  # z after the flush so this snapshot's own sample counts; z is kept for the trading venue
            tr = self.z.get(s.symbol)
            if tr is None or s.venue != self.feed.venue:
                continue
            s.zscore = _r(tr.zscore(s.basis_pct), 6)
            s.zscore_samples = tr.n
        snaps.sort(key=lambda s: s.basis_pct, reverse=True)
        return ScanBasisOutput(market_time=iso(self.now()) or "", mode=self.mode, snapshots=snaps, unavailable=unavailable)

    def _snapshot_out(self, snap: Snapshot) -> BasisSnapshot:
        return BasisSnapshot(
            symbol=snap.symbol,
            venue=snap.venue,
            market_time=iso(snap.now) or "",
            spot_price=snap.spot,
            perp_price=snap.perp,
            mark_price=snap.mark,
            basis_usd=_r(snap.basis_usd, 8) or 0.0,
            basis_pct=_r(snap.basis_pct, 8) or 0.0,
            zscore=None,
            zscore_samples=0,
            funding_rate_pct=_r(snap.funding_rate * 100, 8) or 0.0,
            funding_rate_source=snap.funding_rate_source,
            funding_rate_8h_pct=_r(funding_8h_pct(snap.funding_rate, snap.funding_interval_hours), 8) or 0.0,
            funding_apr_pct=_r(funding_apr_pct(snap.funding_rate, snap.funding_interval_hours), 6) or 0.0,
            funding_interval_hours=snap.funding_interval_hours,
            next_funding_time=iso(snap.next_funding_time) or "",
            seconds_to_funding=snap.seconds_to_funding,
            data_age_seconds=snap.data_age_seconds,
            spot_gap=snap.perp_time - snap.spot_time >= 60.0,
            mark_is_proxy=snap.mark_is_proxy,
        )

    def compute_zscore(self, symbol: str, window: int) -> ZScoreOutput:
        sym = self.resolve(symbol)
        self._flush_samples()
        tr = self.z[sym]
        if window == tr.window:
            values = tr.values()
        else:
            rows = self.store.q(
                "SELECT basis_pct FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
                (sym, self.now(), window),
            )
            values = np.array([r["basis_pct"] for r in reversed(rows)], dtype=np.float64)
        st = zscore_stats(values, window)
        if st.n and window == tr.window:  # the O(1) tracker is the reference for its own window
            st = st.__class__(**{**st.__dict__, "zscore": tr.zscore(st.latest), "mean": tr.mean, "std": tr.std})
        span = self.store.q(
            "SELECT ts FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
            (sym, self.now(), max(st.n, 1)),
        )
        return ZScoreOutput(
            symbol=sym,
            window=window,
            samples=st.n,
            ready=st.zscore is not None,
            basis_pct=_r(st.latest, 8),
            zscore=_r(st.zscore, 6),
            mean_pct=_r(st.mean, 8),
            std_pct=_r(st.std, 8),
            p10_pct=_r(st.p10, 8),
            p90_pct=_r(st.p90, 8),
            min_pct=_r(st.minimum, 8),
            max_pct=_r(st.maximum, 8),
            first_sample_time=iso(span[-1]["ts"]) if span and st.n else None,
            last_sample_time=iso(span[0]["ts"]) if span and st.n else None,
            sample_interval_seconds=self.settings.zscore_sample_seconds,
        )

    def _funding_assumption(self, sym: str, snap: Snapshot, override_8h_pct: float | None,
                            playbook: str = "convergence") -> tuple[float, str]:
        """(rate per interval as a fraction, source). carry: the carry lookback mean the entry rule reads."""
        if override_8h_pct is not None:
            return override_8h_pct / 100.0 * snap.funding_interval_hours / 8.0, "given"
        if playbook == "carry":
            fc = self.signals(sym, snap).funding_carry_8h_pct
            days = self.settings.carry_lookback_days
            if fc is not None:
                return fc / 100.0 / 8.0 * snap.funding_interval_hours, f"mean_settled_{days:g}d"
        mean = self.feed.mean_funding_rate(sym, self.now() - 30 * 86400, self.now())
        if mean is not None:
            return mean, "mean_settled_30d"
        return snap.funding_rate, snap.funding_rate_source

    def signals(self, sym: str, snap: Snapshot) -> Signals:
        """What the playbook rules read now: the basis averaged over the funding window (fresh
        samples only), its std over the z-score window, and the funding means (per 8 h, percent)."""
        r = self.settings.exit_rules
        now = self.now()
        row = self.store.one("SELECT AVG(basis_pct) AS a, COUNT(*) AS n FROM basis_samples WHERE symbol = ? AND ts > ? AND ts <= ?",
                             (sym, now - r.basis_smoothing_hours * 3600.0, now))
        tr = self.z.get(sym)
        std = tr.std if tr is not None and tr.n >= ZSCORE_MIN_SAMPLES else None
        iv = snap.funding_interval_hours

        def mean_8h(span_s: float) -> float | None:
            m = self.feed.mean_funding_rate(sym, now - span_s, now)
            return None if m is None else float(np.round(m * 8.0 / iv * 100.0, FUND_DIGITS))

        return Signals(basis_pct=snap.basis_pct, basis_smooth_pct=row["a"] if row and row["n"] else None, basis_std_pct=std,
                       funding_recent_8h_pct=mean_8h(r.funding_exit_hours * 3600.0),
                       funding_carry_8h_pct=mean_8h(r.carry_lookback_days * 86400.0))

    def carry_refusal(self, sym: str, snap: Snapshot, qty: float, hold_days: float) -> str | None:
        """Why the carry entry rule refuses ``qty`` of ``sym`` now (None: it may enter)."""
        r = self.settings.exit_rules
        fc = self.signals(sym, snap).funding_carry_8h_pct
        rate = 0.0 if fc is None else fc / 100.0 / 8.0 * snap.funding_interval_hours
        n = settlements_in(snap.seconds_to_funding, snap.funding_interval_hours, hold_days * 86400.0)
        fees, slip = self.settings.spec(sym).costs.round_trip_usd(qty, snap.spot, snap.perp)
        return carry_entry_check(fc, expected_carry_usd(qty, snap.perp, rate, n), fees + slip, r)

    def hold_limit(self, playbook: str) -> float:
        return self.settings.carry_max_hold_days if playbook == "carry" else self.settings.max_hold_days

    async def estimate_net_apy(
        self,
        symbol: str,
        notional_usd: float,
        hold_days: float,
        leverage: float | None,
        funding_rate_8h_pct: float | None,
        exit_basis_pct: float,
        basis_pct: float | None,
        playbook: str = "convergence",
    ) -> NetApyEstimate:
        sym = self.resolve(symbol)
        lev = self._check_leverage(leverage)
        await self.ensure_fresh()
        snap = self.snapshot(sym)
        entry_basis = snap.basis_pct if basis_pct is None else basis_pct
        spot = snap.spot
        perp = spot * (1 + entry_basis / 100.0)
        rate, source = self._funding_assumption(sym, snap, funding_rate_8h_pct, playbook)
        q = notional_usd / spot
        costs = self.settings.spec(sym).costs
        fees, slip = costs.round_trip_usd(q, spot, perp)
        slip_source = "model (half-spread + sqrt impact)"
        if self.live:
            try:
                sb = await self.feed.book_slippage(sym, "spot", q * spot)
                pb = await self.feed.book_slippage(sym, "perp", q * perp)
                if sb and pb:
                    slip = q * spot * (sb[0] + sb[1]) + q * perp * (pb[0] + pb[1])
                    slip_source = f"{self.feed.venue} order books now (both legs, in and out)"
            except (VenueError, VenueTimeout):
                pass
        est = estimate_net_return(
            notional_usd=notional_usd,
            spot_price=spot,
            perp_price=perp,
            hold_days=hold_days,
            exit_basis_pct=exit_basis_pct,
            funding_rate=rate,
            funding_interval_hours=snap.funding_interval_hours,
            seconds_to_next_funding=snap.seconds_to_funding,
            leverage=lev,
            entry_exit_cost_usd=(fees, slip),
        )
        if playbook == "carry":
            why = self.carry_refusal(sym, snap, q, hold_days)
            cr = self.settings.exit_rules
            note = (f"carry: enters when the last {cr.carry_lookback_days:g} days of funding averaged ≥ "
                    f"{cr.carry_entry_8h_pct:g}%/8h and the funding expected over the hold pays the round trip "
                    f"{cr.carry_cost_cover:g}x; the server exits when that average falls below {cr.carry_exit_8h_pct:g}%/8h "
                    f"(max hold {cr.carry_max_hold_days:g} d). " + ("Passes now." if why is None else f"Refused now: {why}."))
            entry_ok = why is None
        else:
            entry_ok = est.net_usd > 0
            note = ("convergence: enters when the expected net over the hold is > 0 (basis converging to exit_basis_pct, "
                    f"funding, costs); max hold {self.settings.max_hold_days:g} d. "
                    + ("Passes now." if entry_ok else "Refused now: the expected net is not positive."))
        return NetApyEstimate(
            symbol=sym,
            playbook=playbook,
            playbook_entry_ok=entry_ok,
            playbook_note=note,
            notional_usd=notional_usd,
            quantity=q,
            hold_days=hold_days,
            leverage=lev,
            entry_basis_pct=_r(entry_basis, 8) or 0.0,
            exit_basis_pct=exit_basis_pct,
            funding_rate_8h_pct=_r(funding_8h_pct(rate, snap.funding_interval_hours), 8) or 0.0,
            funding_rate_source=source,
            settlements_in_hold=est.settlements,
            basis_capture_usd=_r(est.basis_capture_usd, 6) or 0.0,
            funding_usd=_r(est.funding_usd, 6) or 0.0,
            fees_usd=_r(est.fees_usd, 6) or 0.0,
            slippage_usd=_r(est.slippage_usd, 6) or 0.0,
            net_usd=_r(est.net_usd, 6) or 0.0,
            capital_employed_usd=_r(est.capital_employed_usd, 6) or 0.0,
            net_return_pct=_r(est.net_return_pct, 6) or 0.0,
            apy_pct=_r(est.apy_pct, 6) or 0.0,
            apy_on_notional_pct=_r(est.apy_on_notional_pct, 6) or 0.0,
            break_even_hold_days=_r(est.break_even_hold_days, 4),
            slippage_source=slip_source,
            formula=(
                "net = q*(basis_entry - basis_exit) [once] + q*perp*rate*settlements_in_hold "
                f"- fees (spot {costs.spot.taker_fee * 100:g}% + perp {costs.perp.taker_fee * 100:g}%, in and out) "
                "- slippage (half-spread + sqrt impact, in and out); "
                "apy = net / (notional + notional/leverage) / hold_days * 365"
            ),
        )

    async def _caps(self, sym: str) -> list[Cap]:
        tier = self.settings.tier_of(sym)
        cap = self.capital_usd
        single = self.settings.tier_single_position[tier] * cap
        alloc = self.settings.tier_allocation[tier] * cap
        used = self._tier_in_use(tier)
        return [
            Cap("max_position_notional", self.settings.max_position_notional_usd, "operator's per-position notional cap"),
            Cap("tier_single_position", single, f"{tier} tier: one position ≤ {self.settings.tier_single_position[tier]:.0%} of ${cap:,.0f} capital"),
            Cap(
                "tier_allocation_headroom",
                max(alloc - used, 0.0),
                f"{tier} tier: ≤ {self.settings.tier_allocation[tier]:.0%} of capital (${alloc:,.0f}); ${used:,.2f} already in use",
            ),
        ]

    async def size(self, symbol: str, leverage: float | None, target_notional_usd: float | None,
                   playbook: str = "convergence") -> SizePositionOutput:
        sym = self.resolve(symbol)
        lev = self._check_leverage(leverage)
        snap = self.snapshot(sym)
        spec = self.settings.spec(sym)
        free = await self.free_capital_usd()
        res = size_position(
            spot_price=snap.spot,
            leverage=lev,
            costs=spec.costs,
            free_capital_usd=free,
            caps=await self._caps(sym),
            qty_step=spec.qty_step,
            min_notional_usd=spec.min_notional_usd,
            target_notional_usd=target_notional_usd,
            perp_price=snap.perp,
        )
        return SizePositionOutput(
            symbol=sym,
            playbook=playbook,
            max_hold_days=self.hold_limit(playbook),
            tier=self.settings.tier_of(sym),
            leverage=lev,
            recommended_notional_usd=_r(res.notional_usd, 6) or 0.0,
            quantity=res.quantity,
            binding_cap=res.binding_cap,
            caps=[CapOut(name=c.name, limit_usd=_r(c.limit_usd, 6) or 0.0, detail=c.detail) for c in res.caps],
            free_capital_usd=_r(free, 6) or 0.0,
            capital_required_usd=_r(res.capital_required_usd, 6) or 0.0,
            margin_usd=_r(res.margin_usd, 6) or 0.0,
            entry_costs_usd=_r(res.fees_and_slippage_usd, 6) or 0.0,
        )

    # ================================================================== positions view

    def _fills(self, position_id: int) -> list[dict[str, Any]]:
        rows = self.store.q(
            "SELECT f.*, o.client_order_id, o.purpose FROM fills f JOIN orders o ON o.id = f.order_id"
            " WHERE f.position_id = ? ORDER BY f.id",
            (position_id,),
        )
        return [dict(r) for r in rows]

    def _position_out(self, row) -> PositionOut:
        fills = self._fills(row["id"])
        p = pnl(fills, self._funding_amounts(row["id"]))
        return PositionOut(
            position_id=row["id"],
            symbol=row["symbol"],
            strategy=row["strategy"],
            playbook=row["playbook"],
            status=row["status"],
            quantity=row["quantity"],
            leverage=row["leverage"],
            notional_usd=_r(row["notional_usd"], 6) or 0.0,
            entry_spot_price=row["entry_spot"],
            entry_perp_price=row["entry_perp"],
            entry_basis_pct=_r(row["entry_basis_pct"], 8),
            exit_spot_price=row["exit_spot"],
            exit_perp_price=row["exit_perp"],
            exit_basis_pct=_r(row["exit_basis_pct"], 8),
            margin_usd=_r(row["margin_usd"], 8),
            opened_at=iso(row["opened_at"]) or "",
            closed_at=iso(row["closed_at"]),
            close_reason=row["close_reason"],
            pnl=self._pnl_out(p) if row["status"] in ("closed", "liquidated", "failed") else PnLBreakdown(
                basis_pnl_usd=0.0,
                funding_usd=_r(p.funding_usd, 8) or 0.0,
                fees_usd=_r(p.fees_usd, 8) or 0.0,
                slippage_usd=_r(p.slippage_usd, 8) or 0.0,
                total_usd=_r(p.funding_usd - p.fees_usd - p.slippage_usd, 8) or 0.0,
            ),
            fills=[
                FillOut(
                    order_id=f["order_id"],
                    client_order_id=f["client_order_id"],
                    purpose=f["purpose"],
                    market=f["market"],
                    side=f["side"],
                    quantity=f["quantity"],
                    price=f["price"],
                    mid_price=f["mid_price"],
                    fee_usd=f["fee_usd"],
                    time=iso(f["ts"]) or "",
                )
                for f in fills
            ],
        )

    @staticmethod
    def _pnl_out(p) -> PnLBreakdown:
        return PnLBreakdown(
            basis_pnl_usd=_r(p.basis_pnl_usd, 8) or 0.0,
            funding_usd=_r(p.funding_usd, 8) or 0.0,
            fees_usd=_r(p.fees_usd, 8) or 0.0,
            slippage_usd=_r(p.slippage_usd, 8) or 0.0,
            total_usd=_r(p.total_usd, 8) or 0.0,
        )

    async def _perp_risk(self, sym: str, mark: float) -> tuple[float | None, float | None, float]:
        """(liquidation price, margin ratio as a fraction, isolated wallet) from the venue."""
        pos = await self.venue.fetch_perp_position(sym)
        if pos is None:
            return None, None, 0.0
        table = self.settings.spec(sym).brackets
        lp = mm.liquidation_price(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, table)
        ratio = mm.margin_ratio(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, mark, table)
        return lp, ratio, pos.isolated_wallet_usd

    async def check_delta(self, position_id: int | None) -> CheckDeltaOutput:
        if position_id is not None:
            row = self.store.one("SELECT * FROM positions WHERE id = ?", (position_id,))
            if row is None:
                raise Rejected("position_id", position_id, "no such position")
            if row["status"] not in OPEN_STATES:
                raise Rejected("position_id", position_id, f"position is {row['status']}, not open")
            rows = [row]
        else:
            rows = self.store.q("SELECT * FROM positions WHERE status IN ('opening','open','closing') ORDER BY id")
        reports = []
        for row in rows:
            reports.append(await self._delta_report(row))
        return CheckDeltaOutput(market_time=iso(self.now()) or "", positions=reports)

    async def _delta_report(self, row) -> DeltaReport:
        sym = row["symbol"]
        snap = self.snapshot(sym)
        fills = self._fills(row["id"])
        spot_q, perp_q = leg_quantities(fills)
        lp, ratio, wallet = await self._perp_risk(sym, snap.mark)
        spot_val = spot_q * snap.spot
        perp_val = perp_q * snap.mark
        # delta is in base units: equal quantities are hedged whatever the basis
        net = (spot_q + perp_q) * snap.spot
        base = max(abs(spot_q), abs(perp_q))
        imb = abs(spot_q + perp_q) / base * 100 if base > 0 else 0.0
        funding = sum(self._funding_amounts(row["id"]))
        upnl = pnl(fills, [], {"spot": snap.spot, "perp": snap.perp}).price_pnl_usd
        ratio_pct = ratio * 100 if ratio is not None and math.isfinite(ratio) else 0.0
        dist = (lp - snap.mark) / snap.mark * 100 if lp else 0.0
        if ratio is not None and ratio < self.settings.margin_close_ratio:
            action, reason = "close", f"margin ratio {ratio_pct:.0f}% is below {self.settings.margin_close_ratio * 100:.0f}%: close both legs"
        elif ratio is not None and ratio < self.settings.margin_add_ratio:
            action, reason = "add_margin", f"margin ratio {ratio_pct:.0f}% is below {self.settings.margin_add_ratio * 100:.0f}%: add margin or reduce"
        elif imb > self.settings.max_imbalance_pct:
            action, reason = "rebalance", f"legs differ by {imb:.2f}% of quantity (> {self.settings.max_imbalance_pct:g}%)"
        else:
            action, reason = "hold", "hedged; margin healthy"
        return DeltaReport(
            position_id=row["id"],
            symbol=sym,
            spot_quantity=spot_q,
            perp_quantity=perp_q,
            spot_value_usd=_r(spot_val, 6) or 0.0,
            perp_value_usd=_r(perp_val, 6) or 0.0,
            net_delta_usd=_r(net, 6) or 0.0,
            imbalance_pct=_r(imb, 6) or 0.0,
            mark_price=snap.mark,
            margin_ratio_pct=_r(ratio_pct, 4) or 0.0,
            liquidation_price=_r(lp or 0.0, 6) or 0.0,
            distance_to_liquidation_pct=_r(dist, 4) or 0.0,
            isolated_margin_usd=_r(wallet, 8) or 0.0,
            unrealized_pnl_usd=_r(upnl, 6) or 0.0,
            funding_received_usd=_r(funding, 8) or 0.0,
            current_basis_pct=_r(snap.basis_pct, 8) or 0.0,
            entry_basis_pct=_r(row["entry_basis_pct"], 8) or 0.0,
            recommended_action=action,
            reason=reason,
        )

    async def seconds_to_funding(self, symbol: str) -> SecondsToFundingOutput:
        sym = self.resolve(symbol)
        snap = self.snapshot(sym)
        expected = None
        if self._open_position(sym) is not None:
            pos = await self.venue.fetch_perp_position(sym)
            if pos is not None:
                expected = -pos.quantity * snap.mark * snap.funding_rate
        return SecondsToFundingOutput(
            symbol=sym,
            seconds_to_funding=snap.seconds_to_funding,
            next_funding_time=iso(snap.next_funding_time) or "",
            funding_interval_hours=snap.funding_interval_hours,
            funding_rate_pct=_r(snap.funding_rate * 100, 8) or 0.0,
            funding_rate_source=snap.funding_rate_source,
            expected_payment_usd=_r(expected, 8),
        )

    async def portfolio(self, include_closed: int = 0) -> PortfolioOutput:
        cash = await self._free_cash()
        account = await self.account_equity_usd()
        equity = self.equity_usd()
        open_rows = self.store.q("SELECT * FROM positions WHERE status IN ('opening','open','closing') ORDER BY id")
        realized, opens = self.book_pnl()
        unreal = sum(p.price_pnl_usd for p in opens)
        funding = float(self.store.one("SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")["s"])
        fees = float(self.store.one("SELECT COALESCE(SUM(fee_usd), 0) AS s FROM fills")["s"])
        in_use = sum(r["notional_usd"] + (r["margin_usd"] or 0.0) for r in open_rows)
        tiers = [
            TierUsage(
                tier=t,
                allocation_limit_usd=self.settings.tier_allocation[t] * self.capital_usd,
                in_use_usd=_r(self._tier_in_use(t), 6) or 0.0,
                single_position_limit_usd=self.settings.tier_single_position[t] * self.capital_usd,
            )
            for t in ("anchor", "mid", "speculative")
        ]
        closed = self.store.q(
            "SELECT * FROM positions WHERE status NOT IN ('opening','open','closing') ORDER BY id DESC LIMIT ?", (include_closed,)
        )
        return PortfolioOutput(
            mode=self.mode,
            market_time=iso(self.now()) or "",
            capital_usd=self.capital_usd,
            cash_usd=_r(cash, 8) or 0.0,
            equity_usd=_r(equity, 8) or 0.0,
            account_equity_usd=_r(account, 8) or 0.0,
            pnl_since_start_usd=_r(equity - self.capital_usd, 8) or 0.0,
            realized_pnl_usd=_r(realized, 8) or 0.0,
            unrealized_pnl_usd=_r(unreal, 8) or 0.0,
            funding_received_usd=_r(funding, 8) or 0.0,
            fees_paid_usd=_r(fees, 8) or 0.0,
            capital_in_use_usd=_r(in_use, 8) or 0.0,
            tiers=tiers,
            open_positions=[self._position_out(r) for r in open_rows],
            closed_positions=[self._position_out(r) for r in closed],
        )

    async def risk_status(self) -> RiskStatusOutput:
        """Every limit next to its current reading."""
        state, reason = self.trading_state()
        equity = self.equity_usd()
        cap = self.capital_usd
        dd = drawdown(equity, cap)
        s = self.settings
        free = await self.free_capital_usd()
        L = LimitReading
        largest = max([r["notional_usd"] for r in self.store.q("SELECT notional_usd FROM positions WHERE status = 'open'")] or [0.0])
        limits = [
            L(name="leverage", limit=min(s.max_leverage, HARD.max_leverage), hard_ceiling=HARD.max_leverage,
              current=max([r["leverage"] for r in self.store.q("SELECT leverage FROM positions WHERE status = 'open'")] or [0.0]),
              unit="x (highest open position)", ok=True),
            L(name="default_leverage", limit=s.default_leverage, hard_ceiling=HARD.max_leverage, current=None, unit="x", ok=True),
            L(name="max_position_notional", limit=s.max_position_notional_usd, hard_ceiling="tier single-position cap",
              current=round(largest, 6), unit="USD at entry mid (largest open position)",
              ok=largest <= s.max_position_notional_usd + 1e-6),
            L(name="drawdown", limit=s.max_drawdown * 100, hard_ceiling=HARD.max_drawdown * 100, current=round(dd * 100, 4),
              unit="% of capital; above it the desk goes REDUCING", ok=dd <= s.max_drawdown),
            L(name="orders_per_minute", limit=s.max_orders_per_minute, hard_ceiling=HARD.max_orders_per_minute,
              current=self.orders_last_minute(), unit="orders in the last 60 s", ok=self.orders_last_minute() <= s.max_orders_per_minute),
            L(name="max_hold_days", limit=s.max_hold_days, hard_ceiling=HARD.max_hold_days, current=None, unit="days", ok=True),
            L(name="margin_add_ratio", limit=s.margin_add_ratio * 100, hard_ceiling=150.0, current=None,
              unit="% margin ratio: watchdog adds margin below", ok=True),
            L(name="margin_close_ratio", limit=s.margin_close_ratio * 100, hard_ceiling=130.0, current=None,
              unit="% margin ratio: watchdog closes below", ok=True),
            L(name="max_imbalance", limit=s.max_imbalance_pct, hard_ceiling=2.0, current=None, unit="% of quantity", ok=True),
            L(name="basis_stop_multiple", limit=s.basis_stop_multiple, hard_ceiling=3.0, current=None, unit="x entry basis", ok=True),
            L(name="symbol_allowlist", limit=",".join(self.allowlist()), hard_ceiling=None, current=None, unit="symbols", ok=True),
        ]
        for t in ("anchor", "mid", "speculative"):
            used = self._tier_in_use(t)
            limits.append(L(name=f"tier_allocation_{t}", limit=round(s.tier_allocation[t] * cap, 2),
                            hard_ceiling=round(HARD.allocation(t) * cap, 2), current=round(used, 2), unit="USD notional",
                            ok=used <= s.tier_allocation[t] * cap + 1e-6))
            limits.append(L(name=f"tier_single_position_{t}", limit=round(s.tier_single_position[t] * cap, 2),
                            hard_ceiling=round(HARD.single(t) * cap, 2), current=None, unit="USD notional", ok=True))
        for sym in self.feed.symbols:
            try:
                snap = self.feed.snapshot(sym)
            except MarketDataUnavailable:
                continue
            vol = self.realised_vol_1h_pct(snap)
            limits.append(L(name=f"realised_vol_1h_{sym}", limit=s.max_realised_vol_1h_pct, hard_ceiling=HARD.max_realised_vol_1h * 100,
                            current=None if vol is None else round(vol, 4), unit="%/h (entry circuit breaker)",
                            ok=vol is None or vol <= s.max_realised_vol_1h_pct))
            limits.append(L(name=f"data_age_{sym}", limit=self._stale_limit(), hard_ceiling=None,
                            current=round(snap.data_age_seconds, 1), unit="seconds", ok=snap.data_age_seconds <= self._stale_limit()))
        return RiskStatusOutput(
            trading_state=state,
            trading_state_reason=reason,
            market_time=iso(self.now()) or "",
            equity_usd=_r(equity, 6) or 0.0,
            capital_usd=cap,
            drawdown_pct=_r(dd * 100, 6) or 0.0,
            free_capital_usd=_r(free, 6) or 0.0,
            venue_reachable=self.venue_down_seconds() == 0.0,
            limits=limits,
        )

    # ================================================================== backtest and charts

    async def backtest(self, inp: Any, ctx: Any) -> Any:
        """Run the backtest engine in a worker thread, reporting progress per symbol."""
        from pydantic import ValidationError

        from basis_mcp.backtest.chart import backtest_chart
        from basis_mcp.backtest.params import BacktestParams, parse_duration
        from basis_mcp.backtest.runner import load_markets, parse_when, run
        from basis_mcp.errors import Violation
        from basis_mcp.history import load_extract
        from basis_mcp.models import BacktestOutput
        from basis_mcp.tools.registry import WithImages

        fields = [k for k in BacktestParams.model_fields if k in type(inp).model_fields]
        try:
            delay = parse_duration(inp.fill_delay, "fill_delay")
        except ValueError as e:
            raise Rejected("fill_delay", inp.fill_delay, str(e).split(": ", 1)[-1]) from None
        try:
            params = BacktestParams(**{k: getattr(inp, k) for k in fields}, fill_delay_seconds=delay)
        except ValidationError as e:
            raise Rejected(violations=[Violation(".".join(map(str, er["loc"])) or "params", er.get("input"), er["msg"])
                                       for er in e.errors()]) from None
        histories = self.feed.h if self.clock.simulated else load_extract()
        if inp.end is None:
            end = self.now() if self.clock.simulated else float(max(h.t_end for h in histories.values()))
        else:
            end = parse_when("end", inp.end)
        if self.clock.simulated and end > self.now():
            raise Rejected("end", inp.end, f"in replay mode a backtest cannot look past the replay clock ({iso(self.now())})")
        markets = load_markets(histories, inp.symbols, inp.start, end, params, self.settings)

        async def report(done: float, total: float, msg: str) -> None:
            await ctx.report_progress(done, total, message=msg)

        def work():
            res = run(markets, params, "vectorized", lambda d, t, msg: anyio.from_thread.run(report, d, t, msg),
                      settings=self.settings)
            return res, (backtest_chart(res) if inp.chart else None)

        res, png = await anyio.to_thread.run_sync(work)
        data = res.to_json()
        out = BacktestOutput(
            symbols=data["symbols"], start=data["start"], end=data["end"], params=data["params"], summary=data["summary"],
            by_year=data["by_year"], by_symbol=data["by_symbol"], spot_gaps=data["spot_gaps"], trades=data["trades"][:200],
            trades_total=len(data["trades"]), fill_delay_sensitivity=data["fill_delay_sensitivity"],
            always_on_carry=data["always_on_carry"], stale_bars=data["stale_bars"],
        )
        return WithImages(out, [png] if png else [])

    async def plot_basis(self, symbol: str, days: float) -> Any:
        from basis_mcp.backtest.chart import basis_chart
        from basis_mcp.models import PlotBasisOutput
        from basis_mcp.tools.registry import WithImages

        sym = self.resolve(symbol)
        self._flush_samples()
        t1 = self.now()
        t0 = t1 - days * 86400.0
        rows = self.store.q("SELECT ts, basis_pct FROM basis_samples WHERE symbol = ? AND ts > ? AND ts <= ? ORDER BY ts", (sym, t0, t1))
        if not rows:
            raise Rejected("symbol", sym, f"no basis samples recorded in the last {days:g} days")
        times = np.array([r["ts"] for r in rows], dtype=np.float64)
        basis = np.array([r["basis_pct"] for r in rows])
        if self.clock.simulated:
            h = self.feed.h[sym]
            sel = (h.funding_time > t0) & (h.funding_time <= t1)
            f_t, f_r = h.funding_time[sel].astype(np.float64), h.funding_rate[sel]
        else:
            hist = [(t, r) for t, r, _ in self.feed.settled.get(sym, []) if t0 < t <= t1]
            f_t, f_r = np.array([t for t, _ in hist]), np.array([r for _, r in hist])
        window = max(min(self.settings.zscore_window, basis.size // 2), 2)
        png = await anyio.to_thread.run_sync(lambda: basis_chart(sym, times, basis, f_t, f_r, window))
        out = PlotBasisOutput(
            symbol=sym, from_time=iso(times[0]) or "", to_time=iso(times[-1]) or "", samples=int(basis.size),
            basis_pct_last=round(float(basis[-1]), 8), basis_pct_mean=round(float(basis.mean()), 8),
            basis_pct_std=round(float(basis.std()), 8), settlements=int(f_r.size),
            funding_rate_pct_mean=round(float(f_r.mean()) * 100, 8) if f_r.size else None,
        )
        return WithImages(out, [png])

    # ================================================================== live confirmations

    @property
    def confirmations_required(self) -> bool:
        return self.mode == "live" and self.settings.live_confirmation

    def _issue_confirmation(self, tool: str, args: dict[str, Any], summary: str, orders: list[dict[str, Any]]) -> ConfirmationRequest:
        token = secrets.token_urlsafe(24)
        now = self.now()
        ttl = self.settings.confirmation_ttl_seconds
        with self.store.tx():
            self.store.x(
                "INSERT INTO confirmations(token_hash, tool, args_hash, created_at, expires_at) VALUES (?,?,?,?,?)",
                (hashlib.sha256(token.encode()).hexdigest(), tool, self._args_hash(tool, args), now, now + ttl),
            )
        self.audit("desk", "confirmation_issued", {"tool": tool, **args}, "ok")
        return ConfirmationRequest(token=token, expires_at=iso(now + ttl) or "", expires_in_seconds=ttl, summary=summary, orders=orders)

    def _consume_confirmation(self, token: str, tool: str, args: dict[str, Any]) -> None:
        """Check a token against these exact arguments and spend it (inside the caller's transaction)."""
        h = hashlib.sha256(token.encode()).hexdigest()
        row = self.store.one("SELECT * FROM confirmations WHERE token_hash = ?", (h,))
        shown = "***"  # a credential: never echoed, not even in part
        if row is None:
            raise Rejected("confirmation_token", shown, "unknown token: call without a token first to get one; nothing was sent")
        if row["used_at"] is not None:
            raise Rejected("confirmation_token", shown, f"already used at {iso(row['used_at'])}: tokens are single use; nothing was sent")
        if self.now() > row["expires_at"]:
            raise Rejected("confirmation_token", shown, f"expired at {iso(row['expires_at'])}; ask for a new one; nothing was sent")
        if row["tool"] != tool or row["args_hash"] != self._args_hash(tool, args):
            raise Rejected("confirmation_token", shown, "issued for different arguments: repeat the exact call it was issued for; nothing was sent")
        cur = self.store.x("UPDATE confirmations SET used_at = ? WHERE token_hash = ? AND used_at IS NULL", (self.now(), h))
        if cur.rowcount != 1:
            raise Rejected("confirmation_token", shown, "already used: tokens are single use; nothing was sent")

    # ================================================================== idempotency

    @staticmethod
    def _args_hash(tool: str, args: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([tool, args], sort_keys=True, default=str).encode()).hexdigest()

    def _idempotent(self, key: str, tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM idempotency WHERE key = ?", (key,))
        if row is None:
            return None
        if row["tool"] != tool or row["args_hash"] != self._args_hash(tool, args):
            raise Rejected(
                "idempotency_key",
                key,
                f"already used for a different request ({row['tool']}); use a new key for a new trade",
            )
        result = json.loads(row["result_json"])
        if "error" in result:
            raise Rejected(
                violations=[
                    *Rejected("idempotency_key", key, "this key's earlier request failed; use a new key to try again").violations,
                    *Rejected("previous_error", result["error"], "stored outcome").violations,
                ]
            )
        return result

    def _key_in_flight(self, key: str) -> None:
        """A key whose trade has started but has no filed outcome yet (a leg's outcome is unknown,
        or an exit is still being completed) must not start a second trade."""
        row = self.store.one("SELECT id, status FROM positions WHERE entry_key = ? OR exit_key = ?", (key, key))
        if row is not None:
            pending = row["status"] in OPEN_STATES
            raise Rejected("idempotency_key", key, f"already used by position {row['id']} ({row['status']})"
                           + (", whose outcome is not settled yet; check portfolio_status" if pending else "")
                           + "; use a new key for a new trade")

    def _remember(self, key: str, tool: str, args: dict[str, Any], result: dict[str, Any]) -> None:
        self.store.x(
            "INSERT INTO idempotency(key, tool, args_hash, result_json, created_at) VALUES (?,?,?,?,?)",
            (key, tool, self._args_hash(tool, args), json.dumps(result, default=str), time.time()),
        )

    # ================================================================== trading

    def client_order_id(self, key: str, position_id: int, market: str, purpose: str, attempt: int = 0) -> str:
        """Deterministic id ≤ 36 chars, Binance-safe: derived from the idempotency key and this
        database's id (so a fresh database reusing position numbers never reuses an id the
        venue has already seen), numbered by attempt."""
        h = hashlib.sha256(f"{self._desk_id}:{key}".encode()).hexdigest()[:8]
        suffix = f"-{attempt}" if attempt else ""
        return f"bm-{position_id}-{market[0]}{purpose[0]}-{h}{suffix}"

    async def entry_readings(
        self, sym: str, notional_usd: float, lev: float, expected_hold_days: float, playbook: str = "convergence"
    ) -> tuple[EntryReadings, Snapshot, float]:
        """Everything the pre-trade rules look at, measured now. Returns (readings, snapshot, quantity)."""
        snap = self.snapshot(sym)
        spec = self.settings.spec(sym)
        qty = floor_to_step(notional_usd / snap.spot, spec.qty_step)
        rounded = qty * snap.spot
        costs = spec.costs
        expected_net = entry_expected_net_usd(
            qty=qty,
            spot=snap.spot,
            perp=snap.perp,
            leverage=lev,
            costs=costs,
            hold_days=expected_hold_days,
            funding_rate=self._funding_assumption(sym, snap, None)[0],
            funding_interval_hours=snap.funding_interval_hours,
            seconds_to_next_funding=snap.seconds_to_funding,
        )
        state, reason = self.trading_state()
        dup = self._open_position(sym)
        caps = [(c.name, c.limit_usd, c.detail) for c in await self._caps(sym)]
        allow = self.allowlist()
        r = EntryReadings(
            symbol=sym,
            state=state,
            state_reason=reason,
            allowlisted=sym in allow,
            allowlist=tuple(allow),
            leverage=lev,
            leverage_cap=min(self.settings.max_leverage, HARD.max_leverage),
            hard_leverage_cap=HARD.max_leverage,
            notional_usd=notional_usd,
            caps=caps,
            free_capital_usd=await self._free_capital_or_zero(),
            capital_required_usd=entry_capital_usd(qty, snap.spot, snap.perp, lev, costs) * (1 if self.clock.simulated else 1.002),
            data_age_seconds=snap.data_age_seconds,
            stale_limit_seconds=self._stale_limit(),
            realised_vol_1h_pct=self.realised_vol_1h_pct(snap),
            vol_limit_pct=self.settings.max_realised_vol_1h_pct,
            expected_net_usd=expected_net,
            expected_hold_days=expected_hold_days,
            duplicate_position_id=None if dup is None else dup["id"],
            orders_last_minute=self.orders_last_minute(),
            orders_per_minute_limit=self.settings.max_orders_per_minute,
            min_notional_usd=spec.min_notional_usd,
            quantity=qty,
            rounded_notional_usd=rounded,
            venue_reachable=self.venue_down_seconds() == 0.0,
            venue_down_seconds=self.venue_down_seconds(),
            playbook=playbook,
            carry_refusal=self.carry_refusal(sym, snap, qty, expected_hold_days) if playbook == "carry" else None,
            stop_now=self._stop_fires_at_entry(sym, snap),
        )
        return r, snap, qty

    def _stop_fires_at_entry(self, sym: str, snap: Snapshot) -> str | None:
        """An entry the basis stop would close at once (the smoothed basis already beyond it) is refused."""
        sig = self.signals(sym, snap)
        if sig.basis_smooth_pct is None:
            return None
        stop = stop_level_pct(snap.basis_pct, sig.basis_std_pct, self.settings.exit_rules)
        if sig.basis_smooth_pct > stop:
            return (f"the basis averaged over {self.settings.basis_smoothing_hours:g} h ({sig.basis_smooth_pct:.4f}%) is "
                    f"already beyond the stop this entry would get ({stop:.4f}%)")
        return None

    async def enter(
        self, symbol: str, notional_usd: float, leverage: float | None, key: str, strategy: str,
        expected_hold_days: float | None = None, confirmation_token: str | None = None, playbook: str = "convergence",
    ) -> EnterTradeOutput:
        if self.mode == "readonly":
            raise Rejected("mode", "readonly", "this server was started read-only: no trading")
        if playbook not in PLAYBOOKS:
            raise Rejected("playbook", playbook, f"unknown playbook; one of {', '.join(PLAYBOOKS)}")
        sym = self.resolve(symbol)
        if expected_hold_days is None:
            expected_hold_days = 90.0 if playbook == "carry" else 7.0
        args = {"symbol": sym, "notional_usd": notional_usd, "leverage": leverage, "strategy": strategy,
                "expected_hold_days": expected_hold_days}
        if playbook != "convergence":  # (keeps the idempotency hash of convergence entries as it always was)
            args["playbook"] = playbook
        async with self.lock:
            prior = self._idempotent(key, "enter_trade", args)
            if prior is not None:
                return EnterTradeOutput.model_validate({**prior, "replayed": True})
            self._key_in_flight(key)
            lev = self.settings.default_leverage if leverage is None else float(leverage)
            if expected_hold_days > self.hold_limit(playbook):
                raise Rejected("expected_hold_days", expected_hold_days,
                               f"above the {playbook} playbook's max hold of {self.hold_limit(playbook):g} days")
            if self.mode == "live" and lev != int(lev):
                raise Rejected("leverage", leverage, f"{self.feed.venue} takes whole-number leverage")
            await self.ensure_fresh()
            readings, snap, qty = await self.entry_readings(sym, notional_usd, lev, expected_hold_days, playbook)
            violations = pre_trade_violations(readings)
            if violations:
                self.audit("guardrail", "entry_rejected", {"symbol": sym, "notional_usd": notional_usd, "leverage": lev,
                           "violations": [str(v) for v in violations]}, "rejected")
                raise Rejected(violations=violations)
            signed = {**args, "idempotency_key": key}
            if self.confirmations_required and confirmation_token is None:
                orders = [
                    {"market": "spot", "symbol": self.feed.spot_symbol(sym), "side": "buy", "type": "market", "quantity": qty},
                    {"market": "perp", "symbol": self.feed.perp_symbol(sym), "side": "sell", "type": "market", "quantity": qty,
                     "leverage": lev, "margin": "isolated"},
                ]
                summary = (f"LIVE on {self.feed.venue}: buy {qty:g} {sym} spot and sell {qty:g} {sym} perp at {lev:g}x "
                           f"(≈ ${readings.rounded_notional_usd:,.2f} per leg, ≈ ${readings.capital_required_usd:,.2f} of capital)")
                return EnterTradeOutput(confirmation=self._issue_confirmation("enter_trade", signed, summary, orders))
            now = self.now()
            fill_at = self._scheduled_fill_time(sym)
            with self.store.tx():
                if self.confirmations_required:
                    self._consume_confirmation(confirmation_token or "", "enter_trade", signed)
                cur = self.store.x(
                    "INSERT INTO positions(symbol, strategy, playbook, venue, status, quantity, leverage, notional_usd, opened_at,"
                    " entry_key, reserved_usd, args_json, execute_at) VALUES (?,?,?,?,'opening',?,?,?,?,?,?,?,?)",
                    (sym, strategy, playbook, self.venue.name, qty, lev, readings.rounded_notional_usd,
                     now if fill_at is None else fill_at, key, readings.capital_required_usd, json.dumps(args), fill_at),
                )
                pid = int(cur.lastrowid)
                self._new_order(pid, key, "open", "spot", "buy", qty, False)
                self._new_order(pid, key, "open", "perp", "sell", qty, False)
            if fill_at is not None:  # replay with a fill delay: the orders rest until the clock gets there
                self.audit("desk", "entry_scheduled", {"position_id": pid, "symbol": sym, "quantity": qty,
                                                       "fills_at": iso(fill_at)}, "ok")
                row = self.store.one("SELECT * FROM positions WHERE id = ?", (pid,))
                return EnterTradeOutput(position=self._position_out(row), fills_at=iso(fill_at))
            with self.store.patient():  # intents are committed: from here on every write must land
                self.audit("desk", "entry_intent", {"position_id": pid, "symbol": sym, "quantity": qty, "leverage": lev,
                                                    "basis_pct": round(snap.basis_pct, 6)}, "ok")
                return await self._execute_entry(pid, key, sym, args, lev)

    async def exit(self, position_id: int, key: str, reason: str = "agent", confirmation_token: str | None = None) -> ExitTradeOutput:
        if self.mode == "readonly":
            raise Rejected("mode", "readonly", "this server was started read-only: no trading")
        args = {"position_id": position_id}
        async with self.lock:
            prior = self._idempotent(key, "exit_trade", args)
            if prior is not None:
                return ExitTradeOutput.model_validate({**prior, "replayed": True})
            self._key_in_flight(key)
            row = self.store.one("SELECT * FROM positions WHERE id = ?", (position_id,))
            if row is None:
                raise Rejected("position_id", position_id, "no such position")
            if row["status"] != "open":
                raise Rejected("position_id", position_id, f"position is {row['status']}; only open positions can be exited")
            if self._unresolved_orders(position_id):
                raise Rejected("position_id", position_id, "an order of this position timed out and the venue has not said yet "
                               "whether it executed; the watchdog is looking it up: try again shortly")
            sym = row["symbol"]
            await self.ensure_fresh()
            self.snapshot(sym)  # market must be available
            spot_q, perp_q = leg_quantities(self._fills(position_id))
            signed = {**args, "idempotency_key": key}
            if self.confirmations_required and confirmation_token is None:
                orders = [
                    {"market": "perp", "symbol": self.feed.perp_symbol(sym), "side": "buy", "type": "market", "quantity": -perp_q,
                     "reduce_only": True},
                    {"market": "spot", "symbol": self.feed.spot_symbol(sym), "side": "sell", "type": "market", "quantity": spot_q},
                ]
                summary = f"LIVE on {self.feed.venue}: buy back {-perp_q:g} {sym} perp (reduce-only) and sell {spot_q:g} {sym} spot"
                return ExitTradeOutput(confirmation=self._issue_confirmation("exit_trade", signed, summary, orders))
            fill_at = self._scheduled_fill_time(sym)
            with self.store.tx():
                if self.confirmations_required:
                    self._consume_confirmation(confirmation_token or "", "exit_trade", signed)
                self.store.x("UPDATE positions SET status = 'closing', exit_key = ?, close_reason = ?, execute_at = ? WHERE id = ?",
                             (key, reason, fill_at, position_id))
                if perp_q < 0:
                    self._new_order(position_id, key, "close", "perp", "buy", -perp_q, True)
                if spot_q > 0:
                    self._new_order(position_id, key, "close", "spot", "sell", spot_q, True)
            if fill_at is not None:
                self.audit("desk", "exit_scheduled", {"position_id": position_id, "fills_at": iso(fill_at)}, "ok")
                row = self.store.one("SELECT * FROM positions WHERE id = ?", (position_id,))
                return ExitTradeOutput(position=self._position_out(row), fills_at=iso(fill_at))
            with self.store.patient():
                self.audit("desk", "exit_intent", {"position_id": position_id, "reason": reason}, "ok")
                return await self._execute_exit(position_id, key, reason)

    async def halt(self, reason: str) -> RiskStatusOutput:
        async with self.lock:
            self.set_trading_state("HALTED", f"halted by the agent: {reason}", {"reason": reason})
        return await self.risk_status()

    # ================================================================== market ticks

    async def _sync_venue_events(self) -> tuple[list[FundingSettlementOut], list[dict[str, Any]]]:
        """Copy funding and liquidations from the venue into the desk's ledger (idempotent)."""
        self._flush_samples()
        cursor = float(self.store.get_meta("funding_cursor") or 0)
        settled: list[FundingSettlementOut] = []
        events = await self.venue.funding_history(cursor)
        if events:
            with self.store.tx():
                for ev in events:
                    pos = self.store.one(
                        "SELECT id FROM positions WHERE symbol = ? AND opened_at <= ? AND (closed_at IS NULL OR closed_at >= ?)"
                        " AND status != 'failed' ORDER BY id DESC LIMIT 1",
                        (ev.symbol, ev.time, ev.time),
                    )
                    pid = pos["id"] if pos else None
                    if pid is not None:
                        self.store.x(
                            "INSERT OR IGNORE INTO funding_payments(position_id, symbol, ts, rate, mark_price, quantity, amount_usd)"
                            " VALUES (?,?,?,?,?,?,?)",
                            (pid, ev.symbol, ev.time, ev.rate, ev.mark_price, ev.quantity, ev.amount_usd),
                        )
                    settled.append(FundingSettlementOut(
                        position_id=pid, symbol=ev.symbol, time=iso(ev.time) or "", rate_pct=ev.rate * 100,
                        mark_price=ev.mark_price, quantity=ev.quantity, amount_usd=ev.amount_usd,
                    ))
                self.store.set_meta("funding_cursor", repr(max(ev.time for ev in events)))
        liq_out: list[dict[str, Any]] = []
        lcursor = float(self.store.get_meta("liquidation_cursor") or 0)
        held = [r["symbol"] for r in self.store.q("SELECT DISTINCT symbol FROM positions WHERE status IN ('opening','open','closing')")]
        for ev in sorted(await self.venue.liquidations(lcursor, held), key=lambda e: e.time):
            liq_out.append(await self._on_liquidation(ev))
        return settled, liq_out

    def _advance_liquidation_cursor(self, t: float) -> None:
        if t > float(self.store.get_meta("liquidation_cursor") or 0):
            self.store.set_meta("liquidation_cursor", repr(t))

    async def _on_liquidation(self, ev) -> dict[str, Any]:
        info = {"symbol": ev.symbol, "time": iso(ev.time), "quantity": ev.quantity, "price": ev.price, "margin_lost_usd": ev.loss_usd}
        if self.store.one("SELECT 1 FROM orders WHERE client_order_id = ?", (ev.client_order_id,)) is not None:
            with self.store.tx():  # already booked (crash after the fill, before the cursor moved): don't book it twice
                self._advance_liquidation_cursor(ev.time)
            return {**info, "already_recorded": True}
        row = self._open_position(ev.symbol)
        if row is None:
            with self.store.tx():
                self._advance_liquidation_cursor(ev.time)
            self.alert("critical", "liquidation", f"{ev.symbol} perp liquidated at {ev.price:.2f} with no desk position", info)
            return info
        pid = row["id"]
        info["position_id"] = pid
        side = "buy" if ev.quantity < 0 else "sell"
        liq = OrderResult(ev.client_order_id, ev.client_order_id, ev.symbol, "perp", side,
                          "filled", abs(ev.quantity), abs(ev.quantity), ev.price, 0.0, ev.price, ev.time)
        # the venue's fill, the position's new state and the cursor land in one transaction: a crash
        # between them cannot book the liquidation twice or lose it
        with self.store.tx():
            oid = self._new_order(pid, "", "liquidation", "perp", side, abs(ev.quantity), True, coid=ev.client_order_id)
            self._record_fill(oid, liq)
            self.store.x("UPDATE positions SET status = 'closing', close_reason = 'perp liquidated' WHERE id = ?", (pid,))
            self._advance_liquidation_cursor(ev.time)
        spot_q, _ = leg_quantities(self._fills(pid))
        try:
            ok = await self._unwind(pid, row["entry_key"] or f"pos{pid}", ev.symbol, "spot", spot_q) if spot_q > 0 else True
        except (VenueError, VenueTimeout):
            ok = False  # the position stays 'closing': the watchdog finishes selling the spot
        msg = (
            f"position {pid} {ev.symbol}: perp leg LIQUIDATED at {ev.price:.2f} (isolated margin ${ev.loss_usd:,.2f} lost); "
            + ("spot leg sold at once" if ok else "SPOT UNWIND FAILED: naked long spot, the watchdog retries")
        )
        if ok:
            out = self._finalize_close(pid, "liquidated", "perp liquidated; spot unwound", None)
            info["realized_pnl_usd"] = out.realized.total_usd
        self.alert("critical", "liquidation", msg, info)
        return info

    async def advance(self, hours: float, progress: ProgressFn | None = None) -> AdvanceTimeOutput:
        if not isinstance(self.clock, SimClock):
            raise Rejected("hours", hours, "advance_time exists only in replay mode")
        if not math.isfinite(hours) or hours <= 0:
            raise Rejected("hours", hours, "must be a positive number of hours")
        if hours > self.settings.max_advance_hours:
            raise Rejected("hours", hours, f"at most {self.settings.max_advance_hours:g} hours per call")
        async with self.lock:
            t0 = self.now()
            target = t0 + hours * 3600.0
            end = float(self.feed.end)
            if target > end:
                raise Rejected(
                    "hours", hours, f"replay data ends at {iso(end)}; at most {(end - t0) / 3600:.2f} hours are left"
                )
            ticks = [float(t) for t in range(int(math.floor(t0 / HOUR) + 1) * HOUR, int(target) + 1, HOUR)]
            funding: list[FundingSettlementOut] = []
            liqs: list[dict[str, Any]] = []
            actions: list[dict[str, Any]] = []
            with self.store.patient():
                for n, t in enumerate(ticks, 1):
                    self.clock.set(t)
                    f, lq, acts = await self._tick(t)
                    funding += f
                    liqs += lq
                    actions += acts
                    if n % 168 == 0:
                        self._flush_samples({"replay_time": repr(t)})
                    if progress is not None and (n % 24 == 0 or n == len(ticks)):
                        await progress(n, len(ticks), f"replayed to {iso(t)}")
                    # long replays yield after every bar, so other calls (risk_status, portfolio_status)
                    # are served within about one tick's time instead of after the whole replay
                    await anyio.lowlevel.checkpoint()
                self.clock.set(target)
                if target != (ticks[-1] if ticks else t0) and self._has_book():
                    actions += await self.watchdog_tick()  # between bars too: settlement-aware exits see the real clock
                self._flush_samples({"replay_time": repr(target)})
                self.audit("desk", "advance_time", {"from": iso(t0), "to": iso(target), "ticks": len(ticks)}, "ok")
            return AdvanceTimeOutput(
                from_time=iso(t0) or "",
                to_time=iso(target) or "",
                hours=hours,
                ticks=len(ticks),
                funding=funding,
                liquidations=liqs,
                watchdog_actions=actions,
                replay_end_time=iso(end) or "",
            )

    async def _tick(self, t: float) -> tuple[list[FundingSettlementOut], list[dict[str, Any]], list[dict[str, Any]]]:
        """One market tick: the venue settles funding and liquidations, the desk copies them,
        samples the basis, then the watchdog runs over the book."""
        report = self.venue.on_tick(t)
        funding: list[FundingSettlementOut] = []
        liqs: list[dict[str, Any]] = []
        if report.funding or report.liquidations:
            funding, liqs = await self._sync_venue_events()
        await self._execute_due(t)
        for sym in self.feed.symbols:
            try:
                self._queue_sample(self.feed.snapshot(sym))
            except MarketDataUnavailable:
                continue
        if self._has_book() or report.funding or report.liquidations:
            self._flush_samples()
            actions = await self.watchdog_tick()
        else:
            actions = []
        return funding, liqs, actions

    def _scheduled_fill_time(self, sym: str) -> float | None:
        """Replay with a fill delay: the market time an order placed now fills at (the first fresh bar
        at or after now + delay), so no agent sees a price before the clock reaches it. None: at once."""
        delay = self.settings.fill_delay_seconds
        if delay <= 0 or not self.clock.simulated:
            return None
        t = self.feed.first_fresh_at_or_after(sym, self.now() + delay)
        if t is None:
            raise Rejected("fill_delay_seconds", delay, f"no fresh {sym} price {delay:g} s after {iso(self.now())} to fill "
                           "at: the replay data ends first")
        return t

    async def _execute_due(self, t: float) -> None:
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
                    out = await self._execute_entry(pid, row["entry_key"] or "", sym, self._entry_args(row), row["leverage"])
                    self.alert("info", "entry_filled", f"position {pid} {sym}: the entry filled at {iso(t)}",
                               {"position_id": pid, "entry_basis_pct": out.position.entry_basis_pct if out.position else None})
                else:
                    out = await self._execute_exit(pid, row["exit_key"] or "", row["close_reason"] or "exit",
                                                   emergency=(row["close_reason"] or "").startswith("watchdog"))
                    self.alert("info", "exit_filled", f"position {pid} {sym}: the exit filled at {iso(t)}, realized "
                               f"${out.realized.total_usd if out.realized else 0:,.2f}",
                               {"position_id": pid, "realized_pnl_usd": out.realized.total_usd if out.realized else None})
            except Rejected as e:  # filed by the execution path itself (failed entry, incomplete exit): say so
                self.alert("warning", "scheduled_order_failed", f"position {pid} {sym}: {e}", {"position_id": pid})

    def _has_book(self) -> bool:
        return self.store.one(
            "SELECT 1 FROM positions WHERE status IN ('opening','open','closing') LIMIT 1") is not None or \
            self.store.get_meta("close_all_when_reachable") is not None
