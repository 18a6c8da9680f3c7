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


def _liq_prices(qty: float, price: float, leverage: float, settings: Settings, symbol: str,
                table: list[mm.Bracket] | None = None) -> tuple[float, float]:
    """(short leg's, long leg's) liquidation prices of ``qty`` entered at ``price`` with margin price·qty/leverage
    (``table``: the symbol's brackets, when the caller has built them already)."""
    table = settings.spec(symbol).brackets if table is None else table
    wallet = qty * price / leverage
    return (mm.liquidation_price(wallet, -qty, price, table), mm.liquidation_price(wallet, qty, price, table))


def venue_funding(cm: CrossMarket, p: BacktestParams) -> np.ndarray:
    """Per venue × bar: what a short received over the lookback, per 8 h in percent (the settlements in
    (t − lookback, t] summed over the span), NaN where the venue lacks a full lookback or its data has ended.
    Computed only over the bars where two venues can be compared (the rest stays NaN)."""
    xw, i0, i1 = _venue_funding(cm, p)
    x = np.full((len(cm.series), cm.m.t.size), np.nan)
    x[:, i0:i1] = xw
    return x


def _venue_funding(cm: CrossMarket, p: BacktestParams) -> tuple[np.ndarray, int, int]:
    """`venue_funding` over the bars ``i0 .. i1 - 1`` where it can be other than NaN: (values, i0, i1)."""
    t = cm.m.t
    span = p.carry_lookback_days * DAY
    first = [float(s.time[0]) - s.interval_hours * HOUR + span for s in cm.series]
    last = [float(s.time[-1]) for s in cm.series]
    lo_t, hi_t = sorted(first)[1], sorted(last)[-2]  # two venues covered: from the second start to the second end
    i0 = max(int(np.searchsorted(t, lo_t, side="left")), cm.m.i0)
    i1 = max(min(int(np.searchsorted(t, hi_t, side="right")), cm.m.i1 + 1), i0)
    x = np.empty((len(cm.series), i1 - i0))
    tt = t[i0:i1]
    for v, s in enumerate(cm.series):
        csum = np.concatenate(([0.0], np.cumsum(s.rate)))
        row = x[v]
        hi, lo = _settled_by(t, s.time, i0, i1, span)
        if isinstance(lo, int):  # lo is hi ``lo`` bars earlier: one gather serves both
            g = csum[hi]
            np.subtract(g[lo:], g[: g.size - lo], out=row)
        else:
            np.take(csum, hi, out=row)
            row -= csum[lo]
        row /= span / 8.0  # ((Σ / span) × 8) × 1 h × 100 in place (dividing by span / 8 is the same as × 8 after)
        row *= HOUR
        row *= 100.0
        row[: int(np.searchsorted(tt, first[v], side="left"))] = np.nan  # no full lookback yet
        row[int(np.searchsorted(tt, last[v], side="right")) :] = np.nan  # the venue's data has ended
    return x, i0, i1


