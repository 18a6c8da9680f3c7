"""The engine's compiled core (numba): the per-bar features in one pass, and the trade search.

Chosen by measurement (``python bench/backtest.py``): the per-bar features as NumPy array passes
(rolling sums over sliding windows, a dozen temporaries per feature) and a Python iteration per
trade cost the engine ~7x a compiled single pass of the same rules on the default cash-and-carry
rules; compiled, the same work costs about what that pass does. Semantics are the engine's
(`engine.features`, `engine.TradeFinder`) and the tests hold every result to the per-row
reference loop, trade for trade:

- `rolling_z_std`: z-score and population std of each sample against the trailing ``window``
  samples (inclusive), NaN before ``min_samples``, z = 0 below the std floor. Welford add/remove,
  recomputed exactly (two passes) once per window and wherever the window is nearly flat, so
  rounding can neither drift nor decide a threshold;
- `bar_features`: basis, the smoothed basis over the fresh bars of the last ``smooth_w`` bars and
  the 1 h volatility breaker, in one pass;
- `scan`: every fixed-size trade of one symbol in one walk over the bars: the next candidate whose
  entry check passes (`next_candidate`: the check computed there, only at the candidates the walk
  reaches), its fill, the first bar where an exit rule holds and why, in `playbooks.exit_signal`'s
  priority order, its fill (`trade_from`); the portfolio pass, which sizes each entry itself and
  interleaves symbols, calls `next_candidate` and `trade_from` one trade at a time.

Compiled on first use and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# exit reasons by code (`trade_from`), in `playbooks.exit_signal`'s priority order, then the strategy's own
REASONS = ("basis_blowout", "carry_funding_exit", "funding_reversal", "basis_inverted", "max_hold", "convergence",
           "zscore_reversion", "end_of_range", "loan_recall")
compiled = njit(cache=True, nogil=True, error_model="numpy")  # numpy's float semantics: x / 0 is inf or NaN, not an error
# Arrays the size of the history are allocated by numpy and filled in place: numpy asks the kernel for huge pages,
# the compiled code's own allocator does not, and first-touching a fresh 25 MB array page by page cost more than
# the loop that fills it (measured: 70 ms against 5 ms for 3 million bars).
FLAT = 1e-8  # a window whose variance is below this fraction of its mean's square is recomputed exactly


def rolling_z_std(x: np.ndarray, window: int, min_samples: int, std_floor: float,
                  valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(z, std) of every sample of ``x`` against the trailing ``window`` samples (see module docstring); with
    ``valid``, only the bars where it is True are samples (the others get NaN and do not count)."""
    z, sd = np.full(x.size, np.nan), np.full(x.size, np.nan)
    if valid is None:
        valid = np.ones(x.size, dtype=bool)
    if min_samples <= window:
        _rolling_z_std(np.ascontiguousarray(x, dtype=np.float64), valid, int(window), int(min_samples), float(std_floor),
                       np.empty(int(window)), z, sd)
    return z, sd


@compiled
def _exact_ring(ring, cnt):
    acc = 0.0
    for j in range(cnt):
        acc += ring[j]
    mean = acc / cnt
    acc = 0.0
    for j in range(cnt):
        acc += (ring[j] - mean) ** 2
    return mean, acc


@compiled
def _rolling_z_std(x, valid, window, min_samples, std_floor, ring, z, sd):
    mean = 0.0
    m2 = 0.0
    since = 0
    i = -1  # samples so far - 1
    for bar in range(x.size):
        if not valid[bar]:
            continue
        i += 1
        v = x[bar]
        if i >= window:
            old = ring[i % window]
            ring[i % window] = v
            d_old = old - mean
            mean -= d_old / (window - 1)
            m2 -= d_old * (old - mean)
            d = v - mean
            mean += d / window
            m2 += d * (v - mean)
        else:
            ring[i] = v
            d = v - mean
            mean += d / (i + 1)
            m2 += d * (v - mean)
        cnt = min(i + 1, window)
        since += 1
        var = max(m2, 0.0) / cnt
        if since >= window or var <= FLAT * mean * mean:  # (the ring holds the window's samples in some order)
            mean, m2 = _exact_ring(ring, cnt)
            var = m2 / cnt
            since = 0
        if i + 1 >= min_samples:
            s = math.sqrt(var)
            sd[bar] = s
            z[bar] = 0.0 if s < std_floor else (v - mean) / s


