"""The vectorised cash-and-carry engine.

Every per-bar quantity is an array op: basis, the rolling z-score, 1 h realised vol, the last
settled funding rate, the entry candidates and the exit conditions that do not depend on the
trade; the funding schedule and 30-day mean rate the entry check needs are array ops over the
candidate bars only. Path dependence (one position per symbol, exits that depend
on the entry) is handled by event-finding: from the current bar, the next entry is the first
candidate whose expected net return is positive, and its exit is the earliest of the next
generic exit, the first bar past the basis stop or below zero (a search over that trade's
bars only) and the max-hold bar. The Python loop runs once per trade, never once per bar.

Semantics (shared with `reference.run_reference` and the paper desk): funding settling at bar
t is paid before anything acts at t; entries and exits happen only on bars where both legs are
fresh; a position never re-opens on the bar it closed; an open position is closed on the last
fresh bar of the range.
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade
from basis_mcp.history import HOUR, funding_schedule, mean_rate
from basis_mcp.signals import entry_expected_net_usd, rolling_zscore
from basis_mcp.sizing import floor_to_step

DAY = 86400.0


def features(m: Market, p: BacktestParams) -> dict[str, np.ndarray]:
    """Per-bar arrays both the entry rule and the exit rules read."""
    valid = m.valid
    with np.errstate(invalid="ignore", divide="ignore"):
        basis = (m.perp - m.spot) / m.spot * 100.0
    z = np.full(m.t.size, np.nan)
    vi = np.flatnonzero(valid)
    z[vi] = rolling_zscore(basis[vi], p.zscore_window)
    # 1 h realised vol: the larger of the Parkinson range and the close-to-close move (computed in
    # place: these arrays are the size of the whole history)
    prev = np.empty_like(m.perp)
    prev[0] = np.nan
    prev[1:] = m.perp[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        park = m.mark_high / m.mark_low
        park[~((m.mark_high > 0) & (m.mark_low > 0) & (m.mark_high >= m.mark_low))] = 1.0
        np.log(park, out=park)
        park /= 2.0 * math.sqrt(math.log(2.0))
        c2c = m.perp / prev
        c2c[~(prev > 0)] = 1.0
        np.log(c2c, out=c2c)
        np.abs(c2c, out=c2c)
        vol = np.maximum(park, c2c, out=park)
        vol *= 100.0
    vol_ok = np.isnan(prev) | (vol <= p.vol_limit_pct)
    # settlements at or before each bar: where each settlement falls among the bars (7k searches,
    # not 57k), counted up; on the hourly grid "30 days ago" is the same count 720 bars back
    ft = m.f_time.astype(np.float64)
    k = np.cumsum(np.bincount(np.searchsorted(m.t, ft, side="left"), minlength=m.t.size + 1)[: m.t.size])
    lag = int(30 * DAY // HOUR)
    k_30 = np.concatenate((np.searchsorted(ft, m.t[:lag] - 30 * DAY, side="right"), k[:-lag]))
    # the last settled rate (per 8 h, for the funding-reversal exit) depends on a bar only through
    # its settlement count: one row per count, then one gather
    t_rep = np.concatenate(([ft[0] - 1.0], ft)) if ft.size else np.zeros(1)  # a time with each count
    _, iv_tab, last_tab = funding_schedule(ft, m.f_rate, t_rep, np.arange(ft.size + 1))
    rate_8h_tab = np.where(np.isnan(last_tab), 0.0, last_tab) * 8.0 / iv_tab * 100.0
    return {
        "valid": valid,
        "basis": basis,
        "z": z,
        "vol_ok": vol_ok,
        "rate_8h_pct": rate_8h_tab[k],
        "settled": k,  # settlements at or before each bar
        "settled_30d_ago": k_30,
        "f_time": ft,
    }


def schedule_at(m: Market, f: dict[str, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At the bars ``idx``: (next settlement time, interval in hours, the funding rate the entry
    check assumes: the 30-day mean settled rate, else the last one, else 0). Only entry
    candidates need these, so they are computed there, not for every bar."""
    k, t = f["settled"][idx], m.t[idx]
    nxt, iv, last = funding_schedule(f["f_time"], m.f_rate, t, k)
    mean30 = mean_rate(f["f_time"], m.f_rate, t - 30 * DAY, t, lo=f["settled_30d_ago"][idx], hi=k)
    last0 = np.where(np.isnan(last), 0.0, last)
    return nxt, iv, np.where(np.isnan(mean30), last0, mean30)


