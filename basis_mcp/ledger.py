"""P&L from recorded fills and funding payments. Pure functions; the ledger is the truth.

A fill is a mapping with ``market``, ``side``, ``quantity``, ``price``, ``mid_price``,
``fee_usd``. Everything reported as P&L is derived here, so it reconciles to the rows by
construction:

    total = Σ fill cash flows − fees + funding
          = basis_pnl − slippage − fees + funding

where basis_pnl is the same price P&L valued at mid prices (for a matched pair of q:
q × (basis_entry − basis_exit)) and slippage is what the fills paid versus mid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PnL:
    basis_pnl_usd: float
    funding_usd: float
    fees_usd: float
    slippage_usd: float
    total_usd: float
    cash_flow_usd: float
    price_pnl_usd: float


def _sign(side: str) -> int:
    return 1 if side == "sell" else -1


def pnl(fills: Iterable[Mapping[str, Any]], funding_amounts: Iterable[float], marks: Mapping[str, float] | None = None) -> PnL:
    """P&L of a position from its fills and funding.

    ``marks`` ({'spot': mid, 'perp': mid}) values any open quantity at those mids, so the
    same function gives the mark-to-market of an open position; a flat position needs none.
    """
    cash = 0.0
    fees = 0.0
    slippage = 0.0
    qty = {"spot": 0.0, "perp": 0.0}
    for f in fills:
        s = _sign(f["side"])
        cash += s * f["quantity"] * f["price"]
        fees += f["fee_usd"]
        slippage += -s * f["quantity"] * (f["price"] - f["mid_price"])
        qty[f["market"]] -= s * f["quantity"]
    funding = float(sum(funding_amounts))
    open_value = 0.0
    if marks:
        open_value = sum(qty[m] * marks[m] for m in ("spot", "perp") if qty[m])
    price_pnl = cash + open_value
    return PnL(
        basis_pnl_usd=price_pnl + slippage,
        funding_usd=funding,
        fees_usd=fees,
        slippage_usd=slippage,
        total_usd=price_pnl - fees + funding,
        cash_flow_usd=cash,
        price_pnl_usd=price_pnl,
    )


def leg_quantities(fills: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
    """(spot quantity held, perp quantity signed) implied by the fills."""
    spot = perp = 0.0
    for f in fills:
        q = f["quantity"] if f["side"] == "buy" else -f["quantity"]
        if f["market"] == "spot":
            spot += q
        else:
            perp += q
    return spot, perp
