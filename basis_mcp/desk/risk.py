"""Risk: the trading state, the limits, and every reading the pre-trade checks look at.

Owns the trading state (ACTIVE / REDUCING / HALTED, in ``meta``), the leverage, allowlist,
rate, tier and capital limits, each leveraged leg's margin readings from the venue, and the
entry readings `basis_mcp.guardrails.pre_trade_violations` decides on. Decides nothing by
itself: the rules are the pure functions in `guardrails` and `playbooks`. Calls the store,
`MarketData`, `Book` and the venue (balances and margin, never orders).

A new pre-trade guardrail goes here (its reading) and in `guardrails` (its rule).
"""

from __future__ import annotations

import math
from typing import Any

from basis_mcp import dated
from basis_mcp import margin as mm
from basis_mcp.borrow import HOURS_PER_YEAR
from basis_mcp.clock import iso
from basis_mcp.config import HARD, Settings
from basis_mcp.costs import PairCosts
from basis_mcp.desk.book import Book, Leg
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.desk.market import MarketData
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable, Snapshot
from basis_mcp.guardrails import EntryReadings, LegRisk, TradingState, WatchdogLimits
from basis_mcp.legs import PlannedLeg, plan_legs
from basis_mcp.playbooks import carry_entry_check, expected_carry_usd, stop_level_pct
from basis_mcp.signals import entry_expected_net_usd, settlements_in
from basis_mcp.sizing import Cap, leg_capital_usd
from basis_mcp.store import Store
from basis_mcp.strategies.base import SPOT_LIKE, LegSpec, StrategySpec
from basis_mcp.venue.base import VenueError, VenueTimeout, VenueUnavailable
from basis_mcp.venues import qualify, venue_of

LIVE_CAPITAL_BUFFER = 1.002  # live fills can land a little off the modelled price: reserve 0.2 % more


