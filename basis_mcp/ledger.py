"""P&L from recorded fills, funding and borrow payments. Pure functions; the ledger is the truth.

A fill is a mapping with ``market``, ``side``, ``quantity``, ``price``, ``mid_price``,
``fee_usd`` and, from the desk, ``leg_id``: quantities and marks are kept per leg (per
market where a fill has no leg, as in the backtest). Everything reported as P&L is
derived here, so it reconciles to the rows by construction:

    total = Σ fill cash flows − fees + funding + borrow
          = basis_pnl − slippage − fees + funding + borrow

where basis_pnl is the same price P&L valued at mid prices (for a matched cash-and-carry
pair of q: q × (basis_entry − basis_exit)), slippage is what the fills paid versus mid, and
borrow (≤ 0) is the interest paid on borrowed legs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
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
    borrow_usd: float = 0.0


def _sign(side: str) -> int:
    return 1 if side == "sell" else -1


def leg_key(f: Mapping[str, Any]) -> Hashable:
    """What a fill's quantity is held under: its leg, or its market when it has none."""
    leg = f.get("leg_id") if hasattr(f, "get") else None
    return leg if leg is not None else f["market"]


def pnl(
    fills: Iterable[Mapping[str, Any]],
    funding_amounts: Iterable[float],
    marks: Mapping[Hashable, float] | None = None,
    borrow_amounts: Iterable[float] = (),
) -> PnL:
    """P&L of a position from its fills, funding and borrow interest.

    ``marks`` (price per leg key, see `leg_key`) values any open quantity there, so the same
    function gives the mark-to-market of an open position; a flat position needs none.
    """
    cash = 0.0
    fees = 0.0
    slippage = 0.0
    qty: dict[Hashable, float] = {}
    for f in fills:
        s = _sign(f["side"])
        cash += s * f["quantity"] * f["price"]
        fees += f["fee_usd"]
        slippage += -s * f["quantity"] * (f["price"] - f["mid_price"])
        k = leg_key(f)
        qty[k] = qty.get(k, 0.0) - s * f["quantity"]
    funding = float(sum(funding_amounts))
    borrow = float(sum(borrow_amounts))
    open_value = 0.0
    if marks:
        open_value = sum(q * marks[k] for k, q in qty.items() if q)
    price_pnl = cash + open_value
    return PnL(
        basis_pnl_usd=price_pnl + slippage,
        funding_usd=funding,
        fees_usd=fees,
        slippage_usd=slippage,
        total_usd=price_pnl - fees + funding + borrow,
        cash_flow_usd=cash,
        price_pnl_usd=price_pnl,
        borrow_usd=borrow,
    )


def held_by_leg(fills: Iterable[Mapping[str, Any]]) -> dict[Hashable, float]:
    """Signed quantity held per leg key (long +, short −) implied by the fills."""
    out: dict[Hashable, float] = {}
    for f in fills:
        k = leg_key(f)
        out[k] = out.get(k, 0.0) + (f["quantity"] if f["side"] == "buy" else -f["quantity"])
    return out