def bar_features(spot: np.ndarray, perp: np.ndarray, mark_high: np.ndarray, mark_low: np.ndarray, direction: int,
                 smooth_w: int, k_h: int, vol_limit: float) -> tuple[np.ndarray, ...]:
    """(basis as read, raw basis, smoothed basis, vol breaker ok) per bar; NaN basis where a leg is missing."""
    n = spot.size
    out = (np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.ones(n, dtype=bool))
    _bar_features(*(np.ascontiguousarray(a, dtype=np.float64) for a in (spot, perp, mark_high, mark_low)), int(direction),
                  int(smooth_w), int(k_h), float(vol_limit), *out)
    return out


@compiled
def _bar_features(spot, perp, mark_high, mark_low, direction, smooth_w, k_h, vol_limit, basis, basis_raw, smooth, vol_ok):
    n = spot.size
    acc = 0.0
    cnt = 0
    since = 0
    park_k = 2.0 * math.sqrt(math.log(2.0))
    lag = max(k_h, 1)
    # ranges and moves this far inside the limit pass without computing a logarithm (a margin of 1e-9 over rounding)
    park_safe = math.exp(vol_limit / 100.0 * park_k) * (1.0 - 1e-9)
    c2c_lo, c2c_hi = math.exp(-vol_limit / 100.0) * (1.0 + 1e-9), math.exp(vol_limit / 100.0) * (1.0 - 1e-9)
    cap = max(k_h, 1) + 1
    qh = np.empty(cap, np.int64)  # bars whose high may still be the window's highest, oldest first (a ring)
    ql = np.empty(cap, np.int64)
    qh_start = qh_end = ql_start = ql_end = 0
    nan_h = nan_l = -1  # the last bar with a missing high / low
    for i in range(n):
        s, p = spot[i], perp[i]
        fresh = not (math.isnan(s) or math.isnan(p))
        if fresh:
            br = (p - s) / s * 100.0
            basis_raw[i] = br
            basis[i] = br if direction == 1 else -br
            acc += basis[i]
            cnt += 1
        j = i - smooth_w
        if j >= 0 and not math.isnan(basis[j]):  # the bar leaving the window
            acc -= basis[j]
            cnt -= 1
        since += 1
        if since >= smooth_w:  # re-summed once a window: a running sum never drifts
            acc = 0.0
            for b in range(max(i - smooth_w + 1, 0), i + 1):
                if not math.isnan(basis[b]):
                    acc += basis[b]
            since = 0
        if fresh and cnt > 0:
            smooth[i] = acc / cnt
        if k_h == 0:
            continue
        if k_h == 1:
            hi, lo = mark_high[i], mark_low[i]
        else:  # the extremes of the last k_h bars (NaN if any is missing): monotonic queues, O(1) a bar
            h, lw = mark_high[i], mark_low[i]
            if math.isnan(h):
                nan_h = i
            else:
                while qh_end > qh_start and mark_high[qh[(qh_end - 1) % cap]] <= h:
                    qh_end -= 1
                qh[qh_end % cap] = i
                qh_end += 1
            if math.isnan(lw):
                nan_l = i
            else:
                while ql_end > ql_start and mark_low[ql[(ql_end - 1) % cap]] >= lw:
                    ql_end -= 1
                ql[ql_end % cap] = i
                ql_end += 1
            while qh_end > qh_start and qh[qh_start % cap] <= i - k_h:
                qh_start += 1
            while ql_end > ql_start and ql[ql_start % cap] <= i - k_h:
                ql_start += 1
            hi = math.nan if nan_h > i - k_h else (mark_high[qh[qh_start % cap]] if qh_end > qh_start else -math.inf)
            lo = math.nan if nan_l > i - k_h else (mark_low[ql[ql_start % cap]] if ql_end > ql_start else math.inf)
        if i > 0:
            prev = perp[i - lag] if i >= lag else math.nan
            if hi / lo <= park_safe and (not prev > 0 or c2c_lo <= p / prev <= c2c_hi):
                continue  # clearly inside the limit: no logarithm needed
            park = math.log(hi / lo) / park_k if hi > 0 and lo > 0 and hi >= lo else 0.0
            c2c = abs(math.log(p / prev)) if prev > 0 else 0.0
            vol = math.nan if math.isnan(c2c) else max(park, c2c) * 100.0
            vol_ok[i] = vol <= vol_limit


