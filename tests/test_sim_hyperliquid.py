"""Hyperliquid through ccxt, offline: the local Hyperliquid server (`basis_mcp.sim.hyperliquid`) over
real HTTP on 127.0.0.1, read by ccxt's real async ``hyperliquid`` client from
`make_exchange("hyperliquid", base_url=sim.url)` and by `LiveFeed`.

Expected numbers come from the raw ``POST /info`` payloads (read with a plain HTTP client) or from
the shipped data (`load_extract`), not from ccxt. ccxt's client-side throttle is off (the requests
are the same either way, and counted on the server).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import numpy as np
import pytest

from basis_mcp.history import load_extract
from basis_mcp.live.exchanges import SUPPORTED, Credentials, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.sim.hyperliquid import CANDLE_PAGE, FUNDING_PAGE, running_hyperliquid_sim
from basis_mcp.sim.instruments import parse_time
from basis_mcp.venue.base import VenueError, VenueUnavailable

pytestmark = pytest.mark.anyio

START = "2024-03-15T00:30:00Z"  # half past: the next hourly settlement is 01:00
T0 = parse_time(START)
HOUR = 3600
NEXT = T0 - T0 % HOUR + HOUR
BTC, ETH = "BTC/USDC:USDC", "ETH/USDC:USDC"  # Hyperliquid perps settle in USDC
DATA = load_extract()
WALLET = "0x" + "ab" * 20
PRIVATE_KEY = "0x" + "11" * 32


@pytest.fixture
def sim():
    with running_hyperliquid_sim(start=START) as s:
        yield s


async def post(url: str, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as http, http.post(url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def raw_ctx(payload: list[Any], coin: str) -> dict[str, Any]:
    """One coin's asset context from a raw metaAndAssetCtxs answer."""
    names = [u["name"] for u in payload[0]["universe"]]
    return payload[1][names.index(coin)]


def hourly_rate(coin: str, T: int) -> float:
    """The shipped 8-hour Binance rate of the settlement covering hour T, over 8."""
    h = DATA[coin]
    j = int(np.searchsorted(h.funding_time, T, side="left"))
    return float(h.funding_rate[j]) / 8.0


@contextlib.asynccontextmanager
async def client(sim, credentials: Credentials | None = None) -> AsyncIterator[Any]:
    ex = make_exchange("hyperliquid", credentials, base_url=sim.url)
    ex.enableRateLimit = False
    try:
        yield ex
    finally:
        await ex.close()


@contextlib.asynccontextmanager
async def live_feed(sim, universe: tuple[str, ...] = ("BTC", "ETH")) -> AsyncIterator[LiveFeed]:
    ex = make_exchange("hyperliquid", base_url=sim.url)
    ex.enableRateLimit = False
    feed = LiveFeed("hyperliquid", ex, VenueClock(), list(universe))
    try:
        await feed.start()
        yield feed
    finally:
        await feed.close()


# ---------------------------------------------------------------------------------------- make_exchange


def test_credentials_are_the_wallet_address_and_its_private_key():
    assert "hyperliquid" in SUPPORTED
    ex = make_exchange("hyperliquid", Credentials(api_key=WALLET, secret=PRIVATE_KEY))
    assert (ex.walletAddress, ex.privateKey) == (WALLET, PRIVATE_KEY)
    assert not ex.apiKey and not ex.secret  # no API key / secret pair on Hyperliquid
    assert ex.options["fetchMarkets"]["types"] == ["swap"]
    assert ex.options["builderFee"] is False
    assert ex.implode_hostname(ex.urls["api"]["public"]) == "https://api.hyperliquid.xyz"
    local = make_exchange("hyperliquid", base_url="http://127.0.0.1:9")
    assert local.urls["api"] == {"public": "http://127.0.0.1:9", "private": "http://127.0.0.1:9"}


# ---------------------------------------------------------------------------------------- ccxt against the sim


async def test_load_markets_lists_usdc_settled_perps_only(sim):
    async with client(sim) as ex:
        markets = await ex.load_markets()
    assert sorted(markets) == [BTC, ETH]  # SOL has no data in March 2024
    for sym, idx in ((BTC, "0"), (ETH, "1")):
        m = markets[sym]
        assert (m["swap"], m["linear"], m["spot"], m["quote"], m["settle"]) == (True, True, False, "USDC", "USDC")
        assert m["id"] == idx and m["baseName"] == sym.split("/")[0]  # the asset index, and the coin name
    assert markets[BTC]["precision"]["amount"] == 1e-5
    assert dict(sim.state.requests) == {"POST /info spotMeta": 1, "POST /info metaAndAssetCtxs": 1}
    assert sim.state.unknown_paths == []


