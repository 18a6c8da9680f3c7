"""Many symbols in one backtest: their features built on one thread per core vs on one thread, in one run.

    python bench/many_symbols.py [--symbols 10] [--years 1] [--rounds 5]

The data: ``--symbols`` symbols of 1-minute bars made from the shipped BTC and ETH hourly data
(`scripts/measure_1m_year.minute_bars`, each symbol its own path). Each round builds every symbol's
features both ways (`backtest.runner.all_features` with ``workers`` = the cores, and with 1), alternating
which goes first; the arrays are asserted equal and medians compared. The last line prints the speed-up
(at most the number of cores: this machine's is printed with it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from measure_1m_year import DAY, minute_bars  # noqa: E402

from basis_mcp.backtest import runner  # noqa: E402
from basis_mcp.backtest.params import BacktestParams  # noqa: E402
from basis_mcp.clock import iso, parse_time  # noqa: E402
from basis_mcp.history import load_extract  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--years", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    src = load_extract(symbols=["BTC", "ETH"])
    t0 = int(parse_time("2024-01-01"))
    hours = int(round(a.years * 365.25 * 24))
    hist = {f"S{k:03d}": minute_bars(src[("BTC", "ETH")[k % 2]], t0 + (k // 2) * 9 * DAY, hours, f"S{k:03d}", t0)
            for k in range(a.symbols)}
    p = BacktestParams()
    markets = runner.load_markets(hist, list(hist), iso(t0 + 50 * DAY), iso(t0 + hours * 3600 - 60), p)
    cores = os.cpu_count() or 1
    runner.all_features(markets[:1], p)  # the compiled core loaded
    timings: dict[int, list[float]] = {cores: [], 1: []}
    ref = None
    for k in range(a.rounds):
        for w in ((cores, 1) if k % 2 == 0 else (1, cores)):
            t = time.perf_counter()
            f = runner.all_features(markets, p, workers=w)
            timings[w].append(time.perf_counter() - t)
            if ref is None:
                ref = f
            else:
                assert all(np.array_equal(f[s][x], ref[s][x], equal_nan=True) for s in ref for x in ref[s])
            del f
    par, one = statistics.median(timings[cores]), statistics.median(timings[1])
    bars = sum(m.t.size for m in markets)
    print(f"{len(markets)} symbols, {bars:,} bars: {cores} threads {par:.2f} s, one thread {one:.2f} s")
    print(f"many_symbols: {one / par:.2f}x faster features for {len(markets)} symbols of 1-minute bars on {cores} "
          f"threads than on one (this machine has {cores} cores)")


if __name__ == "__main__":
    main()