@compiled
def _reason(j, e, t, basis, z, sd, smooth, fund_recent, fund_carry, carry, hold_s, R):
    """Why a position filled at ``e`` exits at ``j``: `playbooks.exit_signal`'s rules in its order, then
    convergence, z reversion, the range's end."""
    stop_mult, stop_floor, stop_sigmas, flip_sigmas, fe_8h, fe_basis, carry_out, exit_basis, exit_z = R
    b_in, sm, s = basis[e], smooth[j], sd[j]
    lvl = stop_mult * max(b_in, stop_floor if math.isnan(s) else max(stop_floor, stop_sigmas * s))
    if not math.isnan(sm) and sm > lvl:
        return 0
    if carry:
        if not math.isnan(fund_carry[j]) and fund_carry[j] < carry_out:
            return 1
    else:
        if not math.isnan(fund_recent[j]) and not math.isnan(sm) and fund_recent[j] < fe_8h and sm < fe_basis:
            return 2
        if b_in > 0 and not math.isnan(sm) and not math.isnan(s) and sm < -flip_sigmas * s:
            return 3
    if t[j] - t[e] > hold_s:
        return 4
    if not carry and basis[j] <= exit_basis:
        return 5
    if not carry and z[j] <= exit_z:
        return 6
    return 7


@compiled
def _interval(d_hours):
    return d_hours if d_hours == 1.0 or d_hours == 2.0 or d_hours == 4.0 or d_hours == 8.0 else 8.0


def funding_features(t: np.ndarray, ft: np.ndarray, fr: np.ndarray, span_recent: float, span_carry: float,
                     digits: int) -> tuple[np.ndarray, ...]:
    """Per bar: settlements at or before it, those at or before 30 days earlier, and the mean settled rate over
    the last ``span_recent`` / ``span_carry`` seconds restated per 8 h in percent at the interval around the
    next settlement (NaN where none settled), rounded to ``digits``: window pointers over prefix sums, one pass."""
    n = t.size
    out = (np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.full(n, np.nan), np.full(n, np.nan))
    _funding_features(t, ft, fr, float(span_recent), float(span_carry), int(digits), *out)
    return out


@compiled
def _funding_features(t, ft, fr, span_recent, span_carry, digits, settled, settled_30, recent, carry):
    n, nf = t.size, ft.size
    cs = np.zeros(nf + 1)
    for j in range(nf):
        cs[j + 1] = cs[j] + fr[j]
    tail = _interval((ft[nf - 1] - ft[nf - 2]) / 3600.0) if nf > 1 else 8.0
    f = 10.0 ** digits
    k = k30 = lo_r = lo_c = 0
    for i in range(n):
        ti = t[i]
        while k < nf and ft[k] <= ti:
            k += 1
        while k30 < nf and ft[k30] <= ti - 30 * 86400.0:
            k30 += 1
        while lo_r < nf and ft[lo_r] <= ti - span_recent:
            lo_r += 1
        while lo_c < nf and ft[lo_c] <= ti - span_carry:
            lo_c += 1
        settled[i], settled_30[i] = k, k30
        if k < nf:
            iv = _interval((ft[k] - (ft[k - 1] if k > 0 else ft[0] - 8 * 3600.0)) / 3600.0)
        else:
            iv = tail if nf > 1 else 8.0
        to_8h = 8.0 / iv * 100.0
        if k > lo_r:
            recent[i] = np.rint((cs[k] - cs[lo_r]) / (k - lo_r) * to_8h * f) / f  # numpy's round(x, digits)
        if k > lo_c:
            carry[i] = np.rint((cs[k] - cs[lo_c]) / (k - lo_c) * to_8h * f) / f


