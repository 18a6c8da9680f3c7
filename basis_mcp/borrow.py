"""Borrow interest on short spot legs: a MODELLED rate series, and the arithmetic on it. Pure, no I/O.

No venue publishes a long public history of its margin borrow rates (Binance and Bybit serve
them only to signed requests, a month per call; OKX's public series is its lending rate), so
paper trading and backtests use this model, and say so wherever a rate is shown:

- ``calm``: each asset's base rate (BTC 2 %, ETH 3 %, others 8 % a year, close to what the
  large venues charged VIP 0 in quiet markets), moving ±30 % over a 30-day cycle;
- ``spike``: the same, plus a 72-hour squeeze every 45 days in which the rate is ×10 (the
  shape of the borrow squeezes seen when a coin's spot is shorted heavily), and 24 hours into
  each squeeze the venue RECALLS every loan still open on the asset (`recall_times`): the paper
  venue buys the coins back at market and repays them, as a margin venue does when its lending
  pool runs dry.

Rates are a deterministic function of time, so the desk's replay and the backtest charge the
same interest for the same hours. Interest accrues hourly on the borrowed quantity at the spot
price of that hour: ``quantity × spot × apr / 100 / 8760``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

HOURS_PER_YEAR = 8760.0
Scenario = Literal["calm", "spike"]
DEFAULT_APR_PCT = {"BTC": 2.0, "ETH": 3.0}
OTHER_APR_PCT = 8.0
CYCLE_S = 30 * 86400.0
SPIKE_EVERY_S = 45 * 86400.0
SPIKE_LENGTH_S = 72 * 3600.0
SPIKE_MULTIPLE = 10.0
RECALL_AFTER_S = 24 * 3600.0  # into a squeeze, the spike scenario's venue recalls open loans


@dataclass(frozen=True)
class BorrowModel:
    scenario: Scenario = "calm"
    apr_pct: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_APR_PCT))
    other_apr_pct: float = OTHER_APR_PCT

    @property
    def label(self) -> str:
        return f"modelled:{self.scenario}"

    def base_apr_pct(self, asset: str) -> float:
        return self.apr_pct.get(asset, self.other_apr_pct)

    def apr_pct_at(self, asset: str, t: float | np.ndarray) -> float | np.ndarray:
        """The modelled borrow rate of ``asset`` at time ``t`` (epoch seconds), percent a year."""
        t_arr = np.asarray(t, dtype=np.float64)
        rate = self.base_apr_pct(asset) * (1.0 + 0.3 * np.sin(2.0 * math.pi * t_arr / CYCLE_S))
        if self.scenario == "spike":
            rate = np.where(np.mod(t_arr, SPIKE_EVERY_S) < SPIKE_LENGTH_S, rate * SPIKE_MULTIPLE, rate)
        return float(rate) if np.ndim(rate) == 0 else rate

    def recall_times(self, t_from: float, t_to: float) -> list[float]:
        """Times in (t_from, t_to] at which the venue recalls every open loan (spike scenario only)."""
        if self.scenario != "spike" or t_to <= t_from:
            return []
        k = math.floor((t_from - RECALL_AFTER_S) / SPIKE_EVERY_S) + 1
        out = []
        while (t := k * SPIKE_EVERY_S + RECALL_AFTER_S) <= t_to:
            if t > t_from:
                out.append(t)
            k += 1
        return out

    def hourly_rate(self, asset: str, t: float) -> float:
        """Interest per hour as a fraction of the borrowed value."""
        return float(self.apr_pct_at(asset, t)) / 100.0 / HOURS_PER_YEAR


def interest_usd(quantity: float, spot: float, hourly_rate: float) -> float:
    """Interest for one hour on ``quantity`` borrowed (base units) at ``spot``: what the borrower pays (≥ 0)."""
    return abs(quantity) * spot * hourly_rate


def borrow_8h_pct(apr_pct: float) -> float:
    """A yearly borrow rate as percent per 8 hours (the unit funding rates are quoted in)."""
    return apr_pct / HOURS_PER_YEAR * 8.0
