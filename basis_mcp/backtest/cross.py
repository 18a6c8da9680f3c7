"""Cross-exchange basis in the backtest: short the perp where funding is rich, long it where it is cheap.

Data: the real funding history of Binance, Bybit, Gate (8 h) and dYdX (1 h), BTC and ETH, 2020/21
→ 2023 (`history.load_funding_venues`), each venue on its own schedule; the perps' price is the
Binance perp's mark from the hourly extract for every venue. That is the plain limit of this
backtest: the data has no other venue's prices, so the two legs are assumed to trade at the same
price (no cross-venue price basis, no cross-venue slippage beyond the cost model); what it
measures is the funding differential against the costs.

Rules (the carry playbook, applied to the differential; one position per symbol):
- the differential of an ordered pair (rich, cheap) at hour t is what a short on ``rich`` received
  minus what a short on ``cheap`` received over the last ``carry_lookback_days``, per 8 h, percent,
  each venue's settlements summed over the span (`signals.funding_apr_pct_between`'s rule);
- enter the widest pair when its differential is ≥ ``carry_entry_8h_pct`` and the differential over
  ``carry_expected_hold_days`` pays the round trip (four taker fills at each venue's fee, plus
  slippage) ``carry_cost_cover`` times; both venues must have a full lookback of data;
- exit when that pair's differential falls below ``carry_exit_8h_pct``, after
  ``carry_max_hold_days``, when either venue's data ends, or when the Binance mark reaches a leg's
  liquidation price at the position's leverage (each leg is isolated on its own venue: the
  venue with the losing leg cannot borrow the other venue's profit);
- no leg's margin may be above ``venue_cap`` (40 %) of capital; fills one ``fill_delay`` after the
  signal, on the hour.

`run_cross_vectorized` (array features, one Python step per trade) and `run_cross_reference` (one
plain loop over every hour, a deque and a running sum of settlements per venue) must give identical
trades.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from basis_mcp import margin as mm
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade
from basis_mcp.config import Settings
from basis_mcp.history import HOUR, FundingSeries, load_funding_venues

DAY = 86400.0
VENUE_TAKER_FEE = {"binance": 0.0005, "bybit": 0.00055, "gate": 0.0005, "dydx": 0.0005}  # VIP 0 perps
VENUE_CAP = 0.40  # no venue holds more than this share of capital as margin
FUND_DIGITS = 12


@dataclass(frozen=True)
class CrossMarket:
    """One symbol's venues on the hourly grid of its Binance market ``m``."""

    m: Market
    venues: tuple[str, ...]
    series: tuple[FundingSeries, ...]
    pairs: tuple[tuple[int, int], ...]  # (rich, cheap) venue indices

    @property
    def symbol(self) -> str:
        return self.m.symbol


def cross_market(m: Market, venues: tuple[str, ...] | None = None,
                 data: dict[tuple[str, str], FundingSeries] | None = None) -> CrossMarket:
    data = data if data is not None else load_funding_venues()
    have = [v for v in (venues or sorted({v for v, _ in data})) if (v, m.symbol) in data]
    if len(have) < 2:
        raise ValueError(f"{m.symbol}: cross-exchange needs funding from two venues; have {have or 'none'}")
    series = tuple(data[(v, m.symbol)] for v in have)
    pairs = tuple(permutations(range(len(have)), 2))
    return CrossMarket(m, tuple(have), series, pairs)


def _round_trip_fraction(cm: CrossMarket, rich: int, cheap: int, notional: float) -> float:
    """Four taker fills (open and close each leg) at each venue's fee, plus the perp slippage model."""
    leg = cm.m.costs.perp
    slip = float(leg.slippage_fraction(notional))
    return 2.0 * (VENUE_TAKER_FEE.get(cm.venues[rich], leg.taker_fee) + VENUE_TAKER_FEE.get(cm.venues[cheap], leg.taker_fee)
                  + 2.0 * slip)


