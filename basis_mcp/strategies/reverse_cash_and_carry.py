"""Reverse cash-and-carry: borrow spot and sell it, buy the perpetual, equal base quantity.

The backwardation trade: when the perp trades below spot (a negative basis) it earns the basis
as it converges back up, and the funding longs receive while funding is negative, less the
interest on the borrowed coins (hourly; MODELLED on paper and in backtests, see
`basis_mcp.borrow`). The borrowed spot is sold first: it is the leg that can fail (nothing to
borrow, a borrow limit), and the perp is then sized to what was sold. The perp is closed first
(the leveraged leg that funding and liquidation act on), then the spot bought back and repaid.
"""

from __future__ import annotations

from basis_mcp.strategies.base import LegSpec, StrategySpec, register

REVERSE_CASH_AND_CARRY = register(StrategySpec(
    name="reverse_cash_and_carry",
    title="Reverse cash-and-carry (short borrowed spot, long perp)",
    summary="borrow and sell spot, buy the perpetual in equal quantity: earns a negative basis as it converges and the "
            "funding longs receive when funding is negative, less hourly borrow interest",
    legs=(
        LegSpec(role="spot", market="margin_spot", side="short"),
        LegSpec(role="perp", market="perp", side="long"),
    ),
    entry_order=(0, 1),
    exit_order=(1, 0),
    playbooks=("convergence", "carry"),
    basis_legs=(0, 1),
    direction=-1,
    risks=("borrow rate spikes and loan recall (the watchdog closes above borrow_spike_apr_pct)",
           "liquidation of the borrowed spot if the price rallies", "perp liquidation if the price falls",
           "funding turning positive (longs pay)"),
))
