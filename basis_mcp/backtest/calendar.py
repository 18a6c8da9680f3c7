"""Calendar spreads in the backtest: one market per quarterly contract, traded one after another.

The desk sells the nearest listed quarterly whose last trading time (expiry − ``expiry_exit_hours``)
the planned hold ends before, and closes what is still open at that time. The backtest does the
same with the engines it already has: for every contract C it builds a market whose reference leg
is the real perp and whose other leg is C's SIMULATED price (`basis_mcp.dated`), fresh only until
C's last trading time; entries are allowed only while C is the contract the desk would choose, and
a position still open at C's last trading time is closed there (``expiry_near``). Contracts are
walked in time order, each starting after the previous one's last exit, so one position is open at
a time, as on the desk. Funding is what the long perp pays; costs are the perp's on both legs.

Each contract's market spans only its warm-up and its life (`contract_window`): from far enough back
that every statistic the rules read at its first tradable bar is the one the whole history gives (the
z-score window's fresh samples, the smoothing window, the realised vol's hour and the close before it,
the funding lookbacks) to its last trading time, so a run's work grows with the contracts' lives, not
with their number times the history. Trades come back indexed on the whole market.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from basis_mcp import dated
from basis_mcp.backtest.engine import vol_bars, zscore_samples
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import FUNDING_WARMUP_DAYS, Market
from basis_mcp.backtest.results import Trade
from basis_mcp.costs import PairCosts

EXPIRY_RULE = "expiry_near"
DAY = 86400.0


@dataclass(frozen=True)
class Contract:
    """One quarterly the desk would trade in a market's range: bars on the whole market's grid."""

    expiry: float
    i_start: int  # the first bar the desk would choose it at
    i_entry_end: int  # the last such bar
    i_last: int  # the last bar at or before its last trading time


def contracts(m: Market, p: BacktestParams) -> list[Contract]:
    """The quarterlies the desk would trade in ``m``'s range, in time order."""
    t_lo, t_hi = float(m.t[m.i0]), float(m.t[m.i1])
    buffer_s = p.expiry_exit_hours * 3600.0
    hold_s = p.expected_hold_days * 86400.0
    out: list[Contract] = []
    prev_choice_end = -np.inf
    for expiry in dated.quarterly_expiries(t_lo - 200 * 86400.0, t_hi + hold_s + buffer_s + 200 * 86400.0):
        last_trading = expiry - buffer_s
        # the desk chooses C at t when C is listed (one of the next two quarterlies) and is the first whose last
        # trading time the hold ends before: t + hold <= last_trading, and the previous contract's is not
        choose_end = last_trading - hold_s - p.fill_delay_seconds  # the hold runs from the fill
        choose_start = max(prev_choice_end, _listed_from(expiry))
        prev_choice_end = max(prev_choice_end, choose_end)
        if choose_end < t_lo or choose_start > t_hi or choose_end <= choose_start:
            continue
        i_start = max(int(np.searchsorted(m.t, choose_start, side="right")), m.i0)
        i_entry_end = min(int(np.searchsorted(m.t, choose_end, side="right")) - 1, m.i1)
        i_last = min(int(np.searchsorted(m.t, last_trading, side="right")) - 1, m.i1)
        if i_entry_end < i_start:
            continue
        out.append(Contract(expiry, i_start, i_entry_end, i_last))
    return out


def contract_markets(m: Market, p: BacktestParams) -> list[Market]:
    """One market per quarterly the desk would trade in ``m``'s range, in time order, each over the whole
    history (`run_calendar` trades windows of these: `contract_window`)."""
    carry = dated.funding_carry_apr(m.f_time, m.f_rate, m.t)
    return [_contract_market(m, p, c, carry, 0, m.t.size, 0, m.f_time.size) for c in contracts(m, p)]


def _contract_market(m: Market, p: BacktestParams, c: Contract, carry: np.ndarray, s: int, e: int, f0: int, f1: int,
                     i0: int | None = None) -> Market:
    """Contract ``c``'s market over bars ``s .. e - 1`` and settlements ``f0 .. f1 - 1`` of ``m`` (indices
    shifted by ``s``); trading from bar ``i0`` (default: the first bar the desk would choose it at)."""
    last_trading = c.expiry - p.expiry_exit_hours * 3600.0
    t, perp = m.t[s:e], m.perp[s:e]
    live = (t <= last_trading) & ~(np.isnan(m.spot[s:e]) | np.isnan(perp))
    fut = np.where(live, dated.simulated_price(perp, carry[s:e], c.expiry - t), np.nan)
    ref = np.where(live, perp, np.nan)
    return replace(m, symbol=m.symbol, t=t, spot=ref, perp=fut, mark=m.mark[s:e], mark_high=m.mark_high[s:e],
                   mark_low=m.mark_low[s:e], f_time=m.f_time[f0:f1], f_rate=m.f_rate[f0:f1],
                   i0=(c.i_start if i0 is None else i0) - s, i1=c.i_last - s, costs=PairCosts(m.costs.perp, m.costs.perp),
                   entry_i1=c.i_entry_end - s, expiry=c.expiry, contract=dated.contract_code(m.symbol, c.expiry))


