"""Trades, equity and statistics. Both engines build trades through `close_trade`, which prices
fills with the desk's cost model and books P&L with the desk's ledger function."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

import basis_mcp.backtest.core as core
from basis_mcp import dated
from basis_mcp.backtest.prepare import Market
from basis_mcp.clock import iso
from basis_mcp.costs import PairCosts
from basis_mcp.ledger import pnl
from basis_mcp.playbooks import EMERGENCY_RULES


@dataclass(frozen=True)
class Trade:
    symbol: str
    entry_index: int
    exit_index: int
    entry_time: str
    exit_time: str
    quantity: float
    entry_basis_pct: float
    exit_basis_pct: float
    basis_pnl_usd: float
    funding_usd: float
    fees_usd: float
    slippage_usd: float
    pnl_usd: float
    settlements: int
    hold_hours: float
    reason: str
    playbook: str = "convergence"
    notional_usd: float = 0.0  # spot-leg notional at the entry fill (mid)
    funding_at_constant_notional_usd: float = 0.0  # the same settlements paid on the entry notional
    borrow_usd: float = 0.0  # reverse trades: MODELLED borrow interest on the short spot (≤ 0), in pnl_usd
    strategy: str = "cash_and_carry"
    contract: str | None = None  # calendar spreads: the quarterly traded (SIMULATED price)

    @property
    def pnl_at_constant_notional_usd(self) -> float:
        """P&L with every funding payment made on the entry notional instead of the fixed quantity's
        drifting one (basis and costs as booked): what the trade earned per dollar of exposure,
        free of the price path of a fixed quantity."""
        return self.pnl_usd - self.funding_usd + self.funding_at_constant_notional_usd

    def as_dict(self) -> dict[str, Any]:
        """The trade as a user reads it: the bar indices are the engine's own and are left out."""
        d = asdict(self)
        del d["entry_index"], d["exit_index"]
        return d


def fills_for(m: Market, i: int, j: int, qty: float, direction: int = 1) -> list[dict[str, Any]]:
    """The four fills of a round trip opened at bar i and closed at bar j, as the paper venue fills them
    (direction −1: the reverse trade, spot sold first and bought back)."""
    out = []
    s_in, s_out = ("buy", "sell") if direction == 1 else ("sell", "buy")
    for bar, leg, side in ((i, "spot", s_in), (i, "perp", s_out), (j, "perp", s_in), (j, "spot", s_out)):
        mid = float(m.spot[bar] if leg == "spot" else m.perp[bar])
        costs = m.costs.leg(leg)  # type: ignore[arg-type]
        price = costs.fill_price(mid, side, qty * mid)  # type: ignore[arg-type]
        out.append({"market": leg, "side": side, "quantity": qty, "price": price, "mid_price": mid,
                    "fee_usd": qty * price * costs.taker_fee})
    return out


def close_trade(m: Market, i: int, j: int, qty: float, funding: list[float], reason: str, playbook: str = "convergence",
                direction: int = 1, borrow: list[float] | None = None, strategy: str = "cash_and_carry",
                funding_direction: int | None = None) -> Trade:
    p = pnl(fills_for(m, i, j, qty, direction), funding, None, borrow or ())
    b_in = (m.perp[i] - m.spot[i]) / m.spot[i] * 100.0
    b_out = (m.perp[j] - m.spot[j]) / m.spot[j] * 100.0
    return Trade(
        symbol=m.symbol,
        entry_index=i,
        exit_index=j,
        entry_time=iso(float(m.t[i])) or "",
        exit_time=iso(float(m.t[j])) or "",
        quantity=qty,
        entry_basis_pct=float(b_in),
        exit_basis_pct=float(b_out),
        basis_pnl_usd=p.basis_pnl_usd,
        funding_usd=p.funding_usd,
        fees_usd=p.fees_usd,
        slippage_usd=p.slippage_usd,
        pnl_usd=p.total_usd,
        settlements=len(funding),
        hold_hours=float(m.t[j] - m.t[i]) / 3600.0,
        reason=reason,
        playbook=playbook,
        notional_usd=float(qty * m.spot[i]),
        funding_at_constant_notional_usd=(direction if funding_direction is None else funding_direction)
        * constant_notional_funding(m, i, j, float(qty * m.spot[i])),
        borrow_usd=p.borrow_usd,
        strategy=strategy,
        contract=m.contract,
    )


