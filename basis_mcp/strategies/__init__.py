"""Trade shapes the desk can run. Add one by declaring its legs and rules in a module here
(see `cash_and_carry`) and registering it; no engine needs to change."""

from basis_mcp.strategies import calendar_spread, cash_and_carry, cross_exchange, reverse_cash_and_carry  # noqa: F401 - registers them
from basis_mcp.strategies.base import (
    LEVERAGED,
    MARKETS,
    SPOT_LIKE,
    LegSpec,
    StrategySpec,
    get,
    names,
    register,
    unregister,
)

__all__ = ["LEVERAGED", "MARKETS", "SPOT_LIKE", "LegSpec", "StrategySpec", "get", "names", "register", "unregister"]