def _liq_prices(qty: float, price: float, leverage: float, settings: Settings, symbol: str) -> tuple[float, float]:
    """(short leg's, long leg's) liquidation prices of ``qty`` entered at ``price`` with margin price·qty/leverage."""
    table = settings.spec(symbol).brackets
    wallet = qty * price / leverage
    return (mm.liquidation_price(wallet, -qty, price, table), mm.liquidation_price(wallet, qty, price, table))


def venue_funding(cm: CrossMarket, p: BacktestParams) -> np.ndarray:
    """Per venue × bar: what a short received over the lookback, per 8 h in percent (the settlements in
    (t − lookback, t] summed over the span), NaN where the venue lacks a full lookback or its data has ended.
    Computed only over the bars where two venues can be compared (the rest stays NaN)."""
    t = cm.m.t
    span = p.carry_lookback_days * DAY
    first = [float(s.time[0]) - s.interval_hours * HOUR + span for s in cm.series]
    last = [float(s.time[-1]) for s in cm.series]
    lo_t, hi_t = sorted(first)[1], sorted(last)[-2]  # two venues covered: from the second start to the second end
    i0 = max(int(np.searchsorted(t, lo_t, side="left")), cm.m.i0)
    i1 = min(int(np.searchsorted(t, hi_t, side="right")), cm.m.i1 + 1)
    x = np.full((len(cm.series), t.size), np.nan)
    if i1 <= i0:
        return x
    tt = t[i0:i1]
    for v, s in enumerate(cm.series):
        csum = np.concatenate(([0.0], np.cumsum(s.rate)))
        hi = np.searchsorted(s.time, tt, side="right")
        lo = np.searchsorted(s.time, tt - span, side="right")
        ok = (tt >= first[v]) & (tt <= last[v])
        x[v, i0:i1] = np.where(ok, (csum[hi] - csum[lo]) / span * 8.0 * HOUR * 100.0, np.nan)
    return x


def pair_differential(x: np.ndarray, rich: int, cheap: int, sl: slice | np.ndarray) -> np.ndarray:
    """The differential of one pair at the bars ``sl``, rounded as the rules compare it (NaN: not comparable)."""
    return np.round(x[rich, sl] - x[cheap, sl], FUND_DIGITS)


