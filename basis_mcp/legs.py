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
    step: Callable[[str], float], symbol_of: Callable[[LegSpec, str], str] | None = None,
) -> list[PlannedLeg]:
    """Every leg's quantity for a position of ``notional_usd`` on the reference (first) leg.

    The reference leg gets ``notional_usd / price`` rounded down to its lot step; a
    quantity-sized leg gets that quantity × its ratio (rounded down: never more than the
    reference), a notional-sized one the same dollars × its ratio at its own price (to the
    nearest lot: the closest dollar match the steps allow). ``symbol_of(leg, symbol)`` names the
    instrument a leg trades when it is not the symbol itself (a dated future's contract code).
    """
    out: list[PlannedLeg] = []
    def sym_of(leg: LegSpec) -> str:
        s = leg.symbol or symbol
        return symbol_of(leg, s) if symbol_of is not None else s

    ref = strategy.legs[0]
    ref_sym = sym_of(ref)
    ref_mid = price(ref, ref_sym)
    q0 = floor_to_step(notional_usd / ref_mid, step(ref_sym))
    for i, leg in enumerate(strategy.legs):
        sym = sym_of(leg)
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


def hedge_targets(held_abs: Sequence[float], ratios: Sequence[float], steps: Sequence[float]) -> list[float]:
    """What each leg should hold so the legs hedge each other as closely as their lot steps allow
    (step 0: any quantity, as spot), never more than a leg holds.

    The leg with the coarsest step (in hedge units) is set first: the fewest hedge units any leg
    holds, rounded down to its step. Every other leg then holds that many hedge units to its
    nearest step (capped at what it holds), so legs whose ratios do not divide their steps are
    left at most half a step apart instead of trimming each other down step by step.
    """
    n = len(held_abs)
    if n == 0:
        return []
    units = max(min(hedge_units(held_abs, ratios)), 0.0)
    coarse = max(range(n), key=lambda i: steps[i] / ratios[i])
    if steps[coarse] > 0:
        units = floor_to_step(units * ratios[coarse], steps[coarse]) / ratios[coarse]
    targets = []
    for i, (q, r, step) in enumerate(zip(held_abs, ratios, steps, strict=True)):
        want = units * r
        if i != coarse and step > 0:
            want = floor_to_step(want + step / 2.0, step)
        elif i == coarse and step > 0:
            want = floor_to_step(want, step)
        else:
            want = round(want, 12)
        targets.append(min(want, q) if q >= 0 else 0.0)
    return targets


def trims(held_abs: Sequence[float], ratios: Sequence[float], thresholds: Sequence[float],
          steps: Sequence[float] | None = None) -> list[float]:
    """Base quantity to take off each leg so all hold the same hedge units (`hedge_targets`; without
    ``steps``, exactly the fewest any leg holds); 0 where the excess is within the leg's threshold."""
    targets = hedge_targets(held_abs, ratios, steps if steps is not None else [0.0] * len(held_abs))
    out = []
    for q, t, th in zip(held_abs, targets, thresholds, strict=True):
        excess = q - t
        out.append(excess if excess > th else 0.0)
    return out


def later_leg_quantity(filled_units: float, ratio: float, step: float) -> float:
    """What a later leg of an entry sends: the hedge units the earlier legs filled, × its ratio, on its
    step (0: any quantity)."""
    q = filled_units * ratio
    return floor_to_step(q, step) if step > 0 else round(q, 12)


def close_amount(held_abs: float, ratio: float, earlier_left_units: float) -> float:
    """What a leg of an exit may close: all of it, less what still hedges earlier legs that did not close."""
    return max(held_abs - earlier_left_units * ratio, 0.0)


def is_flat(q: float, threshold: float) -> bool:
    return abs(q) <= threshold or math.isclose(q, 0.0, abs_tol=threshold)
