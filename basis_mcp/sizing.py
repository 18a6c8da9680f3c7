"""Position sizing: the largest notional every cap allows. No I/O."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from basis_mcp.costs import LegCosts, PairCosts


@dataclass(frozen=True)
class Cap:
    name: str
    limit_usd: float
    detail: str


@dataclass(frozen=True)
class SizeResult:
    notional_usd: float
    quantity: float
    binding_cap: str
    caps: list[Cap]
    capital_required_usd: float
    margin_usd: float
    fees_and_slippage_usd: float


def entry_capital_usd(qty: float, spot: float, perp: float, leverage: float, costs: PairCosts) -> float:
    """Cash an entry of ``qty`` ties up, exactly as the venue will charge it.

    Spot: qty × spot fill (mid + slippage) plus the taker fee. Perp: isolated margin on the
    perp fill price (perp mid − slippage, so the basis counts) ÷ leverage, plus its fee.
    The pre-trade check and `size_position` both use this, so a size the desk recommends is
    a size the venue accepts.
    """
    spot_fill = costs.spot.fill_price(spot, "buy", qty * spot)
    perp_fill = costs.perp.fill_price(perp, "sell", qty * perp)
    return qty * spot_fill * (1 + costs.spot.taker_fee) + qty * perp_fill * (1.0 / leverage + costs.perp.taker_fee)


def capital_per_notional(leverage: float, costs: PairCosts, notional_usd: float, perp_over_spot: float = 1.0) -> float:
    """Cash one dollar of spot-leg notional ties up (see `entry_capital_usd`)."""
    spot = 1.0
    qty = notional_usd if notional_usd > 0 else 1.0
    return entry_capital_usd(qty, spot, perp_over_spot, leverage, costs) / qty


def floor_to_step(qty: float, step: float) -> float:
    """Round a quantity down to the venue's lot step, without float dust (0.3/0.1 → 3 steps)."""
    steps = math.floor(qty / step + 1e-9)
    decimals = max(0, -int(math.floor(math.log10(step)))) if step < 1 else 0
    return round(steps * step, decimals + 2)


def size_position(
    *,
    spot_price: float,
    leverage: float,
    costs: PairCosts,
    free_capital_usd: float,
    caps: list[Cap],
    qty_step: float,
    min_notional_usd: float,
    target_notional_usd: float | None = None,
    perp_price: float | None = None,
    capital_per_notional_fn: Callable[[float], float] | None = None,
) -> SizeResult:
    """Largest notional (spot-leg $) within every cap, rounded down to the lot step.

    ``caps`` are the notional limits already computed by the caller (per-position cap,
    tier single-position cap, tier headroom, ...); free capital is turned into a notional
    cap here because what it buys depends on leverage and costs. An optional target is
    one more cap. If the result is below the venue minimum the size is 0 and the binding
    cap says so.
    """
    all_caps = list(caps)
    ratio = (perp_price / spot_price) if perp_price else 1.0
    # capital per $ of notional grows (weakly) with size through impact: iterate to the fixed point,
    # then shave a hair so rounding can never put the size a cent over free capital
    guess = min([c.limit_usd for c in caps] + [max(free_capital_usd, 0.0)])
    free_cap = guess
    for _ in range(4):
        at = max(min(guess, free_cap), 1e-9)
        per = capital_per_notional_fn(at) if capital_per_notional_fn else capital_per_notional(leverage, costs, at, ratio)
        free_cap = max(free_capital_usd, 0.0) / per * (1 - 1e-9)
    all_caps.append(
        Cap(
            "free_capital",
            free_cap,
            f"${free_capital_usd:,.2f} free ÷ {per:.4f} (spot 1 + margin 1/{leverage:g} + entry costs) per $ notional",
        )
    )
    if target_notional_usd is not None:
        all_caps.append(Cap("requested", target_notional_usd, "the notional you asked for"))
    binding = min(all_caps, key=lambda c: c.limit_usd)
    notional = max(binding.limit_usd, 0.0)
    qty = floor_to_step(notional / spot_price, qty_step)
    notional = qty * spot_price
    binding_name = binding.name
    if notional < min_notional_usd:
        qty, notional = 0.0, 0.0
        binding_name = "venue_min_notional"
        all_caps.append(Cap("venue_min_notional", min_notional_usd, f"venue minimum order is ${min_notional_usd:,.2f}"))
    perp = perp_price or spot_price
    if capital_per_notional_fn is not None:  # another shape: the caller's capital model (margin is the caller's to say)
        required = capital_per_notional_fn(notional) * notional if qty else 0.0
        margin = 0.0
    else:
        required = entry_capital_usd(qty, spot_price, perp, leverage, costs) if qty else 0.0
        margin = qty * costs.perp.fill_price(perp, "sell", qty * perp) / leverage if qty else 0.0
    entry_costs = required - notional - margin
    return SizeResult(
        notional_usd=notional,
        quantity=qty,
        binding_cap=binding_name,
        caps=all_caps,
        capital_required_usd=required,
        margin_usd=margin,
        fees_and_slippage_usd=entry_costs,
    )


