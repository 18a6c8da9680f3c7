"""The reference engine: one plain loop over every bar, in the style of a first prototype.

It shares no array code with `engine.run_vectorized`: at every bar it recomputes the z-score
and the basis std as the mean and population std of the last ``window`` basis samples, keeps
the smoothing window and the funding lookbacks in deques, walks the funding settlements with
a pointer, and holds orders "in flight" until their fill bar. Only the scalar rule functions
(`playbooks.exit_signal`, the entry checks, realised vol) and the trade builder are shared.
The two must produce identical trades.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from basis_mcp.backtest.engine import Z_DIGITS, vol_bars, zscore_samples
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade, close_trade
from basis_mcp.borrow import HOURS_PER_YEAR, BorrowModel
from basis_mcp.dated import YEAR_S
from basis_mcp.playbooks import Signals, carry_entry_check, exit_signal, expected_carry_usd, stop_level_pct
from basis_mcp.signals import (
    ZSCORE_MIN_SAMPLES,
    RollingZScore,
    entry_expected_net_usd,
    realised_vol_1h_pct,
    settlements_in,
)
from basis_mcp.sizing import floor_to_step

DAY = 86400.0
HOUR = 3600.0


def _mean_8h(window: deque[tuple[float, float]], interval_h: float) -> float | None:
    if not window:
        return None
    return float(np.round(sum(r for _, r in window) / len(window) * 8.0 / interval_h * 100.0, 12))


def run_reference(m: Market, p: BacktestParams, rolling: bool = False) -> list[Trade]:
    """``rolling``: the z-score and basis std from the desk's O(1) tracker (`signals.RollingZScore`) instead of
    recomputed over the window at every bar (the bench's per-row baseline; not for calendar spreads, whose z is
    read on the annualised premium)."""
    r = p.rules
    bar = m.bar_s
    zwin = zscore_samples(p, bar)  # the z-score window: zscore_window hours of bars
    k_h = vol_bars(bar)  # bars in the 1 h vol window (0: longer bars, the breaker is not run)
    carry = p.playbook == "carry"
    model = BorrowModel(p.borrow_scenario)
    sign = p.direction  # −1: the reverse trade reads the basis mirrored
    fd = p.funding_direction  # the sign of the funding the position receives (−1: long the perp)
    borrows = p.borrows  # the reverse trade pays borrow on its short spot every hour
    recalls = model.recall_times(float(m.t[0]) - 1.0, float(m.t[-1])) if borrows else []  # the venue takes the loan back
    last_spot = math.nan
    history = np.empty(m.t.size)  # every fresh basis sample so far
    z_history = np.empty(m.t.size) if m.expiry is not None else history  # calendar: z on the annualised premium
    n_hist = 0
    tracker = RollingZScore(zwin) if rolling and m.expiry is None else None
    ft, fr = m.f_time, m.f_rate
    nf = len(ft)
    k = 0  # next settlement not yet paid
    last_rate: float | None = None
    month: deque[tuple[float, float]] = deque()  # settlements of the last 30 days (convergence entry check)
    recent: deque[tuple[float, float]] = deque()  # ... of the last funding_exit_hours
    lookback: deque[tuple[float, float]] = deque()  # ... of the carry lookback
    smooth_win: deque[tuple[float, float]] = deque()  # fresh basis samples of the smoothing window
    last_valid = max((i for i in range(m.i0, m.i1 + 1) if not (math.isnan(m.spot[i]) or math.isnan(m.perp[i]))), default=-1)
    trades: list[Trade] = []
    pos: dict | None = None
    pending_entry: dict | None = None  # signalled, waiting for its fill bar
    pending_exit: dict | None = None
    delay = p.fill_delay_seconds
    for i in range(m.i1 + 1):
        t = float(m.t[i])
        while k < nf and ft[k] <= t:  # settlements up to and including this bar, before anything acts
            T, rate = float(ft[k]), float(fr[k])
            for d in (month, recent, lookback):
                d.append((T, rate))
            last_rate = rate
            if pos is not None:
                pos["funding"].append(fd * pos["qty"] * float(m.mark[int((T - m.t[0]) // bar)]) * rate)
            k += 1
        if not math.isnan(m.spot[i]):
            last_spot = float(m.spot[i])
        apr = float(model.apr_pct_at(m.symbol, t)) if borrows else 0.0
        if pos is not None and borrows and i > pos["i"]:  # this bar's interest on the borrowed spot
            pos["borrow"].append(-pos["qty"] * last_spot * (apr / 100.0 / HOURS_PER_YEAR * (bar / HOUR)))
        for d, span in ((month, 30 * DAY), (recent, r.funding_exit_hours * 3600.0), (lookback, r.carry_lookback_days * DAY)):
            while d and d[0][0] <= t - span:
                d.popleft()
        while smooth_win and smooth_win[0][0] <= t - r.basis_smoothing_hours * 3600.0:
            smooth_win.popleft()
        spot, perp = m.spot[i], m.perp[i]
        if math.isnan(spot) or math.isnan(perp):
            continue  # a stale bar: no sample, no decision, no fill
        b_raw = (perp - spot) / spot * 100.0
        b = b_raw if sign == 1 else -b_raw
        history[n_hist] = b
        if m.expiry is not None:
            z_history[n_hist] = b / max((m.expiry - t) / YEAR_S, 1.0 / 8760.0)
        n_hist += 1
        smooth_win.append((t, b))
        window = history[max(0, n_hist - zwin) : n_hist]
        z = sd = None
        if tracker is not None:
            z = tracker.add(b)
            sd = tracker.std if z is not None else None
        elif n_hist >= ZSCORE_MIN_SAMPLES:
            sd = float(window.std())
            zw = z_history[max(0, n_hist - zwin) : n_hist]
            zsd = float(zw.std()) if m.expiry is not None else sd
            z = 0.0 if zsd < 1e-8 else (float(z_history[n_hist - 1]) - zw.mean()) / zsd
            if m.expiry is not None:
                z = round(z, Z_DIGITS)
        smooth = sum(x for _, x in smooth_win) / len(smooth_win)
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
        sig = Signals(basis_pct=b, basis_smooth_pct=smooth, basis_std_pct=sd,
                      funding_recent_8h_pct=_mean_8h(recent, interval_h), funding_carry_8h_pct=_mean_8h(lookback, interval_h))
        if fd == -1:
            b8 = apr / HOURS_PER_YEAR * 8.0  # 0 without a borrow
            sig = Signals(basis_pct=b, basis_smooth_pct=smooth, basis_std_pct=sd,
                          funding_recent_8h_pct=None if sig.funding_recent_8h_pct is None else -sig.funding_recent_8h_pct - b8,
                          funding_carry_8h_pct=None if sig.funding_carry_8h_pct is None else -sig.funding_carry_8h_pct - b8)
        # orders in flight fill at the first fresh bar at or after their time
        if pending_entry is not None and (t >= pending_entry["at"]):
            if i >= last_valid:
                pending_entry = None  # too late to open: the range ends here
            else:
                pos = {"i": i, "t": t, "qty": pending_entry["qty"], "basis": b, "funding": [], "borrow": []}
                pending_entry = None
                continue  # the bar it filled on: no exit decision
        closed_here = False
        if pos is not None and any(pos["t"] < T <= t for T in recalls):  # the venue recalled the loan: closed now
            trades.append(close_trade(m, pos["i"], i, pos["qty"], pos["funding"], "loan_recall", p.playbook, sign,
                                      pos["borrow"], p.strategy, fd))
            pos, pending_exit, closed_here = None, None, True
        elif pending_exit is not None and (t >= pending_exit["at"] or i == last_valid):
            trades.append(close_trade(m, pos["i"], i, pos["qty"], pos["funding"], pending_exit["reason"], p.playbook, sign,
                                      pos["borrow"], p.strategy, fd))
            pos, pending_exit, closed_here = None, None, True
        elif pos is not None and pending_exit is None:
            b_in = pos["basis"]
            reason = None
            s = exit_signal(p.playbook, b_in, t - pos["t"], sig, r)
            if s is not None:
                reason = s.rule
            elif not carry and b <= p.exit_basis_pct:
                reason = "convergence"
            elif not carry and z is not None and z <= p.exit_zscore:
                reason = "zscore_reversion"
            elif i == last_valid:
                reason = "end_of_range"
            if reason is not None:
                if delay <= 0 or i == last_valid:
                    trades.append(close_trade(m, pos["i"], i, pos["qty"], pos["funding"], reason, p.playbook, sign, pos["borrow"],
                                              p.strategy, fd))
                    pos, closed_here = None, True
                else:
                    pending_exit = {"at": t + delay, "reason": reason}
        if (pos is None and pending_entry is None and not closed_here and i < last_valid
                and (m.entry_i1 is None or i <= m.entry_i1)):
            if smooth > stop_level_pct(b, sd, r):
                continue  # its stop would fire at once
            if k_h:  # the last hour's range and the move against the close an hour ago
                lo_i = max(i - k_h + 1, 0)
                vol = realised_vol_1h_pct(float(m.mark_high[lo_i : i + 1].max()), float(m.mark_low[lo_i : i + 1].min()),
                                          m.perp[i - k_h] if i >= k_h else None, perp)
                if i > 0 and vol > p.vol_limit_pct:
                    continue
            qty = floor_to_step(p.notional_usd / spot, m.qty_step)
            if qty <= 0 or qty * spot < m.min_notional_usd:
                continue
            if carry:
                fc = sig.funding_carry_8h_pct
                if fc is None or fc < r.carry_entry_8h_pct:
                    continue
                rate = fc / 100.0 / 8.0 * interval_h
                n = settlements_in(nxt - t, interval_h, p.carry_expected_hold_days * DAY)
                fees, slip = m.costs.round_trip_usd(qty, float(spot), float(perp))
                ok = carry_entry_check(fc, expected_carry_usd(qty, float(perp), rate, n), fees + slip, r) is None
            else:
                if b < p.min_basis_pct or z is None or z < p.min_zscore:
                    continue
                rate = sum(x for _, x in month) / len(month) if month else (last_rate if last_rate is not None else 0.0)
                ok = entry_expected_net_usd(
                    qty=qty, spot=float(spot), perp=float(perp), leverage=p.leverage, costs=m.costs,
                    hold_days=p.expected_hold_days, funding_rate=rate, funding_interval_hours=interval_h,
                    seconds_to_next_funding=nxt - t, direction=sign, borrow_rate_hourly=apr / 100.0 / HOURS_PER_YEAR,
                    seconds_to_expiry=None if m.expiry is None else m.expiry - t,
                ) > 0
            if not ok:
                continue
            if delay <= 0:
                pos = {"i": i, "t": t, "qty": qty, "basis": b, "funding": [], "borrow": []}
            else:
                pending_entry = {"at": t + delay, "qty": qty}
    return trades
