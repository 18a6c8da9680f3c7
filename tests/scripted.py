"""Scripted markets: synthetic hourly histories in the shipped extract format.

A test describes what the market does hour by hour (spot, perp, mark, mark high/low,
funding at settlements), writes it with `save_extract`, and runs a real server on it with
`--data`. The desk cannot tell it from the shipped data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from basis_mcp.clock import parse_time
from basis_mcp.config import DEFAULT_SPECS
from basis_mcp.history import HOUR, SymbolHistory, save_extract

T0 = int(parse_time("2023-12-25T00:00:00Z"))  # a week of history before the tests trade in 2024-01


class Market:
    """Hourly series for one symbol, flat by default: spot 100 000, basis +0.10 %, funding 0.03 %/8 h."""

    def __init__(self, hours: int = 24 * 30, spot: float = 100_000.0, basis_pct: float = 0.10, rate: float = 0.0003):
        self.n = hours
        self.spot = np.full(hours, spot)
        self.perp = self.spot * (1 + basis_pct / 100)
        self.mark = self.perp.copy()
        self.mark_high = self.perp.copy()
        self.mark_low = self.perp.copy()
        self.funding_time = np.arange(T0 + 8 * HOUR, T0 + hours * HOUR, 8 * HOUR, dtype=np.int64)
        self.funding_rate = np.full(self.funding_time.size, rate)

    def at(self, t: str | float) -> int:
        tt = parse_time(t) if isinstance(t, str) else t
        return int((tt - T0) // HOUR)

    def set_from(self, i: int, *, spot: float | None = None, perp: float | None = None) -> None:
        """From hour i on: new spot and/or perp (mark follows perp)."""
        if spot is not None:
            self.spot[i:] = spot
        if perp is not None:
            self.perp[i:] = perp
            self.mark[i:] = perp
            self.mark_high[i:] = perp
            self.mark_low[i:] = perp

    def spike(self, i: int, high: float | None = None, low: float | None = None) -> None:
        """An intra-hour wick in the mark price during the hour ending at index i."""
        if high is not None:
            self.mark_high[i] = high
        if low is not None:
            self.mark_low[i] = low

    def set_rate(self, t: str | float, rate: float) -> None:
        """One settlement (the first at or after t) at ``rate``."""
        tt = parse_time(t) if isinstance(t, str) else t
        self.funding_rate[np.flatnonzero(self.funding_time >= tt)[0]] = rate

    def set_rates_from(self, t: str | float, rate: float) -> None:
        """Every settlement from t on at ``rate``."""
        tt = parse_time(t) if isinstance(t, str) else t
        self.funding_rate[self.funding_time >= tt] = rate

    def history(self, symbol: str = "BTC") -> SymbolHistory:
        return SymbolHistory(symbol, T0, self.spot.copy(), self.perp.copy(), self.mark.copy(), self.mark_high.copy(),
                             self.mark_low.copy(), self.funding_time.copy(), self.funding_rate.copy(),
                             np.zeros(self.n, dtype=bool))


def write(tmp: Path, **markets: Market) -> Path:
    path = tmp / "scripted.npz"
    save_extract({sym: m.history(sym) for sym, m in markets.items()}, path)
    return path


def perp_entry_fill(mid: float, qty: float, symbol: str = "BTC") -> float:
    """What the paper venue will fill a perp SELL of qty at (mid minus spread and impact)."""
    return DEFAULT_SPECS[symbol].costs.perp.fill_price(mid, "sell", qty * mid)
