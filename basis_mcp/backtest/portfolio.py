"""The book, not just the rules: every symbol's trades in one chronological pass, with capital.

The rules engine (`engine.TradeFinder`) finds where each symbol would trade if capital were
unlimited. A desk is not: its cash pays for the spot leg and the perp's isolated margin, and
during a long hold through a rally the watchdog tops the short's margin up from that cash
(the liquidation price is kept ≥ ``liquidation_distance_add_pct`` above the mark, restored to
``liquidation_distance_target_pct``; funding is credited to the same wallet). When the cash
cannot pay a top-up the watchdog closes the position. This pass replays exactly that, in time
order across symbols:

- an entry needs the capital the desk's pre-trade check asks for (spot cost, perp margin and
  fees at the signal's prices), and is sized by the desk's ``size_position`` caps when
  ``sizing="desk"``;
- each open position's margin top-ups are computed from its own mark path (vectorised, one
  array pass per top-up) and paid from free cash when they fall due;
- a top-up the cash cannot pay closes the position (``liquidation_distance``, an emergency
  exit), filled after the same delay as any other order.

Reverse trades (short borrowed spot, long perp) tie up margin on both legs, and both legs get
top-ups: the long perp in a fall, the borrowed spot (a short on the spot price whose collateral
pays the hourly borrow) in a rally.

With enough capital (the default: $5,000 positions on $100,000) nothing binds and the trades
are exactly the rules engine's; the tests hold the desk replay to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import basis_mcp.backtest.core as core
from basis_mcp.backtest.engine import SKIP, TradeFinder, book_trades, booking_tables, carried_spot
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade
from basis_mcp.config import Settings
from basis_mcp.costs import PairCosts
from basis_mcp.margin import Bracket
from basis_mcp.sizing import Cap, entry_capital_usd, leg_capital_usd, size_position


def reverse_capital_usd(qty: float, spot: float, perp: float, leverage: float, costs: PairCosts) -> float:
    """Cash a reverse entry ties up: margin on the borrowed spot it sells and on the perp it buys, plus
    fees, as the desk's pre-trade check counts it (`sizing.leg_capital_usd` per leg)."""
    return (leg_capital_usd("margin_spot", "short", qty, spot, leverage, costs.spot)
            + leg_capital_usd("perp", "long", qty, perp, leverage, costs.perp))


def wallet_for_liquidation_prices(lp: np.ndarray, qty: float, entry_price: float, table: list[Bracket],
                                  short: bool = True) -> np.ndarray:
    """`margin.wallet_for_liquidation_price` for many target prices at once (a short of ``qty``, or a long)."""
    caps = np.array([b.notional_cap_usd for b in table])
    idx = np.minimum(np.searchsorted(caps, qty * lp, side="left"), len(table) - 1)
    mmr = np.array([b.mmr for b in table])[idx]
    cum = np.array([b.cum_usd for b in table])[idx]
    if short:
        return lp * qty * (1.0 + mmr) - cum - qty * entry_price
    return qty * entry_price - cum - lp * qty * (1.0 - mmr)


