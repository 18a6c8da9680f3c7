"""Calendar spreads in the backtest: one market per quarterly contract, traded one after another.

The desk sells the nearest listed quarterly whose last trading time (expiry − ``expiry_exit_hours``)
the planned hold ends before, and closes what is still open at that time. The backtest does the
same with the engines it already has: for every contract C it builds a market whose reference leg
is the real perp and whose other leg is C's SIMULATED price (`basis_mcp.dated`), fresh only until
C's last trading time; entries are allowed only while C is the contract the desk would choose, and
a position still open at C's last trading time is closed there (``expiry_near``). Contracts are
walked in time order, each starting after the previous one's last exit, so one position is open at
a time, as on the desk. Funding is what the long perp pays; costs are the perp's on both legs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from basis_mcp import dated
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.results import Trade
from basis_mcp.costs import PairCosts
from basis_mcp.history import HOUR

EXPIRY_RULE = "expiry_near"


def contract_markets(m: Market, p: BacktestParams) -> list[Market]:
    """One market per quarterly the desk would trade in ``m``'s range, in time order."""
    t_lo, t_hi = float(m.t[m.i0]), float(m.t[m.i1])
    buffer_s = p.expiry_exit_hours * 3600.0
    hold_s = p.expected_hold_days * 86400.0
    carry = dated.funding_carry_apr(m.f_time, m.f_rate, m.t)
    costs = PairCosts(m.costs.perp, m.costs.perp)
    fresh = ~(np.isnan(m.spot) | np.isnan(m.perp))
    out: list[Market] = []
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
        alive = m.t <= last_trading
        fut = np.where(alive & fresh, dated.simulated_price(m.perp, carry, expiry - m.t), np.nan)
        ref = np.where(alive & fresh, m.perp, np.nan)
        out.append(replace(m, symbol=m.symbol, spot=ref, perp=fut, i0=i_start, i1=i_last, costs=costs, entry_i1=i_entry_end,
                           expiry=expiry, contract=dated.contract_code(m.symbol, expiry)))
    return out


def _listed_from(expiry: float) -> float:
    """When a quarterly is listed: once the one two quarters before it has expired (two are listed at a time)."""
    earlier = dated.quarterly_expiries(expiry - 200 * 86400.0, expiry - 1.0)
    return earlier[-2] if len(earlier) >= 2 else -np.inf


def run_calendar(m: Market, p: BacktestParams, run: Callable[[Market, BacktestParams], list[Trade]]) -> list[Trade]:
    """Every contract's trades with ``run`` (the vectorised engine or the reference loop), one position at
    a time: a contract's entries start after the previous trade's exit."""
    trades: list[Trade] = []
    after = -1
    for cm in contract_markets(m, p):
        start = max(cm.i0, after + 1)
        if start > (cm.entry_i1 if cm.entry_i1 is not None else cm.i1):
            continue
        got = run(replace(cm, i0=start), p)
        for t in got:
            if t.reason == "end_of_range" and t.exit_index < m.i1 and cm.t[t.exit_index] >= cm.t[cm.i1] - HOUR * 0:
                t = replace(t, reason=EXPIRY_RULE)
            trades.append(t)
        if got:
            after = got[-1].exit_index
    return trades
