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
    """Arrays over the trading range and the warm-up its features need before it (`warm_up_start`; the
    funding settlements are kept whole); the engines trade only bars ``i0..i1`` (inclusive)."""

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
    cut: bool = False  # the history's first bars were left out (the warm-up needed no more: `warm_up_covers`)
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


FUNDING_WARMUP_DAYS = 30.0  # the convergence entry check reads the last 30 days' mean settled rate
DAY_S = 86400.0


def zscore_samples(p: BacktestParams, bar_s: float) -> int:
    """The z-score window in samples: ``zscore_window`` hours of bars (one sample per bar)."""
    return max(int(round(p.zscore_window * 3600.0 / bar_s)), 2)


def vol_bars(bar_s: float) -> int:
    """Bars in the 1 h realised-vol window: 1 on hourly bars, 12 on 5-minute ones; 0 when a bar is longer than
    an hour (the breaker cannot be measured on such data and is not run)."""
    if bar_s > 3600.0:
        return 0
    return max(int(round(3600.0 / bar_s)), 1)


def _warm_up(p: BacktestParams, bar_s: float) -> tuple[int, int]:
    """(fresh samples the z-score needs before the first traded bar, bars the other lookbacks need)."""
    span_s = max(p.basis_smoothing_hours * 3600.0, FUNDING_WARMUP_DAYS * DAY_S, p.funding_exit_hours * 3600.0,
                 p.carry_lookback_days * DAY_S)
    return zscore_samples(p, bar_s), max(math.ceil(span_s / bar_s - 1e-9), vol_bars(bar_s), 1) + 2


def warm_up_covers(m: Market, p: BacktestParams) -> bool:
    """Whether ``m`` holds the warm-up ``p``'s rules need (a market cut for other parameters may not: a sweep
    over a longer z-score window than the markets were built for)."""
    if not m.cut:
        return True
    zw, reach = _warm_up(p, m.bar_s)
    fresh = int(np.count_nonzero(m.valid[: m.i0]))
    return fresh >= zw and m.i0 >= reach


def warm_up_start(spot: np.ndarray, perp: np.ndarray, i0: int, p: BacktestParams, bar_s: float) -> int:
    """The first bar the features at ``i0`` and later read: the z-score's window of fresh samples (both legs
    traded) before ``i0``, the smoothing and 1 h volatility windows, and the funding lookbacks (the entry check's
    30 days, the funding exit's and the carry's windows) in bars, whichever reaches further back. (The settlements
    themselves are kept whole; a calendar contract cuts its own window out of these bars, `calendar`.)"""
    zw, reach = _warm_up(p, bar_s)
    fresh = np.flatnonzero(~(np.isnan(spot[:i0]) | np.isnan(perp[:i0])))
    lo_z = int(fresh[-zw]) if fresh.size >= zw else 0
    lo = max(min(lo_z, i0 - reach), 0)
    back = np.flatnonzero(~(np.isnan(spot[:lo + 1]) | np.isnan(perp[:lo + 1])))
    return int(back[-1]) if back.size else 0  # a fresh bar first (funding at constant notional reads the last fresh spot)


def prepare(h: SymbolHistory, start: float, end: float, params: BacktestParams, settings: Settings | None = None,
            whole_history: bool = False) -> Market:
    """Slice the trading range [start, end] (observation times, UTC epoch seconds) and the warm-up before it
    (``whole_history``: every bar from the first, as before the warm-up was cut; kept as the reference)."""
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
    lo = 0 if whole_history else warm_up_start(h.spot, h.perp, i0, params, bar)  # views of [lo, i1]: nothing later is read
    return Market(
        symbol=h.symbol,
        t=h.times[lo : i1 + 1].astype(np.float64),
        spot=h.spot[lo : i1 + 1],
        perp=h.perp[lo : i1 + 1],
        mark=h.mark[lo : i1 + 1],
        mark_high=h.mark_high[lo : i1 + 1],
        mark_low=h.mark_low[lo : i1 + 1],
        f_time=h.funding_time,
        f_rate=h.funding_rate,
        i0=i0 - lo,
        i1=i1 - lo,
        cut=lo > 0,
        costs=costs,
        qty_step=step,
        min_notional_usd=min_notional,
        gaps=gaps,
        stale=stale,
        bar_s=float(bar),
        notes=h.notes,
    )
