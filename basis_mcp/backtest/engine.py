"""The vectorised engine: both playbooks, fills after a delay, stale bars excluded.

Every per-bar quantity is computed once for the whole history: basis, the rolling z-score and
basis std, the basis averaged over the funding window, 1 h realised vol, the funding means the
playbooks read (`features`; the loops in compiled passes, `core`). Path dependence (one position
per symbol, exits that depend on the entry, fills that land a delay after the signal) is handled
by event-finding: from the current bar, the next entry is the first candidate whose entry check
passes; it fills at the first fresh bar at or after the signal + ``fill_delay_seconds``; its exit
signal is the earliest of the next generic exit, the first bar past the basis stop or a
persistent sign flip and the max-hold bar; the exit fills after the same delay. `run_vectorized`
does that in one compiled walk (`core.scan`) and books every trade at once; the portfolio pass
steps through the same rules one trade at a time (`TradeFinder`, whose masks and `core.exit_bar`
the tests hold to the walk). Exit reasons follow `playbooks.exit_signal`'s rules and order, the
function the desk's watchdog and the reference loop call; the tests hold them to the loop's.

Semantics (shared with `reference.run_reference` and the paper desk): funding settling at bar
t is paid before anything acts at t; signals and fills use only fresh bars (both legs traded
in that hour); a position is open from its entry fill to its exit fill; a new entry is
signalled only after the previous exit has filled; an open position is closed on the last
fresh bar of the range.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

import basis_mcp.backtest.core as core
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market, vol_bars, zscore_samples
from basis_mcp.backtest.results import Trade
from basis_mcp.borrow import HOURS_PER_YEAR, BorrowModel
from basis_mcp.dated import YEAR_S
from basis_mcp.history import HOUR, funding_schedule, mean_rate
from basis_mcp.signals import ZSCORE_MIN_SAMPLES, ZSCORE_STD_FLOOR, entry_expected_net_usd, settlements_in
from basis_mcp.sizing import floor_to_step

DAY = 86400.0
SKIP = object()  # a candidate whose entry check fails: try the next one
FUND_DIGITS = 12  # funding means are compared with thresholds after rounding: both engines and the desk agree


def feature_key(p: BacktestParams) -> tuple:
    """Every parameter `features` reads: two parameter sets with the same key get the same arrays (a sweep
    computes them once per key)."""
    return (p.strategy, p.basis_smoothing_hours, p.vol_limit_pct, p.zscore_window, p.funding_exit_hours,
            p.carry_lookback_days, p.borrow_scenario if p.borrows else None)


def features(m: Market, p: BacktestParams) -> dict[str, np.ndarray]:
    """Per-bar arrays the entry and exit rules read (independent of the playbook's thresholds); what they
    depend on is `feature_key`."""
    valid = m.valid
    n = m.t.size
    # basis, its smoothed mean over the funding window (fresh samples in (t - H, t]) and the 1 h vol breaker (the
    # larger of the Parkinson range and the close-to-close move over the last hour of bars; after a missing perp bar
    # the range still counts, the move cannot; not run on bars coarser than an hour), in one compiled pass
    basis, basis_raw, smooth, vol_ok = core.bar_features(m.spot, m.perp, m.mark_high, m.mark_low, p.direction,
                                                         m.bars(p.basis_smoothing_hours * 3600.0), vol_bars(m.bar_s),
                                                         float(p.vol_limit_pct))
    zw = zscore_samples(p, m.bar_s)
    z, sd = core.rolling_z_std(basis, zw, ZSCORE_MIN_SAMPLES, ZSCORE_STD_FLOOR, valid)  # over the fresh samples only
    if m.expiry is not None:  # a calendar premium shrinks toward expiry: its z-score is read on the annualised premium
        # (rounded: a premium priced at the carry bound is flat, and its z lands on round numbers the two engines
        # would otherwise compare against a threshold 1e-11 apart)
        zc = core.rolling_z_std(annualised_premium(basis, m.expiry, m.t), zw, ZSCORE_MIN_SAMPLES, ZSCORE_STD_FLOOR, valid)[0]
        z = np.round(zc, Z_DIGITS)
    ft = m.f_time.astype(np.float64)
    # settlements at or before each bar (and 30 days earlier); the funding means the playbooks read, per 8 h at the
    # interval around the next settlement (the schedule's rule), compared with thresholds after rounding
    k, k_30, recent, carry = core.funding_features(m.t, ft, np.asarray(m.f_rate, dtype=np.float64),
                                                   p.funding_exit_hours * 3600.0, p.carry_lookback_days * DAY, FUND_DIGITS)
    borrow_h = borrow_bar = np.zeros(n)  # (untouched zeros cost no memory)
    if p.borrows:  # the funding a long receives, net of the MODELLED borrow on its short spot (as `Signals.seen_by`)
        apr = np.asarray(BorrowModel(p.borrow_scenario).apr_pct_at(m.symbol, m.t), dtype=np.float64)
        b8 = apr / HOURS_PER_YEAR * 8.0
        recent, carry = -recent - b8, -carry - b8
        borrow_h = apr / 100.0 / HOURS_PER_YEAR
        borrow_bar = borrow_h * (m.bar_s / HOUR)
    elif p.funding_direction == -1:  # long the perp without a borrow (calendar spread): the funding it receives
        recent, carry = -recent, -carry
    return {
        "valid": valid,
        "basis": basis,
        "basis_raw": basis_raw,
        "borrow_h": borrow_h,  # per hour (the entry checks)
        "borrow_bar": borrow_bar,  # per bar (what a bar held accrues)
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


def rules_not_run(bar_s: float) -> list[str]:
    """The rules a bar size is too coarse for, said in the result instead of run on meaningless data."""
    if bar_s > HOUR:
        return [f"the 1 h volatility breaker (max_realised_vol_1h_pct) was not run: {bar_s / HOUR:g} h bars cannot "
                "measure an hour's range"]
    return []


def schedule_at(m: Market, f: dict[str, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At the bars ``idx``: (next settlement time, interval in hours, the funding rate the
    convergence entry check assumes: the 30-day mean settled rate, else the last one, else 0)."""
    k, t = f["settled"][idx], m.t[idx]
    nxt, iv, last = funding_schedule(f["f_time"], m.f_rate, t, k)
    mean30 = mean_rate(f["f_time"], m.f_rate, t - 30 * DAY, t, lo=f["settled_30d_ago"][idx], hi=k)
    last0 = np.where(np.isnan(last), 0.0, last)
    return nxt, iv, np.where(np.isnan(mean30), last0, mean30)


def run_vectorized(m: Market, p: BacktestParams, f: dict[str, np.ndarray] | None = None) -> list[Trade]:
    """Every trade of one symbol at the fixed size: one compiled walk over the bars (`core.scan`) finds the
    trades and why they exit, then all of them are booked at once. A candidate whose entry check lands within a
    cent of zero (array and scalar evaluation orders differ ~1e-9) is decided by the desk's scalar function."""
    f = f or features(m, p)
    e, x, why, sig, _ = walk(m, p, f, context(m, p, f))
    qtys = np.array([floor_to_step(p.notional_usd / m.spot[b], m.qty_step) for b in sig.tolist()])  # sized at the signal
    return book_trades(m, p, f, e, x, qtys, [core.REASONS[k] for k in why.tolist()])


def walk(m: Market, p: BacktestParams, f: dict[str, np.ndarray], ctx: tuple) -> tuple[np.ndarray, ...]:
    """`core.scan` over the whole range, the few candidates within a cent of zero decided by the scalar check:
    (entry fills, exit fills, reason codes, signal bars, the (query, candidate, status) answers on the way)."""
    A, B, S, R, E = ctx
    parts = []
    start, force = m.i0, (-1, False)
    while True:
        e, x, why, sig, unsure, log = core.scan(start, *force, A, B, S, R, E)
        parts.append((e, x, why, sig, log.T))
        if unsure < 0:
            break
        start, force = unsure, (unsure, _entry_ok_at(m, p, f, unsure, floor_to_step(p.notional_usd / m.spot[unsure], m.qty_step)))
    return tuple(np.concatenate(a) for a in zip(*parts, strict=True))


def context(m: Market, p: BacktestParams, f: dict[str, np.ndarray], fixed: bool = True) -> tuple:
    """What the compiled walk reads, as `core` takes it: (arrays, bar bounds, timing, exit rules, entry rules)."""
    r, c = p.rules, m.costs
    carry = p.playbook == "carry"
    valid = f["valid"]
    last_valid = m.i1
    while last_valid >= m.i0 and not valid[last_valid]:  # the range's last fresh bar (-1: none)
        last_valid -= 1
    last_valid = last_valid if last_valid >= m.i0 else -1
    recall_t, recall_bar = recalls(m, p, valid)
    fr = np.asarray(m.f_rate, dtype=np.float64)
    A = (m.t, valid, m.spot, m.perp, f["basis"], f["z"], f["std"], f["smooth"], f["vol_ok"], f["fund_recent"],
         f["fund_carry"], f["settled"], f["settled_30d_ago"], f["f_time"], fr, np.concatenate(([0.0], np.cumsum(fr))),
         f["borrow_h"], recall_t, recall_bar)
    B = (int(m.i0), int(m.i1), -1 if m.entry_i1 is None else int(m.entry_i1), last_valid)
    S = (float(r.max_hold(p.playbook) * DAY), float(p.fill_delay_seconds), float(carry), float(fixed))
    decimals = max(0, -int(math.floor(math.log10(m.qty_step)))) if m.qty_step < 1 else 0
    E = tuple(float(v) for v in (
        p.notional_usd, m.qty_step, c.spot.taker_fee, c.spot.half_spread_bps, c.spot.impact_bps_per_sqrt_musd,
        c.perp.taker_fee, c.perp.half_spread_bps, c.perp.impact_bps_per_sqrt_musd,
        p.carry_expected_hold_days if carry else p.expected_hold_days, carry, p.carry_cost_cover, p.direction,
        m.expiry or 0.0, r.carry_entry_8h_pct, p.min_basis_pct, p.min_zscore, m.min_notional_usd, SLACK_USD, decimals,
        r.basis_stop_multiple, r.basis_stop_floor_pct, r.basis_stop_sigmas))
    R = tuple(float(v) for v in (r.basis_stop_multiple, r.basis_stop_floor_pct, r.basis_stop_sigmas, r.flip_sigmas,
                                 r.funding_exit_8h_pct, r.funding_exit_basis_pct, r.carry_exit_8h_pct, p.exit_basis_pct,
                                 p.exit_zscore))
    return A, B, S, R, E


def recalls(m: Market, p: BacktestParams, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spike scenario's loan recalls (`BorrowModel.recall_times`) and the first fresh bar of the range at or after
    each: a reverse position open then is closed there, at once (the venue buys the spot back, the desk unwinds the
    perp in the same tick)."""
    n = m.t.size
    if not p.borrows:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    recall_t = np.array(BorrowModel(p.borrow_scenario).recall_times(float(m.t[0]) - 1.0, float(m.t[-1])), dtype=np.float64)
    valid_idx = np.flatnonzero(valid[m.i0 : m.i1 + 1]) + m.i0
    at = np.searchsorted(m.t[valid_idx], recall_t, side="left")
    if not valid_idx.size:
        return recall_t, np.full(recall_t.size, n, dtype=np.int64)
    return recall_t, np.where(at < valid_idx.size, valid_idx[np.minimum(at, valid_idx.size - 1)], n).astype(np.int64)


def _entry_ok_at(m: Market, p: BacktestParams, f: dict[str, np.ndarray], c: int, qty: float) -> bool:
    """The entry check at bar ``c`` for ``qty`` with the desk's scalar functions."""
    nxt, iv, rate = (float(a[0]) for a in schedule_at(m, f, np.array([c])))
    if p.playbook == "carry":
        rate = float(f["fund_carry"][c]) / 100.0 / 8.0 * iv
    return entry_check(m, p, f, c, qty, nxt, iv, rate)


def entry_check(m: Market, p: BacktestParams, f: dict[str, np.ndarray], c: int, qty: float, nxt: float, iv: float,
                rate: float) -> bool:
    """The entry check at bar ``c`` for ``qty`` (scalar: the desk's functions), given the funding schedule there."""
    if qty <= 0 or qty * m.spot[c] < m.min_notional_usd:
        return False
    spot, perp, t = float(m.spot[c]), float(m.perp[c]), float(m.t[c])
    if p.playbook == "carry":
        from basis_mcp.playbooks import carry_entry_check, expected_carry_usd

        n = settlements_in(nxt - t, iv, p.carry_expected_hold_days * DAY)
        fees, slip = m.costs.round_trip_usd(qty, spot, perp)
        return carry_entry_check(float(f["fund_carry"][c]), expected_carry_usd(qty, perp, rate, n), fees + slip, p.rules) is None
    return entry_expected_net_usd(
        qty=qty, spot=spot, perp=perp, leverage=p.leverage, costs=m.costs, hold_days=p.expected_hold_days,
        funding_rate=rate, funding_interval_hours=iv, seconds_to_next_funding=nxt - t,
        direction=p.direction, borrow_rate_hourly=float(f["borrow_h"][c]),
        seconds_to_expiry=None if m.expiry is None else m.expiry - t,
    ) > 0


class TradeFinder:
    """One symbol's trades, found one at a time (so a portfolio sizer can interleave symbols): the compiled walk's
    steps (`core.next_candidate`, `core.trade_from`), called from Python."""

    def __init__(self, m: Market, p: BacktestParams, f: dict[str, np.ndarray], fixed: bool = True):
        """``fixed``: every entry is sized ``notional_usd`` (the entry check is computed with the candidates); a
        portfolio sizer passes False and its own sizes."""
        self.m, self.p, self.f = m, p, f
        self.fixed_sizing = fixed
        self.A, self.B, self.S, self.R, self.E = context(m, p, f, fixed)
        self.last_valid = self.B[3]
        # at the fixed size the whole walk is one call, and every answer it gave on the way is kept: where the book
        # takes every trade (capital to spare), each of its steps is a look-up (the answers depend on the bar asked
        # about only, so any of them stands wherever the book asks)
        self._next: dict[int, tuple[int, int]] = {}
        self._trade: dict[int, tuple[int, int, int]] = {}
        self._pnl: dict[tuple[int, int, float], float] = {}
        if fixed:
            e, x, why, sig, log = walk(m, p, f, (self.A, self.B, self.S, self.R, self.E))
            self._next = {q: (c, st) for q, c, st in log.tolist()}
            self._trade = {c: (a, b, k) for c, a, b, k in zip(sig.tolist(), e.tolist(), x.tolist(), why.tolist(), strict=True)}
            qty = np.array([self.fixed_qty(c) for c in sig.tolist()])
            booked = book_trades(m, p, f, e, x, qty, [core.REASONS[k] for k in why.tolist()])
            self._pnl = {(t.entry_index, t.exit_index, t.quantity): t.pnl_usd for t in booked}

    def next_candidate(self, bar: int) -> tuple[int, int]:
        """(the first candidate bar at or after ``bar``, its status: 1 its fixed-size entry check passes, 2 within a
        cent of zero, 3 not checked: the caller sizes it); (-1, 0) when there is none."""
        if (hit := self._next.get(int(bar))) is not None:
            return hit
        c, status = core.next_candidate(int(bar), self.A, self.B, self.S, self.E)
        return int(c), int(status)

    def pnl(self, e: int, x: int, qty: float, reason: str) -> float:
        """The P&L of the trade (e, x, qty) as `book_trades` books it."""
        if (hit := self._pnl.get((e, x, qty))) is not None:
            return hit
        return book_trades(self.m, self.p, self.f, np.array([e]), np.array([x]), np.array([qty]), [reason])[0].pnl_usd

    def fixed_qty(self, c: int) -> float:
        return floor_to_step(self.p.notional_usd / self.m.spot[c], self.m.qty_step)

    def fill_bar(self, decision: int) -> int | None:
        """The first fresh bar at or after the decision time + the fill delay (None: past the data)."""
        b = int(core._fill(int(decision), self.m.t, self.f["valid"], self.B[1], self.S[1]))
        return None if b < 0 else b

    def entry_ok(self, c: int, status: int, qty: float) -> bool:
        """The entry check at candidate bar ``c`` for ``qty`` (scalar: the desk's functions, unless the fixed-size
        check already passed clear of zero)."""
        if qty <= 0 or qty * self.m.spot[c] < self.m.min_notional_usd:
            return False
        return status == 1 or _entry_ok_at(self.m, self.p, self.f, c, qty)

    def try_candidate(self, c: int, status: int, qty: float) -> tuple[int, int, float, str] | None | object:
        """The trade signalled at candidate bar ``c`` with ``qty``: (entry fill bar, exit fill bar, qty, reason);
        `SKIP` if its entry check fails there, None if no trade can start there or later (the range is over)."""
        if not self.entry_ok(c, status, qty):
            return SKIP
        hit = self._trade.get(int(c))
        e, x, why = hit if hit is not None else core.trade_from(int(c), self.A, self.B, self.S, self.R)
        if e < 0:
            return None
        return int(e), int(x), qty, core.REASONS[why]


SLACK_USD = 0.01


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
    ft, cum, per_dollar = booking_tables(m, f)
    lo = np.searchsorted(ft, m.t[e], side="right")
    hi = np.searchsorted(ft, m.t[x], side="right")
    fd = p.funding_direction
    funding = fd * q * (cum[hi] - cum[lo])
    borrow = np.zeros(e.size)
    if p.borrows:  # interest for every bar in (entry, exit] on the borrowed spot at that bar's (last) spot price
        cb = f.get("_borrow_cum")
        if cb is None:
            cb = f["_borrow_cum"] = np.concatenate(([0.0], np.cumsum(carried_spot(m, f) * f["borrow_bar"])))
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
    const = fd * notional * (per_dollar[hi] - per_dollar[lo])
    return [Trade(m.symbol, *c, playbook=p.playbook, notional_usd=n, funding_at_constant_notional_usd=k, borrow_usd=b,
                  strategy=p.strategy, contract=m.contract)
            for c, n, k, b in zip(cols, notional.tolist(), const.tolist(), borrow_l, strict=True)]


def booking_tables(m: Market, f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(settlement times, Σ mark × rate per unit held, Σ mark × rate / last fresh spot per dollar held) up to each
    settlement, built once per market and kept with its features: booking one trade then costs two searches, not a
    pass over the history (the portfolio pass books every trade as it closes)."""
    got = f.get("_booking")
    if got is None:  # (published whole once filled: another thread may book on the same features)
        ft = np.asarray(m.f_time, dtype=np.float64)
        fund, const = np.empty(ft.size + 1), np.empty(ft.size + 1)
        core.booking_sums(float(m.t[0]), float(m.bar_s), ft, np.asarray(m.f_rate, dtype=np.float64), m.mark, m.spot,
                          f["valid"], fund, const)
        got = f["_booking"] = (ft, fund, const)
    return got


def carried_spot(m: Market, f: dict[str, np.ndarray]) -> np.ndarray:
    """`_carried` spot, built once per market and kept with its features."""
    if "_carried_spot" not in f:
        f["_carried_spot"] = _carried(m.spot)
    return f["_carried_spot"]


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