def margin_topups(m: Market, f: dict[str, np.ndarray], e: int, x: int, qty: float, leverage: float, table: list[Bracket],
                  add_pct: float, target_pct: float, direction: int = 1) -> list[tuple[int, float]]:
    """(bar, amount) of every margin top-up the watchdog makes on the leveraged legs of a position of
    ``qty`` filled at bar ``e`` and open until bar ``x`` (fresh bars strictly between them), in bar order.
    Cash-and-carry: the short perp, funding credited to its wallet. Reverse: the long perp (funding
    paid from its wallet, liquidated in a fall) and the borrowed spot, a short on the spot price
    whose collateral pays the hourly borrow."""
    if x <= e + 1:
        return []
    # only this trade's bars and settlements are read (O(hold), never a pass over the whole history per trade), in
    # one compiled pass per leg (`core.leg_topups`)
    ft = booking_tables(m, f)[0]
    k0, k1 = np.searchsorted(ft, (m.t[e], m.t[x]), side="right")  # settlements in (t_e, t_x]
    f_bar = ((ft[k0:k1] - m.t[0]) // m.bar_s).astype(np.int64)
    paid = qty * m.mark[f_bar] * m.f_rate[k0:k1]  # what a short receives (a long pays) per settlement
    brackets = (np.array([b.notional_cap_usd for b in table], dtype=np.float64), np.array([b.mmr for b in table], dtype=np.float64),
                np.array([b.cum_usd for b in table], dtype=np.float64))
    valid, none = f["valid"], np.zeros(0)
    perp_side = "sell" if direction == 1 else "buy"
    ep = float(m.costs.perp.fill_price(m.perp[e], perp_side, qty * m.perp[e]))
    bars, amounts = core.leg_topups(int(e), int(x), valid, m.mark, f_bar, paid, float(direction), none, none, float(qty), ep,
                                    qty * ep / leverage, *brackets, float(add_pct), float(target_pct), direction == 1)
    out = list(zip(bars.tolist(), amounts.tolist(), strict=True))
    if direction == -1:  # the borrowed spot: a short on the (carried) spot price, its collateral paying the borrow
        spot = carried_spot(m, f)
        sp = float(m.costs.spot.fill_price(m.spot[e], "sell", qty * m.spot[e]))
        bars, amounts = core.leg_topups(int(e), int(x), valid, spot, f_bar[:0], paid[:0], 0.0, spot, f["borrow_bar"],
                                        float(qty), sp, qty * sp / leverage, *brackets, float(add_pct), float(target_pct), True)
        out += list(zip(bars.tolist(), amounts.tolist(), strict=True))
        out.sort()
    return out


@dataclass
class _Open:
    symbol: str
    tier: str
    entry: int
    exit: int
    qty: float
    reason: str
    notional: float
    tied: float
    topups: list[tuple[int, float]]
    next_topup: int = 0


@dataclass
class BookStats:
    margin_topups: int = 0
    margin_added_usd: float = 0.0
    peak_capital_in_use_usd: float = 0.0
    forced_closes: int = 0
    entries_refused_for_capital: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"margin_topups": self.margin_topups, "margin_added_usd": round(self.margin_added_usd, 2),
                "peak_capital_in_use_usd": round(self.peak_capital_in_use_usd, 2), "forced_closes": self.forced_closes,
                "entries_refused_for_capital": self.entries_refused_for_capital}


