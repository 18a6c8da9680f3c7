"""The reference engine: one plain loop over every bar, in the style of a first prototype.

It shares no array code with `engine.run_vectorized`: at every bar it recomputes the z-score
as the mean and population std of the last ``window`` basis samples, walks the funding
settlements with a pointer, keeps the 30-day funding mean in a deque and applies the same
rules bar by bar. Only the scalar rule functions (expected net return, realised vol) and the
trade builder are shared. The two must produce identical trades.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade, close_trade
from basis_mcp.signals import (
    ZSCORE_MIN_SAMPLES,
    ZSCORE_STD_FLOOR,
    entry_expected_net_usd,
    realised_vol_1h_pct,
)
from basis_mcp.sizing import floor_to_step

DAY = 86400.0
HOUR = 3600.0


def run_reference(m: Market, p: BacktestParams) -> list[Trade]:
    history = np.empty(m.t.size)  # every fresh basis sample so far
    n_hist = 0
    ft, fr = m.f_time, m.f_rate
    nf = len(ft)
    k = 0  # next settlement not yet paid
    last_rate: float | None = None
    recent: deque[tuple[float, float]] = deque()  # settlements of the last 30 days
    last_valid = max((i for i in range(m.i0, m.i1 + 1) if not math.isnan(m.spot[i])), default=-1)
    trades: list[Trade] = []
    pos: dict | None = None
    for i in range(m.i1 + 1):
        t = float(m.t[i])
        while k < nf and ft[k] <= t:  # settlements up to and including this bar, before anything acts
            T, r = float(ft[k]), float(fr[k])
            recent.append((T, r))
            last_rate = r
            if pos is not None:
                pos["funding"].append(pos["qty"] * float(m.mark[int((T - m.t[0]) // HOUR)]) * r)
            k += 1
        while recent and recent[0][0] <= t - 30 * DAY:
            recent.popleft()
        spot, perp = m.spot[i], m.perp[i]
        if math.isnan(spot):
            continue  # stale spot: no sample, no decision
        b = (perp - spot) / spot * 100.0
        history[n_hist] = b
        n_hist += 1
        window = history[max(0, n_hist - p.zscore_window) : n_hist]
        z = None
        if n_hist >= ZSCORE_MIN_SAMPLES:
            sd = window.std()
            z = 0.0 if sd < ZSCORE_STD_FLOOR else (b - window.mean()) / sd
        if i < m.i0:
            continue
        # the funding schedule at this bar
        if k < nf:
            nxt = float(ft[k])
            prev = float(ft[k - 1]) if k > 0 else nxt - 8 * HOUR
        else:
            prev = float(ft[-1])
            iv = float(ft[-1] - ft[-2]) if nf > 1 else 8 * HOUR
            nxt = prev + iv * (1 + math.floor((t - prev) / iv))
        interval_h = (nxt - prev) / HOUR if nxt > prev else 8.0
        if interval_h not in (1.0, 2.0, 4.0, 8.0):
            interval_h = 8.0
        rate_now = last_rate if last_rate is not None else 0.0
        closed_here = False
        if pos is not None:
            held = t - pos["t"]
            b_in = pos["basis"]
            rate_8h_pct = rate_now * 8.0 / interval_h * 100.0
            reason = None
            if b > p.basis_stop_multiple * max(b_in, p.basis_stop_floor_pct):
                reason = "basis_blowout"
            elif rate_8h_pct < p.funding_exit_8h_pct and b < p.funding_exit_basis_pct:
                reason = "funding_reversal"
            elif b_in > 0 and b < 0:
                reason = "basis_inverted"
            elif held > p.max_hold_days * DAY:
                reason = "max_hold"
            elif b <= p.exit_basis_pct:
                reason = "convergence"
            elif z is not None and z <= p.exit_zscore:
                reason = "zscore_reversion"
            elif i == last_valid:
                reason = "end_of_range"
            if reason is not None:
                trades.append(close_trade(m, pos["i"], i, pos["qty"], pos["funding"], reason))
                pos = None
                closed_here = True
        if pos is None and not closed_here and i < last_valid:
            if b < p.min_basis_pct or z is None or z < p.min_zscore:
                continue
            vol = realised_vol_1h_pct(m.mark_high[i], m.mark_low[i], m.perp[i - 1] if i > 0 else None, perp)
            if i > 0 and vol > p.vol_limit_pct:
                continue
            qty = floor_to_step(p.notional_usd / spot, m.qty_step)
            if qty <= 0 or qty * spot < m.min_notional_usd:
                continue
            rate = sum(r for _, r in recent) / len(recent) if recent else rate_now
            net = entry_expected_net_usd(
                qty=qty, spot=float(spot), perp=float(perp), leverage=p.leverage, costs=m.costs,
                hold_days=p.expected_hold_days, funding_rate=rate, funding_interval_hours=interval_h,
                seconds_to_next_funding=nxt - t,
            )
            if net > 0:
                pos = {"i": i, "t": t, "qty": qty, "basis": b, "funding": []}
    return trades
