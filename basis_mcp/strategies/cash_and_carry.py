"""Cash-and-carry: long spot, short perpetual, equal base quantity.

Earns the basis as it converges and the funding shorts receive. The spot leg goes first:
it is the one that can fill short (a thin book, a balance check), and the perp is then
sized to what the spot actually bought. The perp is closed first: it is the leveraged,
liquidatable leg; the spot is sold only down to what still hedges any perp left on.
"""

from __future__ import annotations

from basis_mcp.strategies.base import LegSpec, StrategySpec, register

CASH_AND_CARRY = register(StrategySpec(
    name="cash_and_carry",
    title="Cash-and-carry (long spot, short perp)",
    summary="buy spot and short the perpetual in equal quantity: earns the basis as it converges and the funding shorts receive",
    legs=(
        LegSpec(role="spot", market="spot", side="long"),
        LegSpec(role="perp", market="perp", side="short"),
    ),
    entry_order=(0, 1),
    exit_order=(1, 0),
    playbooks=("convergence", "carry"),
    basis_legs=(0, 1),
    risks=("perp liquidation if the price rallies (isolated margin)", "funding turning negative",
           "basis widening before it converges"),
))