def simulate(markets: list[Market], params: BacktestParams, feats: dict[str, dict[str, np.ndarray]],
             settings: Settings) -> tuple[dict[str, list[Trade]], BookStats]:
    """Every symbol's trades, in time order, with the book's capital (see module docstring)."""
    by_sym = {m.symbol: m for m in markets}
    fixed = params.sizing == "fixed"
    finders = {m.symbol: TradeFinder(m, params, feats[m.symbol], fixed=fixed) for m in markets}
    cursor = {s: f.next_candidate(by_sym[s].i0) for s, f in finders.items()}  # (next candidate bar, its status)
    booked: dict[str, list[tuple[int, int, float, str]]] = {s: [] for s in finders}
    open_: dict[str, _Open] = {}
    realized = 0.0
    cap_usd, lev = params.capital_usd, params.leverage
    stats = BookStats()

    def t_of(s: str, bar: int) -> float:
        return float(by_sym[s].t[bar])

    def free_cash() -> float:
        return cap_usd + realized - sum(o.tied for o in open_.values())

    def close(s: str) -> None:
        nonlocal realized
        o = open_.pop(s)
        booked[s].append((o.entry, o.exit, o.qty, o.reason))
        realized += finders[s].pnl(o.entry, o.exit, o.qty, o.reason)
        cursor[s] = finders[s].next_candidate(o.exit + 1)

    while True:
        events: list[tuple[float, int, str]] = []  # (time, kind, symbol): 0 exit, 1 top-up, 2 entry (this order at one time)
        for s, o in open_.items():
            events.append((t_of(s, o.exit), 0, s))
            if o.next_topup < len(o.topups):
                events.append((t_of(s, o.topups[o.next_topup][0]), 1, s))
        for s in finders:
            if s not in open_ and cursor[s][0] >= 0:
                events.append((t_of(s, cursor[s][0]), 2, s))
        if not events:
            break
        _, kind, s = min(events)
        if kind == 0:
            close(s)
            continue
        if kind == 1:
            o = open_[s]
            bar, amount = o.topups[o.next_topup]
            o.next_topup += 1
            if free_cash() >= amount - 0.01:
                o.tied += amount
                stats.margin_topups += 1
                stats.margin_added_usd += amount
                stats.peak_capital_in_use_usd = max(stats.peak_capital_in_use_usd, sum(x.tied for x in open_.values()))
                continue
            # the cash cannot pay it: the watchdog closes the position (after the usual fill delay)
            f = finders[s]
            fill = f.fill_bar(bar) if bar < f.last_valid else f.last_valid
            if fill is None or fill > f.last_valid:
                fill = f.last_valid
            if fill < o.exit:
                o.exit, o.reason, o.topups = fill, "liquidation_distance", []
                stats.forced_closes += 1
            continue
        # an entry candidate
        f, m = finders[s], by_sym[s]
        c, status = cursor[s]
        spot, perp = float(m.spot[c]), float(m.perp[c])
        tier = settings.tier_of(s)
        if fixed:
            qty = f.fixed_qty(c)
        else:
            in_tier = sum(o.notional for o in open_.values() if o.tier == tier)
            caps = [
                Cap("max_position_notional", settings.max_position_notional_usd, "operator's per-position notional cap"),
                Cap("tier_single_position", settings.tier_single_position[tier] * cap_usd, f"{tier} tier single position"),
                Cap("tier_allocation_headroom", max(settings.tier_allocation[tier] * cap_usd - in_tier, 0.0), f"{tier} headroom"),
            ]
            per = (None if params.direction == 1 else
                   (lambda n, m=m, spot=spot, perp=perp: reverse_capital_usd(n / spot, spot, perp, lev, m.costs) / n))
            qty = size_position(spot_price=spot, leverage=lev, costs=m.costs, free_capital_usd=free_cash(), caps=caps,
                                qty_step=m.qty_step, min_notional_usd=m.min_notional_usd,
                                target_notional_usd=params.notional_usd, perp_price=perp, capital_per_notional_fn=per).quantity
        if qty <= 0:
            needed = 0.0
        elif params.direction == 1:
            needed = entry_capital_usd(qty, spot, perp, lev, m.costs)
        else:
            needed = reverse_capital_usd(qty, spot, perp, lev, m.costs)
        if qty > 0 and needed > free_cash() + 1e-9:
            stats.entries_refused_for_capital += 1
            cursor[s] = f.next_candidate(c + 1)
            continue
        res = f.try_candidate(c, status, qty)
        if res is SKIP:
            cursor[s] = f.next_candidate(c + 1)
            continue
        if res is None:
            cursor[s] = (-1, 0)
            continue
        e, x, q, reason = res  # type: ignore[misc]
        table = settings.spec(s).brackets
        topups = margin_topups(m, feats[s], e, x, q, lev, table, settings.liquidation_distance_add_pct,
                               settings.liquidation_distance_target_pct, params.direction)
        open_[s] = _Open(s, tier, e, x, q, reason, q * spot, needed, topups)
        stats.peak_capital_in_use_usd = max(stats.peak_capital_in_use_usd, sum(o.tied for o in open_.values()))
    out = {}
    for m in markets:
        rows = sorted(booked[m.symbol])
        out[m.symbol] = book_trades(m, params, feats[m.symbol], np.array([r[0] for r in rows], dtype=np.int64),
                                    np.array([r[1] for r in rows], dtype=np.int64), np.array([r[2] for r in rows]),
                                    [r[3] for r in rows])
    return out, stats
