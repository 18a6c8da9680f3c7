"""Isolated-margin math for a USD-M perpetual (Binance's model). No I/O.

Maintenance margin = notional × MMR − cum, with the bracket chosen by notional and
``cum`` derived from the bracket table exactly as Binance defines it. Margin balance =
isolated wallet balance + unrealised P&L at the mark price. Margin ratio here is the
design's definition: margin balance ÷ maintenance margin (liquidation at ≤ 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bracket:
    notional_cap_usd: float
    mmr: float
    cum_usd: float


def brackets(table: list[tuple[float, float]]) -> list[Bracket]:
    """Build brackets from (notional cap, MMR) rows; cum = Σ cap_{i-1} × (mmr_i − mmr_{i-1})."""
    out: list[Bracket] = []
    cum = 0.0
    prev_cap, prev_mmr = 0.0, None
    for cap, mmr in table:
        if prev_mmr is not None:
            cum += prev_cap * (mmr - prev_mmr)
        out.append(Bracket(float(cap), float(mmr), cum))
        prev_cap, prev_mmr = cap, mmr
    return out


def bracket_for(notional_usd: float, table: list[Bracket]) -> Bracket:
    for b in table:
        if notional_usd <= b.notional_cap_usd:
            return b
    return table[-1]


def maintenance_margin(notional_usd: float, table: list[Bracket]) -> float:
    b = bracket_for(notional_usd, table)
    return notional_usd * b.mmr - b.cum_usd


def unrealised_pnl(qty_signed: float, entry_price: float, mark_price: float) -> float:
    """Signed qty: negative = short."""
    return qty_signed * (mark_price - entry_price)


def margin_ratio(wallet_balance: float, qty_signed: float, entry_price: float, mark: float, table: list[Bracket]) -> float:
    """Margin balance ÷ maintenance margin (a fraction: 1.5 = 150 %)."""
    mm = maintenance_margin(abs(qty_signed) * mark, table)
    mb = wallet_balance + unrealised_pnl(qty_signed, entry_price, mark)
    return mb / mm if mm > 0 else float("inf")


def liquidation_price(wallet_balance: float, qty_signed: float, entry_price: float, table: list[Bracket]) -> float:
    """Isolated liquidation price.

    Short (Q = |qty|): LP = (WB + cum + Q·EP) / (Q·(1 + MMR)).
    Long:              LP = (Q·EP − WB − cum) / (Q·(1 − MMR)).
    The bracket is the one whose notional range contains Q·LP.
    """
    q = abs(qty_signed)
    if q == 0:
        return float("nan")
    lower = 0.0
    candidate = float("nan")
    for b in table:
        if qty_signed < 0:
            lp = (wallet_balance + b.cum_usd + q * entry_price) / (q * (1.0 + b.mmr))
        else:
            lp = (q * entry_price - wallet_balance - b.cum_usd) / (q * (1.0 - b.mmr))
        candidate = lp
        if lower < q * lp <= b.notional_cap_usd:
            return max(lp, 0.0)
        lower = b.notional_cap_usd
    return max(candidate, 0.0)


def bankruptcy_price(wallet_balance: float, qty_signed: float, entry_price: float) -> float:
    """Price at which the margin balance is exactly zero."""
    q = abs(qty_signed)
    return entry_price + wallet_balance / q if qty_signed < 0 else entry_price - wallet_balance / q


def wallet_for_liquidation_price(target_lp: float, qty_signed: float, entry_price: float, table: list[Bracket]) -> float:
    """The isolated wallet balance that puts the liquidation price at ``target_lp`` (inverse of
    `liquidation_price`, bracket chosen at Q·LP). Short: WB = LP·Q·(1 + MMR) − cum − Q·EP."""
    q = abs(qty_signed)
    b = bracket_for(q * target_lp, table)
    if qty_signed < 0:
        return target_lp * q * (1.0 + b.mmr) - b.cum_usd - q * entry_price
    return q * entry_price - b.cum_usd - target_lp * q * (1.0 - b.mmr)
