"""The vectorised engine: both playbooks, fills after a delay, stale bars excluded.

Every per-bar quantity is an array op: basis, the rolling z-score and basis std, the basis
averaged over the funding window, 1 h realised vol, the funding means the playbooks read,
the entry candidates and the exit conditions that do not depend on the trade. Path
dependence (one position per symbol, exits that depend on the entry, fills that land a
delay after the signal) is handled by event-finding: from the current bar, the next entry is
the first candidate whose entry check passes; it fills at the first fresh bar at or after
the signal + ``fill_delay_seconds``; its exit signal is the earliest of the next generic exit,
the first bar past the basis stop or a persistent sign flip (a search over that trade's bars
only) and the max-hold bar; the exit fills after the same delay. The Python loop runs once
per trade, never once per bar. Exit reasons are named by `playbooks.exit_signal`, the same
function the desk's watchdog and the reference loop use.

Semantics (shared with `reference.run_reference` and the paper desk): funding settling at bar
t is paid before anything acts at t; signals and fills use only fresh bars (both legs traded
in that hour); a position is open from its entry fill to its exit fill; a new entry is
signalled only after the previous exit has filled; an open position is closed on the last
fresh bar of the range.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade
from basis_mcp.borrow import HOURS_PER_YEAR, BorrowModel
from basis_mcp.dated import YEAR_S
from basis_mcp.history import HOUR, funding_schedule, mean_rate
from basis_mcp.playbooks import Signals, exit_signal
from basis_mcp.signals import entry_expected_net_usd, rolling_zscore_std, settlements_in
from basis_mcp.sizing import floor_to_step

DAY = 86400.0
SKIP = object()  # a candidate whose entry check fails: try the next one
FUND_DIGITS = 12  # funding means are compared with thresholds after rounding: both engines and the desk agree


def features(m: Market, p: BacktestParams) -> dict[str, np.ndarray]:
    """Per-bar arrays the entry and exit rules read (independent of the playbook's thresholds)."""
    valid = m.valid
    n = m.t.size
    with np.errstate(invalid="ignore", divide="ignore"):
        basis_raw = (m.perp - m.spot) / m.spot * 100.0
    basis_raw[~valid] = np.nan
    direction = p.direction
    basis = basis_raw if direction == 1 else -basis_raw  # the rules read the basis as the position does (mirrored: reverse)
    z = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    vi = np.flatnonzero(valid)
    zw = zscore_samples(p, m.bar_s)
    z[vi], sd[vi] = rolling_zscore_std(basis[vi], zw)
    if m.expiry is not None:  # a calendar premium shrinks toward expiry: its z-score is read on the annualised premium
        # (rounded: a premium priced at the carry bound is flat, and its z lands on round numbers the two engines
        # would otherwise compare against a threshold 1e-11 apart)
        z[vi] = np.round(rolling_zscore_std(annualised_premium(basis[vi], m.expiry, m.t[vi]), zw)[0], Z_DIGITS)
    # the basis averaged over the funding window: fresh samples in (t - H, t]
    w = m.bars(p.basis_smoothing_hours * 3600.0)
    padded = np.concatenate((np.zeros(w - 1), np.where(valid, basis, 0.0)))
    cnt_pad = np.concatenate((np.zeros(w - 1), valid.astype(np.float64)))
    s_sum = sliding_window_view(padded, w).sum(axis=1)
    s_cnt = sliding_window_view(cnt_pad, w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = np.where(valid & (s_cnt > 0), s_sum / np.maximum(s_cnt, 1.0), np.nan)  # only fresh bars decide
    # 1 h realised vol: the larger of the Parkinson range and the close-to-close move, over the last hour of bars
    k_h = vol_bars(m.bar_s)
    hi, lo = m.mark_high, m.mark_low
    if k_h > 1:  # finer bars: the hour's range is the extreme of its bars, the move is against the close an hour ago
        pad_hi = np.concatenate((np.full(k_h - 1, -np.inf), hi))
        pad_lo = np.concatenate((np.full(k_h - 1, np.inf), lo))
        hi = sliding_window_view(pad_hi, k_h).max(axis=1)
        lo = sliding_window_view(pad_lo, k_h).min(axis=1)
    prev = np.full_like(m.perp, np.nan)
    lag = max(k_h, 1)
    prev[lag:] = m.perp[:-lag]
    with np.errstate(invalid="ignore", divide="ignore"):
        park = hi / lo
        park[~((hi > 0) & (lo > 0) & (hi >= lo))] = 1.0
        np.log(park, out=park)
        park /= 2.0 * math.sqrt(math.log(2.0))
        c2c = m.perp / prev
        c2c[~(prev > 0)] = 1.0
        np.log(c2c, out=c2c)
        np.abs(c2c, out=c2c)
        vol = np.maximum(park, c2c, out=park)
        vol *= 100.0
    vol_ok = vol <= p.vol_limit_pct  # after a missing perp bar the range still counts (the close-to-close move cannot)
    vol_ok[0] = True  # the first bar has no previous one to measure against
    if k_h == 0:  # bars coarser than an hour: the 1 h breaker cannot be measured, so it is not run (the result says so)
        vol_ok[:] = True
    ft = m.f_time.astype(np.float64)
    # settlements at or before each bar: where each settlement falls among the bars (7k searches, not 57k), counted up
    k = np.cumsum(np.bincount(np.searchsorted(m.t, ft, side="left"), minlength=m.t.size + 1)[: m.t.size])
    k_30 = _count_before(m.t, ft, k, 30 * DAY, m.bar_s)
    # the interval around the next settlement (the schedule's rule), gathered by settlement count
    prev = np.concatenate(([ft[0] - 8 * HOUR], ft[:-1])) if ft.size else np.zeros(0)
    iv_tab = np.where(np.isin((ft - prev) / HOUR, (1.0, 2.0, 4.0, 8.0)), (ft - prev) / HOUR, 8.0) if ft.size else np.full(1, 8.0)
    if ft.size > 1:
        tail = (ft[-1] - ft[-2]) / HOUR
        iv_tab = np.concatenate((iv_tab, [tail if tail in (1.0, 2.0, 4.0, 8.0) else 8.0]))
    iv = iv_tab[np.minimum(k, iv_tab.size - 1)]
    to_8h = 8.0 / iv * 100.0
    span_r, span_c = p.funding_exit_hours * 3600.0, p.carry_lookback_days * DAY
    recent = np.round(mean_rate(ft, m.f_rate, m.t - span_r, m.t, lo=_count_before(m.t, ft, k, span_r, m.bar_s), hi=k) * to_8h,
                      FUND_DIGITS)
    carry = np.round(mean_rate(ft, m.f_rate, m.t - span_c, m.t, lo=_count_before(m.t, ft, k, span_c, m.bar_s), hi=k) * to_8h,
                     FUND_DIGITS)
    borrow_h = np.zeros(n)
    if p.borrows:  # the funding a long receives, net of the MODELLED borrow on its short spot (as `Signals.seen_by`)
        apr = np.asarray(BorrowModel(p.borrow_scenario).apr_pct_at(m.symbol, m.t), dtype=np.float64)
        b8 = apr / HOURS_PER_YEAR * 8.0
        recent, carry = -recent - b8, -carry - b8
        borrow_h = apr / 100.0 / HOURS_PER_YEAR
    elif p.funding_direction == -1:  # long the perp without a borrow (calendar spread): the funding it receives
        recent, carry = -recent, -carry
    return {
        "valid": valid,
        "basis": basis,
        "basis_raw": basis_raw,
        "borrow_h": borrow_h,  # per hour (the entry checks)
        "borrow_bar": borrow_h * (m.bar_s / HOUR),  # per bar (what a bar held accrues)
        "z": z,
        "std": sd,
        "smooth": smooth,
        "vol_ok": vol_ok,
        "fund_recent": recent,
        "fund_carry": carry,
        "settled": k,
        "settled_30d_ago": k_30,
        "f_time": ft,
    }


Z_DIGITS = 9  # a calendar z-score is compared with its thresholds at this precision in both engines


def annualised_premium(basis_pct: np.ndarray, expiry: float, t: np.ndarray) -> np.ndarray:
    """A calendar premium per year to expiry (percent a year): stationary where the premium itself decays."""
    return basis_pct / np.maximum((expiry - t) / YEAR_S, 1.0 / 8760.0)


def zscore_samples(p: BacktestParams, bar_s: float) -> int:
    """The z-score window in samples: ``zscore_window`` hours of bars (one sample per bar)."""
    return max(int(round(p.zscore_window * HOUR / bar_s)), 2)


def vol_bars(bar_s: float) -> int:
    """Bars in the 1 h realised-vol window: 1 on hourly bars, 12 on 5-minute ones; 0 when a bar is longer than
    an hour (the breaker cannot be measured on such data and is not run)."""
    if bar_s > HOUR:
        return 0
    return max(int(round(HOUR / bar_s)), 1)


def rules_not_run(bar_s: float) -> list[str]:
    """The rules a bar size is too coarse for, said in the result instead of run on meaningless data."""
    if bar_s > HOUR:
        return [f"the 1 h volatility breaker (max_realised_vol_1h_pct) was not run: {bar_s / HOUR:g} h bars cannot "
                "measure an hour's range"]
    return []


def _count_before(t: np.ndarray, ft: np.ndarray, k: np.ndarray, span: float, bar_s: float = HOUR) -> np.ndarray:
    """Settlements at or before t - span for every bar: on the regular grid that is the count ``span``
    earlier (a shift), searched only where the grid has no bar that far back."""
    lag = span / bar_s
    if lag != int(lag) or int(lag) >= t.size:
        return np.searchsorted(ft, t - span, side="right")
    lag = int(lag)
    if lag == 0:
        return k
    return np.concatenate((np.searchsorted(ft, t[:lag] - span, side="right"), k[:-lag]))


def schedule_at(m: Market, f: dict[str, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At the bars ``idx``: (next settlement time, interval in hours, the funding rate the
    convergence entry check assumes: the 30-day mean settled rate, else the last one, else 0)."""
    k, t = f["settled"][idx], m.t[idx]
    nxt, iv, last = funding_schedule(f["f_time"], m.f_rate, t, k)
    mean30 = mean_rate(f["f_time"], m.f_rate, t - 30 * DAY, t, lo=f["settled_30d_ago"][idx], hi=k)
    last0 = np.where(np.isnan(last), 0.0, last)
    return nxt, iv, np.where(np.isnan(mean30), last0, mean30)


def signals_at(f: dict[str, np.ndarray], i: int) -> Signals:
    def opt(a: np.ndarray) -> float | None:
        x = float(a[i])
        return None if math.isnan(x) else x

    return Signals(basis_pct=float(f["basis"][i]), basis_smooth_pct=opt(f["smooth"]), basis_std_pct=opt(f["std"]),
                   funding_recent_8h_pct=opt(f["fund_recent"]), funding_carry_8h_pct=opt(f["fund_carry"]))


def run_vectorized(m: Market, p: BacktestParams, f: dict[str, np.ndarray] | None = None) -> list[Trade]:
    f = f or features(m, p)
    finder = TradeFinder(m, p, f)
    entries, exits, qtys, reasons = [], [], [], []
    bar = m.i0
    while True:
        nxt = finder.next_trade(bar, finder.fixed_qty)
        if nxt is None:
            break
        e, x, q, reason = nxt
        entries.append(e)
        exits.append(x)
        qtys.append(q)
        reasons.append(reason)
        bar = x + 1
    return book_trades(m, p, f, np.array(entries, dtype=np.int64), np.array(exits, dtype=np.int64), np.array(qtys), reasons)


class TradeFinder:
    """One symbol's trades, found one at a time (so a portfolio sizer can interleave symbols)."""

    def __init__(self, m: Market, p: BacktestParams, f: dict[str, np.ndarray], fixed: bool = True):
        """``fixed``: every entry is sized ``notional_usd`` (the entry check can be pre-computed for all
        candidates); a portfolio sizer passes False and its own sizes."""
        self.m, self.p, self.f = m, p, f
        self.rules = p.rules
        n = m.t.size
        bar = np.arange(n)
        valid, basis, z = f["valid"], f["basis"], f["z"]
        in_range = (bar >= m.i0) & (bar <= m.i1)
        self.valid_idx = np.flatnonzero(valid & in_range)
        self.valid_t = m.t[self.valid_idx]
        self.last_valid = int(self.valid_idx[-1]) if self.valid_idx.size else -1
        r = self.rules
        smooth, sd = f["smooth"], f["std"]
        with np.errstate(invalid="ignore"):
            floor = np.maximum(r.basis_stop_floor_pct, np.where(np.isnan(sd), 0.0, r.basis_stop_sigmas * sd))
            self.floor = floor
            # an entry whose stop would fire at once (the smoothed basis already far above it) is not taken
            not_blown = ~(smooth > r.basis_stop_multiple * np.maximum(basis, floor))
            if p.playbook == "carry":
                cand = in_range & valid & f["vol_ok"] & (f["fund_carry"] >= r.carry_entry_8h_pct) & not_blown
                generic = in_range & valid & (f["fund_carry"] < r.carry_exit_8h_pct)
                self.flip = np.zeros(n, dtype=bool)
            else:
                cand = (in_range & valid & (basis >= p.min_basis_pct) & (z >= p.min_zscore) & f["vol_ok"] & not_blown)
                if m.entry_i1 is not None:  # a calendar contract: entries only while the desk would choose it
                    cand &= bar <= m.entry_i1
                funding_rev = (f["fund_recent"] < r.funding_exit_8h_pct) & (smooth < r.funding_exit_basis_pct)
                generic = in_range & valid & (funding_rev | (basis <= p.exit_basis_pct) | (z <= p.exit_zscore))
                self.flip = in_range & valid & (smooth < -r.flip_sigmas * sd)  # for positions entered at a positive basis
        cand_idx = np.flatnonzero(cand)
        nxt_c, iv_c, rate_c = schedule_at(m, f, cand_idx)
        if p.playbook == "carry":
            rate_c = f["fund_carry"][cand_idx] / 100.0 / 8.0 * iv_c  # the carry's own lookback mean, per settlement
        # the entry check at the fixed size, for every candidate at once: where it is far from zero the array
        # answer stands; within a cent of zero the scalar function decides (array and scalar orders differ ~1e-9)
        self.fixed_sizing = fixed
        approx = _entry_margin(m, p, cand_idx, nxt_c, iv_c, rate_c, f["borrow_h"][cand_idx])
        keep = approx > -SLACK_USD if fixed else np.ones(cand_idx.size, dtype=bool)
        self.sure = (approx[keep] > SLACK_USD).tolist() if fixed else [False] * int(keep.sum())
        cand_idx, nxt_c, iv_c, rate_c = cand_idx[keep], nxt_c[keep], iv_c[keep], rate_c[keep]
        self.cands = cand_idx.tolist()
        self.nxt, self.iv, self.rate = nxt_c.tolist(), iv_c.tolist(), rate_c.tolist()
        self.gens = np.flatnonzero(generic)
        self.flips = np.flatnonzero(self.flip)
        # the spike scenario's venue recalls open loans (`BorrowModel.recall_times`): a reverse position open then
        # is closed at the first fresh bar at or after the recall, at once (the venue buys the spot back, the desk
        # unwinds the perp in the same tick)
        recalls = BorrowModel(p.borrow_scenario).recall_times(float(m.t[0]) - 1.0, float(m.t[-1])) if p.borrows else []
        self.recall_t = np.array(recalls, dtype=np.float64)
        at = np.searchsorted(self.valid_t, self.recall_t, side="left")
        self.recall_bar = np.where(at < self.valid_idx.size, self.valid_idx[np.minimum(at, max(self.valid_idx.size - 1, 0))],
                                   n) if self.valid_idx.size else np.full(self.recall_t.size, n)

    def fixed_qty(self, c: int) -> float:
        return floor_to_step(self.p.notional_usd / self.m.spot[c], self.m.qty_step)

    def fill_bar(self, decision: int) -> int | None:
        """The first fresh bar at or after the decision time + the fill delay (None: past the data)."""
        if self.p.fill_delay_seconds <= 0:
            return decision
        h = int(np.searchsorted(self.valid_t, self.m.t[decision] + self.p.fill_delay_seconds, side="left"))
        return int(self.valid_idx[h]) if h < self.valid_idx.size else None

    def entry_ok(self, k: int, qty: float) -> bool:
        """The entry check at candidate ``cands[k]`` for ``qty`` (scalar: the desk's functions)."""
        m, p, c = self.m, self.p, self.cands[k]
        if qty <= 0 or qty * m.spot[c] < m.min_notional_usd:
            return False
        if self.sure[k]:
            return True
        spot, perp, t = float(m.spot[c]), float(m.perp[c]), float(m.t[c])
        if p.playbook == "carry":
            from basis_mcp.playbooks import carry_entry_check, expected_carry_usd

            n = settlements_in(self.nxt[k] - t, self.iv[k], p.carry_expected_hold_days * DAY)
            fees, slip = m.costs.round_trip_usd(qty, spot, perp)
            why = carry_entry_check(float(self.f["fund_carry"][c]), expected_carry_usd(qty, perp, self.rate[k], n),
                                    fees + slip, self.rules)
            return why is None
        return entry_expected_net_usd(
            qty=qty, spot=spot, perp=perp, leverage=p.leverage, costs=m.costs, hold_days=p.expected_hold_days,
            funding_rate=self.rate[k], funding_interval_hours=self.iv[k], seconds_to_next_funding=self.nxt[k] - t,
            direction=p.direction, borrow_rate_hourly=float(self.f["borrow_h"][c]),
            seconds_to_expiry=None if m.expiry is None else m.expiry - t,
        ) > 0

    def next_trade(self, start: int, qty_of) -> tuple[int, int, float, str] | None:
        """The first trade signalled at or after bar ``start``: (entry fill bar, exit fill bar, qty, reason)."""
        k = bisect_left(self.cands, start)
        while k < len(self.cands):
            res = self.try_candidate(k, qty_of(self.cands[k]))
            if res is SKIP:
                k += 1
                continue
            return res  # type: ignore[return-value]
        return None

    def try_candidate(self, k: int, qty: float) -> tuple[int, int, float, str] | None | object:
        """The trade signalled at candidate ``cands[k]`` with ``qty``; `SKIP` if its entry check fails
        there, None if no trade can start there or later (the range is over)."""
        last_valid = self.last_valid
        c = self.cands[k]
        if last_valid < 0 or c >= last_valid:
            return None
        if not self.entry_ok(k, qty):
            return SKIP
        e = self.fill_bar(c)
        if e is None or e >= last_valid:
            return None
        j, reason = self._exit_signal(e)
        x = self.fill_bar(j) if j < last_valid else last_valid
        if x is None or x > last_valid:
            x = last_valid
        h = int(np.searchsorted(self.recall_t, self.m.t[e], side="right"))
        if h < self.recall_t.size and int(self.recall_bar[h]) <= x:
            x, reason = int(self.recall_bar[h]), "loan_recall"
        return e, x, qty, reason

    def _exit_signal(self, e: int) -> tuple[int, str]:
        """The bar where the exit of a position filled at ``e`` is signalled, and why."""
        m, p, f, r = self.m, self.p, self.f, self.rules
        last_valid = self.last_valid
        g = int(self.gens.searchsorted(e, side="right"))
        j_gen = int(self.gens[g]) if g < self.gens.size else last_valid
        hold_s = r.max_hold(p.playbook) * DAY
        h = int(np.searchsorted(self.valid_t, m.t[e] + hold_s, side="right"))  # first fresh bar past the hold
        j_hold = int(self.valid_idx[h]) if h < self.valid_idx.size else last_valid
        horizon = min(j_gen, j_hold, last_valid)
        b_in = float(f["basis"][e])
        if b_in > 0 and p.playbook != "carry":
            q = int(self.flips.searchsorted(e, side="right"))
            if q < self.flips.size and int(self.flips[q]) < horizon:
                horizon = int(self.flips[q])
        seg = f["smooth"][e + 1 : horizon + 1]
        stop = r.basis_stop_multiple * np.maximum(b_in, self.floor[e + 1 : horizon + 1])
        with np.errstate(invalid="ignore"):
            hits = np.flatnonzero(seg > stop)  # NaN (no fresh sample in the window) never hits
        j = e + 1 + int(hits[0]) if hits.size else horizon
        sig = exit_signal(p.playbook, b_in, float(m.t[j] - m.t[e]), signals_at(f, j), r)
        if sig is not None:
            return j, sig.rule
        b, z = f["basis"][j], f["z"][j]
        if p.playbook != "carry" and b <= p.exit_basis_pct:
            return j, "convergence"
        if p.playbook != "carry" and z <= p.exit_zscore:
            return j, "zscore_reversion"
        return j, "end_of_range"


SLACK_USD = 0.01


def _entry_margin(m: Market, p: BacktestParams, idx: np.ndarray, nxt: np.ndarray, iv: np.ndarray, rate: np.ndarray,
                  borrow_h: np.ndarray | None = None) -> np.ndarray:
    """The entry check's margin at the fixed size, for many candidates at once (the same formulas as
    `entry_expected_net_usd` and `playbooks.carry_entry_check`, array evaluation order): convergence,
    the expected net; carry, expected funding minus ``carry_cost_cover`` round trips. > 0 passes."""
    if idx.size == 0:
        return np.zeros(0)
    spot, perp = m.spot[idx], m.perp[idx]
    qty = np.floor(p.notional_usd / spot / m.qty_step + 1e-9) * m.qty_step
    ns, np_ = qty * spot, qty * perp
    c = m.costs

    def slip(leg, notional):
        return (leg.half_spread_bps + leg.impact_bps_per_sqrt_musd * np.sqrt(notional / 1e6)) / 1e4

    costs = 2 * (ns * (c.spot.taker_fee + slip(c.spot, ns)) + np_ * (c.perp.taker_fee + slip(c.perp, np_)))
    to_next = nxt - m.t[idx]
    hold = p.carry_expected_hold_days if p.playbook == "carry" else p.expected_hold_days
    horizon = hold * DAY
    n_settle = np.where(horizon >= to_next, np.floor((horizon - to_next) / (iv * 3600.0)) + 1, 0)
    if p.playbook == "carry":  # (a reverse trade's rate is already the net funding it receives)
        out = np_ * rate * n_settle - p.carry_cost_cover * costs
    elif m.expiry is not None:  # calendar: the premium rolls down linearly to expiry; the long perp (the reference) pays
        share = np.minimum(horizon / np.maximum(m.expiry - m.t[idx], 1e-9), 1.0)
        out = qty * (perp - spot) * share - ns * rate * n_settle - costs
    else:
        d = p.direction
        borrow = ns * borrow_h * hold * 24.0 if borrow_h is not None and d == -1 else 0.0
        out = d * qty * (perp - spot) + d * np_ * rate * n_settle - costs - borrow
    return np.where(qty > 0, out, -np.inf)


def book_trades(m: Market, p: BacktestParams, f: dict[str, np.ndarray], e: np.ndarray, x: np.ndarray, q: np.ndarray,
                reasons: list[str]) -> list[Trade]:
    """Fills, fees, slippage and funding of all trades at once (the desk's cost model)."""
    if e.size == 0:
        return []
    c = m.costs
    d = p.direction
    side_in, side_out = ("buy", "sell") if d == 1 else ("sell", "buy")  # the spot leg's; the perp's are the opposite
    legs = [(m.spot[e], c.spot, side_in), (m.perp[e], c.perp, side_out), (m.perp[x], c.perp, side_in),
            (m.spot[x], c.spot, side_out)]
    cash = np.zeros(e.size)
    fees = np.zeros(e.size)
    slip = np.zeros(e.size)
    for mid, leg, side in legs:
        price = leg.fill_price(mid, side, q * mid)
        sign = 1.0 if side == "sell" else -1.0
        cash += sign * q * price
        fees += q * price * leg.taker_fee
        slip += -sign * q * (price - mid)
    ft = m.f_time.astype(np.float64)
    unit = m.mark[((ft - m.t[0]) // m.bar_s).astype(np.int64)] * m.f_rate
    cum = np.concatenate(([0.0], np.cumsum(unit)))
    lo = np.searchsorted(ft, m.t[e], side="right")
    hi = np.searchsorted(ft, m.t[x], side="right")
    fd = p.funding_direction
    funding = fd * q * (cum[hi] - cum[lo])
    borrow = np.zeros(e.size)
    if p.borrows:  # interest for every bar in (entry, exit] on the borrowed spot at that bar's (last) spot price
        cb = np.concatenate(([0.0], np.cumsum(_carried(m.spot) * f["borrow_bar"])))
        borrow = -q * (cb[x + 1] - cb[e + 1])
    total = cash - fees + funding + borrow
    basis = f["basis_raw"]
    b_in, b_out = basis[e], basis[x]
    stamps = np.datetime_as_string(m.t[np.concatenate((e, x))].astype("datetime64[s]"), unit="s")
    t_in, t_out = [s + "Z" for s in stamps[: e.size]], [s + "Z" for s in stamps[e.size :]]
    held = (m.t[x] - m.t[e]) / HOUR
    n_settle = hi - lo
    cols = zip(e.tolist(), x.tolist(), t_in, t_out, q.tolist(), b_in.tolist(), b_out.tolist(), (cash + slip).tolist(),
               funding.tolist(), fees.tolist(), slip.tolist(), total.tolist(), n_settle.tolist(), held.tolist(),
               reasons, strict=True)
    borrow_l = borrow.tolist()
    notional = q * m.spot[e]
    # the same settlements paid on the entry notional: per settlement mark × rate / (last fresh spot)
    fresh = np.where(np.isnan(m.spot) | np.isnan(m.perp), 0, np.arange(m.t.size))
    np.maximum.accumulate(fresh, out=fresh)
    f_bar = ((ft - m.t[0]) // m.bar_s).astype(np.int64)
    per_dollar = np.concatenate(([0.0], np.cumsum(m.mark[f_bar] * m.f_rate / m.spot[fresh[f_bar]])))
    const = fd * notional * (per_dollar[hi] - per_dollar[lo])
    return [Trade(m.symbol, *c, playbook=p.playbook, notional_usd=n, funding_at_constant_notional_usd=k, borrow_usd=b,
                  strategy=p.strategy, contract=m.contract)
            for c, n, k, b in zip(cols, notional.tolist(), const.tolist(), borrow_l, strict=True)]


def _carried(a: np.ndarray) -> np.ndarray:
    """The last known value at every bar (a price carried over a gap, as the feed does)."""
    idx = np.where(np.isnan(a), 0, np.arange(a.size))
    np.maximum.accumulate(idx, out=idx)
    return a[idx]


def always_on_trades(m: Market, p: BacktestParams, f: dict[str, np.ndarray] | None = None) -> list[Trade]:
    """The benchmark: long spot / short perp all the time, re-sized to ``notional_usd`` once a year
    (a full round trip each time), every funding payment collected, closed at the range's end. Whatever
    strategy the run is for, the benchmark is cash-and-carry's (its sides, funding sign and no borrow)."""
    if p.strategy != "cash_and_carry":
        p = p.model_copy(update={"strategy": "cash_and_carry"})
        f = None  # the features were built for the run's own strategy (mirrored, net of borrow)
    f = f or features(m, p)
    valid_idx = np.flatnonzero(f["valid"] & (np.arange(m.t.size) >= m.i0) & (np.arange(m.t.size) <= m.i1))
    if valid_idx.size < 2:
        return []
    vt = m.t[valid_idx]
    entries, exits, qtys, reasons = [], [], [], []
    h = 0
    last = int(valid_idx[-1])
    while h < valid_idx.size - 1:
        e = int(valid_idx[h])
        q = floor_to_step(p.notional_usd / m.spot[e], m.qty_step)
        nxt = int(np.searchsorted(vt, m.t[e] + 365 * DAY, side="left"))
        x = int(valid_idx[nxt]) if nxt < valid_idx.size else last
        entries.append(e)
        exits.append(x)
        qtys.append(q)
        reasons.append("yearly_resize" if x != last else "end_of_range")
        h = nxt if x != last else valid_idx.size
    trades = book_trades(m, p, f, np.array(entries, dtype=np.int64), np.array(exits, dtype=np.int64), np.array(qtys), reasons)
    return [replace(t, playbook="always_on") for t in trades]
