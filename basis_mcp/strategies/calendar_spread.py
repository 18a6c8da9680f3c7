"""Calendar spread: sell the dated (quarterly) future, buy the perpetual, equal base quantity.

A quarterly trades at a premium to the perp in contango, and that premium decays to zero at
expiry, where the future settles at the spot index: the spread earns the roll-down of the
premium over the hold, and pays the funding a long perp pays while funding is positive. It
is entered when the calendar basis, (future − perp) / perp, is rich for its history (the
convergence playbook's z-score and level), left when it has converged, and ALWAYS left before
the contract's last trading time (``expiry_exit_hours`` before expiry): no entry may plan a
hold past it, and the watchdog closes what is still open then.

The dated future is sent first (the thinner book, the leg that can be refused: expired or
unlisted), the perp sized to what it filled; the future is closed first as well. On paper and
in backtests the future's price is SIMULATED (`basis_mcp.dated`): say so wherever it is shown.
"""

from __future__ import annotations

from basis_mcp.strategies.base import LegSpec, StrategySpec, register

CALENDAR_SPREAD = register(StrategySpec(
    name="calendar_spread",
    title="Calendar spread (long perp, short dated future)",
    summary="buy the perpetual and sell a quarterly future in equal quantity: earns the future's premium over the perp as "
            "it rolls down to zero at expiry, pays the funding a long perp pays; closed before the contract expires",
    legs=(
        LegSpec(role="perp", market="perp", side="long"),
        LegSpec(role="future", market="future", side="short"),
    ),
    entry_order=(1, 0),
    exit_order=(1, 0),
    playbooks=("convergence",),
    basis_legs=(0, 1),
    direction=1,
    funding_direction=-1,
    risks=("the contract's expiry: the watchdog closes the spread expiry_exit_hours before it; a hold may not cross it",
           "funding turning sharply positive (the long perp pays it)",
           "the premium widening instead of rolling down (the basis stop closes it)",
           "liquidation of either leg in a violent move (both are margined)",
           "on paper and in backtests the future's price is SIMULATED from spot and recent funding"),
))
