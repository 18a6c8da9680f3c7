"""Peak memory and time of a backtest over one symbol-year of 1-minute bars (issue 12's measurement).

There is no shipped 1-minute history: this builds BTC 2024 on 1-minute bars from the shipped hourly
data (prices interpolated linearly between the hourly closes, funding as settled), runs the full
backtest (features, trades, equity, statistics) and prints the run time and the process's peak RSS.
Usage: python scripts/measure_1m_year.py [carry|convergence]
"""
import resource
import sys
import time

import numpy as np

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.runner import load_markets, run
from basis_mcp.clock import iso
from basis_mcp.history import SymbolHistory, load_extract

h = load_extract(symbols=["BTC"])["BTC"]
i0 = h.index_at(1704067200)  # 2024-01-01
hours = 24*366
sl = slice(i0, i0+hours)
def interp(a):
    a = a[sl]
    x = np.arange(hours*60)/60.0
    return np.interp(x, np.arange(hours), a)
t0 = h.t0 + i0*3600
t_end = t0 + (hours*60-1)*60
keep = (h.funding_time>=t0)&(h.funding_time<=t_end)


def rep(a):
    return np.repeat(a[sl], 60)


h1 = SymbolHistory(symbol="BTC", t0=t0, spot=interp(h.spot), perp=interp(h.perp), mark=interp(h.mark), mark_high=interp(h.mark_high), mark_low=interp(h.mark_low),
    funding_time=h.funding_time[keep], funding_rate=h.funding_rate[keep], mark_is_proxy=rep(h.mark_is_proxy), stale=rep(h.stale), bar_s=60)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("bars", h1.n, "rss after building data MiB", base/1024)
p = BacktestParams(playbook=sys.argv[1] if len(sys.argv)>1 else "carry")
t = time.perf_counter()
ms = load_markets({"BTC": h1}, ["BTC"], iso(t0+86400*50), iso(t_end), p)
r = run(ms, p)
el = time.perf_counter()-t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"1-minute BTC 2024 ({h1.n} bars): {len(r.trades)} trades, pnl {r.summary['total_pnl_usd']}, run {el:.1f}s, peak RSS {peak/1024:.0f} MiB (data alone {base/1024:.0f} MiB)")
