"""Time and peak memory of backtests on 1-minute bars (issues 12 and 14).

There is no shipped 1-minute history: this builds 1-minute bars from the shipped hourly data (prices
interpolated linearly between the hourly closes, funding as settled). It times the rules engine alone
(features and trades, `run_vectorized` per symbol) and then the full backtest (the book's pass with
capital, equity and drawdown, statistics, the always-on benchmark and the fill-delay sensitivity), and
prints both (medians of interleaved rounds, after loading the compiled core once), their ratio and the
process's peak RSS.

    python scripts/measure_1m_year.py [carry|convergence] [--years Y] [--symbols N] [--start 2024-01-01] [--rounds 3]

One symbol (the default) is BTC from ``--start``. With ``--symbols N``, symbol k is BTC (even k) or ETH
(odd k) from ``--start`` shifted by 9 days per pair, relabelled S000, S001, … onto the same calendar, so
every symbol has its own path. Peak RSS is the process's high-water mark (engine and full run together).
"""
import argparse
import resource
import statistics
import time

import numpy as np

from basis_mcp.backtest.engine import run_vectorized
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.runner import load_markets, run
from basis_mcp.clock import iso, parse_time
from basis_mcp.history import SymbolHistory, load_extract

DAY = 86400


def minute_bars(h: SymbolHistory, src_t0: int, hours: int, symbol: str, t0: int) -> SymbolHistory:
    """``hours`` of ``h`` from ``src_t0`` on 1-minute bars, relabelled ``symbol`` starting at ``t0``."""
    i0 = h.index_at(src_t0)
    sl = slice(i0, i0 + hours)
    x = np.arange(hours * 60) / 60.0

    def interp(a: np.ndarray) -> np.ndarray:
        return np.interp(x, np.arange(hours), a[sl])

    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[sl], 60)

    start = h.t0 + i0 * 3600
    keep = (h.funding_time >= start) & (h.funding_time <= start + (hours * 60 - 1) * 60)
    return SymbolHistory(symbol=symbol, t0=t0, spot=interp(h.spot), perp=interp(h.perp), mark=interp(h.mark),
                         mark_high=interp(h.mark_high), mark_low=interp(h.mark_low),
                         funding_time=h.funding_time[keep] - start + t0, funding_rate=h.funding_rate[keep],
                         mark_is_proxy=rep(h.mark_is_proxy), stale=rep(h.stale), bar_s=60)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("playbook", nargs="?", default="carry", choices=("carry", "convergence"))
    ap.add_argument("--years", type=float, default=1.0)
    ap.add_argument("--symbols", type=int, default=1)
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--skip-engine", action="store_true", help="time the full run only (less memory held)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    src = load_extract(symbols=["BTC", "ETH"])
    t0 = int(parse_time(a.start))
    hours = int(round(a.years * 365.25 * 24))
    if a.symbols == 1:
        hist = {"BTC": minute_bars(src["BTC"], t0, hours, "BTC", t0)}
    else:
        hist = {f"S{k:03d}": minute_bars(src[("BTC", "ETH")[k % 2]], t0 + (k // 2) * 9 * DAY, hours, f"S{k:03d}", t0)
                for k in range(a.symbols)}
    n_bars = sum(h.n for h in hist.values())
    base = rss_mib()
    print(f"{a.symbols} symbol(s) x {a.years:g} year(s) of 1-minute bars: {n_bars:,} bars; data alone {base:.0f} MiB RSS")
    p = BacktestParams(playbook=a.playbook)
    end = iso(t0 + hours * 3600 - 60)
    begin = iso(t0 + 50 * DAY)  # after the z-score's warm-up (1,080 h)
    t = time.perf_counter()  # the compiled core: loaded from numba's on-disk cache (compiled on the very first run)
    first = next(iter(hist.values()))
    warm = minute_bars(src["BTC"], t0, 24 * 60, first.symbol, t0)
    run(load_markets({first.symbol: warm}, [first.symbol], iso(t0 + 50 * DAY), iso(t0 + 59 * DAY), p), p)
    print(f"compiled core loaded (or compiled) and warmed on 60 days: {time.perf_counter() - t:.2f} s")
    te, tf, tl, n_eng, r = [], [], [], 0, None
    for _ in range(a.rounds):  # interleaved: engine alone, then the full run, medians
        if not a.skip_engine:
            ms = load_markets(hist, list(hist), begin, end, p)
            t = time.perf_counter()
            n_eng = sum(len(run_vectorized(m, p)) for m in ms)
            te.append(time.perf_counter() - t)
            del ms
        r = None  # (the previous result's arrays are freed first, as the engine's were)
        t = time.perf_counter()
        ms = load_markets(hist, list(hist), begin, end, p)  # (slicing the data and its gap lists: timed apart)
        tl.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = run(ms, p)
        tf.append(time.perf_counter() - t)
        del ms
    tf_m = statistics.median(tf)
    if te:
        te_m = statistics.median(te)
        print(f"engine alone (features + trades, every symbol): {te_m:.2f} s (rounds {', '.join(f'{x:.2f}' for x in te)}), "
              f"{n_eng} trades, {n_bars / te_m / 1e6:.1f} M bars/s")
    print(f"full run (book, equity and drawdown, statistics, always-on, fill-delay sensitivity): {tf_m:.2f} s "
          f"(rounds {', '.join(f'{x:.2f}' for x in tf)}), {len(r.trades)} trades, P&L ${r.summary['total_pnl_usd']:,.2f}, "
          f"max drawdown {r.summary['max_drawdown_pct']}%; loading the markets apart: {statistics.median(tl):.2f} s")
    ratio = f"{tf_m / statistics.median(te):.2f}x the engine alone, " if te else ""
    print(f"1-minute {a.playbook}, {a.symbols} symbol(s) x {a.years:g} year(s) ({n_bars:,} bars): full run {tf_m:.2f} s "
          f"({ratio}{n_bars / tf_m / 1e6:.1f} M bars/s), peak RSS {rss_mib():.0f} MiB (data alone {base:.0f} MiB)")


if __name__ == "__main__":
    main()