async def test_funding_rates_are_hourly_and_match_the_wire(sim):
    raw = await post(sim.url, "/info", {"type": "metaAndAssetCtxs"})
    async with client(sim) as ex:
        rates = await ex.fetch_funding_rates()
        tickers = await ex.fetch_tickers(params={"type": "swap"})
        assert await ex.fetch_time() == T0 * 1000
    for coin, sym in (("BTC", BTC), ("ETH", ETH)):
        ctx, r, t = raw_ctx(raw, coin), rates[sym], tickers[sym]
        assert r["interval"] == "1h"
        assert r["fundingRate"] == float(ctx["funding"]) == pytest.approx(hourly_rate(coin, NEXT), rel=1e-9)
        assert (r["markPrice"], r["indexPrice"]) == (float(ctx["markPx"]), float(ctx["oraclePx"]))
        assert (t["bid"], t["ask"], t["close"]) == (float(ctx["impactPxs"][0]), float(ctx["impactPxs"][1]),
                                                    float(ctx["midPx"]))
        assert t["bid"] < t["close"] < t["ask"]
        i = (T0 - DATA[coin].t0) // HOUR
        assert float(ctx["oraclePx"]) == pytest.approx(DATA[coin].spot[i], rel=1e-4)  # 5 significant figures
        assert float(ctx["markPx"]) == pytest.approx(DATA[coin].mark[i], rel=1e-4)
        assert all(isinstance(v, str) for k, v in ctx.items() if k != "impactPxs")  # numbers as strings


