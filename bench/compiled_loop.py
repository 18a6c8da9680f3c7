"""The default cash-and-carry rules as one compiled single pass (numba): the bench's yardstick for
what the backtest could cost on this machine.

    pip install -e .[bench]      # numba; the bench's environment only, not the install

One loop over the bars, O(1) work per bar and nothing precomputed: funding prefix sums and window
pointers, the z-score and basis std by Welford add/remove over a ring of the last ``zscore_window``
fresh samples (recomputed exactly every window and wherever the window is nearly flat, as the
engines do), the smoothed basis over the fresh samples of its window, the 1 h realised vol, the
entry check and every exit rule of both playbooks (emergency stop, funding reversal, persistent
sign flip, max hold, convergence, z reversion, carry funding exit), fills a delay after the signal
at the first fresh bar at or after it, and each trade's fills, fees, slippage and funding booked as it
closes. It was written from the rules (`basis_mcp.playbooks`, `basis_mcp.signals`,
`basis_mcp.costs`), not from the engine, and shares no code with it; the bench asserts the same
trade list as the engine and the per-row loop. Cash-and-carry (long spot, short perp) only.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from basis_mcp.backtest.engine import vol_bars, zscore_samples
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.signals import ZSCORE_MIN_SAMPLES, ZSCORE_STD_FLOOR

REASONS = ("basis_blowout", "funding_reversal", "basis_inverted", "max_hold", "convergence", "zscore_reversion",
           "end_of_range", "carry_funding_exit")
DAY = 86400.0
HOUR = 3600.0


@njit(cache=True, error_model="numpy")
def _round12(x):
    return np.rint(x * 1e12) / 1e12  # numpy's round(x, 12)


@njit(cache=True, error_model="numpy")
def _interval(d_hours):
    return d_hours if d_hours == 1.0 or d_hours == 2.0 or d_hours == 4.0 or d_hours == 8.0 else 8.0


@njit(cache=True, error_model="numpy")
def _slip(hs, imp, notional):
    return (hs + imp * math.sqrt(max(notional, 0.0) / 1e6)) / 1e4


@njit(cache=True, error_model="numpy")
def _floor_to_step(qty, step, decimals):
    steps = math.floor(qty / step + 1e-9)
    f = 10.0 ** (decimals + 2)
    return np.rint(steps * step * f) / f


@njit(cache=True, error_model="numpy")
def _single_pass(t, spot, perp, mark, mhi, mlo, ft, fr, i0, i1, carry, P):  # noqa: C901
    (zw, min_samples, smooth_s, recent_s, lookback_s, vol_limit, k_h, delay, min_basis, min_z, exit_basis, exit_z,
     stop_mult, stop_floor, stop_sigmas, flip_sigmas, fe_8h, fe_basis, carry_in, carry_out, cover, max_hold_s,
     hold_days, carry_hold_days, notional, step, min_notional, fee_s, hs_s, imp_s, fee_p, hs_p, imp_p, bar_s,
     decimals, std_floor) = P
    zw = int(zw)
    k_h = int(k_h)
    n = i1 + 1
    nf = ft.size
    last_valid = -1
    for i in range(i1, i0 - 1, -1):
        if not (math.isnan(spot[i]) or math.isnan(perp[i])):
            last_valid = i
            break
    out_e = np.empty(n // 2 + 1, np.int64)
    out_x = np.empty(n // 2 + 1, np.int64)
    out_q = np.empty(n // 2 + 1)
    out_r = np.empty(n // 2 + 1, np.int64)
    out_pnl = np.empty(n // 2 + 1)
    n_tr = 0
    cs = np.zeros(nf + 1)  # funding prefix sums, built as settlements pass
    k = 0
    lo_m = lo_r = lo_c = 0
    last_rate = math.nan
    ring = np.empty(zw)  # the last zw fresh basis samples
    n_hist = 0
    mean = 0.0
    m2 = 0.0
    since_exact = 0
    basis = np.empty(n)  # this bar's basis (fresh bars), for the smoothing window
    fresh = np.zeros(n, np.bool_)
    sw_lo = 0
    pos = False
    pos_i = 0
    pos_t = 0.0
    pos_q = 0.0
    pos_b = 0.0
    pos_fund = 0.0
    pend_entry = False
    pend_entry_at = 0.0
    pend_entry_q = 0.0
    pend_exit = False
    pend_exit_at = 0.0
    pend_exit_r = 0
    for i in range(n):
        ti = t[i]
        while k < nf and ft[k] <= ti:  # settlements up to and including this bar, before anything acts
            cs[k + 1] = cs[k] + fr[k]
            last_rate = fr[k]
            if pos:
                pos_fund += pos_q * mark[int((ft[k] - t[0]) // bar_s)] * fr[k]
            k += 1
        while lo_m < k and ft[lo_m] <= ti - 30 * DAY:
            lo_m += 1
        while lo_r < k and ft[lo_r] <= ti - recent_s:
            lo_r += 1
        while lo_c < k and ft[lo_c] <= ti - lookback_s:
            lo_c += 1
        while sw_lo < i and t[sw_lo] <= ti - smooth_s:
            sw_lo += 1
        s, p = spot[i], perp[i]
        if math.isnan(s) or math.isnan(p):
            continue
        b = (p - s) / s * 100.0
        basis[i] = b
        fresh[i] = True
        # z-score and std of the last zw fresh samples: Welford add (and remove the oldest)
        if n_hist >= zw:
            old = ring[n_hist % zw]
            ring[n_hist % zw] = b
            d_old = old - mean
            mean -= d_old / (zw - 1)
            m2 -= d_old * (old - mean)
            d = b - mean
            mean += d / zw
            m2 += d * (b - mean)
        else:
            ring[n_hist] = b
            d = b - mean
            mean += d / (n_hist + 1)
            m2 += d * (b - mean)
        n_hist += 1
        cnt = min(n_hist, zw)
        since_exact += 1
        var = max(m2, 0.0) / cnt
        if since_exact >= zw or var <= 1e-10 * (var + mean * mean):  # exact, every window and for (nearly) flat windows
            acc = 0.0
            for j in range(cnt):
                acc += ring[j]
            mean = acc / cnt
            acc = 0.0
            for j in range(cnt):
                acc += (ring[j] - mean) ** 2
            m2 = acc
            var = m2 / cnt
            since_exact = 0
        has_z = n_hist >= min_samples
        sd = math.sqrt(var) if has_z else math.nan
        z = (0.0 if sd < std_floor else (b - mean) / sd) if has_z else math.nan
        acc = 0.0
        c = 0
        for j in range(sw_lo, i + 1):
            if fresh[j]:
                acc += basis[j]
                c += 1
        smooth = acc / c
        if i < i0:
            continue
        # the funding schedule at this bar
        if k < nf:
            nxt = ft[k]
            prev = ft[k - 1] if k > 0 else nxt - 8 * HOUR
        else:
            prev = ft[nf - 1]
            tail = ft[nf - 1] - ft[nf - 2] if nf > 1 else 8 * HOUR
            nxt = prev + tail * (1 + math.floor((ti - prev) / tail))
        iv = _interval((nxt - prev) / HOUR) if nxt > prev else 8.0
        to_8h = 8.0 / iv * 100.0
        f_recent = _round12((cs[k] - cs[lo_r]) / (k - lo_r) * to_8h) if k > lo_r else math.nan
        f_carry = _round12((cs[k] - cs[lo_c]) / (k - lo_c) * to_8h) if k > lo_c else math.nan
        if pend_entry and ti >= pend_entry_at:
            pend_entry = False
            if i < last_valid:
                pos, pos_i, pos_t, pos_q, pos_b, pos_fund = True, i, ti, pend_entry_q, b, 0.0
                continue  # the bar it filled on: no exit decision
        closed = False
        reason = -1
        if pend_exit and (ti >= pend_exit_at or i == last_valid):
            reason = pend_exit_r
            closed = True
        elif pos and not pend_exit:
            floor = stop_floor if math.isnan(sd) else max(stop_floor, stop_sigmas * sd)
            if smooth > stop_mult * max(pos_b, floor):
                reason = 0
            elif carry and not math.isnan(f_carry) and f_carry < carry_out:
                reason = 7
            elif not carry and not math.isnan(f_recent) and f_recent < fe_8h and smooth < fe_basis:
                reason = 1
            elif not carry and pos_b > 0 and not math.isnan(sd) and smooth < -flip_sigmas * sd:
                reason = 2
            elif ti - pos_t > max_hold_s:
                reason = 3
            elif not carry and b <= exit_basis:
                reason = 4
            elif not carry and has_z and z <= exit_z:
                reason = 5
            elif i == last_valid:
                reason = 6
            if reason >= 0:
                if delay <= 0 or i == last_valid:
                    closed = True
                else:
                    pend_exit, pend_exit_at, pend_exit_r = True, ti + delay, reason
        if closed:  # book the round trip: four fills at mid ± spread and impact, fees, the funding received
            e = pos_i
            q = pos_q
            cash = 0.0
            fees = 0.0
            for mid, fee, hs, imp, sell in ((spot[e], fee_s, hs_s, imp_s, False), (perp[e], fee_p, hs_p, imp_p, True),
                                            (perp[i], fee_p, hs_p, imp_p, False), (s, fee_s, hs_s, imp_s, True)):
                sl = _slip(hs, imp, q * mid)
                price = mid * (1.0 - sl) if sell else mid * (1.0 + sl)
                cash += q * price if sell else -q * price
                fees += q * price * fee
            out_e[n_tr], out_x[n_tr], out_q[n_tr], out_r[n_tr] = e, i, q, reason
            out_pnl[n_tr] = cash - fees + pos_fund
            n_tr += 1
            pos = pend_exit = False
        if pos or pend_entry or closed or i >= last_valid:
            continue
        if carry and (math.isnan(f_carry) or f_carry < carry_in):
            continue
        if not carry and (b < min_basis or not has_z or z < min_z):
            continue
        floor = stop_floor if math.isnan(sd) else max(stop_floor, stop_sigmas * sd)
        if smooth > stop_mult * max(b, floor):
            continue  # its stop would fire at once
        if k_h > 0 and i > 0:  # the last hour's range and the move against the close an hour ago
            hi = -math.inf
            lo = math.inf
            for j in range(max(i - k_h + 1, 0), i + 1):
                hi = max(hi, mhi[j]) if not math.isnan(mhi[j]) and not math.isnan(hi) else math.nan
                lo = min(lo, mlo[j]) if not math.isnan(mlo[j]) and not math.isnan(lo) else math.nan
            park = math.log(hi / lo) / (2.0 * math.sqrt(math.log(2.0))) if hi > 0 and lo > 0 and hi >= lo else 0.0
            pc = perp[i - k_h] if i >= k_h else math.nan
            c2c = abs(math.log(p / pc)) if pc > 0 and p > 0 else 0.0
            if max(park, c2c) * 100.0 > vol_limit:
                continue
        q = _floor_to_step(notional / s, step, decimals)
        if q <= 0 or q * s < min_notional:
            continue
        ns, np_ = q * s, q * p
        fees2 = 2.0 * (ns * fee_s + np_ * fee_p)
        slip2 = 2.0 * (ns * _slip(hs_s, imp_s, ns) + np_ * _slip(hs_p, imp_p, np_))
        if carry:
            rate = f_carry / 100.0 / 8.0 * iv
            horizon = carry_hold_days * DAY
            n_set = 0 if horizon < nxt - ti else int((horizon - (nxt - ti)) // (iv * 3600.0)) + 1
            if q * p * rate * n_set < cover * (fees2 + slip2):
                continue
        else:
            rate = (cs[k] - cs[lo_m]) / (k - lo_m) if k > lo_m else (last_rate if k > 0 else 0.0)
            horizon = hold_days * DAY
            n_set = 0 if horizon < nxt - ti else int((horizon - (nxt - ti)) // (iv * 3600.0)) + 1
            qn = max(q * s, 1e-9) / s
            net = qn * ((p - s) - 0.0) + (qn * p * rate) * n_set + (-qn * s * 0.0 * hold_days * 24.0) - fees2 - slip2
            if not net > 0:
                continue
        if delay <= 0:
            pos, pos_i, pos_t, pos_q, pos_b, pos_fund = True, i, ti, q, b, 0.0
        else:
            pend_entry, pend_entry_at, pend_entry_q = True, ti + delay, q
    return out_e[:n_tr], out_x[:n_tr], out_q[:n_tr], out_r[:n_tr], out_pnl[:n_tr]


def params_vector(m: Market, p: BacktestParams) -> tuple[float, ...]:
    r, c = p.rules, m.costs
    decimals = max(0, -int(math.floor(math.log10(m.qty_step)))) if m.qty_step < 1 else 0
    return tuple(float(v) for v in (
        zscore_samples(p, m.bar_s), ZSCORE_MIN_SAMPLES, r.basis_smoothing_hours * HOUR, r.funding_exit_hours * HOUR,
        r.carry_lookback_days * DAY, p.vol_limit_pct, vol_bars(m.bar_s), p.fill_delay_seconds, p.min_basis_pct,
        p.min_zscore, p.exit_basis_pct, p.exit_zscore, r.basis_stop_multiple, r.basis_stop_floor_pct, r.basis_stop_sigmas,
        r.flip_sigmas, r.funding_exit_8h_pct, r.funding_exit_basis_pct, r.carry_entry_8h_pct, r.carry_exit_8h_pct,
        r.carry_cost_cover, r.max_hold(p.playbook) * DAY, p.expected_hold_days, p.carry_expected_hold_days, p.notional_usd,
        m.qty_step, m.min_notional_usd, c.spot.taker_fee, c.spot.half_spread_bps, c.spot.impact_bps_per_sqrt_musd,
        c.perp.taker_fee, c.perp.half_spread_bps, c.perp.impact_bps_per_sqrt_musd, m.bar_s, decimals, ZSCORE_STD_FLOOR,
    ))


def inputs(m: Market) -> tuple:
    """The market's arrays as the loop reads them (views, no copies: the data as loaded)."""
    return (m.t, m.spot, m.perp, m.mark, m.mark_high, m.mark_low, np.asarray(m.f_time, dtype=np.float64), m.f_rate)


def run_compiled(m: Market, p: BacktestParams, P: tuple[float, ...], arrays: tuple):
    """(entry bars, exit bars, quantities, reason codes, P&L) of every trade: the compiled single pass."""
    if p.strategy != "cash_and_carry":
        raise ValueError("the compiled loop covers cash-and-carry only")
    return _single_pass(*arrays, m.i0, m.i1, p.playbook == "carry", P)


def trade_keys(out) -> list[tuple[int, int, float, str]]:
    e, x, q, r, _ = out
    return [(int(a), int(b), float(c), REASONS[int(d)]) for a, b, c, d in zip(e, x, q, r, strict=True)]
