"""Scanning 100 symbols: the desk's bulk refresh vs three requests per symbol.

    python bench/scan.py

Both run in this process against the local Binance simulator (`basis_mcp.sim.binance`) with
100 extra perpetual/spot pairs and 20 ms of latency injected into every request, through the
same ccxt client. "Per symbol" is the source write-up's way: fetch_ticker(spot),
fetch_ticker(perp) and fetch_funding_rate(perp) for each symbol, one after another. "Bulk" is
`LiveFeed.refresh()`: premiumIndex (every contract's mark, rate and next settlement) plus the
spot book tickers, two requests whatever the number of symbols. ccxt's client-side rate
limiter is switched off for both so the ratio measures requests, not throttling.
"""

from __future__ import annotations

import statistics
import time

import anyio

from basis_mcp.live.exchanges import make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.sim.binance import running_sim

N_SYMBOLS = 100
LATENCY_MS = 20


async def per_symbol(url: str, symbols: list[str]) -> tuple[float, int]:
    ex = make_exchange("binance", base_url=url)
    ex.enableRateLimit = False
    await ex.load_markets()
    requests = 0
    t0 = time.perf_counter()
    out = {}
    for s in symbols:
        spot = await ex.fetch_ticker(f"{s}/USDT")
        perp = await ex.fetch_ticker(f"{s}/USDT:USDT")
        rate = await ex.fetch_funding_rate(f"{s}/USDT:USDT")
        requests += 3
        out[s] = ((spot["bid"] + spot["ask"]) / 2, perp["last"], rate["fundingRate"], rate["fundingTimestamp"])
    dt = time.perf_counter() - t0
    await ex.close()
    assert len(out) == len(symbols)
    return dt, requests


async def bulk(url: str, symbols: list[str], runs: int = 7) -> tuple[float, int]:
    ex = make_exchange("binance", base_url=url)
    ex.enableRateLimit = False
    feed = LiveFeed("binance", ex, VenueClock(), symbols)
    await feed.start()
    times = []
    for _ in range(runs):
        before = feed.requests
        t0 = time.perf_counter()
        await feed.refresh()
        times.append(time.perf_counter() - t0)
        per_refresh = feed.requests - before
    snaps = [feed.snapshot(s) for s in symbols]
    assert len(snaps) == len(symbols) and all(s.funding_interval_hours > 0 for s in snaps)
    await feed.close()
    return statistics.median(times), per_refresh


async def main(url: str, sim) -> None:
    symbols = [f"S{i:03d}" for i in range(1, N_SYMBOLS + 1)]
    sim.state.faults.latency_ms = LATENCY_MS
    t_bulk, n_bulk = await bulk(url, symbols)
    t_each, n_each = await per_symbol(url, symbols)
    print(f"{N_SYMBOLS} symbols, {LATENCY_MS} ms latency per request (local Binance simulator)")
    print(f"bulk refresh (LiveFeed):       {n_bulk:4d} requests  {t_bulk * 1000:8.1f} ms  (median of 7)")
    print(f"per symbol (ticker x2 + rate): {n_each:4d} requests  {t_each * 1000:8.1f} ms")
    print(f"scan: {t_each / t_bulk:.0f}x faster scan of {N_SYMBOLS} symbols ({n_bulk} bulk requests vs {n_each} per-symbol)")


if __name__ == "__main__":
    with running_sim(start="2024-03-15T01:00:00Z", extra_symbols=N_SYMBOLS) as sim:
        anyio.run(main, sim.url, sim)