async def test_funding_history_pages_each_hour_once_in_order(sim):
    hours = 700  # more than one page
    since = (T0 - T0 % HOUR - (hours - 1) * HOUR) * 1000
    first = await post(sim.url, "/info", {"type": "fundingHistory", "coin": "BTC", "startTime": since})
    assert len(first) == FUNDING_PAGE == 500
    assert set(first[0]) == {"coin", "fundingRate", "premium", "time"} and first[0]["coin"] == "BTC"
    sim.state.reset_counts()
    rows, cursor = [], since
    async with client(sim) as ex:
        await ex.load_markets()
        while True:
            page = await ex.fetch_funding_rate_history(BTC, cursor)
            rows += page
            if len(page) < FUNDING_PAGE:
                break
            cursor = page[-1]["timestamp"] + 1
    assert sim.state.requests["POST /info fundingHistory"] == 2
    times = [r["timestamp"] // 1000 for r in rows]
    assert times == [since // 1000 + k * HOUR for k in range(hours)]  # every hour, once, ascending, up to 00:00
    assert times[-1] == T0 - T0 % HOUR
    assert [r["fundingRate"] for r in rows[:FUNDING_PAGE]] == [float(x["fundingRate"]) for x in first]
    for r in rows[::37]:
        assert r["fundingRate"] == pytest.approx(hourly_rate("BTC", r["timestamp"] // 1000), rel=1e-9)
    # eight hours in a row share one Binance settlement's rate / 8
    by_t = {r["timestamp"] // 1000: r["fundingRate"] for r in rows}
    settle = int(DATA["BTC"].funding_time[np.searchsorted(DATA["BTC"].funding_time, T0 - 2 * 86400)])
    same = {by_t[settle - k * HOUR] for k in range(8)}
    assert len(same) == 1 and same.pop() == pytest.approx(hourly_rate("BTC", settle), rel=1e-9)


async def test_funding_history_window_and_time_limits(sim):
    start = (T0 - T0 % HOUR - 10 * HOUR) * 1000
    rows = await post(sim.url, "/info", {"type": "fundingHistory", "coin": "ETH", "startTime": start,
                                         "endTime": start + 3 * HOUR * 1000})
    assert [r["time"] for r in rows] == [start + k * HOUR * 1000 for k in range(4)]  # both ends inclusive
    later = await post(sim.url, "/info", {"type": "fundingHistory", "coin": "ETH", "startTime": start + 1})
    assert later[0]["time"] == start + HOUR * 1000
    future = await post(sim.url, "/info", {"type": "fundingHistory", "coin": "ETH", "startTime": (T0 + 60) * 1000})
    assert future == []  # nothing settles after the simulator's now


async def test_ohlcv_pages_over_5000_candles(sim):
    hours = 6000
    last_open = T0 - T0 % HOUR - HOUR  # the last candle that has closed (00:00 is still open at 00:30)
    since = (last_open - (hours - 1) * HOUR) * 1000
    candles, cursor = [], since
    async with client(sim) as ex:
        await ex.load_markets()
        sim.state.reset_counts()
        while True:
            page = await ex.fetch_ohlcv(ETH, "1h", cursor)
            candles += page
            if len(page) < CANDLE_PAGE:
                break
            cursor = page[-1][0] + HOUR * 1000
    assert sim.state.requests["POST /info candleSnapshot"] == 2
    opens = [c[0] // 1000 for c in candles]
    assert opens == [since // 1000 + k * HOUR for k in range(hours)] and opens[-1] == last_open
    h = DATA["ETH"]
    for c in candles[:: 251]:
        i = (c[0] // 1000 - h.t0) // HOUR
        assert c[1] == pytest.approx(h.perp[i], rel=1e-4) and c[4] == pytest.approx(h.perp[i + 1], rel=1e-4)
        assert c[2] == max(c[1], c[4]) and c[3] == min(c[1], c[4])
    raw = await post(sim.url, "/info", {"type": "candleSnapshot", "req": {
        "coin": "ETH", "interval": "1h", "startTime": since, "endTime": since + 2 * HOUR * 1000}})
    assert [(r["t"], r["T"], r["s"], r["i"]) for r in raw] == [
        (since + k * HOUR * 1000, since + (k + 1) * HOUR * 1000 - 1, "ETH", "1h") for k in range(3)]


async def test_order_book_and_mids(sim):
    async with client(sim) as ex:
        book = await ex.fetch_order_book(BTC)
    assert len(book["bids"]) == len(book["asks"]) == 20 and book["timestamp"] == T0 * 1000
    assert book["bids"][0][0] < book["asks"][0][0]
    assert [b[0] for b in book["bids"]] == sorted((b[0] for b in book["bids"]), reverse=True)
    mids = await post(sim.url, "/info", {"type": "allMids"})
    assert set(mids) == {"BTC", "ETH"}
    assert book["bids"][0][0] < float(mids["BTC"]) < book["asks"][0][0]


async def test_without_its_wallet_the_server_refuses_every_signer_and_some_types_are_not_simulated(sim):
    """Trading is simulated (tests/test_hyperliquid_live.py) for the one wallet a server is started with; this one
    has none, so any signature is a stranger's. Types outside the simulation say so."""
    async with client(sim, Credentials(api_key=WALLET, secret=PRIVATE_KEY)) as ex:
        await ex.load_markets()
        with pytest.raises(ccxt.InvalidOrder, match="User or API Wallet 0x[0-9a-f]{40} does not exist"):
            await ex.create_order(BTC, "market", "buy", 0.001, 70_000.0)
        assert await ex.fetch_positions() == []  # an address with no account: empty
        with pytest.raises(ccxt.ExchangeError, match="not simulated"):
            await ex.fetch_trading_fee(BTC)  # userFees
    assert sim.state.requests["POST /exchange order"] == 1  # the signed order reached /exchange and was refused
    assert sim.state.fills == [] and sim.state.hl_orders == []


async def test_unknown_request_type_is_a_422(sim):
    async with aiohttp.ClientSession() as http, http.post(sim.url + "/info", json={"type": "nope"}) as r:
        assert r.status == 422 and "Failed to deserialize" in await r.text()
    assert sim.state.unknown_paths == ["POST /info nope"]


# ---------------------------------------------------------------------------------------- LiveFeed


async def test_live_feed_snapshot_is_hourly_with_mark_and_oracle(sim):
    async with live_feed(sim) as feed:
        raw = await post(sim.url, "/info", {"type": "metaAndAssetCtxs"})
        assert (feed.quote, feed.spot_source, feed.listed, feed.symbols) == ("USDC", "oracle", ["BTC", "ETH"],
                                                                            ["BTC", "ETH"])
        assert feed.clock.now() == pytest.approx(T0, abs=5)  # venue time, from exchangeStatus
        sim.state.reset_counts()
        await feed.refresh()
        assert dict(sim.state.requests) == {"POST /info exchangeStatus": 1, "POST /info metaAndAssetCtxs": 1}
        for coin in ("BTC", "ETH"):
            s, ctx = feed.snapshot(coin), raw_ctx(raw, coin)
            assert (s.venue, s.funding_interval_hours, s.next_funding_time) == ("hyperliquid", 1.0, NEXT)
            assert s.funding_rate == float(ctx["funding"]) and s.funding_rate_source == "venue_predicted"
            assert (s.mark, s.spot, s.perp) == (float(ctx["markPx"]), float(ctx["oraclePx"]), float(ctx["midPx"]))
            assert (s.perp_bid, s.perp_ask) == tuple(float(x) for x in ctx["impactPxs"])
            assert s.spot_bid is None and s.spot_ask is None  # an oracle price, not a book
            assert s.last_settled_rate is None and s.seconds_to_funding == pytest.approx(NEXT - T0, abs=5)


async def test_live_feed_observes_settlement_across_the_hour(sim):
    async with live_feed(sim) as feed:
        before = {c: feed.snapshot(c) for c in ("BTC", "ETH")}
        moved = await post(sim.url, "/_sim/time", {"advance_s": HOUR})
        assert moved["t"] == T0 + HOUR
        await feed.refresh()
        got = feed.settlements_between(T0, T0 + HOUR)
        assert [(x.symbol, x.time) for x in got] == [("BTC", NEXT), ("ETH", NEXT)]
        raw = await post(sim.url, "/info", {"type": "metaAndAssetCtxs"})
        for x in got:
            assert (x.rate, x.mark) == (before[x.symbol].funding_rate, before[x.symbol].mark)
            assert x.rate == pytest.approx(hourly_rate(x.symbol, NEXT), rel=1e-9)
            s = feed.snapshot(x.symbol)
            assert s.last_settled_rate == x.rate and s.next_funding_time == NEXT + HOUR
            assert s.funding_rate == float(raw_ctx(raw, x.symbol)["funding"])
            assert s.mark == float(raw_ctx(raw, x.symbol)["markPx"])
        assert feed.mean_funding_rate("BTC", T0, T0 + HOUR) == before["BTC"].funding_rate
        await feed.refresh()  # same hour again: nothing new settles
        assert feed.settlements_between(0, 2e9) == got


async def test_live_feed_preloads_30_days_of_hourly_funding_in_pages(sim):
    async with live_feed(sim, ("BTC",)) as feed:
        sim.state.reset_counts()
        await feed.preload_funding_history(["BTC"])
        assert sim.state.requests["POST /info fundingHistory"] == 2  # 720 hours: 500 + 220
        hist = feed.settlements_between(0, 2e9)
        times = [x.time for x in hist]
        assert times == sorted(set(times)) and len(times) == 30 * 24
        assert times[-1] == T0 - T0 % HOUR and times[0] == times[-1] - (30 * 24 - 1) * HOUR
        for x in hist[::29]:
            assert x.rate == pytest.approx(hourly_rate("BTC", int(x.time)), rel=1e-9)
            assert x.mark == feed.snapshot("BTC").mark  # no mark in the history: today's stands in
        await feed.preload_funding_history(["BTC"])  # twice: nothing duplicated
        assert len(feed.settlements_between(0, 2e9)) == 30 * 24


async def test_live_feed_perp_book_but_no_spot_book_or_basis_history(sim):
    async with live_feed(sim) as feed:
        buy, sell = await feed.book_slippage("BTC", "perp", 50_000.0)
        assert 0 < buy < 1e-3 and 0 < sell < 1e-3
        with pytest.raises(VenueError) as err:
            await feed.book_slippage("BTC", "spot", 50_000.0)
        assert err.value.code == "no_spot_market"
        with pytest.raises(VenueError) as err:
            await feed.basis_history("BTC", 24)
        assert err.value.code == "no_spot_market"


async def test_live_feed_5xx_is_unavailable_and_recovers(sim):
    async with live_feed(sim) as feed:
        sim.state.faults.update({"http_5xx_next": 1})
        with pytest.raises(VenueUnavailable):
            await feed.refresh()
        await feed.refresh()
        assert feed.snapshot("BTC").funding_interval_hours == 1.0
