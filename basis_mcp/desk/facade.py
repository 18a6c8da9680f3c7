"""The desk the tools call: one object per process, composed of the engines, thin by design.

It wires the engines together (each gets only the ones it may call; see the package
docstring for who owns what), holds the lock every state-changing operation runs under,
and implements the few calls that span engines: an entry (requests → risk → execution), an
exit, a halt, start-up and shutdown. Everything else is delegated.

Concurrency: every state-changing operation (entry, exit, advance, watchdog tick) runs under
one `anyio.Lock`, from its pre-trade checks to its last fill. Two entries can never both pass
the same capital, tier or duplicate check, whatever the agent sends in parallel. An entry's
capital is also written as ``reserved_usd`` on its ``opening`` row, so a crash mid-entry
leaves the reservation visible to recovery. (Two processes on one book are kept apart by the
book's lease, `basis_mcp.lease`.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from basis_mcp import strategies
from basis_mcp.audit import AuditPaths
from basis_mcp.clock import Clock, SimClock, iso, parse_time
from basis_mcp.config import Settings
from basis_mcp.desk.book import Book
from basis_mcp.desk.clockwork import Clockwork, ProgressFn
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.desk.execution import Execution
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.monitor import Monitor
from basis_mcp.desk.orders import Orders
from basis_mcp.desk.reconcile import Reconcile
from basis_mcp.desk.recovery import Recovery
from basis_mcp.desk.requests import Requests
from basis_mcp.desk.research import Research
from basis_mcp.desk.risk import Risk
from basis_mcp.desk.watchdog import Watchdog
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable, ReplayFeed, VenueReplayFeed
from basis_mcp.guardrails import EntryReadings, TradingState, pre_trade_violations
from basis_mcp.history import HOUR, fingerprint, load_funding_venues
from basis_mcp.lease import BookLease
from basis_mcp.legs import PlannedLeg
from basis_mcp.loaders import load_any, with_market_facts
from basis_mcp.models import (
    AdvanceTimeOutput,
    Alert,
    CheckDeltaOutput,
    EnterTradeOutput,
    ExitTradeOutput,
    NetApyEstimate,
    PortfolioOutput,
    RiskStatusOutput,
    ScanBasisOutput,
    SecondsToFundingOutput,
    SizePositionOutput,
    ZScoreOutput,
)
from basis_mcp.playbooks import PLAYBOOKS
from basis_mcp.store import Store
from basis_mcp.venue.base import VenueError, VenueTimeout
from basis_mcp.venue.faults import FaultPlan
from basis_mcp.venue.paper import PaperVenue
from basis_mcp.venue.router import VenueRouter
from basis_mcp.venues import MARKET_DATA_ONLY

DEFAULT_REPLAY_START = "2024-03-01T00:00:00Z"
# earlier versions of the shipped extract a replay book may have been built on, and what changed since
SHIPPED_EXTRACT_PREDECESSORS = {
    "901c07d8101b4736": "zero-volume flat candles left by exchange outages (BTC 5, ETH 3) are now gaps, not prices",
}


def _venue_lot_hints(feed: Any) -> dict[str, tuple[float | None, float | None]]:
    """(lot step, price) per symbol from a live feed's markets: the coarser of the spot and perp steps."""
    hints: dict[str, tuple[float | None, float | None]] = {}
    ex = getattr(feed, "ex", None)
    markets = getattr(ex, "markets", None) or {}
    decimal_places = getattr(ex, "precisionMode", None) == 2  # ccxt.DECIMAL_PLACES; otherwise TICK_SIZE: a step
    for sym in feed.symbols:
        steps = []
        for name in (feed.spot_symbol(sym), feed.perp_symbol(sym)):
            m = markets.get(name) or {}
            amount = (m.get("precision") or {}).get("amount")
            if isinstance(amount, int | float) and amount > 0:  # a contract's step in coins (OKX: lots × ctVal)
                size = float(m.get("contractSize") or 1.0) if m.get("contract") else 1.0
                steps.append((10.0 ** -float(amount) if decimal_places else float(amount)) * size)
        try:
            price = feed.snapshot(sym).spot
        except MarketDataUnavailable:
            price = None
        hints[sym] = (max(steps) if steps else None, price)
    return hints


