"""Monitor: what the agent reads about its own book. Hedge and margin per leg, the portfolio,
and every limit beside its reading. Read only.

Calls `MarketData`, `Book`, `Risk`, `Reconcile` (account equity) and the venue (read only).
"""

from __future__ import annotations

import math
from typing import Any

from basis_mcp.clock import iso
from basis_mcp.config import HARD, Settings
from basis_mcp.desk.book import Book, Leg, _r
from basis_mcp.desk.events import VenueHealth
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.orders import Orders
from basis_mcp.desk.reconcile import Reconcile
from basis_mcp.desk.risk import Risk
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.guardrails import drawdown
from basis_mcp.ledger import pnl
from basis_mcp.legs import imbalance_pct
from basis_mcp.models import (
    CheckDeltaOutput,
    DeltaReport,
    LegDelta,
    LimitReading,
    PortfolioOutput,
    RiskStatusOutput,
    TierUsage,
    VenueUsage,
)
from basis_mcp.store import Store
from basis_mcp.strategies.base import SPOT_LIKE
from basis_mcp.venue.base import VenueError, VenueTimeout


class Monitor:
    def __init__(self, settings: Settings, store: Store, health: VenueHealth, market: MarketData, book: Book, risk: Risk,
                 orders: Orders, reconcile: Reconcile, mode: str):
        self.settings = settings
        self.store = store
        self.health = health
        self.market = market
        self.book = book
        self.risk = risk
        self.orders = orders
        self.reconcile = reconcile
        self.mode = mode

    # ------------------------------------------------------------------ hedge and margin

    async def check_delta(self, position_id: int | None) -> CheckDeltaOutput:
        if position_id is not None:
            row = self.book.position(position_id)
            if row is None:
                raise Rejected("position_id", position_id, "no such position")
            if row["status"] not in ("opening", "open", "closing"):
                raise Rejected("position_id", position_id, f"position is {row['status']}, not open")
            rows = [row]
        else:
            rows = self.book.positions()
        return CheckDeltaOutput(market_time=iso(self.market.now()) or "", positions=[await self.delta_report(r) for r in rows])

    async def _leg_delta(self, leg: Leg, q: float) -> tuple[LegDelta, float | None, float]:
        """(the leg's readings, its margin ratio as a fraction, its isolated wallet)."""
        price = self.market.mark(leg.market, leg.symbol)
        ratio = lp = dist = None
        wallet = 0.0
        if leg.leveraged:
            try:
                lp, ratio, wallet = await self.risk.leg_margin(leg, price)
            except (VenueError, VenueTimeout) as e:  # this leg's venue does not answer: say so, report the others
                self.events_note_unreachable(leg, e)
                lp = ratio = None
                wallet = 0.0
            if lp is not None and not (math.isfinite(lp) and lp > 0):
                lp = None
            if lp is not None:
                dist = (lp - price) / price * 100 if q < 0 else (price - lp) / price * 100
            if ratio is not None and not math.isfinite(ratio):
                ratio = None
        out = LegDelta(role=leg.role, market=leg.market, venue=leg.venue, symbol=leg.symbol, quantity=q, price=price, value_usd=_r(q * price, 6) or 0.0,
                       margin_ratio_pct=None if ratio is None else _r(ratio * 100, 4),
                       liquidation_price=_r(lp, 6), distance_to_liquidation_pct=_r(dist, 4))
        return out, ratio, wallet

    def events_note_unreachable(self, leg: Leg, e: Exception) -> None:
        self.health.events.note_once(f"leg_unreadable:{leg.id}", "warning", "venue_unreachable",
                                     f"position {leg.position_id}: the {leg.role} leg's venue {leg.venue} does not answer "
                                     f"({str(e)[:200]}); its margin is not shown", {"position_id": leg.position_id,
                                                                                   "venue": leg.venue})

    async def delta_report(self, row: Any) -> DeltaReport:
        sym = row["symbol"]
        snap = self.market.snapshot(sym)
        pid = row["id"]
        legs = self.book.legs(pid)
        fills = self.book.fills(pid)
        held = self.book.held(pid, fills)
        reports: list[LegDelta] = []
        worst: tuple[float, LegDelta] | None = None
        wallets = 0.0
        for leg in legs:
            d, ratio, wallet = await self._leg_delta(leg, held.get(leg.id, 0.0))
            reports.append(d)
            wallets += wallet
            if ratio is not None and (worst is None or ratio < worst[0]):
                worst = (ratio, d)
        on_spot = [leg.market in SPOT_LIKE for leg in legs]
        spot_q = sum(d.quantity for d, s in zip(reports, on_spot, strict=True) if s)
        perp_q = sum(d.quantity for d, s in zip(reports, on_spot, strict=True) if not s)
        spot_val = sum(d.quantity * d.price for d, s in zip(reports, on_spot, strict=True) if s)
        perp_val = sum(d.quantity * d.price for d, s in zip(reports, on_spot, strict=True) if not s)
        held_abs = self.book.held_abs(legs, held)
        imb = imbalance_pct([max(q, 0.0) for q in held_abs], [leg.ratio for leg in legs])
        funding = sum(self.book.funding_amounts(pid))
        mids = {leg.id: self.market.mid(leg.market, leg.symbol) for leg in legs}
        upnl = pnl(fills, [], mids).price_pnl_usd
        spec = self.book.strategy(row)
        basis_now = snap.basis_pct
        if spec.basis_legs is not None:  # the position's own basis, read on its basis legs (a calendar: the quarterly's premium)
            a, b = (mids[legs[i].id] for i in spec.basis_legs)
            basis_now = (b - a) / a * 100.0
        ratio = worst[0] if worst else None
        ratio_pct = ratio * 100 if ratio is not None else 0.0
        if ratio is not None and ratio < self.settings.margin_close_ratio:
            action, reason = "close", (f"margin ratio {ratio_pct:.0f}% is below {self.settings.margin_close_ratio * 100:.0f}%: "
                                       "close every leg")
        elif ratio is not None and ratio < self.settings.margin_add_ratio:
            action, reason = "add_margin", (f"margin ratio {ratio_pct:.0f}% is below {self.settings.margin_add_ratio * 100:.0f}%: "
                                            "add margin or reduce")
        elif imb > self.settings.max_imbalance_pct and any(c > 0 for c in self.orders.cuts(legs, held_abs)):
            action, reason = "rebalance", f"legs differ by {imb:.2f}% of quantity (> {self.settings.max_imbalance_pct:g}%)"
        else:
            action, reason = "hold", "hedged; margin healthy"
        return DeltaReport(
            position_id=pid,
            symbol=sym,
            strategy=row["strategy"],
            legs=reports,
            spot_quantity=spot_q,
            perp_quantity=perp_q,
            spot_value_usd=_r(spot_val, 6) or 0.0,
            perp_value_usd=_r(perp_val, 6) or 0.0,
            net_delta_usd=_r(spot_val + perp_val, 6) or 0.0,
            imbalance_pct=_r(imb, 6) or 0.0,
            mark_price=worst[1].price if worst else snap.mark,
            margin_ratio_pct=_r(ratio_pct, 4) or 0.0,
            liquidation_price=(worst[1].liquidation_price or 0.0) if worst else 0.0,
            distance_to_liquidation_pct=(worst[1].distance_to_liquidation_pct or 0.0) if worst else 0.0,
            isolated_margin_usd=_r(wallets, 8) or 0.0,
            unrealized_pnl_usd=_r(upnl, 6) or 0.0,
            funding_received_usd=_r(funding, 8) or 0.0,
            current_basis_pct=_r(basis_now, 8) or 0.0,
            entry_basis_pct=_r(row["entry_basis_pct"], 8) or 0.0,
            recommended_action=action,
            reason=reason,
        )

    # ------------------------------------------------------------------ the whole book

    async def portfolio(self, include_closed: int = 0, include_fills: bool = False) -> PortfolioOutput:
        cash = await self.risk.free_cash()
        try:
            account = await self.reconcile.account_equity_usd()
        except (VenueError, VenueTimeout):  # a venue does not answer: the desk's own book stands in (venues shows which)
            account = None
        open_rows = self.book.positions()
        realized, opens = self.book.book_pnl()
        equity = self.book.capital_usd + realized + sum(p.total_usd for p in opens)  # = `Book.equity_usd`
        account = equity if account is None else account
        unreal = sum(p.price_pnl_usd for p in opens)
        funding = float(self.store.one("SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")["s"])
        fees = float(self.store.one("SELECT COALESCE(SUM(fee_usd), 0) AS s FROM fills")["s"])
        # owned spot at its notional, every leveraged leg (perp, borrowed spot) at its margin
        in_use = sum((r["notional_usd"] if any(leg.market == "spot" for leg in self.book.legs(r["id"])) else 0.0)
                     + (r["margin_usd"] or 0.0) for r in open_rows)
        cap = self.book.capital_usd
        usage = self.book.tier_usage()
        tiers = [TierUsage(tier=t, allocation_limit_usd=self.settings.tier_allocation[t] * cap,
                           in_use_usd=_r(usage.get(t, 0.0), 6) or 0.0,
                           single_position_limit_usd=self.settings.tier_single_position[t] * cap)
                 for t in ("anchor", "mid", "speculative")]
        closed = self.store.q("SELECT * FROM positions WHERE status NOT IN ('opening','open','closing') ORDER BY id DESC LIMIT ?",
                              (include_closed,))
        return PortfolioOutput(
            mode=self.mode,
            market_time=iso(self.market.now()) or "",
            capital_usd=cap,
            cash_usd=_r(cash, 8) or 0.0,
            equity_usd=_r(equity, 8) or 0.0,
            account_equity_usd=_r(account, 8) or 0.0,
            pnl_since_start_usd=_r(equity - cap, 8) or 0.0,
            realized_pnl_usd=_r(realized, 8) or 0.0,
            unrealized_pnl_usd=_r(unreal, 8) or 0.0,
            funding_received_usd=_r(funding, 8) or 0.0,
            fees_paid_usd=_r(fees, 8) or 0.0,
            capital_in_use_usd=_r(in_use, 8) or 0.0,
            tiers=tiers,
            venues=await self.venue_usage(),
            open_positions=[self.book.position_out(r, include_fills) for r in open_rows],
            closed_positions=[self.book.position_out(r, include_fills) for r in closed],
        )

    async def venue_usage(self) -> list[VenueUsage]:
        venue = self.risk.venue
        if not getattr(venue, "multi", False):
            return []
        usage = self.book.venue_usage(self.market.mid)
        limit = self.book.capital_usd * self.settings.max_venue_share
        out = []
        for v in venue.venue_names():
            ex = venue.exchange(v)
            try:
                cash, ok = (await ex.fetch_balances()).get("USDT", 0.0), True
            except (VenueError, VenueTimeout):
                cash, ok = 0.0, False
            out.append(VenueUsage(venue=ex.name, cash_usd=_r(cash, 8) or 0.0, in_use_usd=_r(usage.get(ex.name, 0.0), 8) or 0.0,
                                  limit_usd=_r(limit, 2) or 0.0, reachable=ok))
        return out

    async def risk_status(self) -> RiskStatusOutput:
        """Every limit next to its current reading."""
        state, reason = self.risk.trading_state()
        equity = self.book.equity_usd()
        cap = self.book.capital_usd
        dd = drawdown(equity, cap)
        s = self.settings
        free = await self.risk.free_capital_usd()
        L = LimitReading
        largest = max([r["notional_usd"] for r in self.store.q("SELECT notional_usd FROM positions WHERE status = 'open'")] or [0.0])
        orders = self.risk.orders_last_minute()
        limits = [
            L(name="leverage", limit=min(s.max_leverage, HARD.max_leverage), hard_ceiling=HARD.max_leverage,
              current=max([r["leverage"] for r in self.store.q("SELECT leverage FROM positions WHERE status = 'open'")] or [0.0]),
              unit="x (highest open position)", ok=True),
            L(name="max_position_notional_usd", limit=s.max_position_notional_usd, hard_ceiling="tier single-position cap",
              current=largest, unit="USD at entry mid (largest open position)",
              ok=largest <= s.max_position_notional_usd + 1e-6),
            L(name="drawdown_pct", limit=s.max_drawdown * 100, hard_ceiling=HARD.max_drawdown * 100, current=dd * 100,
              unit="% of capital; above it the desk goes REDUCING", ok=dd <= s.max_drawdown),
            L(name="orders_per_minute", limit=s.max_orders_per_minute, hard_ceiling=HARD.max_orders_per_minute,
              current=orders, unit="orders in the last 60 s", ok=orders <= s.max_orders_per_minute),
        ]
        usage = self.book.tier_usage()
        for t in ("anchor", "mid", "speculative"):
            used = usage.get(t, 0.0)
            limits.append(L(name=f"tier_allocation_{t}_usd", limit=s.tier_allocation[t] * cap,
                            hard_ceiling=HARD.allocation(t) * cap, current=used, unit="USD notional",
                            ok=used <= s.tier_allocation[t] * cap + 1e-6))
        stale = self.market.stale_limit()
        for sym in self.market.symbols:
            try:
                snap = self.market.feed.snapshot(sym)
            except MarketDataUnavailable:
                continue
            vol = self.market.realised_vol_1h_pct(snap)
            limits.append(L(name="realised_vol_1h_pct", symbol=sym, limit=s.max_realised_vol_1h_pct,
                            hard_ceiling=HARD.max_realised_vol_1h * 100, current=vol, unit="%/h (entry circuit breaker)",
                            ok=vol is None or vol <= s.max_realised_vol_1h_pct))
            limits.append(L(name="data_age_seconds", symbol=sym, limit=stale, hard_ceiling=None, current=snap.data_age_seconds,
                            unit="seconds", ok=snap.data_age_seconds <= stale))
        return RiskStatusOutput(
            trading_state=state,
            trading_state_reason=reason,
            market_time=iso(self.market.now()) or "",
            equity_usd=_r(equity, 6) or 0.0,
            capital_usd=cap,
            drawdown_pct=_r(dd * 100, 6) or 0.0,
            free_capital_usd=_r(free, 6) or 0.0,
            venue_reachable=self.health.reachable,
            limits=limits,
        )
