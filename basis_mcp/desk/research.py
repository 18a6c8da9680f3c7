"""Research: what the agent reads before it trades. Scans, z-scores, return estimates, sizing,
the funding clock, charts and backtests. Reads market data and the book; changes nothing but
the basis samples it records on the way.

Calls `MarketData`, `Book`, `Risk` (limits and capital) and the venue (read only).
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import numpy as np

from basis_mcp import dated
from basis_mcp.clock import Clock, iso
from basis_mcp.config import Settings
from basis_mcp.costs import PairCosts
from basis_mcp.desk.book import Book, _r
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.risk import Risk
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable, Snapshot
from basis_mcp.models import (
    BasisSnapshot,
    CapOut,
    NetApyEstimate,
    ScanBasisOutput,
    SecondsToFundingOutput,
    SizePositionOutput,
    Unavailable,
    VenueFunding,
    ZScoreOutput,
)
from basis_mcp.signals import (
    ZSCORE_MIN_SAMPLES,
    estimate_net_return,
    funding_8h_pct,
    funding_apr_pct,
    zscore_stats,
)
from basis_mcp.sizing import Cap, basis_stability_scale, size_position, vol_regime
from basis_mcp.store import Store
from basis_mcp.strategies.base import StrategySpec
from basis_mcp.strategies.cash_and_carry import CASH_AND_CARRY
from basis_mcp.venue.base import VenueError, VenueTimeout
from basis_mcp.venues import funding_differential_usd, qualify


class Research:
    def __init__(self, settings: Settings, store: Store, venue: Any, clock: Clock, market: MarketData, book: Book, risk: Risk,
                 mode: str):
        self.settings = settings
        self.store = store
        self.venue = venue
        self.clock = clock
        self.market = market
        self.book = book
        self.risk = risk
        self.mode = mode

    async def scan(self, symbols: list[str] | None, venues: list[str] | None = None) -> ScanBasisOutput:
        syms = self.market.feed.symbols if not symbols else list(dict.fromkeys(self.market.resolve(s, "symbols") for s in symbols))
        feeds = list(self.market.feeds.values())
        if venues:
            unknown = [v for v in venues if v.lower() not in self.market.feeds]
            if unknown:
                raise Rejected("venues", unknown[0], f"not a venue this server watches ({', '.join(self.market.feeds)})")
            feeds = [self.market.feeds[v.lower()] for v in venues]
        await self.market.ensure_fresh()
        snaps: list[BasisSnapshot] = []
        unavailable: list[Unavailable] = []
        for feed in feeds:
            for sym in syms:
                try:
                    snap = feed.snapshot(sym)
                except MarketDataUnavailable as e:
                    unavailable.append(Unavailable(symbol=sym, reason=str(e)))
                    continue
                if feed is self.market.feed:
                    self.market.queue_sample(snap)
                snaps.append(self._snapshot_out(snap))
        self.market.flush_samples()
        for s in snaps:  # z after the flush so this snapshot's own sample counts; z is kept for the trading venue
            tr = self.market.z.get(s.symbol)
            if tr is None or s.venue != self.market.feed.venue:
                continue
            s.zscore = _r(tr.zscore(s.basis_pct), 6)
            s.zscore_samples = tr.n
        snaps.sort(key=lambda s: s.edge_pct, reverse=True)  # across strategies: the widest basis either way first
        return ScanBasisOutput(market_time=iso(self.market.now()) or "", mode=self.mode, snapshots=snaps, unavailable=unavailable)

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
            **self._strategy_hint(snap),
        )

    def _cross_hint(self, sym: str, edge_pct: float) -> dict[str, Any]:
        """The richest and cheapest venue for ``sym``'s perp funding now, their differential, and what a week of it
        earns (percent of notional); names cross_exchange when that beats the basis edge."""
        rates = {v: r for v, (r, _) in self.risk.funding_per_hour(sym).items() if r is not None}
        if len(rates) < 2:
            return {}
        rich = max(rates, key=lambda v: rates[v])
        cheap = min((v for v in rates if v != rich), key=lambda v: rates[v])
        diff = rates[rich] - rates[cheap]
        week = diff * 24 * 7 * 100.0
        out: dict[str, Any] = {"cross_short_venue": rich, "cross_long_venue": cheap,
                               "cross_funding_diff_apr_pct": _r(diff * 8760 * 100.0, 6), "cross_edge_pct": _r(week, 8)}
        if week > edge_pct:
            out.update(strategy="cross_exchange", edge_pct=_r(week, 8) or 0.0)
        return out

    def _strategy_hint(self, snap: Snapshot) -> dict[str, Any]:
        """Which trade the basis points to (the widest edge across strategies), for the reverse trade what
        borrowing costs, and the nearest quarterly's premium over the perp (where dated futures trade)."""
        if snap.basis_pct >= 0:
            out: dict[str, Any] = {"strategy": "cash_and_carry", "edge_pct": _r(snap.basis_pct, 8) or 0.0}
        else:
            apr, source = self.market.borrow_apr_pct(snap.symbol)
            out = {"strategy": "reverse_cash_and_carry", "edge_pct": _r(-snap.basis_pct, 8) or 0.0, "borrow_apr_pct": _r(apr, 4),
                   "borrow_rate_source": source}
        if snap.venue == self.market.feed.venue and getattr(self.venue, "multi", False):
            out.update(self._cross_hint(snap.symbol, out["edge_pct"]))
        if snap.venue != self.market.feed.venue or "future" not in getattr(self.venue, "markets", ()):
            return out
        try:
            buffer_s = self.settings.expiry_exit_hours * 3600.0 + self.settings.fill_delay_seconds
            expiry = next(e for e in dated.listed_expiries(snap.now) if e - buffer_s > snap.now + 3600.0)  # still tradable
            code = dated.contract_code(snap.symbol, expiry)
            if code not in getattr(self.market.feed, "dated_contracts", [code]):  # live: only what the venue lists
                return out
            premium = self.market.calendar_basis_pct(code, snap)
        except (MarketDataUnavailable, KeyError, Rejected, StopIteration):
            return out
        mean = self.market.feed.mean_funding_rate(snap.symbol, snap.now - 30 * 86400.0, snap.now)
        years = (expiry - snap.now) / dated.YEAR_S
        funding_pct = 0.0 if mean is None else mean * (8760.0 / snap.funding_interval_hours) * years * 100.0
        edge = premium - funding_pct
        out.update(calendar_contract=code, calendar_basis_pct=_r(premium, 8), calendar_edge_pct=_r(edge, 8))
        if edge > out["edge_pct"]:
            out.update(strategy="calendar_spread", edge_pct=_r(edge, 8) or 0.0)
        return out

    def compute_zscore(self, symbol: str, window: int) -> ZScoreOutput:
        sym = self.market.resolve(symbol)
        self.market.flush_samples()
        tr = self.market.z[sym]
        if window == tr.window:
            values = tr.values()
        else:
            rows = self.store.q(
                "SELECT basis_pct FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
                (sym, self.market.now(), window),
            )
            values = np.array([r["basis_pct"] for r in reversed(rows)], dtype=np.float64)
        st = zscore_stats(values, window)
        if st.n and window == tr.window:  # the O(1) tracker is the reference for its own window
            st = st.__class__(**{**st.__dict__, "zscore": tr.zscore(st.latest), "mean": tr.mean, "std": tr.std})
        span = None
        if st.n:  # the window's newest and oldest sample times (summed up in SQLite, not the window's rows in Python)
            row = self.store.one("SELECT MAX(ts) AS newest, MIN(ts) AS oldest FROM (SELECT ts FROM basis_samples "
                                 "WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?)", (sym, self.market.now(), st.n))
            span = (row["newest"], row["oldest"]) if row else None
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
            first_sample_time=iso(span[1]) if span else None,
            last_sample_time=iso(span[0]) if span else None,
            sample_interval_seconds=self.settings.zscore_sample_seconds,
            note=None if st.zscore is not None else self._no_zscore_reason(sym, st.n),
        )

    def _no_zscore_reason(self, sym: str, n: int) -> str:
        """Why there is no z-score yet, in words the agent can act on."""
        try:
            self.market.feed.snapshot(sym)
        except MarketDataUnavailable as e:
            return f"no z-score: {e}. Samples are recorded once the symbol has prices at the desk's time."
        need = 30 - n
        hours = need * self.settings.zscore_sample_seconds / 3600.0
        return (f"no z-score yet: {n} basis sample(s) recorded, 30 needed; one is taken every "
                f"{self.settings.zscore_sample_seconds:g} s of market time, so about {hours:g} more hour(s) "
                "(advance_time in replay)")

    async def estimate_net_apy(
        self,
        symbol: str,
        notional_usd: float,
        hold_days: float,
        leverage: float | None,
        funding_rate_8h_pct: float | None,
        exit_basis_pct: float | None,
        basis_pct: float | None,
        playbook: str = "convergence",
        strategy: StrategySpec = CASH_AND_CARRY,
        contract: str | None = None,
        short_venue: str | None = None,
        long_venue: str | None = None,
    ) -> NetApyEstimate:
        sym = self.market.resolve(symbol)
        lev = self.risk.check_leverage(leverage)
        await self.market.ensure_fresh()
        snap = self.market.snapshot(sym)
        if strategy.cross_venue:
            return self._cross_estimate(sym, snap, notional_usd, hold_days, lev, funding_rate_8h_pct, strategy,
                                        short_venue, long_venue)
        for f, v in (("short_venue", short_venue), ("long_venue", long_venue)):
            if v is not None:
                raise Rejected(f, v, f"{strategy.name} trades on one venue; leave {f} out")
        code = self.risk.choose_contract(strategy, sym, hold_days, contract, hold_field="hold_days")
        expiry = dated.parse_contract(code)[1] if code is not None else None
        if code is not None:  # calendar: the perp is the reference leg, the dated future the other (SIMULATED price)
            entry_basis = self.market.calendar_basis_pct(code, snap) if basis_pct is None else basis_pct
            spot = snap.perp
            if exit_basis_pct is None:
                exit_basis_pct = dated.roll_down_exit_basis_pct(entry_basis, hold_days * 86400.0, expiry - self.market.now())
        else:
            entry_basis = snap.basis_pct if basis_pct is None else basis_pct
            spot = snap.spot
        exit_basis_pct = 0.0 if exit_basis_pct is None else exit_basis_pct
        perp = spot * (1 + entry_basis / 100.0)
        rate, source = self.market.funding_assumption(sym, snap, funding_rate_8h_pct, playbook)
        q = notional_usd / spot
        costs = self.settings.spec(sym).costs
        if code is not None:
            costs = PairCosts(costs.perp, costs.perp)
        fees, slip = costs.round_trip_usd(q, spot, perp)
        slip_source = "model (half-spread + sqrt impact)"
        if self.market.live and code is None:
            try:
                sb = await self.market.feed.book_slippage(sym, "spot", q * spot)
                pb = await self.market.feed.book_slippage(sym, "perp", q * perp)
                if sb and pb:
                    slip = q * spot * (sb[0] + sb[1]) + q * perp * (pb[0] + pb[1])
                    slip_source = f"{self.market.feed.venue} order books now (both legs, in and out)"
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
            direction=strategy.direction,
            borrow_rate_hourly=self.risk.borrow_rate_hourly(strategy, sym),
            funding_direction=strategy.funding_direction,
            reference_leveraged=strategy.legs[0].market != "spot",
            funding_price=spot if code is not None else None,
        )
        borrow_apr, borrow_source = self.market.borrow_apr_pct(sym) if self.market.borrows(strategy) else (None, None)
        if playbook == "carry":
            why = self.risk.carry_refusal(sym, snap, q, hold_days, strategy)
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
            strategy=strategy.name,
            contract=code,
            contract_expiry=iso(expiry) if expiry is not None else None,
            borrow_usd=_r(est.borrow_usd, 6) or 0.0,
            borrow_apr_pct=_r(borrow_apr, 6),
            borrow_rate_source=borrow_source,
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
            ) if strategy.direction == 1 and code is None else (
                "calendar: net = q*(premium_entry - premium_exit) [once; premium = (future - perp)/perp, expected to roll down "
                "linearly to 0 at expiry] - q*perp*rate*settlements_in_hold (the long perp pays positive funding) "
                f"- fees (perp {costs.perp.taker_fee * 100:g}% + future {costs.perp.taker_fee * 100:g}%, in and out) - slippage; "
                "apy = net / (notional/leverage + notional/leverage) / hold_days * 365; the future's price is SIMULATED "
                "(perp x (1 + last 90 days' funding x years to expiry))"
            ) if code is not None else (
                "net = q*(basis_exit - basis_entry) [once] - q*perp*rate*settlements_in_hold (the long perp pays positive "
                "funding, receives negative) - q*spot*borrow_apr/8760*hold_hours (MODELLED borrow) "
                f"- fees (spot {costs.spot.taker_fee * 100:g}% + perp {costs.perp.taker_fee * 100:g}%, in and out) "
                "- slippage (in and out); apy = net / (notional/leverage + notional/leverage) / hold_days * 365"
            ),
        )

    def _cross_estimate(self, sym: str, snap: Snapshot, notional_usd: float, hold_days: float, lev: float,
                        diff_8h_pct: float | None, strategy: StrategySpec, short_venue: str | None,
                        long_venue: str | None) -> NetApyEstimate:
        """cross_exchange: the funding differential over the hold (each venue's mean settled rate of the last 30
        days per hour, or the agent's assumed differential), less four perp taker fills and their slippage."""
        venues = self.risk.choose_venues(strategy, sym, short_venue, long_venue)
        rich = venues["rich"] or self.venue.primary_venue
        cheap = venues["cheap"] or self.venue.primary_venue
        if diff_8h_pct is None:
            diff_h = self.risk.cross_differential(sym, rich, cheap)[0]
            source = f"mean settled rate of the last 30 days on each venue, per hour: {rich} − {cheap}"
        else:
            diff_h = diff_8h_pct / 100.0 / 8.0
            source = "assumed by the caller (funding_rate_8h_pct = the differential per 8 h)"
        q = notional_usd / snap.perp
        hours = hold_days * 24.0
        funding = funding_differential_usd(notional_usd, diff_h, 0.0, hours)
        legs = {v: self.settings.spec(qualify(sym, None if v == self.venue.primary_venue else v)).costs.perp for v in (rich, cheap)}
        fees = sum(2.0 * notional_usd * c.taker_fee for c in legs.values())
        slip = sum(2.0 * notional_usd * c.slippage_fraction(notional_usd) for c in legs.values())
        net = funding - fees - slip
        capital = 2.0 * notional_usd / lev
        per_day = (funding / hold_days) if hold_days > 0 else 0.0
        return NetApyEstimate(
            symbol=sym, strategy=strategy.name, short_venue=rich, long_venue=cheap, playbook="none",
            playbook_entry_ok=net > 0,
            playbook_note=("cross_exchange has no server exit playbook: you exit when the differential is gone; the watchdog "
                           "guards each leg's margin on its own venue and a venue going down. "
                           + ("The expected net is positive." if net > 0 else "The expected net is not positive.")),
            notional_usd=notional_usd, quantity=q, hold_days=hold_days, leverage=lev, entry_basis_pct=0.0, exit_basis_pct=0.0,
            funding_rate_8h_pct=_r(diff_h * 8.0 * 100.0, 8) or 0.0, funding_rate_source=source,
            settlements_in_hold=0, basis_capture_usd=0.0, funding_usd=_r(funding, 6) or 0.0, fees_usd=_r(fees, 6) or 0.0,
            slippage_usd=_r(slip, 6) or 0.0, net_usd=_r(net, 6) or 0.0, capital_employed_usd=_r(capital, 6) or 0.0,
            net_return_pct=_r(net / capital * 100.0, 6) or 0.0,
            apy_pct=_r(net / capital / hold_days * 365.0 * 100.0, 6) or 0.0,
            apy_on_notional_pct=_r(net / notional_usd / hold_days * 365.0 * 100.0, 6) or 0.0,
            break_even_hold_days=_r((fees + slip) / per_day, 4) if per_day > 0 else None,
            slippage_source="model (half-spread + sqrt impact), four perp fills",
            formula=(f"net = notional × (rate_{rich} − rate_{cheap}) per hour × hold_hours − fees ({rich} perp "
                     f"{legs[rich].taker_fee * 100:g}% + {cheap} perp {legs[cheap].taker_fee * 100:g}%, in and out) − slippage; "
                     "apy = net / (2 × notional/leverage) / hold_days × 365 (each leg margined on its own venue); prices "
                     "cancel between the legs" + ("; paper: both legs on the primary venue's prices, each venue's real "
                                                  "funding" if self.market.clock.simulated else "")),
        )

    async def size(self, symbol: str, leverage: float | None, target_notional_usd: float | None,
                   playbook: str = "convergence", strategy: StrategySpec = CASH_AND_CARRY) -> SizePositionOutput:
        sym = self.market.resolve(symbol)
        lev = self.risk.check_leverage(leverage)
        snap = self.market.snapshot(sym)
        spec = self.settings.spec(sym)
        free = await self.risk.free_capital_usd()
        capital_fn = None
        code = self.risk.choose_contract(strategy, sym, 1.0 / 24.0, None)  # a dated leg: priced on the nearest contract
        venues = self.risk.choose_venues(strategy, sym, None, None)  # cross-exchange: the venues an entry now would take
        venue_caps: list[Cap] = []
        if strategy is not CASH_AND_CARRY:  # another shape: the capital its planned legs tie up, per dollar of first leg
            def capital_fn(notional: float) -> float:
                planned = self.risk.plan(strategy, sym, max(notional, spec.min_notional_usd), code, venues)
                first = planned[0].quantity * planned[0].mid
                return self.risk.capital_required_usd(planned, lev) / first if first > 0 else 1.0 + 1.0 / lev
        if getattr(self.venue, "multi", False):
            venue_caps = await self.venue_caps(strategy, sym, lev, code, venues)

        def sized(extra: list[Cap]) -> Any:
            return size_position(spot_price=snap.spot, leverage=lev, costs=spec.costs, free_capital_usd=free,
                                 caps=self.risk.caps(sym) + extra, qty_step=spec.qty_step, min_notional_usd=spec.min_notional_usd,
                                 target_notional_usd=target_notional_usd, perp_price=snap.perp,
                                 capital_per_notional_fn=capital_fn)

        res = sized(venue_caps)
        regime = vol_regime(*self.market.spot_returns(sym, 7 * 86400.0))
        tr = self.market.z.get(sym)
        std = tr.std if tr is not None and tr.n >= ZSCORE_MIN_SAMPLES else None
        stability = basis_stability_scale(std)
        scale = regime.scale * stability
        vol_txt = "unknown (too few hourly returns)" if regime.realised_vol_pct is None else f"{regime.realised_vol_pct:.0f}%/yr"
        note = (f"7-day realised vol {vol_txt}: {regime.name} regime ×{regime.scale:g}; basis std "
                + ("not measured yet" if std is None else f"{std:.3f}%") + f" ×{stability:.3g}")
        limits = res  # what the caps allow (what enter_trade enforces)
        if scale < 1.0 and res.notional_usd > 0:
            res = sized(venue_caps + [Cap("volatility_regime", res.notional_usd * scale,
                             f"{res.binding_cap} limit ${res.notional_usd:,.2f} × {scale:.3g} ({note})")])
            if res.quantity <= 0:
                note += f": the scaled size is below the venue minimum of ${spec.min_notional_usd:,.2f}"
        margin, costs = res.margin_usd, res.fees_and_slippage_usd
        if capital_fn is not None and res.quantity > 0:
            planned = self.risk.plan(strategy, sym, res.notional_usd, code, venues)
            margin = sum(p.quantity * p.mid / lev for p in planned if p.spec.market != "spot")
            costs = res.capital_required_usd - margin - sum(p.quantity * p.mid for p in planned if p.spec.market == "spot")
        return SizePositionOutput(
            symbol=sym,
            playbook=playbook,
            max_hold_days=self.risk.hold_limit(playbook),
            tier=self.settings.tier_of(sym),
            leverage=lev,
            # up to the cent: entering with it buys the same quantity (a cent less could floor to one lot fewer)
            recommended_notional_usd=math.ceil(res.notional_usd * 100 - 1e-6) / 100 if res.notional_usd else 0.0,
            quantity=res.quantity,
            binding_cap=limits.binding_cap,
            max_notional_usd=math.ceil(limits.notional_usd * 100 - 1e-6) / 100 if limits.notional_usd else 0.0,  # as below
            caps=[CapOut(name=c.name, limit_usd=_r(c.limit_usd, 6) or 0.0, detail=c.detail) for c in res.caps],
            free_capital_usd=_r(free, 6) or 0.0,
            capital_required_usd=_r(res.capital_required_usd, 6) or 0.0,
            margin_usd=_r(margin, 6) or 0.0,
            entry_costs_usd=_r(costs, 6) or 0.0,
            strategy=strategy.name,
            regime=regime.name,
            realised_vol_7d_pct=_r(regime.realised_vol_pct, 4),
            regime_scale=regime.scale,
            basis_std_pct=_r(std, 6),
            basis_stability_scale=_r(stability, 4) or 0.0,
            sizing_note=note + (f": recommended size ×{scale:.3g} of max_notional_usd" if scale < 1.0 else ": full size"),
        )

    async def venue_caps(self, strategy: StrategySpec, sym: str, lev: float, code: str | None,
                         venues: dict[str, str | None]) -> list[Cap]:
        """With more than one venue: per venue the legs put there, the notional that keeps it within
        ``max_venue_share`` of capital and within its own free USDT (enter_trade's per-venue checks)."""
        probe = self.risk.plan(strategy, sym, 10_000.0, code, venues)
        first = probe[0].quantity * probe[0].mid
        if first <= 0:
            return []
        per_dollar: dict[str, float] = {}
        for p in probe:
            name = self.venue.leg_venue(p.symbol)
            per_dollar[name] = per_dollar.get(name, 0.0) + self.risk.capital_required_usd([p], lev) / first
        share = self.settings.max_venue_share
        cap = self.book.capital_usd * share
        usage = self.book.venue_usage(self.market.mid)
        balances = await self.venue.balances_by_venue()
        out = []
        for name, k in sorted(per_dollar.items()):
            room = max(cap - usage.get(name, 0.0), 0.0)
            free = balances.get(name.split(":", 1)[-1], {}).get("USDT", 0.0)
            out.append(Cap(f"venue_share:{name}", min(room, free) / k,
                           f"{name}: ≤ {share:g} of capital (${cap:,.2f}), ${usage.get(name, 0.0):,.2f} in use, "
                           f"${free:,.2f} free USDT there"))
        return out

    async def seconds_to_funding(self, symbol: str) -> SecondsToFundingOutput:
        sym = self.market.resolve(symbol)
        snap = self.market.snapshot(sym)
        expected = None
        if self.book.position_on("perp", sym) is not None:  # the desk's perp leg on this symbol
            pos = await self.venue.fetch_perp_position(sym)
            if pos is not None:
                expected = -pos.quantity * snap.mark * snap.funding_rate
        others: list[VenueFunding] = []
        if getattr(self.venue, "multi", False):
            for v in self.venue.venue_names()[1:]:
                inst = qualify(sym, v)
                try:
                    feed, bare = self.market.feed_of(inst)
                    vs = feed.snapshot(bare)
                except (MarketDataUnavailable, KeyError):
                    continue
                pay = None
                if self.book.position_on("perp", inst) is not None:
                    vp = await self.venue.fetch_perp_position(inst)
                    pay = None if vp is None else _r(-vp.quantity * vs.mark * vs.funding_rate, 8)
                others.append(VenueFunding(venue=v, seconds_to_funding=vs.seconds_to_funding,
                                           next_funding_time=iso(vs.next_funding_time) or "",
                                           funding_interval_hours=vs.funding_interval_hours,
                                           funding_rate_pct=_r(vs.funding_rate * 100, 8) or 0.0,
                                           funding_rate_source=vs.funding_rate_source, expected_payment_usd=pay))
        return SecondsToFundingOutput(
            other_venues=others,
            symbol=sym,
            seconds_to_funding=snap.seconds_to_funding,
            next_funding_time=iso(snap.next_funding_time) or "",
            funding_interval_hours=snap.funding_interval_hours,
            funding_rate_pct=_r(snap.funding_rate * 100, 8) or 0.0,
            funding_rate_source=snap.funding_rate_source,
            expected_payment_usd=_r(expected, 8),
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
            given = {k: getattr(inp, k) for k in fields}
            if given.get("expiry_exit_hours") is None:  # the desk's own, unless the call sets one
                given["expiry_exit_hours"] = self.settings.expiry_exit_hours
            params = BacktestParams(**given, fill_delay_seconds=delay)
        except ValidationError as e:
            raise Rejected(violations=[Violation(".".join(map(str, er["loc"])) or "params", er.get("input"), er["msg"])
                                       for er in e.errors()]) from None
        histories = self.market.feed.h if self.clock.simulated else load_extract()
        if inp.end is None:
            end = self.market.now() if self.clock.simulated else float(max(h.t_end for h in histories.values()))
        else:
            end = parse_when("end", inp.end)
        if self.clock.simulated and end > self.market.now():
            raise Rejected("end", inp.end, f"in replay mode a backtest cannot look past the replay clock ({iso(self.market.now())})")
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

        sym = self.market.resolve(symbol)
        self.market.flush_samples()
        t1 = self.market.now()
        t0 = t1 - days * 86400.0
        rows = self.store.q("SELECT ts, basis_pct FROM basis_samples WHERE symbol = ? AND ts > ? AND ts <= ? ORDER BY ts", (sym, t0, t1))
        if not rows:
            raise Rejected("symbol", sym, f"no basis samples recorded in the last {days:g} days")
        times = np.array([r["ts"] for r in rows], dtype=np.float64)
        basis = np.array([r["basis_pct"] for r in rows])
        note = None
        if times[0] - t0 > 2 * self.settings.zscore_sample_seconds:  # less history than asked: show what there is
            note = (f"asked for {days:g} days; the book's basis samples of {sym} start at {iso(times[0])}, so the chart and "
                    f"the figures cover {(t1 - times[0]) / 86400.0:.1f} days from there (samples are recorded from the "
                    "desk's start, or the symbol's first data)")
            t0 = float(times[0]) - 1.0
        if self.clock.simulated:
            h = self.market.feed.h[sym]
            sel = (h.funding_time > t0) & (h.funding_time <= t1)
            f_t, f_r = h.funding_time[sel].astype(np.float64), h.funding_rate[sel]
        else:
            hist = [(t, r) for t, r, _ in self.market.feed.settled.get(sym, []) if t0 < t <= t1]
            f_t, f_r = np.array([t for t, _ in hist]), np.array([r for _, r in hist])
        window = max(min(self.settings.zscore_window, basis.size // 2), 2)
        png = await anyio.to_thread.run_sync(lambda: basis_chart(sym, times, basis, f_t, f_r, window))
        out = PlotBasisOutput(
            symbol=sym, from_time=iso(times[0]) or "", to_time=iso(times[-1]) or "", samples=int(basis.size),
            last_basis_pct=round(float(basis[-1]), 8), mean_basis_pct=round(float(basis.mean()), 8),
            basis_std_pct=round(float(basis.std()), 8), settlements=int(f_r.size),
            mean_funding_rate_pct=round(float(f_r.mean()) * 100, 8) if f_r.size else None, note=note,
        )
        return WithImages(out, [png])