@compiled
def _schedule(tc, k, k30, ft, fr, cs):
    """`engine.schedule_at` at one bar: (next settlement, interval in hours, the convergence entry's rate)."""
    nf = ft.size
    if nf == 0:
        return (math.floor(tc / 28800.0) + 1) * 28800.0, 8.0, 0.0
    if k >= nf:  # past the data the schedule goes on at the last spacing
        tail = ft[nf - 1] - ft[nf - 2] if nf > 1 else 8 * 3600.0
        nxt = ft[nf - 1] + tail * (math.floor((tc - ft[nf - 1]) / tail) + 1)
        iv = _interval(tail / 3600.0)
    else:
        nxt = ft[k]
        iv = _interval((nxt - (ft[k - 1] if k > 0 else ft[0] - 8 * 3600.0)) / 3600.0)
    if k > k30:
        rate = (cs[k] - cs[k30]) / (k - k30)  # the 30-day mean settled rate
    elif k > 0:
        rate = fr[k - 1]  # else the last one
    else:
        rate = 0.0
    return nxt, iv, rate


@compiled
def _margin(c, t, spot, perp, nxt, iv, rate, borrow_h, E):
    """The entry check's margin at the fixed size at bar ``c`` (the formulas of `signals.entry_expected_net_usd` and
    `playbooks.carry_entry_check`; carry: expected funding less ``carry_cost_cover`` round trips; a calendar
    spread: the premium's roll-down to expiry, the long perp paying): > 0 passes."""
    notional, step, fee_s, hs_s, imp_s, fee_p, hs_p, imp_p, hold, carry, cover, d, expiry = E[:13]
    carry = carry > 0
    s, p = spot[c], perp[c]
    qty = math.floor(notional / s / step + 1e-9) * step
    if not qty > 0:
        return -math.inf
    ns, np_ = qty * s, qty * p
    costs = 2 * (ns * (fee_s + (hs_s + imp_s * math.sqrt(ns / 1e6)) / 1e4)
                 + np_ * (fee_p + (hs_p + imp_p * math.sqrt(np_ / 1e6)) / 1e4))
    to_next = nxt - t[c]
    horizon = hold * 86400.0
    n_settle = math.floor((horizon - to_next) / (iv * 3600.0)) + 1 if horizon >= to_next else 0.0
    if carry:
        return np_ * rate * n_settle - cover * costs
    if expiry > 0:  # calendar: the premium rolls down linearly to expiry; the long perp (the reference) pays
        share = min(horizon / max(expiry - t[c], 1e-9), 1.0)
        return qty * (p - s) * share - ns * rate * n_settle - costs
    borrow = ns * borrow_h[c] * hold * 24.0 if d == -1 else 0.0
    return d * qty * (p - s) + d * np_ * rate * n_settle - costs - borrow


@compiled
def _fill(decision, t, valid, i1, delay):
    """The first fresh bar of the range at or after the decision time + the delay (-1: past the range)."""
    if delay <= 0:
        return decision
    target = t[decision] + delay
    b = decision
    while b <= i1 and not (valid[b] and t[b] >= target):
        b += 1
    return b if b <= i1 else -1


