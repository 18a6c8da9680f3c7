"""The dashboard's charts, drawn server-side: the equity curve as inline SVG (a few hundred points,
crisp at any size, nothing to fetch) and each symbol's basis/funding chart as a PNG
(`basis_mcp.backtest.chart.basis_chart`, the chart the ``plot_basis`` tool returns)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np

from basis_mcp.backtest.chart import basis_chart

CHART_DAYS = 14.0
_PLOT_LOCK = threading.Lock()  # pyplot keeps global state: one figure at a time from this module


def basis_png(symbol: str, times: list[float], basis_pct: list[float], f_times: list[float], f_rates: list[float],
              zscore_window: int) -> bytes:
    t = np.asarray(times, dtype=np.float64)
    b = np.asarray(basis_pct, dtype=np.float64)
    window = max(min(zscore_window, b.size // 2), 2)
    with _PLOT_LOCK:
        return basis_chart(symbol, t, b, np.asarray(f_times, dtype=np.float64), np.asarray(f_rates, dtype=np.float64), window)


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _money(x: float) -> str:
    return f"${x:,.2f}"


def equity_svg(points: list[tuple[float, float]], capital: float, width: int = 1200, height: int = 240) -> str:
    """An SVG line of equity over time with the capital as a dashed baseline. Only numbers and dates go
    into it (no text from the book), so it is safe to inline."""
    pad_l, pad_r, pad_t, pad_b = 86, 12, 12, 26
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    if not points:
        return (f'<svg class="equity" viewBox="0 0 {width} {height}" role="img" aria-label="equity curve">'
                f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" class="muted">no fills yet</text></svg>')
    ts = [p[0] for p in points]
    vs = [p[1] for p in points]
    lo, hi = min(min(vs), capital), max(max(vs), capital)
    span = hi - lo or max(abs(hi) * 1e-4, 1.0)
    lo, hi = lo - span * 0.08, hi + span * 0.08
    t0, t1 = ts[0], ts[-1]
    dt = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return pad_l + (t - t0) / dt * w

    def y(v: float) -> float:
        return pad_t + (hi - v) / (hi - lo) * h

    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    cy = y(capital)
    last = vs[-1]
    cls = "up" if last >= capital else "down"
    return (
        f'<svg class="equity" viewBox="0 0 {width} {height}" role="img" aria-label="equity curve">'
        f'<line x1="{pad_l}" y1="{cy:.1f}" x2="{width - pad_r}" y2="{cy:.1f}" class="baseline"/>'
        f'<polyline points="{line}" class="curve {cls}" fill="none"/>'
        f'<circle cx="{x(ts[-1]):.1f}" cy="{y(last):.1f}" r="3" class="dot {cls}"/>'
        f'<text x="{pad_l - 6}" y="{pad_t + 10}" text-anchor="end" class="axis">{_money(hi)}</text>'
        f'<text x="{pad_l - 6}" y="{cy + 4:.1f}" text-anchor="end" class="axis">{_money(capital)}</text>'
        f'<text x="{pad_l - 6}" y="{pad_t + h}" text-anchor="end" class="axis">{_money(lo)}</text>'
        f'<text x="{pad_l}" y="{height - 6}" class="axis">{_day(t0)}</text>'
        f'<text x="{width - pad_r}" y="{height - 6}" text-anchor="end" class="axis">{_day(t1)}</text>'
        "</svg>"
    )