def run_vectorized(m: Market, p: BacktestParams, f: dict[str, np.ndarray] | None = None) -> list[Trade]:
    f = f or features(m, p)
    entries, exits, qtys = find_trades(m, p, f)
    return book_trades(m, p, f, entries, exits, qtys)


def find_trades(m: Market, p: BacktestParams, f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry bar, exit bar and quantity of every trade: the only loop, once per trade."""
    n = m.t.size
    bar = np.arange(n)
    valid, basis, z = f["valid"], f["basis"], f["z"]
    in_range = (bar >= m.i0) & (bar <= m.i1)
    with np.errstate(invalid="ignore"):
        cand = in_range & valid & (basis >= p.min_basis_pct) & (z >= p.min_zscore) & f["vol_ok"]
        funding_rev = (f["rate_8h_pct"] < p.funding_exit_8h_pct) & (basis < p.funding_exit_basis_pct)
        generic = in_range & valid & (funding_rev | (basis <= p.exit_basis_pct) | (z <= p.exit_zscore))
    cand_idx = np.flatnonzero(cand)
    nxt_c, iv_c, rate_c = schedule_at(m, f, cand_idx)
    approx = _expected_net(m, p, cand_idx, nxt_c, iv_c, rate_c)
    keep = approx > -SLACK_USD
    cands = cand_idx[keep].tolist()
    sure = (approx[keep] > SLACK_USD).tolist()  # the sign is beyond doubt: no scalar re-check needed
    rate, iv, nxt = rate_c[keep].tolist(), iv_c[keep].tolist(), nxt_c[keep].tolist()  # aligned with cands
    gens = np.flatnonzero(generic)  # searched once per trade: never converted to a list
    valid_idx = np.flatnonzero(valid & in_range)
    empty = np.zeros(0, dtype=np.int64)
    if valid_idx.size == 0:
        return empty, empty, np.zeros(0)
    last_valid = int(valid_idx[-1])
    hold_s = p.max_hold_days * DAY
    spot, perp, t = m.spot, m.perp, m.t
    entries, exits, qtys = [], [], []
    pos = m.i0
    k = bisect_left(cands, pos)
    while k < len(cands):
        c = cands[k]
        qty = floor_to_step(p.notional_usd / spot[c], m.qty_step)
        if qty * spot[c] < m.min_notional_usd or not (sure[k] or entry_expected_net_usd(
            qty=qty, spot=float(spot[c]), perp=float(perp[c]), leverage=p.leverage, costs=m.costs,
            hold_days=p.expected_hold_days, funding_rate=rate[k], funding_interval_hours=iv[k],
            seconds_to_next_funding=nxt[k] - float(t[c]),
        ) > 0):
            k += 1
            continue
        if c >= last_valid:
            break
        g = int(gens.searchsorted(c, side="right"))
        j_gen = int(gens[g]) if g < gens.size else last_valid
        h = int(np.searchsorted(valid_idx, int((t[c] + hold_s - t[0]) // HOUR) + 1))  # first fresh bar past the hold
        j_hold = int(valid_idx[h]) if h < valid_idx.size else last_valid
        horizon = min(j_gen, j_hold, last_valid)
        b_in = basis[c]
        seg = basis[c + 1 : horizon + 1]
        stop = p.basis_stop_multiple * max(b_in, p.basis_stop_floor_pct)
        hit = (seg > stop) | (seg < 0) if b_in > 0 else seg > stop  # NaN (stale) bars never hit
        hits = np.flatnonzero(hit)
        j = c + 1 + int(hits[0]) if hits.size else horizon
        entries.append(c)
        exits.append(j)
        qtys.append(qty)
        k = bisect_left(cands, j + 1, k)
    return np.array(entries, dtype=np.int64), np.array(exits, dtype=np.int64), np.array(qtys)


def book_trades(m: Market, p: BacktestParams, f: dict[str, np.ndarray], e: np.ndarray, x: np.ndarray, q: np.ndarray) -> list[Trade]:
    """Fills, fees, slippage, funding and exit reasons of all trades at once (the desk's cost model)."""
    if e.size == 0:
        return []
    c = m.costs
    legs = [(m.spot[e], c.spot, "buy"), (m.perp[e], c.perp, "sell"), (m.perp[x], c.perp, "buy"), (m.spot[x], c.spot, "sell")]
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
    unit = m.mark[((ft - m.t[0]) // HOUR).astype(np.int64)] * m.f_rate
    cum = np.concatenate(([0.0], np.cumsum(unit)))
    lo = np.searchsorted(ft, m.t[e], side="right")
    hi = np.searchsorted(ft, m.t[x], side="right")
    funding = q * (cum[hi] - cum[lo])
    total = cash - fees + funding
    basis, z = f["basis"], f["z"]
    b_in, b_out = basis[e], basis[x]
    with np.errstate(invalid="ignore"):
        reason = np.select(
            [
                b_out > p.basis_stop_multiple * np.maximum(b_in, p.basis_stop_floor_pct),
                (f["rate_8h_pct"][x] < p.funding_exit_8h_pct) & (b_out < p.funding_exit_basis_pct),
                (b_in > 0) & (b_out < 0),
                m.t[x] - m.t[e] > p.max_hold_days * DAY,
                b_out <= p.exit_basis_pct,
                z[x] <= p.exit_zscore,
            ],
            ["basis_blowout", "funding_reversal", "basis_inverted", "max_hold", "convergence", "zscore_reversion"],
            "end_of_range",
        )
    stamps = np.datetime_as_string(m.t[np.concatenate((e, x))].astype("datetime64[s]"), unit="s")
    t_in, t_out = [s + "Z" for s in stamps[: e.size]], [s + "Z" for s in stamps[e.size :]]
    held = (m.t[x] - m.t[e]) / HOUR
    n_settle = hi - lo
    cols = zip(e.tolist(), x.tolist(), t_in, t_out, q.tolist(), b_in.tolist(), b_out.tolist(), (cash + slip).tolist(),
               funding.tolist(), fees.tolist(), slip.tolist(), total.tolist(), n_settle.tolist(), held.tolist(),
               reason.tolist(), strict=True)
    return [Trade(m.symbol, *c) for c in cols]


SLACK_USD = 0.01  # array and scalar evaluations of the same formula differ by ~1e-9 USD


def _expected_net(
    m: Market, p: BacktestParams, idx: np.ndarray, next_funding: np.ndarray, interval_h: np.ndarray, rate: np.ndarray
) -> np.ndarray:
    """`entry_expected_net_usd` at many bars at once (same formula, array evaluation order). Where
    it is within a cent of zero, `find_trades` asks the scalar function to decide."""
    if idx.size == 0:
        return np.zeros(0)
    spot, perp = m.spot[idx], m.perp[idx]
    qty = np.floor(p.notional_usd / spot / m.qty_step + 1e-9) * m.qty_step
    ns, np_ = qty * spot, qty * perp
    c = m.costs

    def slip(leg, notional):
        return (leg.half_spread_bps + leg.impact_bps_per_sqrt_musd * np.sqrt(notional / 1e6)) / 1e4

    costs = 2 * (ns * (c.spot.taker_fee + slip(c.spot, ns)) + np_ * (c.perp.taker_fee + slip(c.perp, np_)))
    to_next = next_funding - m.t[idx]
    horizon = p.expected_hold_days * DAY
    n_settle = np.where(horizon >= to_next, np.floor((horizon - to_next) / (interval_h * 3600.0)) + 1, 0)
    net = qty * (perp - spot) + np_ * rate * n_settle - costs
    return np.where(qty > 0, net, -np.inf)