def leg_capital_usd(market: str, side: str, qty: float, mid: float, leverage: float, costs: LegCosts) -> float:
    """Cash one leg of an entry ties up, as the venue charges it: an owned spot leg pays its fill
    plus the fee; a leveraged leg (perp, future, borrowed spot) posts fill ÷ leverage as margin
    plus the fee. Fills are taken at the modelled price for the leg's side (mid ± slippage)."""
    buys = side == "long"
    fill = costs.fill_price(mid, "buy" if buys else "sell", qty * mid)
    if market == "spot":
        return qty * fill * (1 + costs.taker_fee)
    return qty * fill * (1.0 / leverage + costs.taker_fee)


# --------------------------------------------------------------------------- regime-aware sizing

REGIMES: tuple[tuple[float, str, float], ...] = ((40.0, "low", 1.0), (70.0, "medium", 0.8), (120.0, "high", 0.5),
                                                 (math.inf, "extreme", 0.2))
UNKNOWN_SCALE = 0.3
MIN_REGIME_HOURS = 96.0  # four of the seven days: returns covering less and the regime is unknown
MIN_REGIME_RETURNS = 96  # (hourly returns)
STABLE_BASIS_STD_PCT = 0.05  # a basis this steady (std over the z-score window) gets the full size
ERRATIC_BASIS_STD_PCT = 0.25  # ... this erratic, half of it


@dataclass(frozen=True)
class Regime:
    name: str  # low | medium | high | extreme | unknown
    realised_vol_pct: float | None  # annualised, from hourly log returns
    scale: float
    returns: int


def vol_regime(log_returns: np.ndarray, period_s: float = 3600.0) -> Regime:
    """The realised-volatility regime of the last 7 days of returns, each ``period_s`` long (hourly by
    default), annualised by √(periods a year): low < 40 %, medium < 70 %, high < 120 %, extreme
    above; sized 1.0 / 0.8 / 0.5 / 0.2, and 0.3 when the returns cover less than four days."""
    r = np.asarray(log_returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 2 or r.size * period_s / 3600.0 < MIN_REGIME_HOURS:
        return Regime("unknown", None, UNKNOWN_SCALE, int(r.size))
    vol = float(np.std(r, ddof=1)) * math.sqrt(365.0 * 86400.0 / period_s) * 100.0
    for limit, name, scale in REGIMES:
        if vol < limit:
            return Regime(name, vol, scale, int(r.size))
    return Regime("extreme", vol, REGIMES[-1][2], int(r.size))  # pragma: no cover - inf bounds the table


def basis_stability_scale(basis_std_pct: float | None) -> float:
    """Less size for a symbol whose basis is erratic: 1.0 up to a std of 0.05 %, falling linearly to
    0.5 at 0.25 % and beyond (None, not measured yet: 1.0, the regime's unknown scale applies)."""
    if basis_std_pct is None or not math.isfinite(basis_std_pct) or basis_std_pct <= STABLE_BASIS_STD_PCT:
        return 1.0
    span = ERRATIC_BASIS_STD_PCT - STABLE_BASIS_STD_PCT
    return max(0.5, 1.0 - 0.5 * (basis_std_pct - STABLE_BASIS_STD_PCT) / span)
