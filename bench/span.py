"""A backtest of a recent span on a long minute-bar history: features over the span and its warm-up
(`backtest.prepare.warm_up_start`) against features over every bar from the first (the reference,
``whole_history=True``), in one run.

    python bench/span.py [--years 6] [--days 30] [--rounds 5]

The history: BTC's shipped hourly data from 2020-01-01 made into 1-minute bars (prices interpolated between
the hourly closes, funding as settled: `scripts/measure_1m_year.minute_bars`). The backtest: the default
cash-and-carry rules (``--playbook``, carry by default) over the last ``--days`` days, a full run (book, equity, statistics, the always-on
benchmark and the fill-delay sensitivity). Each round loads the markets and runs both ways, alternating which
goes first; medians are compared and the trade lists asserted identical. The last line prints the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from measure_1m_year import DAY, minute_bars  # noqa: E402

from basis_mcp.backtest.params import BacktestParams  # noqa: E402
from basis_mcp.backtest.runner import load_markets, run  # noqa: E402
from basis_mcp.clock import iso, parse_time  # noqa: E402
from basis_mcp.history import load_extract  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--years", type=float, default=6.0)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--playbook", default="carry", choices=("carry", "convergence"))
    a = ap.parse_args()
    t0 = int(parse_time("2020-01-01"))
    hours = int(round(a.years * 365.25 * 24))
    hist = {"BTC": minute_bars(load_extract(symbols=["BTC"])["BTC"], t0, hours, "BTC", t0)}
    end = t0 + hours * 3600 - 60
    start = end - a.days * DAY
    p = BacktestParams(playbook=a.playbook)

    def once(whole: bool) -> tuple[float, list]:
        t = time.perf_counter()
        r = run(load_markets(hist, ["BTC"], iso(start), iso(end), p, whole_history=whole), p)
        return time.perf_counter() - t, [(x.entry_time, x.exit_time, x.reason, round(x.pnl_usd, 9)) for x in r.trades]

    once(False)  # the compiled core loaded (compiled on the very first run)
    cut, whole = [], []
    trades = None
    for k in range(a.rounds):
        for w in ((False, True) if k % 2 == 0 else (True, False)):
            dt, tr = once(w)
            (whole if w else cut).append(dt)
            assert trades is None or tr == trades, "the two ways made different trades"
            trades = tr
    c, w = statistics.median(cut), statistics.median(whole)
    print(f"{hist['BTC'].n:,} 1-minute bars of history; backtest of {iso(start)} .. {iso(end)}: {len(trades or [])} trades")
    print(f"span + warm-up: {c * 1e3:.1f} ms (rounds {', '.join(f'{x * 1e3:.0f}' for x in cut)}); "
          f"whole history: {w * 1e3:.1f} ms (rounds {', '.join(f'{x * 1e3:.0f}' for x in whole)})")
    print(f"span: {w / c:.1f}x faster {a.playbook} backtest of the last {a.days:g} days of {a.years:g} years of 1-minute bars "
          f"(features over the span and its warm-up vs over the whole history; identical trades)")


if __name__ == "__main__":
    main()