@compiled
def _next_candidate(start, A, B, S, E):
    """The first bar at or after ``start`` (and before the range's last fresh bar) where an entry may be signalled:
    fresh, inside the vol breaker, its stop not already beyond reach, the playbook's entry level met; with a fixed
    size (``fixed``) also its entry check: (bar, 1) where it passes, (bar, 2) within a cent of zero (the caller
    decides with the scalar check); without, (bar, 3): the caller sizes and checks it. (-1, 0): none."""
    t, valid, spot, perp, basis, z, sd, smooth, vol_ok, fund_recent, fund_carry, settled, settled_30, ft, fr, cs = A[:16]
    borrow_h = A[16]
    i0, i1, entry_i1, last_valid = B
    carry, fixed = S[2] > 0, S[3] > 0
    notional, step = E[0], E[1]
    carry_in, min_basis, min_z, min_notional, slack, decimals = E[13:19]
    stop_mult, stop_floor, stop_sigmas = E[19:22]
    rnd = 10.0 ** (decimals + 2)
    for b in range(max(start, i0), last_valid):
        if not (valid[b] and vol_ok[b]):
            continue
        fl = stop_floor if math.isnan(sd[b]) else max(stop_floor, stop_sigmas * sd[b])
        if smooth[b] > stop_mult * max(basis[b], fl):
            continue  # its stop would fire at once
        if carry:
            if not fund_carry[b] >= carry_in:
                continue
        elif not (basis[b] >= min_basis and z[b] >= min_z) or (entry_i1 >= 0 and b > entry_i1):
            continue
        if not fixed:
            return b, 3
        nxt, iv, rate = _schedule(t[b], settled[b], settled_30[b], ft, fr, cs)
        if carry:
            rate = fund_carry[b] / 100.0 / 8.0 * iv  # the carry's own lookback mean, per settlement
        a = _margin(b, t, spot, perp, nxt, iv, rate, borrow_h, E)
        if not a > -slack:
            continue
        q = np.rint(math.floor(notional / spot[b] / step + 1e-9) * step * rnd) / rnd  # `sizing.floor_to_step`
        if q <= 0 or q * spot[b] < min_notional:
            continue
        return b, 1 if a > slack else 2
    return -1, 0


@compiled
def _trade_from(c, A, B, S, R):
    """The trade signalled at bar ``c``: (entry fill bar, exit fill bar, reason code), or (-1, -1, -1) if it cannot
    open (its fill would land at or past the range's last fresh bar). The exit signal is the first bar after the
    entry fill where an exit rule holds (the stop, the playbook's exits, a persistent sign flip, the max hold), else
    the range's last fresh bar; a loan recall while open closes it at once."""
    t, valid, spot, perp, basis, z, sd, smooth, vol_ok, fund_recent, fund_carry = A[:11]
    recall_t, recall_bar = A[17], A[18]
    i0, i1, entry_i1, last_valid = B
    hold_s, delay, carry = S[0], S[1], S[2] > 0
    stop_mult, stop_floor, stop_sigmas, flip_sigmas, fe_8h, fe_basis, carry_out, exit_basis, exit_z = R
    e = _fill(c, t, valid, i1, delay)
    if e < 0 or e >= last_valid:
        return -1, -1, -1
    b_in = basis[e]
    flip_on = b_in > 0 and not carry
    t_hold = t[e] + hold_s
    j = last_valid
    for b in range(e + 1, last_valid):
        if not valid[b]:
            continue
        fl = stop_floor if math.isnan(sd[b]) else max(stop_floor, stop_sigmas * sd[b])
        if smooth[b] > stop_mult * max(b_in, fl):
            j = b
            break
        if carry:
            if fund_carry[b] < carry_out:
                j = b
                break
        elif (fund_recent[b] < fe_8h and smooth[b] < fe_basis) or basis[b] <= exit_basis or z[b] <= exit_z:
            j = b
            break
        if (flip_on and smooth[b] < -flip_sigmas * sd[b]) or t[b] > t_hold:
            j = b
            break
    reason = _reason(j, e, t, basis, z, sd, smooth, fund_recent, fund_carry, carry, hold_s, R)
    x = _fill(j, t, valid, i1, delay) if j < last_valid else last_valid
    if x < 0 or x > last_valid:
        x = last_valid
    h = np.searchsorted(recall_t, t[e], side="right")
    if h < recall_t.size and recall_bar[h] <= x:
        x, reason = recall_bar[h], 8
    return e, x, reason


@compiled
def next_candidate(start, A, B, S, E):
    """`_next_candidate`, called from Python (the portfolio pass)."""
    return _next_candidate(start, A, B, S, E)


@compiled
def trade_from(c, A, B, S, R):
    """`_trade_from`, called from Python (the portfolio pass)."""
    return _trade_from(c, A, B, S, R)