def _paper_venues(settings: Settings, db_path: Path | str, histories: dict[str, Any], clock: Clock,
                  primary: PaperVenue, store: Store) -> tuple[dict[str, PaperVenue], dict[str, Any]]:
    """The extra paper exchanges of ``settings.paper_venues``, each with the shipped real funding of that venue."""
    if not settings.paper_venues:
        _fund_pools(settings, primary, {}, store)  # (a venue used before and left out now: its pool comes back)
        return {}, {}
    series = load_funding_venues()
    others: dict[str, PaperVenue] = {}
    feeds: dict[str, Any] = {}
    for v in settings.paper_venues:
        funding = {sym: (s.time, s.rate) for (venue, sym), s in series.items() if venue == v}
        feeds[v] = VenueReplayFeed(histories, clock, v, funding)
        others[v] = PaperVenue(db_path, feeds[v], settings, clock, FaultPlan(), venue=v, capital_usd=0.0)  # fails alone
    _fund_pools(settings, primary, others, store)
    return others, feeds


def _fund_pools(settings: Settings, primary: PaperVenue, others: dict[str, PaperVenue], store: Store) -> None:
    """A paper venue new to this book gets its pool (``max_venue_share`` of the book's capital) moved from the primary
    venue's USDT in one transaction (a transfer: the book's cash is unchanged); funded once. A venue this book used
    before and is now started without: refused while a position has a leg there; else its pool goes back the same way."""
    capital = float(store.get_meta("capital_usd") or settings.capital_usd)
    pool = round(capital * settings.max_venue_share, 2)
    known = [r["name"][len("paper_"):-len("_balances")] for r in primary.db.q(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'paper\\_%\\_balances' ESCAPE '\\'")]
    for v in known:
        if v in others:
            continue
        held = store.q("SELECT DISTINCT p.id FROM positions p JOIN legs l ON l.position_id = p.id WHERE l.venue = ?"
                       " AND p.status IN ('opening','open','closing') ORDER BY p.id", (f"paper:{v}",))
        if held:
            raise Rejected("paper_venues", ",".join(others) or "(none)",
                           f"position {', '.join(str(r['id']) for r in held)} has a leg on {v}: start with --paper-venues "
                           f"including {v} until it is closed")
        with primary.db.tx():
            if primary.db.one(f"SELECT 1 FROM paper_{v}_state WHERE key = 'funded'") is None:
                continue
            back = float((primary.db.one(f"SELECT free FROM paper_{v}_balances WHERE asset = 'USDT'") or {"free": 0.0})["free"])
            primary._credit("USDT", back)
            primary.db.x(f"UPDATE paper_{v}_balances SET free = 0 WHERE asset = 'USDT'")
            primary.db.x(f"DELETE FROM paper_{v}_state WHERE key = 'funded'")
    for v in others:
        with primary.db.tx():
            if primary.db.one(f"SELECT 1 FROM paper_{v}_state WHERE key = 'funded'") is not None:
                continue
            free = primary._balance("USDT")
            if free + 1e-9 < pool:
                raise Rejected("paper_venues", v, f"the primary venue has ${free:,.2f} free USDT, less than the "
                               f"${pool:,.2f} pool ({settings.max_venue_share:g} of capital) {v} needs")
            primary._credit("USDT", -pool)
            primary.db.x(f"UPDATE paper_{v}_balances SET free = free + ? WHERE asset = 'USDT'", (pool,))
            primary.db.x(f"INSERT INTO paper_{v}_state(key, value) VALUES ('funded', ?)", (repr(pool),))


class Desk:
    def __init__(self, settings: Settings, store: Store, feed: Any, venue: Any, clock: Clock, mode: str,
                 faults: FaultPlan | None = None):
        self.store = store
        self.venue = venue
        self.clock = clock
        self.mode = mode
        self.faults = faults or FaultPlan()
        self.lock = anyio.Lock()
        self.lease: BookLease | None = None
        self.events = events = Events(store, clock)
        self.health = health = VenueHealth(events)
        self.market = market = MarketData(settings, store, feed, clock, events, health)
        self.book = book = Book(settings, store, market)
        self.requests = requests = Requests(settings, store, events, mode)
        self.risk = risk = Risk(settings, store, market, book, venue, events, health)
        self.orders = orders = Orders(settings, store, venue, clock, events, health, book, self.faults)
        self.execution = execution = Execution(settings, store, venue, clock, events, market, book, orders, requests, risk, self.faults)
        self.recovery = recovery = Recovery(store, venue, events, health, market, book, orders, execution, risk)
        self.reconcile = reconcile = Reconcile(store, venue, events, market, book, orders, risk, mode)
        self.watchdog = Watchdog(settings, store, venue, events, health, market, book, orders, execution, recovery, reconcile, risk)
        self.clockwork = Clockwork(settings, store, venue, clock, events, health, market, book, execution, recovery, self.watchdog)
        self.research = Research(settings, store, venue, clock, market, book, risk, mode)
        self.monitor = Monitor(settings, store, health, market, book, risk, orders, reconcile, mode)
        self._settings = settings

    # ------------------------------------------------------------------ construction

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
        settings, _ = with_market_facts(settings, data_path)  # a downloaded directory: the venue's own fees and steps
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
        try:
            others, venue_feeds = _paper_venues(settings, db_path, histories, clock, venue, store)
        except BaseException:
            venue.close()
            store.close()
            lease.release()
            raise
        desk = cls(settings, store, feed, VenueRouter(venue, others), clock, "replay", faults)
        desk.market.feeds.update(venue_feeds)
        desk.lease = lease
        if upgraded_from is not None:
            desk.events.alert("info", "data_upgraded", f"the shipped history changed under this book: "
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
        base_url: str | dict[str, str] | None = None,
        universe: list[str] | None = None,
        faults: FaultPlan | None = None,
        audit_paths: AuditPaths | None = None,
    ) -> Desk:
        """Live market data from ``venues`` (the first one is the primary venue).

        ``trading``: ``paper`` (simulated fills on live prices, the default for live data; every venue
        a paper exchange with its own pool, so cross_exchange trades run on live prices),
        ``readonly`` (no trading tools) or ``live`` (real orders; needs credentials, which are
        checked against the venue before anything else happens). ``credentials``: the primary
        venue's, or a map venue → credentials; live, another venue trades only with keys of its own.
        ``base_url``: one local server for every venue, or a map venue → its server (tests).
        """
        from basis_mcp.live.errors import register_secret
        from basis_mcp.live.exchanges import make_exchange
        from basis_mcp.live.feed import LiveFeed, VenueClock
        from basis_mcp.live.venue import LiveVenue

        if trading not in ("paper", "readonly", "live"):
            raise Rejected("trading", trading, "must be paper, readonly or live")
        if trading == "live" and (credentials is None or (isinstance(credentials, dict) and credentials.get(venues[0]) is None)):
            raise Rejected("credentials", "missing", "live trading needs API keys (environment or --key-file)")
        primary = venues[0]
        by_venue = credentials if isinstance(credentials, dict) else {primary: credentials}

        def creds_for(v: str) -> Any:
            return by_venue.get(v)

        for c in by_venue.values():
            if c is not None:
                for secret in (c.api_key, c.secret, c.password):
                    register_secret(secret)
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
                ex = make_exchange(v, creds_for(v) if trading == "live" else None, base_url.get(v) if isinstance(base_url, dict)
                                   else base_url, timeout_ms=settings.venue_timeout_ms)
                feeds[v] = LiveFeed(v, ex, clock, universe)
                await feeds[v].start()
            feed = feeds[primary]
            settings = settings.with_unknown_symbols(_venue_lot_hints(feed))
            others: dict[str, Any] = {}
            if trading == "live":
                venue: Any = LiveVenue(primary, feed.ex, feed, settings, clock)
                await venue.verify_credentials()
                for v in venues[1:]:  # another venue trades only with keys of its own; without, it is market data
                    if creds_for(v) is not None:
                        others[v] = LiveVenue(v, feeds[v].ex, feeds[v], settings, clock)
                        await others[v].verify_credentials()
            else:
                venue = PaperVenue(db_path, feed, settings, clock, faults)
                if trading == "paper":  # paper on live prices: a paper exchange per venue, each its own pool
                    others = {v: PaperVenue(db_path, feeds[v], settings, clock, FaultPlan(), venue=v, capital_usd=0.0)
                              for v in venues[1:]}
                    _fund_pools(settings, venue, others, store)
            venue = VenueRouter(venue, others)
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

    # ------------------------------------------------------------------ shared state

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        """Replace the settings everywhere at once (tests and the operator's reload)."""
        self._settings = value
        for engine in (self.market, self.book, self.requests, self.risk, self.orders, self.execution, self.watchdog,
                       self.clockwork, self.research, self.monitor):
            engine.settings = value

    @property
    def feed(self) -> Any:
        return self.market.feed

    @property
    def feeds(self) -> dict[str, Any]:
        return self.market.feeds

    @feeds.setter
    def feeds(self, value: dict[str, Any]) -> None:
        self.market.feeds = value

    def now(self) -> float:
        return self.clock.now()

    @property
    def live(self) -> bool:
        return not self.clock.simulated

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Before any tool is served: warm the z-score history, then reconcile with the venue.

        Venue events missed while down are copied into the ledger, every position caught
        mid-entry or mid-exit is completed or unwound, and the ledger is checked against the
        venue's balances. Anything that cannot be reconciled leaves the desk REDUCING, with
        the reason in the alert and the audit log (fail closed).
        """
        self.market.warm_history()
        if self.live:
            await self.market.warm_history_live()
            await self.feed.preload_funding_history(self.feed.symbols)
            for f in self.feeds.values():  # every other venue's too: the 30-day means the cross-exchange choice reads
                if f is not self.feed and hasattr(f, "preload_funding_history"):
                    try:
                        await f.preload_funding_history(f.symbols)
                    except (VenueError, VenueTimeout) as e:
                        self.events.audit("system", "funding_preload_skipped", {"venue": f.venue}, "warning", str(e)[:300])
            await self.market.observe_borrow_rates()
        for sym in self.feed.symbols:
            self.market.load_tracker(sym)
        async with self.lock:
            try:
                with self.store.patient():
                    await self.recovery.sync_venue_events()
                    self.clockwork.events_synced_at = self.now()
                    await self.recovery.recover_all()
                    await self.reconcile.check_ledger()
            except (VenueError, VenueTimeout) as e:
                self.risk.set_trading_state("REDUCING", f"could not reconcile with the venue at start-up: {e}", {})
        unknown = [(r["id"], r["strategy"]) for r in self.book.positions() if r["strategy"] not in strategies.names()]
        if unknown:
            self.risk.set_trading_state(
                "REDUCING", "open positions of strategies this server does not know: " + ", ".join(
                    f"position {pid} ({name})" for pid, name in unknown) + "; they are watched and closed from their recorded "
                "legs (margin, balance and max hold only, no basis rules): register the strategy or close them",
                {"positions": [pid for pid, _ in unknown]})
        problem = self.store.audit_problem()
        if problem:
            self.events.alert("critical", "audit_tampered", f"audit log check at start-up failed: {problem}. Run `basis-mcp audit "
                              "verify` for the full report; trading continues, the operator should investigate.", {"problem": problem})
        state, reason = self.risk.trading_state()
        self.events.audit("system", "desk_start", {"mode": self.mode, "market_time": iso(self.now()), "state": state,
                                                    "reason": reason}, "ok")

    def close(self) -> None:
        try:
            try:
                self.market.flush_samples()
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

    async def live_tick(self) -> list[dict[str, Any]]:
        async with self.lock:
            with self.store.patient():
                return await self.clockwork.live_tick()

    async def run_live_loop(self, poll_seconds: float) -> None:
        """The watchdog's heartbeat in live modes: ticks whether or not the agent calls tools."""
        while True:
            try:
                await self.live_tick()
            except Exception as e:  # noqa: BLE001 - the loop must survive anything; the audit log says what
                self.events.audit("system", "live_tick_failed", {"error": type(e).__name__}, "error", str(e)[:500])
            await anyio.sleep(poll_seconds)

    async def advance(self, hours: float, progress: ProgressFn | None = None, reference: bool | None = None) -> AdvanceTimeOutput:
        """``reference=True``: hour by hour, the loop the fast path is checked against (`Clockwork.advance`)."""
        async with self.lock:
            return await self.clockwork.advance(hours, progress, reference)

    def pop_alerts(self) -> list[Alert]:
        return self.events.pop_alerts()

    # ------------------------------------------------------------------ reads

    def trading_state(self) -> tuple[TradingState, str]:
        return self.risk.trading_state()

    def equity_usd(self) -> float:
        return self.book.equity_usd()

    async def scan(self, symbols: list[str] | None, venues: list[str] | None = None) -> ScanBasisOutput:
        return await self.research.scan(symbols, venues)

    def compute_zscore(self, symbol: str, window: int) -> ZScoreOutput:
        return self.research.compute_zscore(symbol, window)

    async def estimate_net_apy(self, symbol: str, notional_usd: float, hold_days: float, leverage: float | None,
                               funding_rate_8h_pct: float | None, exit_basis_pct: float | None, basis_pct: float | None,
                               playbook: str = "convergence", strategy: str = "cash_and_carry",
                               contract: str | None = None, short_venue: str | None = None,
                               long_venue: str | None = None) -> NetApyEstimate:
        spec, playbook = self._strategy(strategy, playbook)
        return await self.research.estimate_net_apy(symbol, notional_usd, hold_days, leverage, funding_rate_8h_pct,
                                                    exit_basis_pct, basis_pct, playbook, spec, contract, short_venue, long_venue)

    async def size(self, symbol: str, leverage: float | None, target_notional_usd: float | None,
                   playbook: str = "convergence", strategy: str = "cash_and_carry") -> SizePositionOutput:
        spec, playbook = self._strategy(strategy, playbook)
        return await self.research.size(symbol, leverage, target_notional_usd, playbook, spec)

    async def seconds_to_funding(self, symbol: str) -> SecondsToFundingOutput:
        return await self.research.seconds_to_funding(symbol)

    async def backtest(self, inp: Any, ctx: Any) -> Any:
        return await self.research.backtest(inp, ctx)

    async def plot_basis(self, symbol: str, days: float) -> Any:
        return await self.research.plot_basis(symbol, days)

    async def check_delta(self, position_id: int | None) -> CheckDeltaOutput:
        return await self.monitor.check_delta(position_id)

    async def portfolio(self, include_closed: int = 0, include_fills: bool = False) -> PortfolioOutput:
        return await self.monitor.portfolio(include_closed, include_fills)

    async def risk_status(self) -> RiskStatusOutput:
        return await self.monitor.risk_status()

    async def entry_readings(self, sym: str, notional_usd: float, lev: float, expected_hold_days: float,
                             playbook: str = "convergence", strategy: str = "cash_and_carry",
                             ) -> tuple[EntryReadings, Any, list[PlannedLeg]]:
        return await self.risk.entry_readings(strategies.get(strategy), sym, notional_usd, lev, expected_hold_days, playbook)

    # ------------------------------------------------------------------ trading

    def _strategy(self, name: str, playbook: str) -> tuple[strategies.StrategySpec, str]:
        try:
            spec = strategies.get(name)
        except KeyError:
            raise Rejected("strategy", name, f"unknown strategy; one of {', '.join(strategies.names())}") from None
        missing = [f"{leg.role} ({leg.market})" for leg in spec.legs if leg.market not in getattr(self.venue, "markets", {"spot", "perp"})]
        if missing:
            why = MARKET_DATA_ONLY.get(self.venue.name.split(":")[-1])
            raise Rejected("strategy", name, f"{self.venue.name} does not trade the {', '.join(missing)} leg"
                           + (f" ({why})" if why else "") + "; nothing was sent")
        if not spec.playbooks:
            return spec, "none"  # no basis for a playbook to read: the risk rules and the max hold apply
        if playbook not in PLAYBOOKS or playbook not in spec.playbooks:
            raise Rejected("playbook", playbook, f"not a playbook of {name}; one of {', '.join(spec.playbooks)}")
        return spec, playbook

    async def enter(self, symbol: str, notional_usd: float, leverage: float | None, key: str, strategy: str,
                    expected_hold_days: float | None = None, confirmation_token: str | None = None,
                    playbook: str = "convergence", contract: str | None = None, short_venue: str | None = None,
                    long_venue: str | None = None) -> EnterTradeOutput:
        if self.mode == "readonly":
            raise Rejected("mode", "readonly", "this server was started read-only: no trading")
        spec, playbook = self._strategy(strategy, playbook)
        sym = self.market.resolve(symbol)
        if spec.legs[0].symbol is not None and spec.legs[0].symbol != sym:
            raise Rejected("symbol", symbol, f"strategy {spec.name} trades {spec.legs[0].symbol} as its first leg: name that symbol "
                           "(caps and tiers are counted on it)")
        if expected_hold_days is None:
            expected_hold_days = 90.0 if playbook == "carry" else 7.0
        args: dict[str, Any] = {"symbol": sym, "notional_usd": notional_usd, "leverage": leverage, "strategy": strategy,
                                "expected_hold_days": expected_hold_days}
        if playbook not in ("convergence", "none"):  # (keeps the idempotency hash of convergence entries as it always was)
            args["playbook"] = playbook
        if contract is not None:
            args["contract"] = contract
        for f, v in (("short_venue", short_venue), ("long_venue", long_venue)):
            if v is not None:
                args[f] = v
        async with self.lock:
            prior = self.requests.outcome(key, "enter_trade", args)
            if prior is not None:
                return EnterTradeOutput.model_validate({**prior, "replayed": True})
            self.requests.refuse_in_flight(key)
            lev = self.settings.default_leverage if leverage is None else float(leverage)
            if expected_hold_days > self.risk.hold_limit(playbook):
                raise Rejected("expected_hold_days", expected_hold_days,
                               f"above the {playbook} playbook's max hold of {self.risk.hold_limit(playbook):g} days")
            if self.mode == "live" and lev != int(lev):
                raise Rejected("leverage", leverage, f"{self.feed.venue} takes whole-number leverage")
            await self.market.ensure_fresh()
            readings, snap, planned = await self.risk.entry_readings(spec, sym, notional_usd, lev, expected_hold_days, playbook,
                                                                     contract, short_venue, long_venue)
            violations = pre_trade_violations(readings)
            if violations:
                self.events.audit("guardrail", "entry_rejected", {"symbol": sym, "notional_usd": notional_usd, "leverage": lev,
                                  "violations": [str(v) for v in violations]}, "rejected")
                raise Rejected(violations=violations)
            signed = {**args, "idempotency_key": key}
            if self.requests.confirmations_required and confirmation_token is None:
                orders = [{"market": p.spec.market, "symbol": self.market.venue_symbol(p.spec.market, p.symbol),
                           "side": p.spec.order_side(opening=True), "type": "market", "quantity": p.quantity,
                           **({"leverage": lev, "margin": "isolated"} if p.spec.market != "spot" else {})} for p in planned]
                summary = (f"LIVE on {self.feed.venue}: " + " and ".join(
                    f"{p.spec.order_side(opening=True)} {p.quantity:g} {p.symbol} {p.spec.market}" for p in planned)
                    + f" at {lev:g}x (≈ ${readings.rounded_notional_usd:,.2f} per leg, ≈ ${readings.capital_required_usd:,.2f} of capital)")
                return EnterTradeOutput(confirmation=self.requests.issue_confirmation("enter_trade", signed, summary, orders))
            now = self.now()
            fill_at = self.market.fill_time(*dict.fromkeys(p.symbol for p in planned))
            with self.store.tx():
                if self.requests.confirmations_required:
                    self.requests.consume_confirmation(confirmation_token or "", "enter_trade", signed)
                cur = self.store.x(
                    "INSERT INTO positions(symbol, strategy, playbook, venue, status, quantity, leverage, notional_usd, opened_at,"
                    " entry_key, reserved_usd, args_json, execute_at) VALUES (?,?,?,?,'opening',?,?,?,?,?,?,?,?)",
                    (sym, spec.name, playbook, self.venue.name, readings.quantity, lev, readings.rounded_notional_usd,
                     now if fill_at is None else fill_at, key, readings.capital_required_usd, json.dumps(args), fill_at))
                pid = int(cur.lastrowid)
                self.book.add_legs(pid, self.venue.leg_venue, planned)
                for leg in self.book.legs(pid):
                    self.orders.new_order(leg, key, "open", leg.order_side(opening=True), leg.quantity, False)
            if fill_at is not None:  # replay with a fill delay: the orders rest until the clock gets there
                self.events.audit("desk", "entry_scheduled", {"position_id": pid, "symbol": sym, "quantity": readings.quantity,
                                                              "fills_at": iso(fill_at)}, "ok")
                return EnterTradeOutput(position=self.book.position_out(self.book.position(pid)), fills_at=iso(fill_at))
            with self.store.patient():  # intents are committed: from here on every write must land
                self.events.audit("desk", "entry_intent", {"position_id": pid, "symbol": sym, "strategy": spec.name,
                                                           "quantity": readings.quantity, "leverage": lev,
                                                           "basis_pct": round(snap.basis_pct, 6)}, "ok")
                return await self.execution.execute_entry(pid, key, args, lev)

    async def exit(self, position_id: int, key: str, reason: str = "agent", confirmation_token: str | None = None) -> ExitTradeOutput:
        if self.mode == "readonly":
            raise Rejected("mode", "readonly", "this server was started read-only: no trading")
        args = {"position_id": position_id}
        async with self.lock:
            prior = self.requests.outcome(key, "exit_trade", args)
            if prior is not None:
                return ExitTradeOutput.model_validate({**prior, "replayed": True})
            self.requests.refuse_in_flight(key)
            row = self.book.position(position_id)
            if row is None:
                raise Rejected("position_id", position_id, "no such position")
            if row["status"] != "open":
                raise Rejected("position_id", position_id, f"position is {row['status']}; only open positions can be exited")
            if self.orders.unresolved(position_id):
                raise Rejected("position_id", position_id, "an order of this position timed out and the venue has not said yet "
                               "whether it executed; the watchdog is looking it up: try again shortly")
            legs = self.book.legs(position_id)
            await self.market.ensure_fresh()
            for sym in dict.fromkeys([row["symbol"], *(leg.symbol for leg in legs)]):
                self.market.snapshot(sym)  # market must be available
            down = await self.risk.unreachable_venues([leg.symbol for leg in legs])
            if down:  # closing one leg while another cannot be reached would leave it naked: send nothing
                raise Rejected("position_id", position_id, "; ".join(f"{v} does not answer ({why})" for v, why in down.items())
                               + ": nothing was sent, the position stays open and hedged; retry when it answers (the watchdog "
                               "keeps the reachable legs' margin safe meanwhile, and closes the position itself once a venue "
                               "that was down more than 10 minutes answers again)")
            signed = {**args, "idempotency_key": key}
            if self.requests.confirmations_required and confirmation_token is None:
                held = self.book.held_abs(legs, self.book.held(position_id))
                strategy = self.book.strategy(row)
                order = [(legs[i], held[i]) for i in strategy.exit_order if held[i] > 0]
                orders = [{"market": leg.market, "symbol": self.market.venue_symbol(leg.market, leg.symbol),
                           "side": leg.order_side(opening=False), "type": "market", "quantity": q,
                           **({"reduce_only": True} if leg.market != "spot" else {})} for leg, q in order]
                summary = f"LIVE on {self.feed.venue}: " + " and ".join(
                    f"{leg.order_side(opening=False)} {q:g} {leg.symbol} {leg.market}" + (" (reduce-only)" if leg.market != "spot" else "")
                    for leg, q in order)
                return ExitTradeOutput(confirmation=self.requests.issue_confirmation("exit_trade", signed, summary, orders))
            fill_at = self.market.fill_time(*dict.fromkeys(leg.symbol for leg in legs))
            with self.store.tx():
                if self.requests.confirmations_required:
                    self.requests.consume_confirmation(confirmation_token or "", "exit_trade", signed)
                self.store.x("UPDATE positions SET status = 'closing', exit_key = ?, close_reason = ?, execute_at = ? WHERE id = ?",
                             (key, reason, fill_at, position_id))
                self.execution.write_close_intents(position_id, key)
            if fill_at is not None:
                self.events.audit("desk", "exit_scheduled", {"position_id": position_id, "fills_at": iso(fill_at)}, "ok")
                return ExitTradeOutput(position=self.book.position_out(self.book.position(position_id)), fills_at=iso(fill_at))
            with self.store.patient():
                self.events.audit("desk", "exit_intent", {"position_id": position_id, "reason": reason}, "ok")
                return await self.execution.execute_exit(position_id, key, reason)

    async def halt(self, reason: str) -> RiskStatusOutput:
        async with self.lock:
            self.risk.set_trading_state("HALTED", f"halted by the agent: {reason}", {"reason": reason})
        return await self.risk_status()
