"""Cross-exchange funding basis: short the perpetual on the venue paying the richest funding, long the
same coin's perpetual on the venue paying the least, equal base quantity.

Price moves cancel between the legs (the same coin on two venues); what the position earns is the
funding differential: the short leg receives its venue's rate, the long leg pays (or receives) the
other's, each on its own venue's schedule (8 h, 4 h, 1 h), so the differential is compared per unit
of time. Each leg is margined in its own venue's collateral pool: a sharp move takes margin from one
venue while the other leg's profit sits on the other exchange, so each leg's liquidation distance is
watched on its own, and no venue may hold more than ``max_venue_share`` of capital.

Which venue is "rich" and which "cheap" is decided at entry from the venues' current funding per hour
(or named by the agent: ``short_venue`` / ``long_venue``). On paper the second venue is a paper
exchange with that venue's REAL funding history (`basis_mcp/data/funding_venues.npz`, 2020-2023)
and the primary data's prices (no other venue's prices are shipped): said wherever it is shown.
"""

from __future__ import annotations

from basis_mcp.strategies.base import LegSpec, StrategySpec, register

CROSS_EXCHANGE = register(StrategySpec(
    name="cross_exchange",
    title="Cross-exchange funding basis (short perp on the rich venue, long perp on the cheap one)",
    summary="sell the perpetual where funding is highest and buy it where funding is lowest, equal quantity: earns the "
            "funding differential per hour; prices cancel; each leg margined on its own venue",
    legs=(
        LegSpec(role="short_perp", market="perp", side="short", venue_slot="rich"),
        LegSpec(role="long_perp", market="perp", side="long", venue_slot="cheap"),
    ),
    entry_order=(0, 1),
    exit_order=(0, 1),
    playbooks=(),  # no basis for the playbooks to read: the agent exits when the differential is gone; the risk rules run
    basis_legs=None,
    risks=("the funding differential flipping (the rich venue's rate falling below the cheap one's)",
           "one venue unreachable or insolvent while the other leg is open: the watchdog stops entries and closes when "
           "the unreachable venue answers again, or at once if the other leg's margin is in danger",
           "each leg is margined on its own venue: a sharp move can liquidate one leg while the other's gain sits on the "
           "other exchange (each leg's liquidation distance is watched and topped up on its own venue)",
           "on paper both legs use the primary venue's prices (the other venue's funding is its real history)"),
))