class Risk:
    def __init__(self, settings: Settings, store: Store, market: MarketData, book: Book, venue: Any, events: Events,
                 health: VenueHealth):
        self.settings = settings
        self.store = store
        self.market = market
        self.book = book
        self.venue = venue
        self.events = events
        self.health = health

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
            self.store.set_meta("trading_state_since", repr(self.events.now()))
        self.events.alert("critical", f"state_{state.lower()}", f"trading state {current} → {state}: {reason}",
                          {"from": current, "to": state, **data})

    # ------------------------------------------------------------------ limits

    def check_leverage(self, leverage: float | None) -> float:
        lev = self.settings.default_leverage if leverage is None else float(leverage)
        cap = min(self.settings.max_leverage, HARD.max_leverage)
        if not math.isfinite(lev) or lev < 1:
            raise Rejected("leverage", leverage, "must be a finite number >= 1")
        if lev > HARD.max_leverage:
            raise Rejected("leverage", leverage, f"above the hard ceiling of {HARD.max_leverage:g}x (never allowed)")
        if lev > cap:
            raise Rejected("leverage", leverage, f"above the operator's cap of {cap:g}x")
        return lev

    def allowlist(self) -> list[str]:
        allowed = self.settings.symbol_allowlist
        return [s for s in self.market.symbols if allowed is None or s in allowed]

    def orders_last_minute(self) -> int:
        """Orders in the last 60 s of market time (wall time live; simulated time in replay, so a fast
        replay is judged by the pace of its own market, not by how quickly the machine runs it)."""
        return int(self.store.one("SELECT COUNT(*) AS n FROM orders WHERE created_at > ?", (self.events.now() - 60.0,))["n"])

    def hold_limit(self, playbook: str) -> float:
        return self.settings.carry_max_hold_days if playbook == "carry" else self.settings.max_hold_days

    def watchdog_limits(self) -> WatchdogLimits:
        s = self.settings
        return WatchdogLimits(margin_add_ratio=s.margin_add_ratio, margin_close_ratio=s.margin_close_ratio,
                              borrow_spike_apr_pct=s.borrow_spike_apr_pct,
                              # replay with a fill delay: signal that much earlier, so the close fills by the last trading time
                              expiry_exit_hours=s.expiry_exit_hours + (s.fill_delay_seconds / 3600.0 if self.market.clock.simulated else 0.0),
                              max_imbalance_pct=s.max_imbalance_pct,
                              liquidation_distance_add_pct=s.liquidation_distance_add_pct,
                              liquidation_distance_target_pct=s.liquidation_distance_target_pct, rules=s.exit_rules)

    def caps(self, sym: str) -> list[Cap]:
        tier = self.settings.tier_of(sym)
        cap = self.book.capital_usd
        single = self.settings.tier_single_position[tier] * cap
        alloc = self.settings.tier_allocation[tier] * cap
        used = self.book.tier_in_use(tier)
        return [
            Cap("max_position_notional", self.settings.max_position_notional_usd, "operator's per-position notional cap"),
            Cap("tier_single_position", single,
                f"{tier} tier: one position ≤ {self.settings.tier_single_position[tier]:.0%} of ${cap:,.0f} capital"),
            Cap("tier_allocation_headroom", max(alloc - used, 0.0),
                f"{tier} tier: ≤ {self.settings.tier_allocation[tier]:.0%} of capital (${alloc:,.0f}); ${used:,.2f} already in use"),
        ]

    # ------------------------------------------------------------------ capital

    async def free_cash(self, instrument: str | None = None) -> float:
        """Free USDT: over every venue, or (``instrument``) on the venue that instrument trades on."""
        if instrument is not None and getattr(self.venue, "multi", False):
            venue = venue_of(instrument) or self.venue.primary_venue
            return (await self.venue.exchange(venue).fetch_balances()).get("USDT", 0.0)
        if getattr(self.venue, "multi", False):  # the primary must answer; another venue down counts as nothing free there
            total = (await self.venue.primary.fetch_balances()).get("USDT", 0.0)
            for ex in self.venue.others.values():
                try:
                    total += (await ex.fetch_balances()).get("USDT", 0.0)
                except (VenueError, VenueTimeout):
                    pass
            return total
        return (await self.venue.fetch_balances()).get("USDT", 0.0)

    async def unreachable_venues(self, instruments: list[str]) -> dict[str, str]:
        """Of the venues these instruments trade on, those that do not answer a balance read now (name → why)."""
        if not getattr(self.venue, "multi", False):
            return {}
        out: dict[str, str] = {}
        for v in dict.fromkeys(venue_of(s) or self.venue.primary_venue for s in instruments):
            try:
                await self.venue.exchange(v).fetch_balances()
            except (VenueError, VenueTimeout) as e:
                out[v] = str(e)[:200]
        return out

    async def free_capital_usd(self) -> float:
        """Venue cash minus what in-flight entries have reserved."""
        reserved = float(self.store.one("SELECT COALESCE(SUM(reserved_usd), 0) AS s FROM positions WHERE status = 'opening'")["s"])
        return await self.free_cash() - reserved

    async def free_capital_or_zero(self) -> float:
        try:
            return await self.free_capital_usd()
        except (VenueUnavailable, VenueTimeout) as e:
            self.health.down(str(e))
            return 0.0

    # ------------------------------------------------------------------ margin of leveraged legs

    async def position(self, market: str, symbol: str) -> Any:
        """The venue's isolated position behind a leveraged leg (perp, or borrowed spot)."""
        if market == "perp":
            return await self.venue.fetch_perp_position(symbol)
        return await self.venue.fetch_position(market, symbol)

    async def leg_margin(self, leg: Leg, mark: float) -> tuple[float | None, float | None, float]:
        """(liquidation price, margin ratio as a fraction, isolated wallet) of a leveraged leg, from the venue."""
        pos = await self.position(leg.market, leg.symbol)
        if pos is None:
            return None, None, 0.0
        table = self.settings.spec(leg.symbol).brackets
        lp = mm.liquidation_price(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, table)
        ratio = mm.margin_ratio(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, mark, table)
        return lp, ratio, pos.isolated_wallet_usd

    async def leg_risk(self, leg: Leg, lim: WatchdogLimits) -> LegRisk | None:
        """What the watchdog reads on one leveraged leg: its margin ratio, what brings it back to the
        target, the liquidation distance on the losing side and what restores the target distance."""
        pos = await self.position(leg.market, leg.symbol)
        if pos is None:
            return None
        mark = self.market.mark(leg.market, leg.symbol)
        table = self.settings.spec(leg.symbol).brackets
        ratio: float | None = mm.margin_ratio(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, mark, table)
        mmargin = mm.maintenance_margin(abs(pos.quantity) * mark, table)
        mbal = pos.isolated_wallet_usd + mm.unrealised_pnl(pos.quantity, pos.entry_price, mark)
        needed = max(lim.margin_target_ratio * mmargin - mbal, 0.0)
        if ratio is not None and not math.isfinite(ratio):
            ratio = None
        distance = None
        for_distance = 0.0
        if pos.quantity != 0 and mark > 0:
            lp = mm.liquidation_price(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, table)
            if math.isfinite(lp) and lp > 0:
                short = pos.quantity < 0
                distance = ((lp - mark) if short else (mark - lp)) / mark * 100.0
                step = lim.liquidation_distance_target_pct / 100.0
                target = mark * (1.0 + step) if short else mark * (1.0 - step)
                for_distance = max(mm.wallet_for_liquidation_price(target, pos.quantity, pos.entry_price, table)
                                   - pos.isolated_wallet_usd, 0.0)
        return LegRisk(role=leg.role, symbol=leg.symbol, margin_ratio=ratio, margin_needed_usd=needed,
                       liquidation_distance_pct=distance, margin_for_distance_usd=for_distance)

    # ------------------------------------------------------------------ playbook entry rules

    def carry_refusal(self, sym: str, snap: Snapshot, qty: float, hold_days: float, strategy: StrategySpec) -> str | None:
        """Why the carry entry rule refuses ``qty`` of ``sym`` now (None: it may enter). A reverse trade
        reads the funding longs receive, net of its borrow interest."""
        r = self.settings.exit_rules
        fc = self.market.signals_for(strategy, sym, snap).funding_carry_8h_pct
        rate = 0.0 if fc is None else fc / 100.0 / 8.0 * snap.funding_interval_hours
        n = settlements_in(snap.seconds_to_funding, snap.funding_interval_hours, hold_days * 86400.0)
        fees, slip = self.settings.spec(sym).costs.round_trip_usd(qty, snap.spot, snap.perp)
        return carry_entry_check(fc, expected_carry_usd(qty, snap.perp, rate, n), fees + slip, r)

    def stop_fires_at_entry(self, sym: str, snap: Snapshot, strategy: StrategySpec, contract: str | None = None) -> str | None:
        """An entry the basis stop would close at once (the smoothed basis already beyond it) is refused."""
        sig = self.market.signals_for(strategy, sym, snap, contract)
        if sig.basis_smooth_pct is None:
            return None
        stop = stop_level_pct(sig.basis_pct, sig.basis_std_pct, self.settings.exit_rules)
        if sig.basis_smooth_pct > stop:
            return (f"the basis averaged over {self.settings.basis_smoothing_hours:g} h ({sig.basis_smooth_pct:.4f}%) is "
                    f"already beyond the stop this entry would get ({stop:.4f}%)")
        return None

    def borrow_rate_hourly(self, strategy: StrategySpec, sym: str) -> float:
        return self.market.borrow_apr_pct(sym)[0] / 100.0 / HOURS_PER_YEAR if self.market.borrows(strategy) else 0.0

    # ------------------------------------------------------------------ the entry's readings

    def plan(self, strategy: StrategySpec, sym: str, notional_usd: float, contract: str | None = None,
             venues: dict[str, str | None] | None = None) -> list[PlannedLeg]:
        """The legs an entry of ``notional_usd`` on ``sym`` would send, at mid prices now (a dated leg
        trades ``contract``, a code from `choose_contract`; a cross-exchange leg trades on the venue
        ``venues`` gives its slot, from `choose_venues`)."""
        def price(spec: LegSpec, s: str) -> float:
            try:
                return self.market.mid(spec.market, s)
            except (MarketDataUnavailable, KeyError) as e:
                raise Rejected("symbol", s, f"no market data for the {spec.role} leg: {e}") from None

        def symbol_of(spec: LegSpec, s: str) -> str:
            if spec.venue_slot is not None and venues:
                return qualify(s, venues.get(spec.venue_slot))
            return contract if spec.market == "future" and contract is not None else s

        return plan_legs(strategy, sym, notional_usd, price, lambda s: self.settings.spec(s).qty_step, symbol_of)

    def choose_contract(self, strategy: StrategySpec, sym: str, hold_days: float, requested: str | None,
                        hold_field: str = "expected_hold_days") -> str | None:
        """The dated contract a ``strategy`` entry on ``sym`` trades: ``requested`` if it is listed and the
        hold ends before its last trading time (expiry − ``expiry_exit_hours``), else the nearest listed
        contract that allows the hold. None for a strategy without a dated leg. Refusals name the dates."""
        if not strategy.dated:
            if requested is not None:
                raise Rejected("contract", requested, f"{strategy.name} has no dated-future leg; leave contract out")
            return None
        now = self.market.now()
        buffer_s = self.settings.expiry_exit_hours * 3600.0
        delay = self.settings.fill_delay_seconds if self.market.clock.simulated else 0.0  # replay: fills land this late
        ends = now + delay + hold_days * 86400.0
        listed = dated.listed_expiries(now)
        venue_lists = getattr(self.market.feed, "dated_contracts", None)  # live: only what the venue lists and quotes
        if venue_lists is not None:
            listed = [e for e in listed if dated.contract_code(sym, e) in venue_lists]
        names = ", ".join(dated.contract_code(sym, e) for e in listed) or f"none for {sym} on {self.market.feed.venue}"
        if requested is not None:
            try:
                base, expiry = dated.parse_contract(requested)
            except ValueError as e:
                raise Rejected("contract", requested, str(e)) from None
            if base != sym:
                raise Rejected("contract", requested, f"is a {base} contract; this entry is on {sym}")
            if expiry <= now:
                raise Rejected("contract", requested, f"expired at {dated.iso_day(expiry)} (now {iso(now)}); listed: {names}")
            if expiry not in listed:
                where = f"on {self.market.feed.venue}" if venue_lists is not None else "(the current and next quarter are)"
                raise Rejected("contract", requested, f"{dated.contract_code(base, expiry)} is not listed at {iso(now)} {where}: "
                               f"{names}")
            if ends > expiry - buffer_s:
                raise Rejected(hold_field, hold_days,
                               f"a {hold_days:g}-day hold" + (f" from the fill {delay / 3600:g} h from now" if delay else "")
                               + f" ends {iso(ends)}, past {requested}'s last trading time "
                               f"{iso(expiry - buffer_s)} (expiry {dated.iso_day(expiry)} less expiry_exit_hours "
                               f"{self.settings.expiry_exit_hours:g}): a position may not be held across expiry")
            return dated.contract_code(base, expiry)
        for expiry in listed:
            if ends <= expiry - buffer_s:
                return dated.contract_code(sym, expiry)
        raise Rejected(hold_field, hold_days,
                       f"a {hold_days:g}-day hold ends {iso(ends)}, past the last trading time of every listed contract "
                       f"({names}; each is closed expiry_exit_hours {self.settings.expiry_exit_hours:g} before expiry)")

    def funding_per_hour(self, sym: str) -> dict[str, tuple[float | None, str]]:
        """Per venue (short name): the funding a short perp on ``sym`` receives per hour, as a fraction: the venue's
        mean settled rate of the last 30 days (else its shown rate) over its own interval; or None and why there is
        none. The one measure the venue choice, scan_basis and the entry check all use."""
        out: dict[str, tuple[float | None, str]] = {}
        primary = self.venue.primary_venue
        now = self.market.now()
        for v in self.venue.venue_names():
            try:
                feed, bare = self.market.feed_of(qualify(sym, None if v == primary else v))
                snap = feed.snapshot(bare)
            except (MarketDataUnavailable, KeyError) as e:
                out[v] = (None, str(e))
                continue
            mean = feed.mean_funding_rate(bare, now - 30 * 86400.0, now)
            rate, src = (snap.funding_rate, snap.funding_rate_source) if mean is None else (mean, "mean settled, last 30 days")
            out[v] = (rate / snap.funding_interval_hours, src)
        return out

    def choose_venues(self, strategy: StrategySpec, sym: str, short_venue: str | None, long_venue: str | None,
                      ) -> dict[str, str | None]:
        """The venue of each slot of a cross-exchange entry: ``rich`` (the short leg) pays the most funding per
        hour, ``cheap`` (the long leg) the least, unless the agent named them. None in the map = the primary
        venue. Refusals name the field, the venues and their rates."""
        named = {"short_venue": short_venue, "long_venue": long_venue}
        if not strategy.cross_venue:
            for f, v in named.items():
                if v is not None:
                    raise Rejected(f, v, f"{strategy.name} trades on one venue; leave {f} out")
            return {}
        names = self.venue.venue_names()
        if len(names) < 2:
            raise Rejected("strategy", strategy.name, f"needs two venues and this desk has only {names[0]}: start the replay "
                           "with --paper-venues bybit (shipped real funding 2020-2023; or BASIS_MCP_PAPER_VENUES), or a "
                           "live desk with two --venue names; nothing was sent")
        for f, v in named.items():
            if v is not None and v not in names:
                raise Rejected(f, v, f"not a venue of this desk ({', '.join(names)})")
        if short_venue is not None and short_venue == long_venue:
            raise Rejected("long_venue", long_venue, "must differ from short_venue: both legs on one venue are no position")
        rates = self.funding_per_hour(sym)
        have = {v: r for v, (r, _) in rates.items() if r is not None}
        for f, v in named.items():
            if v is not None and v not in have:
                raise Rejected(f, v, f"no {sym} perp funding on {v} at {iso(self.market.now())}: {rates[v][1]}")
        if len(have) < 2:
            why = "; ".join(f"{v}: {msg}" for v, (r, msg) in rates.items() if r is None)
            raise Rejected("symbol", sym, f"{sym} trades on fewer than two of this desk's venues now ({why})")
        rich = short_venue or max((v for v in have if v != long_venue), key=lambda v: have[v])
        cheap = long_venue or min((v for v in have if v != rich), key=lambda v: have[v])
        primary = self.venue.primary_venue
        return {"rich": None if rich == primary else rich, "cheap": None if cheap == primary else cheap}

    async def venue_problems(self, planned: list[PlannedLeg], lev: float) -> list[str]:
        """With more than one venue: every venue of the entry's legs answers, no venue above ``max_venue_share`` of
        capital once this entry is on, and each venue's new legs paid from that venue's own free USDT less what
        entries still waiting to fill there have reserved (collateral does not move between exchanges)."""
        if not self.venue.multi:
            return []
        cap = self.book.capital_usd * self.settings.max_venue_share
        usage = self.book.venue_usage(self.market.mid)
        pending = self.book.venue_usage(self.market.mid, statuses=("opening",), unfilled_only=True)
        new: dict[str, float] = {}
        for p in planned:
            name = self.venue.leg_venue(p.symbol)
            new[name] = new.get(name, 0.0) + leg_capital_usd(p.spec.market, p.spec.side, p.quantity, p.mid, lev,
                                                             self.leg_costs(p.spec.market, p.symbol))
        out = []
        balances: dict[str, dict[str, float]] = {}
        for name in new:
            try:
                balances[name.split(":", 1)[-1]] = await self.venue.exchange(name.split(":", 1)[-1]).fetch_balances()
            except (VenueError, VenueTimeout) as e:
                out.append(f"{name} does not answer ({str(e)[:160]}): an entry needs every leg's venue")
        for name, usd in sorted(new.items()):
            if name.split(":", 1)[-1] not in balances:
                continue
            total = usage.get(name, 0.0) + usd
            if total > cap + 1e-6:
                out.append(f"{name} would hold ${total:,.2f} of positions (${usage.get(name, 0.0):,.2f} open + ${usd:,.2f} "
                           f"new), above the per-venue cap of {self.settings.max_venue_share:g} of capital (${cap:,.2f})")
            free = balances[name.split(":", 1)[-1]].get("USDT", 0.0) - pending.get(name, 0.0)
            if usd > free + 1e-6:
                out.append(f"{name} has ${free:,.2f} free USDT (after entries still waiting to fill there), less than the "
                           f"${usd:,.2f} this entry's legs there need")
        return out

    def cross_differential(self, sym: str, rich: str, cheap: str) -> tuple[float, float]:
        """(the funding differential per hour a cross position short ``rich`` / long ``cheap`` expects: each venue's
        mean settled rate of the last 30 days over its own interval, else its shown rate; the end of the data the
        two venues' markets have, +inf when unbounded)."""
        rates = self.funding_per_hour(sym)
        ends = math.inf
        for v in (rich, cheap):
            if rates[v][0] is None:
                raise Rejected("symbol", sym, f"no {sym} perp funding on {v}: {rates[v][1]}")
            feed, bare = self.market.feed_of(qualify(sym, None if v == self.venue.primary_venue else v))
            span = getattr(feed, "span", {}).get(bare)
            if span is not None:
                ends = min(ends, span[1])
        return rates[rich][0] - rates[cheap][0], ends  # type: ignore[operator]

    def cross_entry_refusal(self, sym: str, planned: list[PlannedLeg], lev: float, hold_days: float) -> str | None:
        """A cross-exchange entry must expect its funding differential over ``hold_days`` to pay its four perp fills, and
        (replay) the hold must end before either venue's data does (there is no market to close it in after)."""
        rich = next(p for p in planned if p.spec.venue_slot == "rich")
        cheap = next(p for p in planned if p.spec.venue_slot == "cheap")
        names = [venue_of(p.symbol) or self.venue.primary_venue for p in (rich, cheap)]
        diff_h, ends = self.cross_differential(sym, *names)
        notional = rich.quantity * rich.mid
        costs = sum(2.0 * notional * (c.taker_fee + c.slippage_fraction(notional))
                    for c in (self.leg_costs("perp", rich.symbol), self.leg_costs("perp", cheap.symbol)))
        end = self.market.now() + self.settings.fill_delay_seconds + hold_days * 86400.0
        if self.market.clock.simulated and end > ends - 3600.0:
            return (f"a {hold_days:g}-day hold ends {iso(end)}, after the replay data of a venue ends ({iso(ends)}): "
                    "there would be no market to close it in")
        earn = notional * diff_h * hold_days * 24.0
        if earn <= costs:
            return (f"the funding differential ({names[0]} − {names[1]}, last 30 days: {diff_h * 8 * 100:.5f}%/8h) would earn "
                    f"${earn:,.2f} over {hold_days:g} days, not the ${costs:,.2f} of four perp fills")
        return None

    def leg_costs(self, market: str, symbol: str) -> Any:
        costs = self.settings.spec(symbol).costs
        return costs.spot if market in SPOT_LIKE else costs.perp

    def capital_required_usd(self, planned: list[PlannedLeg], lev: float) -> float:
        """Cash the entry ties up: every leg's fill (owned spot) or margin (leveraged legs) plus fees."""
        total = sum(leg_capital_usd(p.spec.market, p.spec.side, p.quantity, p.mid, lev, self.leg_costs(p.spec.market, p.symbol))
                    for p in planned)
        return total * (1.0 if self.market.clock.simulated else LIVE_CAPITAL_BUFFER)

    async def entry_readings(self, strategy: StrategySpec, sym: str, notional_usd: float, lev: float, expected_hold_days: float,
                             playbook: str, contract: str | None = None, short_venue: str | None = None,
                             long_venue: str | None = None) -> tuple[EntryReadings, Snapshot, list[PlannedLeg]]:
        """Everything the pre-trade rules look at, measured now: (readings, snapshot of ``sym``, the planned legs).
        A strategy with a dated leg trades ``contract`` (chosen by `choose_contract` for the hold); a
        cross-exchange one the venues `choose_venues` picks."""
        snap = self.market.snapshot(sym)
        contract = self.choose_contract(strategy, sym, expected_hold_days, contract)
        venues = self.choose_venues(strategy, sym, short_venue, long_venue)
        planned = self.plan(strategy, sym, notional_usd, contract, venues)
        ref = planned[0]
        spec = self.settings.spec(ref.symbol)
        others = sorted({p.symbol for p in planned} - {sym})
        snaps = [snap] + [self.market.snapshot(s) for s in others]
        stale = max(snaps, key=lambda s: s.data_age_seconds)
        vols = [(v, s.symbol) for s in snaps if (v := self.market.realised_vol_1h_pct(s)) is not None]
        vol = max(vols) if vols else None
        has_basis = strategy.basis_legs is not None
        expected_net = None
        if playbook == "convergence" and contract is not None:
            fut = planned[strategy.basis_legs[1]].mid if strategy.basis_legs else snap.perp
            expected_net = entry_expected_net_usd(
                qty=ref.quantity, spot=snap.perp, perp=fut, leverage=lev, costs=PairCosts(spec.costs.perp, spec.costs.perp),
                hold_days=expected_hold_days, funding_rate=self.market.funding_assumption(sym, snap, None)[0],
                funding_interval_hours=snap.funding_interval_hours, seconds_to_next_funding=snap.seconds_to_funding,
                seconds_to_expiry=dated.parse_contract(contract)[1] - self.market.now())
        elif playbook == "convergence" and has_basis:
            expected_net = entry_expected_net_usd(
                qty=ref.quantity, spot=snap.spot, perp=snap.perp, leverage=lev, costs=spec.costs, hold_days=expected_hold_days,
                funding_rate=self.market.funding_assumption(sym, snap, None)[0],
                funding_interval_hours=snap.funding_interval_hours, seconds_to_next_funding=snap.seconds_to_funding,
                direction=strategy.direction, borrow_rate_hourly=self.borrow_rate_hourly(strategy, sym))
        dup = None
        for p in planned:
            row = self.book.position_on(p.spec.market, p.symbol)
            if row is not None:
                dup = row["id"]
                break
        problems: list[str] = []
        per_symbol: dict[str, float] = {sym: notional_usd}  # the entry's notional per coin (largest leg on each)
        for p in planned:
            coin = dated.underlying(p.symbol)  # a dated contract is its coin's exposure
            if coin != sym:
                per_symbol[coin] = max(per_symbol.get(coin, 0.0), p.quantity * p.mid)
        cap = self.book.capital_usd
        per_tier: dict[str, float] = {}
        usage = self.book.tier_usage()
        for s_, usd in per_symbol.items():
            tier = self.settings.tier_of(s_)
            per_tier[tier] = per_tier.get(tier, 0.0) + usd
            if s_ == sym:
                continue  # the position's own coin: the caps above
            minimum = self.settings.spec(s_).min_notional_usd
            if usd < minimum:
                problems.append(f"the {s_} leg (${usd:,.2f}) is below the {s_} venue minimum of ${minimum:,.2f}")
            single = self.settings.tier_single_position[tier] * cap
            for name, limit in (("max_position_notional", self.settings.max_position_notional_usd), ("tier_single_position", single)):
                if usd > limit + 1e-9:
                    problems.append(f"the {s_} leg (${usd:,.2f}) is above {name} ${limit:,.2f} ({tier} tier)")
        for tier, usd in per_tier.items():
            headroom = max(self.settings.tier_allocation[tier] * cap - usage.get(tier, 0.0), 0.0)
            if usd > headroom + 1e-9 and not (tier == self.settings.tier_of(sym) and usd == notional_usd):
                problems.append(f"the legs put ${usd:,.2f} in the {tier} tier, above its headroom of ${headroom:,.2f}")
        if self.venue.multi:
            problems += await self.venue_problems(planned, lev)
        if strategy.cross_venue:
            why = self.cross_entry_refusal(sym, planned, lev, expected_hold_days)
            if why:
                problems.append(why)
        below = tuple(problems)
        state, reason = self.trading_state()
        allow = self.allowlist()
        readings = EntryReadings(
            symbol=sym,
            state=state,
            state_reason=reason,
            allowlisted=all(dated.underlying(s) in allow for s in [sym, *others]),
            allowlist=tuple(allow),
            leverage=lev,
            leverage_cap=min(self.settings.max_leverage, HARD.max_leverage),
            hard_leverage_cap=HARD.max_leverage,
            notional_usd=notional_usd,
            caps=[(c.name, c.limit_usd, c.detail) for c in self.caps(sym)],
            free_capital_usd=await self.free_capital_or_zero(),
            capital_required_usd=self.capital_required_usd(planned, lev),
            data_age_seconds=stale.data_age_seconds,
            stale_limit_seconds=self.market.stale_limit(),
            realised_vol_1h_pct=None if vol is None else vol[0],
            vol_limit_pct=self.settings.max_realised_vol_1h_pct,
            expected_net_usd=expected_net,
            expected_hold_days=expected_hold_days,
            duplicate_position_id=dup,
            orders_last_minute=self.orders_last_minute(),
            orders_per_minute_limit=self.settings.max_orders_per_minute,
            min_notional_usd=spec.min_notional_usd,
            quantity=ref.quantity,
            rounded_notional_usd=ref.quantity * ref.mid,
            venue_reachable=self.health.reachable,
            venue_down_seconds=self.health.down_seconds(),
            playbook=playbook,
            carry_refusal=self.carry_refusal(sym, snap, ref.quantity, expected_hold_days, strategy) if playbook == "carry" else None,
            stop_now=self.stop_fires_at_entry(sym, snap, strategy, contract) if has_basis and playbook != "none" else None,
            orders_per_entry=len(planned),
            leg_problems=below,
            borrow_apr_pct=self.market.borrow_apr_pct(sym)[0] if self.market.borrows(strategy) else None,
            borrow_limit_apr_pct=self.settings.borrow_spike_apr_pct,
        )
        return readings, snap, planned