def _funding_cum(cm: CrossMarket) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per venue: (settlement times, cumulative Σ mark × rate up to each), for funding over any span."""
    m = cm.m
    out = []
    for s in cm.series:
        bar = ((s.time - m.t[0]) // HOUR).astype(np.int64)
        inside = (bar >= 0) & (bar < m.t.size)
        mark = np.where(inside, m.mark[np.clip(bar, 0, m.t.size - 1)], np.nan)
        unit = np.where(np.isnan(mark), 0.0, mark) * s.rate
        out.append((s.time.astype(np.float64), np.concatenate(([0.0], np.cumsum(unit)))))
    return out


def _book(cm: CrossMarket, p: BacktestParams, e: int, x: int, pair: int, qty: float, reason: str, funding: float,
          n_settle: int, entry_diff: float) -> Trade:
    m = cm.m
    rich, cheap = cm.pairs[pair]
    price_in, price_out = float(m.mark[e]), float(m.mark[x])
    leg = m.costs.perp
    fees = slip = 0.0
    for price in (price_in, price_out):
        n = qty * price
        fees += n * (VENUE_TAKER_FEE.get(cm.venues[rich], leg.taker_fee) + VENUE_TAKER_FEE.get(cm.venues[cheap], leg.taker_fee))
        slip += 2.0 * n * float(leg.slippage_fraction(n))
    stamps = [np.datetime_as_string(np.datetime64(int(m.t[i]), "s"), unit="s") + "Z" for i in (e, x)]
    return Trade(symbol=m.symbol, entry_index=e, exit_index=x, entry_time=stamps[0], exit_time=stamps[1], quantity=qty,
                 entry_basis_pct=entry_diff, exit_basis_pct=0.0, basis_pnl_usd=0.0, funding_usd=funding, fees_usd=fees,
                 slippage_usd=slip, pnl_usd=funding - fees - slip, settlements=n_settle,
                 hold_hours=float(m.t[x] - m.t[e]) / HOUR, reason=reason, playbook="carry", notional_usd=qty * price_in,
                 funding_at_constant_notional_usd=funding, strategy="cross_exchange",
                 contract=f"short {cm.venues[rich]} / long {cm.venues[cheap]}")


def cross_equity(cm: CrossMarket, trades: list[Trade]) -> np.ndarray:
    """One symbol's realised + open P&L per bar of its range for cross-exchange trades: each open
    trade less its entry costs (as booked: half its fees and slippage) plus the funding differential it
    has received so far, settlement by settlement on each venue; its P&L from the exit bar on."""
    m = cm.m
    lo, n = m.i0, m.i1 - m.i0 + 1
    out = np.zeros(n + 1)
    cum = _funding_cum(cm)
    by_label = {f"short {cm.venues[a]} / long {cm.venues[b]}": (a, b) for a, b in cm.pairs}
    for t in trades:
        i, j = t.entry_index - lo, t.exit_index - lo
        rich, cheap = by_label[t.contract or ""]
        out[i] -= (t.fees_usd + t.slippage_usd) / 2.0
        out[j] += (t.fees_usd + t.slippage_usd) / 2.0
        for sign, v in ((1.0, rich), (-1.0, cheap)):
            ts, cs = cum[v]
            k0 = int(np.searchsorted(ts, m.t[t.entry_index], side="right"))
            k1 = int(np.searchsorted(ts, m.t[t.exit_index], side="right"))
            bars = ((ts[k0:k1] - m.t[lo]) // HOUR).astype(np.int64)
            np.add.at(out, bars, sign * t.quantity * np.diff(cs[k0 : k1 + 1]))
        out[j] -= t.funding_usd
        out[j] += t.pnl_usd
    return np.cumsum(out[:n])


def _check_caps(p: BacktestParams) -> None:
    margin = p.notional_usd / p.leverage
    if margin > VENUE_CAP * p.capital_usd + 1e-9:
        raise ValueError(f"notional_usd={p.notional_usd:g} at {p.leverage:g}x puts ${margin:,.2f} of margin on each venue, "
                         f"above the per-venue cap of {VENUE_CAP:.0%} of capital (${VENUE_CAP * p.capital_usd:,.2f})")


def run_cross_vectorized(cm: CrossMarket, p: BacktestParams, settings: Settings | None = None) -> list[Trade]:
    _check_caps(p)
    settings = settings or Settings()
    m = cm.m
    r = p.rules
    x = venue_funding(cm, p)
    n = m.t.size
    bar = np.arange(n)
    in_range = (bar >= m.i0) & (bar <= m.i1) & ~np.isnan(m.mark)
    # the widest pair at every bar is (the venue paid most, the venue paid least): first of each on ties, which is
    # the first pair in the reference loop's order among equals
    covered = ~np.isnan(x)
    rich_v = np.argmax(np.where(covered, x, -np.inf), axis=0)
    cheap_v = np.argmin(np.where(covered, x, np.inf), axis=0)
    pair_of = {pc: k for k, pc in enumerate(cm.pairs)}
    comparable = (covered.sum(axis=0) >= 2) & (rich_v != cheap_v)
    with np.errstate(invalid="ignore"):
        best_val = np.where(comparable, np.round(x[rich_v, bar] - x[cheap_v, bar], FUND_DIGITS), np.nan)
        cand = np.flatnonzero(in_range & (best_val >= r.carry_entry_8h_pct))
    cum = _funding_cum(cm)
    valid_idx = np.flatnonzero(in_range)
    last = int(valid_idx[-1]) if valid_idx.size else -1

    def fill(b: int) -> int:
        """The first bar with a mark at or after ``b`` (the last one if none)."""
        h = int(np.searchsorted(valid_idx, b, side="left"))
        return int(valid_idx[h]) if h < valid_idx.size else last

    delay = int(math.ceil(p.fill_delay_seconds / HOUR - 1e-9))
    hold_bars = int(math.ceil(r.carry_max_hold_days * 24 - 1e-9))
    expected_settle_h = p.carry_expected_hold_days * 24.0
    trades: list[Trade] = []
    k = 0
    while k < cand.size:
        c = int(cand[k])
        if c >= last:
            break
        rich, cheap = int(rich_v[c]), int(cheap_v[c])
        pair = pair_of[(rich, cheap)]
        qty = p.notional_usd / float(m.mark[c])
        expected = best_val[c] / 100.0 / 8.0 * expected_settle_h  # the differential over the hold, a fraction of notional
        if expected < r.carry_cost_cover * _round_trip_fraction(cm, rich, cheap, p.notional_usd):
            k += 1
            continue
        if c + delay >= last:
            break
        e = fill(c + delay)
        if e >= last:
            break
        short_lp, long_lp = _liq_prices(qty, float(m.mark[e]), p.leverage, settings, m.symbol)
        j_hold = fill(e + hold_bars) if e + hold_bars < last else last
        seg = slice(e + 1, j_hold + 1)
        d = pair_differential(x, rich, cheap, seg)
        live = in_range[seg]  # decisions only on bars with a mark
        with np.errstate(invalid="ignore"):
            below = np.flatnonzero(live & ~(d >= r.carry_exit_8h_pct))  # below the exit level, or a venue's data ended
            breach = np.flatnonzero(live & ((m.mark_high[seg] >= short_lp) | (m.mark_low[seg] <= long_lp)))
        j, reason = j_hold, ("max_hold" if e + hold_bars <= last else "end_of_range")
        if below.size and e + 1 + int(below[0]) <= j:
            j = e + 1 + int(below[0])
            reason = "carry_funding_exit" if not np.isnan(d[below[0]]) else "venue_data_ended"
        if breach.size and e + 1 + int(breach[0]) <= j:
            j, reason = e + 1 + int(breach[0]), "liquidation_risk"
        if j == last and reason not in ("liquidation_risk",):
            xb = last
        else:
            xb = j if reason == "liquidation_risk" else fill(min(j + delay, last))
        funding = 0.0
        n_settle = 0
        for sign, v in ((1.0, rich), (-1.0, cheap)):
            ts, cs = cum[v]
            lo = int(np.searchsorted(ts, m.t[e], side="right"))
            hi = int(np.searchsorted(ts, m.t[xb], side="right"))
            funding += sign * qty * (cs[hi] - cs[lo])
            n_settle += hi - lo
        trades.append(_book(cm, p, e, xb, pair, qty, reason, funding, n_settle, float(best_val[c])))
        k = int(np.searchsorted(cand, xb, side="right"))
    return trades


def run_cross_reference(cm: CrossMarket, p: BacktestParams, settings: Settings | None = None) -> list[Trade]:
    """The same rules in one plain loop over every hour: per venue a deque of the settlements in the
    lookback and a pointer to the next one; funding booked settlement by settlement."""
    _check_caps(p)
    settings = settings or Settings()
    m = cm.m
    r = p.rules
    span = p.carry_lookback_days * DAY
    nv = len(cm.venues)
    windows: list[deque[tuple[float, float]]] = [deque() for _ in range(nv)]
    sums = [0.0] * nv  # running sum of each window (O(1) per settlement in and out)
    ptr = [0] * nv
    first_ok = [float(s.time[0]) - s.interval_hours * HOUR + span for s in cm.series]  # a full lookback from here
    last_t = [float(s.time[-1]) for s in cm.series]
    delay = int(math.ceil(p.fill_delay_seconds / HOUR - 1e-9))
    hold_bars = int(math.ceil(r.carry_max_hold_days * 24 - 1e-9))
    valid = [i for i in range(m.i0, m.i1 + 1) if not math.isnan(m.mark[i])]
    last = valid[-1] if valid else -1
    trades: list[Trade] = []
    pos: dict | None = None
    pending: dict | None = None
    for i in range(last + 1):
        t = float(m.t[i])
        for v, s in enumerate(cm.series):
            while ptr[v] < s.time.size and s.time[ptr[v]] <= t:
                T, rate = float(s.time[ptr[v]]), float(s.rate[ptr[v]])
                windows[v].append((T, rate))
                sums[v] += rate
                if pos is not None and i > pos["e"]:
                    sign = 1.0 if v == pos["rich"] else (-1.0 if v == pos["cheap"] else 0.0)
                    if sign:
                        b = int((T - m.t[0]) // HOUR)
                        mark = float(m.mark[b]) if 0 <= b < m.t.size and not math.isnan(m.mark[b]) else 0.0
                        pos["funding"] += sign * pos["qty"] * mark * rate
                        pos["n"] += 1
                ptr[v] += 1
            while windows[v] and windows[v][0][0] <= t - span:
                sums[v] -= windows[v].popleft()[1]
            if not windows[v]:
                sums[v] = 0.0
        if i < m.i0 or math.isnan(m.mark[i]):
            continue

        def covered(v: int, t: float = t) -> bool:
            return first_ok[v] <= t <= last_t[v]

        def diff(a: int, b: int) -> float | None:
            if not (covered(a) and covered(b)):
                return None
            per = [sums[v] / span * 8.0 * HOUR * 100.0 for v in (a, b)]
            return round(per[0] - per[1], FUND_DIGITS)

        if pending is not None and i >= pending["at"]:
            if pending["kind"] == "entry":
                pos = {"e": i, "pair": pending["pair"], "rich": pending["rich"], "cheap": pending["cheap"], "qty": pending["qty"],
                       "diff": pending["diff"], "funding": 0.0, "n": 0}
                pos["short_lp"], pos["long_lp"] = _liq_prices(pos["qty"], float(m.mark[i]), p.leverage, settings, m.symbol)
                pending = None
                continue
            trades.append(_book(cm, p, pos["e"], i, pos["pair"], pos["qty"], pending["reason"], pos["funding"], pos["n"],
                                pos["diff"]))
            pos, pending = None, None
            continue
        if pos is not None and pending is None:
            d = diff(pos["rich"], pos["cheap"])
            reason = None
            if m.mark_high[i] >= pos["short_lp"] or m.mark_low[i] <= pos["long_lp"]:
                reason = "liquidation_risk"
            elif d is None:
                reason = "venue_data_ended"
            elif d < r.carry_exit_8h_pct:
                reason = "carry_funding_exit"
            elif i - pos["e"] >= hold_bars:
                reason = "max_hold"
            elif i == last:
                reason = "end_of_range"
            if reason is not None:
                if reason in ("liquidation_risk", "end_of_range") or delay == 0 or i + delay >= last:
                    at = i if reason in ("liquidation_risk", "end_of_range") else min(i + delay, last)
                    if at == i:
                        trades.append(_book(cm, p, pos["e"], i, pos["pair"], pos["qty"], reason, pos["funding"], pos["n"],
                                            pos["diff"]))
                        pos = None
                        continue
                    pending = {"kind": "exit", "at": at, "reason": reason}
                else:
                    pending = {"kind": "exit", "at": i + delay, "reason": reason}
            continue
        if pos is None and pending is None and i < last:
            best, best_k = None, -1
            for k, (a, b) in enumerate(cm.pairs):
                d = diff(a, b)
                if d is not None and (best is None or d > best):
                    best, best_k = d, k
            if best is None or best < r.carry_entry_8h_pct:
                continue
            rich, cheap = cm.pairs[best_k]
            if best / 100.0 / 8.0 * p.carry_expected_hold_days * 24.0 < r.carry_cost_cover * _round_trip_fraction(
                    cm, rich, cheap, p.notional_usd):
                continue
            at = min(i + delay, last)
            if at >= last:
                continue
            qty = p.notional_usd / float(m.mark[i])
            entry = {"kind": "entry", "at": at, "pair": best_k, "rich": rich, "cheap": cheap, "qty": qty, "diff": best}
            if delay == 0:
                pending = entry
                pos = {"e": i, "pair": best_k, "rich": rich, "cheap": cheap, "qty": qty, "diff": best, "funding": 0.0, "n": 0}
                pos["short_lp"], pos["long_lp"] = _liq_prices(qty, float(m.mark[i]), p.leverage, settings, m.symbol)
                pending = None
            else:
                pending = entry
    return trades