def constant_notional_funding(m: Market, i: int, j: int, notional: float) -> float:
    """Funding of settlements in (t_i, t_j] paid on ``notional`` dollars instead of a fixed quantity:
    Σ notional / spot_k × mark_k × rate_k (spot_k the last fresh spot at or before the settlement)."""
    total = 0.0
    for T, r in zip(m.f_time.tolist(), m.f_rate.tolist(), strict=True):
        if m.t[i] < T <= m.t[j]:
            k = int((T - m.t[0]) // m.bar_s)
            while k > 0 and (np.isnan(m.spot[k]) or np.isnan(m.perp[k])):
                k -= 1
            total += notional / float(m.spot[k]) * float(m.mark[int((T - m.t[0]) // m.bar_s)]) * r
    return total


# --------------------------------------------------------------------------- equity and statistics


def equity_curve(markets: list[Market], trades: list[Trade], capital: float,
                 own_equity: Callable[[Market, list[Trade]], np.ndarray] | None = None,
                 cache: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Portfolio equity per bar over the union of the trading ranges: capital + realised P&L +
    open positions marked at mid (basis change) with funding received so far, net of the
    entry costs already paid. O(bars + trades): each symbol's curve is one compiled pass over its
    bars applying the trades' entries and exits and the settlements in bar order (`core.legs_equity`),
    never a pass over the bars per trade.
    ``cache`` keeps each symbol's own curve by symbol, for a later call over the same trades (the
    book's curve after the per-symbol ones) to reuse."""
    t0 = min(m.t[m.i0] for m in markets)
    t1 = max(m.t[m.i1] for m in markets)
    bar = markets[0].bar_s  # (one bar size per run: `runner.load_markets` refuses a mix)
    times = np.arange(t0, t1 + 1, bar)
    eq = np.full(times.size, capital, dtype=np.float64)
    by_symbol: dict[str, list[Trade]] = defaultdict(list)
    for tr in trades:
        by_symbol[tr.symbol].append(tr)
    for m in markets:
        ts = by_symbol.get(m.symbol)
        if ts:
            own = cache.get(m.symbol) if cache is not None else None
            if own is None:
                own = (own_equity or _symbol_equity)(m, ts)  # over the market's range [i0, i1]
                if cache is not None:
                    cache[m.symbol] = own
            off = int((t0 - m.t[m.i0]) // bar)  # union bar u is this range's bar u + off (before it: 0; after: its last)
            u0 = max(-off, 0)
            span = max(min(times.size - u0, own.size - (u0 + off)), 0)
            eq[u0 : u0 + span] += own[u0 + off : u0 + off + span]
            eq[u0 + span :] += own[-1]
    return times, eq


def _symbol_equity(m: Market, trades: list[Trade]) -> np.ndarray:
    """One symbol's realised + open P&L per bar of its trading range (see `equity_curve`), summed over
    the legs each trade held: spot and perp, or a calendar spread's perp and quarterly (its SIMULATED
    price, rebuilt from the perp and funding as `dated` prices it), each with its strategy's signs."""
    total = np.zeros(m.i1 - m.i0 + 1)
    groups: dict[tuple[str, str | None], list[Trade]] = defaultdict(list)
    for t in trades:
        groups[(t.strategy, t.contract)].append(t)
    carry = None
    for (strategy, contract), ts in groups.items():
        if contract is None:
            ref, other, costs = m.spot, m.perp, m.costs
        else:
            if carry is None:
                carry = dated.funding_carry_apr(m.f_time, m.f_rate, m.t)
            expiry = dated.parse_contract(contract)[1]
            fresh = ~(np.isnan(m.spot) | np.isnan(m.perp)) & (m.t <= expiry)
            ref = np.where(fresh, m.perp, np.nan)
            other = np.where(fresh, dated.simulated_price(m.perp, carry, expiry - m.t), np.nan)
            costs = PairCosts(m.costs.perp, m.costs.perp)
        direction = -1 if strategy == "reverse_cash_and_carry" else 1
        funding_direction = 1 if strategy == "cash_and_carry" else -1
        total += _legs_equity(m, ts, ref, other, costs, direction, funding_direction)
    return total


def _legs_equity(m: Market, trades: list[Trade], ref_all: np.ndarray, other_all: np.ndarray, costs: PairCosts,
                 direction: int, funding_direction: int) -> np.ndarray:
    """Realised + open P&L per bar of trades that are long ``direction`` × (reference leg) and short it of
    the other: the basis change since entry, less entry costs, plus the funding the position received
    (× ``funding_direction``) at each settlement while open. Borrow interest is counted when the trade
    closes (in its P&L)."""
    lo = m.i0
    n = m.i1 - m.i0 + 1
    spot, perp = ref_all[lo : m.i1 + 1], other_all[lo : m.i1 + 1]
    i = np.array([t.entry_index for t in trades], dtype=np.int64) - lo
    j = np.array([t.exit_index for t in trades], dtype=np.int64) - lo
    q = np.array([t.quantity for t in trades])
    c = costs
    entry_cost = np.zeros(len(trades))
    ref_side, other_side = ("buy", "sell") if direction == 1 else ("sell", "buy")
    for mid, leg, side in ((spot[i], c.spot, ref_side), (perp[i], c.perp, other_side)):
        price = leg.fill_price(mid, side, q * mid)
        entry_cost += q * price * leg.taker_fee + np.abs(price - mid) * q
    ft = m.f_time.astype(np.float64)
    bars = ((ft - m.t[lo]) // m.bar_s).astype(np.int64)
    ok = (bars >= 0) & (bars < n)
    return core.legs_equity(np.ascontiguousarray(spot), np.ascontiguousarray(perp), i, j, direction * q, entry_cost,
                            np.array([t.pnl_usd for t in trades]), np.array([t.funding_usd for t in trades]),
                            funding_direction * q, bars[ok], m.mark[bars[ok] + lo] * m.f_rate[ok])


def stats(trades: list[Trade], times: np.ndarray, equity: np.ndarray, capital: float, markets: list[Market],
          leverage: float) -> dict[str, Any]:
    days = max((times[-1] - times[0]) / 86400.0, 1 / 24)
    total = float(sum(t.pnl_usd for t in trades))
    bar = markets[0].bar_s if markets else 3600.0
    daily = equity[:: max(int(round(86400.0 / bar)), 1)]
    rets = np.diff(daily) / daily[:-1] if daily.size > 2 else np.array([])
    sharpe = float(rets.mean() / rets.std() * math.sqrt(365)) if rets.size > 2 and rets.std() > 0 else None
    dd = float(core.max_drawdown(equity) * 100) if equity.size else 0.0
    span_h = sum((m.i1 - m.i0 + 1) * m.bar_s / 3600.0 for m in markets)  # hours of data over the ranges
    held = sum(t.hold_hours for t in trades) if bar != 3600.0 else sum(int(t.hold_hours) for t in trades)
    # the carry's own rate: P&L per dollar-year a position ties up (spot + margin) while invested
    dollar_years = sum(t.notional_usd * (1.0 + 1.0 / leverage) * t.hold_hours / 24 / 365 for t in trades)
    apy_invested = total / dollar_years * 100 if dollar_years > 0 else None
    wins = [t for t in trades if t.pnl_usd > 0]
    reasons = Counter(t.reason for t in trades)
    emergency = sum(n for r, n in reasons.items() if r in EMERGENCY_RULES)
    return {
        "trades": len(trades),
        "win_rate_pct": round(100.0 * len(wins) / len(trades), 2) if trades else None,
        "avg_hold_days": round(float(np.mean([t.hold_hours for t in trades])) / 24, 3) if trades else None,
        "basis_pnl_usd": round(sum(t.basis_pnl_usd for t in trades), 2),
        "funding_usd": round(sum(t.funding_usd for t in trades), 2),
        "borrow_usd": round(sum(t.borrow_usd for t in trades), 2),
        "fees_usd": round(sum(t.fees_usd for t in trades), 2),
        "slippage_usd": round(sum(t.slippage_usd for t in trades), 2),
        "total_pnl_usd": round(total, 2),
        "total_return_pct": round(total / capital * 100, 4),
        "apy_pct": round(total / capital * 100 / days * 365, 4),
        "apy_while_invested_pct": None if apy_invested is None else round(apy_invested, 3),
        "sharpe": None if sharpe is None else round(sharpe, 3),
        "max_drawdown_pct": round(dd, 4),
        "exposure_pct": round(100.0 * held / span_h, 3) if span_h else 0.0,
        "days": round(days, 2),
        "exit_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "emergency_exit_pct": round(100.0 * emergency / len(trades), 2) if trades else 0.0,
    }


def yearly(times: np.ndarray, equity: np.ndarray, capital: float) -> dict[int, float]:
    """P&L per calendar year from the equity curve (marked to market: a year-long hold's funding
    lands in the years it was earned, not in the year it closed)."""
    out: dict[int, float] = {}
    if not times.size:
        return out
    prev = capital
    first, final = (datetime.fromtimestamp(float(x), UTC).year for x in (times[0], times[-1]))
    for y in range(first, final + 1):  # times ascend: each year's last bar is the last before the next 1 January
        last = int(np.searchsorted(times, datetime(y + 1, 1, 1, tzinfo=UTC).timestamp(), side="left")) - 1
        if last < 0 or times[last] < datetime(y, 1, 1, tzinfo=UTC).timestamp():
            continue
        out[y] = float(equity[last]) - prev
        prev = float(equity[last])
    return out


def per_year(trades: list[Trade], capital: float, times: np.ndarray, equity: np.ndarray,
             baseline: dict[int, float] | None = None) -> list[dict[str, Any]]:
    groups: dict[int, list[Trade]] = defaultdict(list)
    for t in trades:
        groups[datetime.fromisoformat(t.exit_time.replace("Z", "+00:00")).astimezone(UTC).year].append(t)
    marked = yearly(times, equity, capital)
    rows = []
    for year in sorted(set(groups) | set(marked)):
        ts = groups.get(year, [])
        pnl_y = marked.get(year, 0.0)
        row = {
            "year": year,
            "trades_closed": len(ts),
            "win_rate_pct": round(100.0 * sum(t.pnl_usd > 0 for t in ts) / len(ts), 2) if ts else None,
            "basis_pnl_usd": round(sum(t.basis_pnl_usd for t in ts), 2),
            "funding_usd": round(sum(t.funding_usd for t in ts), 2),
            "borrow_usd": round(sum(t.borrow_usd for t in ts), 2),
            "costs_usd": round(sum(t.fees_usd + t.slippage_usd for t in ts), 2),
            "pnl_closed_usd": round(sum(t.pnl_usd for t in ts), 2),
            "pnl_usd": round(pnl_y, 2),
            "return_pct": round(pnl_y / capital * 100, 4),
        }
        if baseline is not None:
            row["always_on_pnl_usd"] = round(baseline.get(year, 0.0), 2)
        rows.append(row)
    return rows