def _settled_by(t: np.ndarray, times: np.ndarray, i0: int, i1: int, span: float) -> tuple[np.ndarray, np.ndarray | int]:
    """At the bars ``i0 .. i1 - 1``: how many settlements fell at or before t, and at or before t − span
    (``searchsorted(times, ·, 'right')``). On the hourly grid with whole-second times, by dropping each
    settlement into the first bar at or after it and counting up (a bar ``span`` earlier is a shift: then the
    counts are returned from ``lag`` bars before i0, with ``lag`` for the second item); otherwise by search."""
    lag = span / HOUR
    if not (t.size and t[-1] - t[0] == (t.size - 1) * HOUR and lag == int(lag) and times.dtype.kind == "i"):
        tt = t[i0:i1]
        return np.searchsorted(times, tt, side="right"), np.searchsorted(times, tt - span, side="right")
    lag = int(lag)
    start = max(i0 - lag, 0)
    first_bar = -((int(t[0]) + start * int(HOUR) - times) // int(HOUR))  # ceil: the first bar (from start) at or after
    counts = np.cumsum(np.bincount(np.clip(first_bar, 0, i1 - start), minlength=i1 - start + 1)[: i1 - start])
    if i0 - lag >= 0:
        return counts, lag
    hi = counts[i0 - start :]
    head = min(lag - i0, i1 - i0)  # bars whose t − span is before the grid: searched
    lo = np.concatenate((np.searchsorted(times, t[i0 : i0 + head] - span, side="right"), counts[: i1 - i0 - head]))
    return hi, lo


def pair_differential(x: np.ndarray, rich: int, cheap: int, sl: slice | np.ndarray) -> np.ndarray:
    """The differential of one pair at the bars ``sl``, rounded as the rules compare it (NaN: not comparable)."""
    return np.round(x[rich, sl] - x[cheap, sl], FUND_DIGITS)


def _funding_cum(cm: CrossMarket, venues: set[int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per venue: (settlement times, cumulative Σ mark × rate up to each), for funding over any span (only for
    ``venues`` if given: the others' are empty)."""
    m = cm.m
    n = m.t.size
    out = []
    t0 = float(m.t[0]) if n else 0.0
    for v, s in enumerate(cm.series):
        if venues is not None and v not in venues:
            out.append((np.zeros(0), np.zeros(0)))
            continue
        if s.time.dtype.kind == "i" and t0.is_integer():  # whole seconds: the same bars by integer division (faster)
            bar = (s.time - int(t0)) // int(HOUR)
        else:
            bar = ((s.time - t0) // HOUR).astype(np.int64)
        if bar.size and bar[0] >= 0 and bar[-1] < n:  # every settlement on the grid (the usual case)
            mark = m.mark[bar]
        else:
            mark = np.where((bar >= 0) & (bar < n), m.mark[np.clip(bar, 0, n - 1)], np.nan)
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
    xw, w0, w1 = _venue_funding(cm, p)  # NaN outside bars w0 .. w1 - 1: no entry there, and an open pair's exit
    mark_ok = ~np.isnan(m.mark)  # decisions and fills only on bars with a mark
    gapless = bool(mark_ok[m.i0 : m.i1 + 1].all())  # a mark on every bar of the range (the usual case)
    valid_idx = np.arange(m.i0, m.i1 + 1) if gapless else np.flatnonzero(mark_ok[m.i0 : m.i1 + 1]) + m.i0
    last = int(valid_idx[-1]) if valid_idx.size else -1
    nv = len(cm.venues)
    # the widest pair at every bar is (the venue paid most, the venue paid least): the first of each on ties (as
    # argmax / argmin), which is the first pair in the reference loop's order among equals (`_pair_at`); two venues
    # to compare exactly where the most paid is above the least paid (one venue covered, or all equal: no pair)
    with np.errstate(invalid="ignore"):
        hi_val, lo_val = np.fmax.reduce(xw, axis=0), np.fmin.reduce(xw, axis=0)  # NaN: no venue covered
        best_val = np.where(hi_val > lo_val, np.round(hi_val - lo_val, FUND_DIGITS), np.nan)
        ok = mark_ok[w0:w1] & (best_val >= r.carry_entry_8h_pct)
    ok[: max(m.i0 - w0, 0)] = False
    ok[max(m.i1 + 1 - w0, 0) :] = False
    # the entry check at the fixed size for every candidate at once: the differential over the expected hold
    # (a fraction of notional) must pay the pair's round trip carry_cost_cover times. Pairs differ only by their
    # venues' fees: a candidate below the cheapest pair's bar fails and one above the dearest passes whatever its
    # pair; only those in between need their pair
    cover = np.array([[r.carry_cost_cover * _round_trip_fraction(cm, a, b, p.notional_usd) if a != b else np.inf
                       for b in range(nv)] for a in range(nv)])
    bars_ = cover[np.isfinite(cover)]
    c_loc = np.flatnonzero(ok)
    expected = best_val[c_loc] / 100.0 / 8.0 * (p.carry_expected_hold_days * 24.0)
    keep = ~(expected < bars_.max())
    mid = np.flatnonzero(~keep & ~(expected < bars_.min()))
    if mid.size:
        rich_m, cheap_m = _pair_at(xw, hi_val, lo_val, c_loc[mid])
        keep[mid] = ~(expected[mid] < cover[rich_m, cheap_m])
    cands = c_loc[keep] + w0

    def fill(b: int) -> int:
        """The first bar with a mark at or after ``b`` (the last one if none)."""
        if gapless:
            return b if b <= last else last
        h = int(np.searchsorted(valid_idx, b, side="left"))
        return int(valid_idx[h]) if h < valid_idx.size else last

    delay = int(math.ceil(p.fill_delay_seconds / HOUR - 1e-9))
    hold_bars = int(math.ceil(r.carry_max_hold_days * 24 - 1e-9))
    table = settings.spec(m.symbol).brackets
    rows: list[tuple[int, int, int, int, float, str, float]] = []  # entry, exit, rich, cheap, qty, reason, entry diff
    k = 0
    while k < cands.size:
        c = int(cands[k])
        if c >= last or c + delay >= last:
            break
        e = fill(c + delay)
        if e >= last:
            break
        col = xw[:, c - w0].tolist()
        rich, cheap = col.index(float(hi_val[c - w0])), col.index(float(lo_val[c - w0]))
        qty = p.notional_usd / float(m.mark[c])
        short_lp, long_lp = _liq_prices(qty, float(m.mark[e]), p.leverage, settings, m.symbol, table)
        j_hold = fill(e + hold_bars) if e + hold_bars < last else last
        j, reason = j_hold, ("max_hold" if e + hold_bars <= last else "end_of_range")
        hit = _first_exit(xw, w0, m, None if gapless else mark_ok, rich, cheap, e + 1, j_hold, r.carry_exit_8h_pct, short_lp, long_lp)
        if hit is not None:
            j, reason = hit
        if j == last and reason != "liquidation_risk":
            xb = last
        else:
            xb = j if reason == "liquidation_risk" else fill(min(j + delay, last))
        rows.append((e, xb, rich, cheap, qty, reason, float(best_val[c - w0])))
        k = int(np.searchsorted(cands, xb, side="right"))
    return _book_all(cm, rows)


def _pair_at(xw: np.ndarray, hi_val: np.ndarray, lo_val: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At the window's bars ``idx``: (the first venue paid ``hi_val``, the first paid ``lo_val``)."""
    rich, cheap = np.zeros(idx.size, dtype=np.int64), np.zeros(idx.size, dtype=np.int64)
    for v in range(xw.shape[0] - 1, -1, -1):  # the last assignment wins: the first venue among equals
        col = xw[v, idx]
        rich[col == hi_val[idx]] = v
        cheap[col == lo_val[idx]] = v
    return rich, cheap


CHUNK_BARS = 2048  # an open position's exit is searched this many bars at a time (then 4x more each time)


def _first_exit(xw: np.ndarray, w0: int, m: Market, mark_ok: np.ndarray | None, rich: int, cheap: int, lo: int, hi: int,
                exit_level: float, short_lp: float, long_lp: float) -> tuple[int, str] | None:
    """The first bar in ``lo .. hi`` with a mark (``mark_ok``; None: every bar has one) where the pair's
    differential (``xw``, from bar ``w0``; NaN past its end) is below ``exit_level`` or not comparable, or the
    mark's range reaches a leg's liquidation price, and why (the liquidation first on the same bar); None if
    none. Searched in growing chunks: a position is seldom held to its max hold, and most bars are far from
    either level (the rounded differential is read only near the exit level)."""
    size = CHUNK_BARS
    w1 = w0 + xw.shape[1]
    while lo <= hi:
        end = min(lo + size, hi + 1)
        with np.errstate(invalid="ignore"):
            breach = m.mark_high[lo:end] >= short_lp
            breach |= m.mark_low[lo:end] <= long_lp
            if end <= w1:
                d = xw[rich, lo - w0 : end - w0] - xw[cheap, lo - w0 : end - w0]
            else:
                d = np.full(end - lo, np.nan)
                if lo < w1:
                    np.subtract(xw[rich, lo - w0 :], xw[cheap, lo - w0 :], out=d[: w1 - lo])
            far = d >= exit_level + NEAR  # the complement is a superset of the bars whose rounded differential is below
        if mark_ok is not None:
            breach &= mark_ok[lo:end]
            far |= ~mark_ok[lo:end]
        stop = int(breach.argmax())
        if not breach[stop]:
            stop = end - lo
        i = 0
        while i < stop:  # the near bars before the first breach, in order: the first below the exit level exits
            i += int(far[i:stop].argmin())
            if far[i]:
                break
            di = float(d[i])
            if not (di >= exit_level - NEAR):  # clearly below, or NaN: no need to round
                return lo + i, ("carry_funding_exit" if not math.isnan(di) else "venue_data_ended")
            if float(np.round(di, FUND_DIGITS)) < exit_level:  # below the exit level once rounded as the rules read it
                return lo + i, "carry_funding_exit"
            i += 1
        if stop < end - lo:
            return lo + stop, "liquidation_risk"
        lo, size = end, size * 4
    return None


NEAR = 1e-9  # rounding to FUND_DIGITS moves a differential by far less than this


def _book_all(cm: CrossMarket, rows: list[tuple[int, int, int, int, float, str, float]]) -> list[Trade]:
    """`_book` for every trade at once: each venue's settlements in (entry, exit], fees and slippage at the marks."""
    if not rows:
        return []
    m = cm.m
    e_l, x_l, rich_l, cheap_l, q_l, reasons, diffs = zip(*rows, strict=True)
    e, xb = np.array(e_l, dtype=np.int64), np.array(x_l, dtype=np.int64)
    rich, cheap, q = np.array(rich_l, dtype=np.int64), np.array(cheap_l, dtype=np.int64), np.array(q_l)
    at = np.arange(e.size)
    paid, count = [], []
    traded = set(rich_l) | set(cheap_l)
    for ts, cs in _funding_cum(cm, traded):
        if cs.size == 0:  # a venue no trade used
            paid.append(np.zeros(e.size))
            count.append(np.zeros(e.size, dtype=np.int64))
            continue
        lo, hi = np.searchsorted(ts, m.t[e], side="right"), np.searchsorted(ts, m.t[xb], side="right")
        paid.append(cs[hi] - cs[lo])
        count.append(hi - lo)
    paid_a, count_a = np.array(paid), np.array(count)
    funding = (0.0 + (1.0 * q) * paid_a[rich, at]) + (-1.0 * q) * paid_a[cheap, at]
    n_settle = count_a[rich, at] + count_a[cheap, at]
    leg = m.costs.perp
    fee_v = np.array([VENUE_TAKER_FEE.get(v, leg.taker_fee) for v in cm.venues])
    fee_pair = fee_v[rich] + fee_v[cheap]
    price_in, price_out = m.mark[e], m.mark[xb]
    n_in, n_out = q * price_in, q * price_out
    fees = (0.0 + n_in * fee_pair) + n_out * fee_pair
    slip = (0.0 + 2.0 * n_in * leg.slippage_fraction(n_in)) + 2.0 * n_out * leg.slippage_fraction(n_out)
    pnl = funding - fees - slip
    stamps = np.datetime_as_string(m.t[np.concatenate((e, xb))].astype(np.int64).astype("datetime64[s]"), unit="s")
    held = (m.t[xb] - m.t[e]) / HOUR
    labels = {(a, b): f"short {cm.venues[a]} / long {cm.venues[b]}" for a, b in cm.pairs}
    n = e.size
    return [Trade(symbol=m.symbol, entry_index=a, exit_index=b, entry_time=s_in + "Z", exit_time=s_out + "Z", quantity=qq,
                  entry_basis_pct=dd, exit_basis_pct=0.0, basis_pnl_usd=0.0, funding_usd=fu, fees_usd=fe, slippage_usd=sl,
                  pnl_usd=pn, settlements=ns, hold_hours=hh, reason=why, playbook="carry", notional_usd=no,
                  funding_at_constant_notional_usd=fu, strategy="cross_exchange", contract=labels[(ri, ch)])
            for a, b, s_in, s_out, qq, dd, fu, fe, sl, pn, ns, hh, why, no, ri, ch in zip(
                e_l, x_l, stamps[:n].tolist(), stamps[n:].tolist(), q_l, diffs, funding.tolist(), fees.tolist(),
                slip.tolist(), pnl.tolist(), n_settle.tolist(), held.tolist(), reasons, n_in.tolist(), rich_l, cheap_l,
                strict=True)]


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
