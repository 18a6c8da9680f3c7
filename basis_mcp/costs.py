"""Execution cost model: taker fees, half-spread and size-dependent impact. No I/O.

Shared by the paper venue (fills), `estimate_net_apy` and the backtest, so the three
always agree on what a trade costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Market = Literal["spot", "perp"]
Side = Literal["buy", "sell"]


@dataclass(frozen=True)
class LegCosts:
    """Cost parameters for one market of one symbol.

    ``taker_fee`` is a fraction of traded notional (0.001 = 0.10 %). Slippage in basis
    points = ``half_spread_bps + impact_bps_per_sqrt_musd × sqrt(notional / $1M)``: the
    square-root impact law, so a $10k clip pays a tenth of a $1M clip's impact.
    """

    taker_fee: float
    half_spread_bps: float
    impact_bps_per_sqrt_musd: float

    def slippage_fraction(self, notional_usd):  # float or array
        if isinstance(notional_usd, float | int):
            impact = self.impact_bps_per_sqrt_musd * math.sqrt(max(notional_usd, 0.0) / 1e6)
        else:
            impact = self.impact_bps_per_sqrt_musd * np.sqrt(np.maximum(notional_usd, 0.0) / 1e6)
        return (self.half_spread_bps + impact) / 1e4

    def fill_price(self, mid, side: Side, notional_usd):  # floats or arrays
        s = self.slippage_fraction(notional_usd)
        return mid * (1.0 + s) if side == "buy" else mid * (1.0 - s)

    def fill_from_touch(self, touch: float, side: Side, notional_usd: float) -> float:
        """Fill against a real best bid/ask: the spread is already in ``touch``, add impact only."""
        s = self.impact_bps_per_sqrt_musd * np.sqrt(np.maximum(notional_usd, 0.0) / 1e6) / 1e4
        return touch * (1.0 + s) if side == "buy" else touch * (1.0 - s)


@dataclass(frozen=True)
class PairCosts:
    spot: LegCosts
    perp: LegCosts

    def leg(self, market: Market) -> LegCosts:
        return self.spot if market == "spot" else self.perp

    def one_way_usd(self, qty: float, spot_price: float, perp_price: float) -> tuple[float, float]:
        """(fees_usd, slippage_usd) to open OR close both legs of ``qty`` base units."""
        ns, np_ = qty * spot_price, qty * perp_price
        fees = ns * self.spot.taker_fee + np_ * self.perp.taker_fee
        slip = ns * self.spot.slippage_fraction(ns) + np_ * self.perp.slippage_fraction(np_)
        return fees, slip

    def round_trip_usd(self, qty: float, spot_price: float, perp_price: float) -> tuple[float, float]:
        """(fees_usd, slippage_usd) for entry plus exit at today's prices."""
        f, s = self.one_way_usd(qty, spot_price, perp_price)
        return 2.0 * f, 2.0 * s

    def entry_cost_fraction(self, notional_usd: float) -> float:
        """Fees plus slippage of an entry, as a fraction of the spot notional."""
        return (
            self.spot.taker_fee
            + self.perp.taker_fee
            + self.spot.slippage_fraction(notional_usd)
            + self.perp.slippage_fraction(notional_usd)
        )
