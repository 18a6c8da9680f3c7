"""Leg arithmetic: plan an entry's legs, measure how far apart they are, and what to trade to
bring them back together or to close them without leaving one naked. Pure functions.

Quantities are base units. A leg's ``ratio`` is its base quantity per unit of the position's
(reference leg's) quantity, fixed when the entry is planned; a leg's *hedge units* are its
held quantity divided by its ratio. A hedged position has equal hedge units on every leg.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from basis_mcp.sizing import floor_to_step
from basis_mcp.strategies.base import LegSpec, StrategySpec

QTY_EPS = 1e-9


@dataclass(frozen=True)
class PlannedLeg:
    idx: int
    spec: LegSpec
    symbol: str
    quantity: float  # base units, on the leg's lot step
    ratio: float  # base units per unit of the reference leg's quantity
    mid: float  # mid price the plan was made at


def plan_legs(
    strategy: StrategySpec, symbol: str, notional_usd: float, price: Callable[[LegSpec, str], float],
    step: Callable[[str], float],
) -> list[PlannedLeg]:
    """Every leg's quantity for a position of ``notional_usd`` on the reference (first) leg.

    The reference leg gets ``notional_usd / price`` rounded down to its lot step; a
    quantity-sized leg gets that quantity × its ratio (rounded down: never more than the
    reference), a notional-sized one the same dollars × its ratio at its own price (to the
    nearest lot: the closest dollar match the steps allow).
    """
    out: list[PlannedLeg] = []
    ref = strategy.legs[0]
    ref_sym = ref.symbol or symbol
    ref_mid = price(ref, ref_sym)
    q0 = floor_to_step(notional_usd / ref_mid, step(ref_sym))
    for i, leg in enumerate(strategy.legs):
        sym = leg.symbol or symbol
        mid = ref_mid if i == 0 else price(leg, sym)
        if i == 0:
            q = q0
        elif leg.sizing == "quantity":
            q = floor_to_step(q0 * leg.ratio, step(sym))
        else:  # dollars against dollars: the nearest lot, so the legs are as close in value as the steps allow
            q = floor_to_step(q0 * ref_mid * leg.ratio / mid + step(sym) / 2.0, step(sym))
        ratio = (q / q0) if q0 > 0 and i else leg.ratio
        out.append(PlannedLeg(i, leg, sym, q, ratio, mid))
    return out


def hedge_units(held_abs: Sequence[float], ratios: Sequence[float]) -> list[float]:
    return [q / r for q, r in zip(held_abs, ratios, strict=True)]


def imbalance_pct(held_abs: Sequence[float], ratios: Sequence[float]) -> float:
    """How far apart the legs are: (most − fewest hedge units) / most × 100."""
    h = hedge_units(held_abs, ratios)
    top = max(h) if h else 0.0
    return (top - min(h)) / top * 100.0 if top > 0 else 0.0


def trims(held_abs: Sequence[float], ratios: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Base quantity to take off each leg so all hold the fewest hedge units (0 where within its threshold)."""
    common = min(hedge_units(held_abs, ratios)) if held_abs else 0.0
    out = []
    for q, r, th in zip(held_abs, ratios, thresholds, strict=True):
        excess = q - common * r
        out.append(excess if excess > th else 0.0)
    return out


def later_leg_quantity(filled_units: float, ratio: float, step: float, market: str) -> float:
    """What a later leg of an entry sends: the hedge units the earlier legs filled, × its ratio, on its step."""
    q = filled_units * ratio
    return floor_to_step(q, step) if market != "spot" else round(q, 12)


def close_amount(held_abs: float, ratio: float, earlier_left_units: float) -> float:
    """What a leg of an exit may close: all of it, less what still hedges earlier legs that did not close."""
    return max(held_abs - earlier_left_units * ratio, 0.0)


def is_flat(q: float, threshold: float) -> bool:
    return abs(q) <= threshold or math.isclose(q, 0.0, abs_tol=threshold)
