"""One symbol's history as the engines read it, with the trading range and its costs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.clock import iso
from basis_mcp.config import Settings
from basis_mcp.costs import LegCosts, PairCosts
from basis_mcp.history import DataError, SymbolHistory
from basis_mcp.loaders import timeframe_name


@dataclass(frozen=True)
class Market:
    """Arrays over the whole history (the z-score and the funding mean need the past); the
    engines trade only bars ``i0..i1`` (inclusive)."""

    symbol: str
    t: np.ndarray  # float64 observation times
    spot: np.ndarray  # NaN where the spot bar is missing
    perp: np.ndarray
    mark: np.ndarray
    mark_high: np.ndarray
    mark_low: np.ndarray
    f_time: np.ndarray
    f_rate: np.ndarray
    i0: int
    i1: int
    costs: PairCosts
    qty_step: float
    min_notional_usd: float
    gaps: list[tuple[str, int]]
    stale: list[str] = field(default_factory=list)  # ISO times of candles removed as stale (zero volume, flat)
    entry_i1: int | None = None  # entries only up to this bar (a calendar contract: while the desk would choose it)
    expiry: float | None = None  # a calendar contract's expiry: the entry check counts the premium's roll-down to it
    contract: str | None = None  # ... and its code (the other leg is its SIMULATED price, `basis_mcp.dated`)
    bar_s: float = 3600.0  # the bar size: the rules are stated in time and converted to bars with it
    notes: tuple[str, ...] = ()  # how the loader aligned the data (a coarser mark), for the result to say

    @property
    def valid(self) -> np.ndarray:
        """Bars where both legs traded (a missing or stale candle on either leg is a gap)."""
        return ~(np.isnan(self.spot) | np.isnan(self.perp))

    def index_at(self, t: float) -> int:
        return int((t - self.t[0]) // self.bar_s)

    def bars(self, seconds: float) -> int:
        """How many bars ``seconds`` spans (at least one)."""
        return max(int(math.ceil(seconds / self.bar_s - 1e-9)), 1)


def costs_for(symbol: str, params: BacktestParams, settings: Settings | None = None) -> tuple[PairCosts, float, float]:
    spec = (settings or Settings()).spec(symbol)
    c = spec.costs
    m = params.slippage_multiplier

    def leg(x: LegCosts, fee: float | None) -> LegCosts:
        return replace(x, taker_fee=x.taker_fee if fee is None else fee, half_spread_bps=x.half_spread_bps * m,
                       impact_bps_per_sqrt_musd=x.impact_bps_per_sqrt_musd * m)

    return PairCosts(leg(c.spot, params.spot_fee), leg(c.perp, params.perp_fee)), spec.qty_step, spec.min_notional_usd


def prepare(h: SymbolHistory, start: float, end: float, params: BacktestParams, settings: Settings | None = None) -> Market:
    """Slice the trading range [start, end] (observation times, UTC epoch seconds)."""
    if not (np.isfinite(start) and np.isfinite(end)):
        raise DataError("start and end must be finite times")  # names both arguments
    if end <= start:
        raise DataError(f"empty or inverted date range: start {iso(start)} is not before end {iso(end)}")
    if end < h.t0 or start > h.t_end:
        raise DataError(f"start={iso(start)} .. end={iso(end)} is outside the data for {h.symbol} ({iso(h.t0)} .. {iso(h.t_end)})")
    bar = h.bar_s
    i0 = max(h.index_at(start), 0)
    if h.t0 + i0 * bar < start:
        i0 += 1
    i1 = h.index_at(min(end, h.t_end))
    if i1 < i0:
        raise DataError(f"start={iso(start)} .. end={iso(end)}: no {timeframe_name(bar)} bar of {h.symbol} in between")
    settings = settings or Settings()
    if not settings.has_spec(h.symbol):  # a symbol nobody described: conservative costs, a lot step from its price
        fresh = np.flatnonzero(~np.isnan(h.spot[i0 : i1 + 1]))
        price = float(h.spot[i0 + fresh[0]]) if fresh.size else None
        settings = settings.with_unknown_symbols({h.symbol: (None, price)})
    costs, step, min_notional = costs_for(h.symbol, params, settings)
    gaps = [(iso(t) or "", n) for t, n in h.spot_gaps() if h.t0 + i0 * bar <= t <= h.t0 + i1 * bar]
    stale = [iso(t) or "" for t in h.stale_times() if h.t0 + i0 * bar <= t <= h.t0 + i1 * bar]
    return Market(
        symbol=h.symbol,
        t=h.times.astype(np.float64),
        spot=h.spot,
        perp=h.perp,
        mark=h.mark,
        mark_high=h.mark_high,
        mark_low=h.mark_low,
        f_time=h.funding_time,
        f_rate=h.funding_rate,
        i0=i0,
        i1=i1,
        costs=costs,
        qty_step=step,
        min_notional_usd=min_notional,
        gaps=gaps,
        stale=stale,
        bar_s=float(bar),
        notes=h.notes,
    )