@compiled
def scan(start, force_bar, force_ok, A, B, S, R, E):
    """Every fixed-size trade of one symbol from bar ``start`` on, one position at a time: (entry fill bars, exit
    fill bars, reason codes, signal bars, and the bar of a candidate whose entry check is within a cent of zero,
    where the walk stopped for the caller to decide it with the scalar check and call again with ``force_bar`` /
    ``force_ok``; -1 when the range is done), and every (query bar, candidate bar, status) `next_candidate` answered
    on the way, for the portfolio pass to look up instead of asking again."""
    out = np.empty((4, 64), np.int64)  # entry fill, exit fill, reason, signal bar per trade (grown as needed)
    log = np.empty((3, 64), np.int64)
    n = n_log = 0
    i = start
    while True:
        c, status = _next_candidate(i, A, B, S, E)
        if n_log == log.shape[1]:
            grown = np.empty((3, 2 * n_log), np.int64)
            grown[:, :n_log] = log
            log = grown
        log[0, n_log], log[1, n_log], log[2, n_log] = i, c, status
        n_log += 1
        if c < 0:
            break
        if status == 2:
            if c != force_bar:
                return out[0, :n], out[1, :n], out[2, :n], out[3, :n], c, log[:, :n_log]
            if not force_ok:
                i = c + 1
                continue
        e, x, reason = _trade_from(c, A, B, S, R)
        if e < 0:
            break
        if n == out.shape[1]:
            grown = np.empty((4, 2 * n), np.int64)
            grown[:, :n] = out
            out = grown
        out[0, n], out[1, n], out[2, n], out[3, n] = e, x, reason, c
        n += 1
        i = x + 1
    return out[0, :n], out[1, :n], out[2, :n], out[3, :n], -1, log[:, :n_log]


def legs_equity(ref: np.ndarray, other: np.ndarray, i: np.ndarray, j: np.ndarray, dq: np.ndarray, entry_cost: np.ndarray,
                pnl: np.ndarray, fund: np.ndarray, fq: np.ndarray, f_bar: np.ndarray, f_unit: np.ndarray) -> np.ndarray:
    """Realised + open P&L per bar of trades long ``dq`` of the reference leg and short it of the other (see
    `results._legs_equity`): the trades' entries and exits and the settlements, each in bar order, applied in one
    pass over the bars. O(bars + trades + settlements), and no array but the curve itself."""
    out = np.empty(ref.size)
    _legs_equity(ref, other, i, j, dq, entry_cost, pnl, fund, fq, f_bar, f_unit, np.argsort(i, kind="stable"),
                 np.argsort(j, kind="stable"), np.empty(i.size), out)
    return out


@compiled
def _legs_equity(ref, other, i, j, dq, entry_cost, pnl, fund, fq, f_bar, f_unit, by_entry, by_exit, c0, out):
    n, m, nf = ref.size, i.size, f_bar.size
    last = 0  # the basis in dollars is carried over stale bars from the last fresh one (bar 0's before any)
    oq = oc = rr = pq = funded = 0.0  # quantity open, its value at entry less entry costs, realised, quantity paid, funding
    pe = px = pe1 = px1 = pf = 0
    for b in range(n):
        if not (math.isnan(ref[b]) or math.isnan(other[b])):
            last = b
        bu = other[last] - ref[last]
        while pe < m and i[by_entry[pe]] == b:  # open over [entry, exit)
            k = by_entry[pe]
            c0[k] = dq[k] * bu - entry_cost[k]
            oq += dq[k]
            oc += c0[k]
            pe += 1
        while px < m and j[by_exit[px]] == b:  # realised from the exit on (less the funding counted while open)
            k = by_exit[px]
            oq -= dq[k]
            oc -= c0[k]
            rr += pnl[k] - fund[k]
            px += 1
        while pe1 < m and i[by_entry[pe1]] + 1 == b:  # paid the settlements in (entry, exit]
            pq += fq[by_entry[pe1]]
            pe1 += 1
        while px1 < m and j[by_exit[px1]] + 1 == b:
            pq -= fq[by_exit[px1]]
            px1 += 1
        while pf < nf and f_bar[pf] == b:
            funded += pq * f_unit[pf]
            pf += 1
        out[b] = rr + oc - (oq * bu if oq != 0 else 0.0) + funded