def contract_window(m: Market, p: BacktestParams, c: Contract, start: int, fresh_idx: np.ndarray) -> tuple[int, int, int, int]:
    """(first bar, end bar, first settlement, end settlement) of the slice of ``m`` that contract ``c``, traded from
    bar ``start``, needs: every statistic at ``start`` and later is then what the whole history gives.

    Back from ``start``: the z-score window's fresh samples (the z-score and the basis std), the smoothing window,
    the realised vol's hour (and the close before it), and the funding lookbacks (30 days for the entry check's
    rate, the funding exit's and the carry's windows) with the last settlement at or before ``start`` (the
    schedule's interval and the last rate); the first bar is a fresh one (funding at constant notional reads the
    last fresh spot). Forward: to the last trading time, and the settlement after it (the schedule's next
    settlement), whose bar the trade booking reads the mark at."""
    t, ft, bar_s = m.t, m.f_time, m.bar_s
    n, nf = t.size, ft.size
    zw = zscore_samples(p, bar_s)
    k = int(np.searchsorted(fresh_idx, start, side="left"))  # fresh bars before start
    z_from = int(fresh_idx[k - zw]) if k >= zw else 0
    f_span = max(FUNDING_WARMUP_DAYS * DAY, p.funding_exit_hours * 3600.0, p.carry_lookback_days * DAY)
    f0 = int(np.searchsorted(ft, t[start] - f_span, side="right"))
    f0 = min(f0, max(int(np.searchsorted(ft, t[start], side="right")) - 1, 0))
    s = min(z_from, start - m.bars(p.basis_smoothing_hours * 3600.0), start - max(vol_bars(bar_s), 1) - 1,
            start - m.bars(f_span))
    if f0 < nf:
        s = min(s, int((ft[f0] - t[0]) // bar_s))
    s = max(s, 0)
    h = int(np.searchsorted(fresh_idx, s, side="right")) - 1  # back to a fresh bar (the first one if none before)
    s = int(fresh_idx[h]) if h >= 0 else 0
    f_next = int(np.searchsorted(ft, t[c.i_last], side="right"))  # the first settlement after the last trading bar
    e = c.i_last + 1
    f1 = f_next
    if f_next < nf:
        bar = int((ft[f_next] - t[0]) // bar_s)
        if bar < n:
            e, f1 = max(e, bar + 1), f_next + 1
    f0 = max(f0, int(np.searchsorted(ft, t[s], side="left")))
    return s, e, f0, f1


def _listed_from(expiry: float) -> float:
    """When a quarterly is listed: once the one two quarters before it has expired (two are listed at a time)."""
    earlier = dated.quarterly_expiries(expiry - 200 * 86400.0, expiry - 1.0)
    return earlier[-2] if len(earlier) >= 2 else -np.inf


def run_calendar(m: Market, p: BacktestParams, run: Callable[[Market, BacktestParams], list[Trade]]) -> list[Trade]:
    """Every contract's trades with ``run`` (the vectorised engine or the reference loop), one position at
    a time: a contract's entries start after the previous trade's exit. Each contract is run on its
    window of the market (`contract_window`); its trades are indexed on ``m``."""
    trades: list[Trade] = []
    after = -1
    carry = None
    fresh_idx = np.flatnonzero(m.valid)
    for c in contracts(m, p):
        start = max(c.i_start, after + 1)
        if start > c.i_entry_end:
            continue
        s, e, f0, f1 = contract_window(m, p, c, start, fresh_idx)
        if carry is None:
            carry = dated.funding_carry_apr(m.f_time, m.f_rate, m.t)
        got = run(_contract_market(m, p, c, carry, s, e, f0, f1, start), p)
        for t in got:
            t = replace(t, entry_index=t.entry_index + s, exit_index=t.exit_index + s)
            if t.reason == "end_of_range" and t.exit_index < m.i1 and m.t[t.exit_index] >= m.t[c.i_last]:
                t = replace(t, reason=EXPIRY_RULE)
            trades.append(t)
        if got:
            after = trades[-1].exit_index
    return trades
