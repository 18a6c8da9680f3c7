"""Charts as PNG bytes (matplotlib, no display): what Claude Desktop shows inline."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from basis_mcp.backtest.runner import BacktestResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dates(t: np.ndarray) -> np.ndarray:
    return t.astype("datetime64[s]")


def _png(fig) -> bytes:
    import warnings

    import matplotlib.dates as mdates

    for ax in fig.axes:
        loc = mdates.AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(loc)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a one-sample chart has no sensible tick interval: matplotlib says so
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _rolling_bands(basis: np.ndarray, valid: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    from basis_mcp.signals import _window_sums

    mean = np.full(basis.size, np.nan)
    std = np.full(basis.size, np.nan)
    x = basis[valid]
    if x.size:
        cnt = np.minimum(np.arange(1, x.size + 1), window)
        mu = _window_sums(x, window) / cnt
        mean[valid] = mu
        std[valid] = np.sqrt(np.maximum(_window_sums(x * x, window) / cnt - mu * mu, 0.0))
    return mean, std


def backtest_chart(result: BacktestResult) -> bytes:
    """Per symbol: basis with its rolling mean ± entry-z band and the entries/exits; then equity."""
    plt = _plt()
    n = len(result.markets)
    fig, axes = plt.subplots(n + 1, 1, figsize=(11, 2.6 * (n + 1)), sharex=True)
    axes = np.atleast_1d(axes)
    p = result.params
    for ax, m in zip(axes[:-1], result.markets, strict=False):
        sl = slice(m.i0, m.i1 + 1)
        valid = m.valid
        with np.errstate(invalid="ignore", divide="ignore"):
            basis = (m.perp - m.spot) / m.spot * 100.0
        mean, std = _rolling_bands(basis, valid, p.zscore_window)
        d = _dates(m.t[sl])
        ax.plot(d, basis[sl], lw=0.5, color="#4a6fa5", label="basis %")
        ax.plot(d, mean[sl], lw=0.8, color="#333333", label="rolling mean")
        if p.playbook != "carry":
            ax.fill_between(d, (mean - p.min_zscore * std)[sl], (mean + p.min_zscore * std)[sl], color="#999999",
                            alpha=0.2, label=f"±{p.min_zscore:g}σ (entry z)")
        trades = [t for t in result.trades if t.symbol == m.symbol]
        if trades:
            ei = np.array([t.entry_index for t in trades])
            xi = np.array([t.exit_index for t in trades])
            ax.scatter(_dates(m.t[ei]), basis[ei], marker="^", s=14, color="#2a9d3f", zorder=3, label="entry")
            ax.scatter(_dates(m.t[xi]), basis[xi], marker="v", s=14, color="#c0392b", zorder=3, label="exit")
        lo, hi = np.nanpercentile(basis[sl], [0.5, 99.5])
        ax.set_ylim(lo - 0.05, hi + 0.05)
        ax.set_ylabel(f"{m.symbol} basis %")
        ax.legend(loc="upper right", fontsize=7, ncol=5)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    ax.plot(_dates(result.times), result.equity, color="#1f4e79", lw=1, label=f"{p.playbook}")
    if result.always_equity is not None and result.always_equity.size == result.times.size:
        ax.plot(_dates(result.times), result.always_equity, color="#b07d2b", lw=0.8, ls="--", label="always-on carry")
        ax.legend(loc="upper left", fontsize=7)
    ax.axhline(p.capital_usd, color="#888888", lw=0.6)
    s = result.summary
    ax.set_title(
        f"equity: {s['trades']} trades, P&L ${s['total_pnl_usd']:,.0f} ({s['total_return_pct']:.2f}%), "
        f"APY {s['apy_pct']:.2f}%, max DD {s['max_drawdown_pct']:.2f}%",
        fontsize=9,
    )
    ax.set_ylabel("equity $")
    ax.grid(alpha=0.3)
    delay = "fills at the signal" if p.fill_delay_seconds == 0 else f"fills {p.fill_delay_seconds / 3600:g} h after the signal"
    fig.suptitle(f"{p.playbook} backtest {', '.join(result.symbols)} {result.start[:10]} → {result.end[:10]} ({delay})",
                 fontsize=11)
    return _png(fig)


def basis_chart(symbol: str, times: np.ndarray, basis_pct: np.ndarray, f_times: np.ndarray, f_rates: np.ndarray,
                window: int, z_band: float = 2.0) -> bytes:
    """Recent basis with rolling mean ± z band, and funding per settlement."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    valid = ~np.isnan(basis_pct)
    mean, std = _rolling_bands(basis_pct, valid, window)
    d = _dates(times)
    a1.plot(d, basis_pct, lw=0.7, color="#4a6fa5", label="basis %")
    a1.plot(d, mean, lw=0.9, color="#333333", label="rolling mean")
    a1.fill_between(d, mean - z_band * std, mean + z_band * std, color="#999999", alpha=0.2, label=f"±{z_band:g}σ")
    a1.set_ylabel("basis %")
    a1.legend(fontsize=7, loc="upper right", ncol=3)
    a1.grid(alpha=0.3)
    a2.vlines(_dates(f_times), 0, f_rates * 100, colors=np.where(f_rates >= 0, "#2a9d3f", "#c0392b"), lw=1.5)
    a2.axhline(0, color="#888888", lw=0.5)
    a2.set_ylabel("funding % / settlement")
    a2.grid(alpha=0.3)
    fig.suptitle(f"{symbol}: basis and funding", fontsize=11)
    return _png(fig)