@compiled
def max_drawdown(equity):
    """The largest fall from a running peak, as a fraction of that peak (0 for an empty curve)."""
    peak = -math.inf
    worst = 0.0
    for v in equity:
        peak = max(peak, v)
        worst = max(worst, (peak - v) / peak)
    return worst


@compiled
def booking_sums(t0, bar_s, ft, fr, mark, spot, valid, fund_cum, const_cum):
    """Fill ``fund_cum`` (Σ mark × rate) and ``const_cum`` (Σ mark × rate / the last fresh spot, bar 0's before any)
    up to each settlement (index k + 1 after settlement k), the bar of a settlement its time's. A settlement
    outside the market's bars (before its warm-up, after its range) adds nothing: no trade holds across it."""
    fund_cum[0] = const_cum[0] = 0.0
    for k in range(ft.size):
        b = int((ft[k] - t0) // bar_s)
        if b < 0 or b >= mark.size:
            fund_cum[k + 1] = fund_cum[k]
            const_cum[k + 1] = const_cum[k]
            continue
        unit = mark[b] * fr[k]
        fresh = b
        while fresh >= 0 and not valid[fresh]:
            fresh -= 1
        fund_cum[k + 1] = fund_cum[k] + unit
        const_cum[k + 1] = const_cum[k] + unit / spot[max(fresh, 0)]


@compiled
def _wallet(lp, qty, entry_price, caps, mmr, cum, short):
    """`portfolio.wallet_for_liquidation_prices` at one price."""
    v = qty * lp
    idx = 0
    while idx < caps.size - 1 and caps[idx] < v:  # searchsorted(caps, v, "left"), at most the last bracket
        idx += 1
    if short:
        return lp * qty * (1.0 + mmr[idx]) - cum[idx] - qty * entry_price
    return qty * entry_price - cum[idx] - lp * qty * (1.0 - mmr[idx])


@compiled
def leg_topups(e, x, valid, price, f_bar, paid, fsign, spot, borrow_bar, qty, entry_price, w0, caps, mmr, cum, add_pct,
               target_pct, short):
    """The watchdog's top-ups on one isolated leg: whenever the liquidation price comes within ``add_pct`` of
    ``price``, enough margin to put it ``target_pct`` away (the desk's rule, `portfolio.margin_topups`), for the leg of a position filled at bar ``e`` and open until ``x``, at its fresh bars strictly between,
    with what the wallet was credited up to each bar built on the way: ``fsign`` × the settlements ``paid`` at bars
    ``f_bar`` (ascending), less (with ``borrow_bar``) the interest on ``qty`` of ``spot`` for every bar after ``e``."""
    sign = 1.0 if short else -1.0
    bars = np.empty(16, np.int64)
    amounts = np.empty(16)
    n = 0
    added = funded = borrowed = 0.0
    s = 0
    for b in range(e, x):
        here = 0.0
        while s < f_bar.size and f_bar[s] == b:
            here += paid[s]
            s += 1
        funded += here
        if b == e:
            continue
        if borrow_bar.size:
            borrowed += qty * spot[b] * borrow_bar[b]
        if not valid[b]:
            continue
        credited = fsign * funded - borrowed
        need = _wallet(price[b] * (1.0 + sign * add_pct / 100.0), qty, entry_price, caps, mmr, cum, short) - w0 - credited
        if not need > added:
            continue
        amount = _wallet(price[b] * (1.0 + sign * target_pct / 100.0), qty, entry_price, caps, mmr, cum, short) - w0 \
            - credited - added
        if amount > 0:
            if n == bars.size:
                bars = np.concatenate((bars, np.empty(n, np.int64)))
                amounts = np.concatenate((amounts, np.empty(n)))
            bars[n], amounts[n] = b, amount
            n += 1
            added += amount
    return bars[:n], amounts[:n]
