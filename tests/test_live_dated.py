"""Binance USD-M quarterlies through ccxt, offline: the local Binance simulator lists them, the live
feed quotes them, ccxt trades them and the simulator delivers them at expiry.

Expected prices come from the paper desk's own model (`basis_mcp.feed.ReplayFeed.dated_snapshot` over
the shipped data), not from the simulator: the simulated live venue and the paper desk must agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import ccxt.async_support as ccxt
import httpx
import pytest

from basis_mcp.clock import SimClock
from basis_mcp.config import DEFAULT_SPECS
from basis_mcp.dated import contract_code, listed_expiries
from basis_mcp.feed import MarketDataUnavailable, ReplayFeed
from basis_mcp.history import load_extract
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.sim.binance import parse_time, running_sim

pytestmark = pytest.mark.anyio

KEY, SECRET = "dated-key-1", "dated-secret-2"
START = "2024-03-15T00:00:00Z"
T0 = parse_time(START)
E1, E2 = (int(e) for e in listed_expiries(T0))  # 2024-03-29 08:00 and 2024-06-28 08:00 UTC
E3 = int(listed_expiries(E1)[1])  # 2024-09-27 08:00: listed once E1 has delivered
DATA = load_extract()
BTC1, BTC2, BTC3 = (contract_code("BTC", e) for e in (E1, E2, E3))  # BTC-240329, BTC-240628, BTC-240927
SYM1, SYM2, SYM3 = (f"BTC/USDT:USDT-{c.split('-')[1]}" for c in (BTC1, BTC2, BTC3))


def paper(t: float) -> ReplayFeed:
    """The paper desk's feed over the shipped data at ``t``."""
    return ReplayFeed(DATA, SimClock(t))


@contextlib.asynccontextmanager
async def client(sim) -> AsyncIterator:
    ex = make_exchange("binance", Credentials(KEY, SECRET), base_url=sim.url)
    ex.enableRateLimit = False
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture
def sim():
    with running_sim(api_key=KEY, secret=SECRET, start=START, quarterlies=["BTC", "ETH"]) as s:
        yield s


async def started_feed(ex, universe: list[str]) -> LiveFeed:
    feed = LiveFeed("binance", ex, VenueClock(), universe)
    await feed.start()
    return feed


# --------------------------------------------------------------------------- listing and market data


def test_the_calendar_of_the_test():
    assert (BTC1, BTC2, BTC3) == ("BTC-240329", "BTC-240628", "BTC-240927")
    assert SYM1 == "BTC/USDT:USDT-240329"


async def test_load_markets_lists_the_current_and_next_quarter(sim):
    async with client(sim) as ex:
        markets = await ex.load_markets()
        futures = {s for s, m in markets.items() if m["future"]}
        assert futures == {SYM1, SYM2, "ETH/USDT:USDT-240329", "ETH/USDT:USDT-240628"}
        perp = markets["BTC/USDT:USDT"]
        for sym, expiry, kind in ((SYM1, E1, "CURRENT_QUARTER"), (SYM2, E2, "NEXT_QUARTER")):
            m = markets[sym]
            assert (m["type"], m["linear"], m["settle"], m["active"], m["id"]) == (
                "future", True, "USDT", True, f"BTCUSDT_{sym[-6:]}")
            assert m["expiry"] == expiry * 1000 == m["info"]["deliveryDate"]
            assert m["info"]["contractType"] == kind and m["info"]["pair"] == "BTCUSDT"
            assert m["precision"] == perp["precision"] and m["limits"]["cost"] == perp["limits"]["cost"]
            assert m["info"]["filters"] == perp["info"]["filters"]
        assert markets[SYM2]["created"] == E1 * 1000 - 91 * 86_400_000  # listed when the December quarter delivered
        assert perp["info"]["contractType"] == "PERPETUAL" and perp["swap"]


async def test_without_quarterlies_the_simulator_lists_none():
    with running_sim(api_key=KEY, secret=SECRET, start=START) as plain:
        async with client(plain) as ex:
            markets = await ex.load_markets()
            assert not [s for s, m in markets.items() if m["future"]]


async def test_quarterly_prices_are_the_paper_desks_model(sim):
    want1 = paper(T0).dated_snapshot(BTC1)
    want2 = paper(T0).dated_snapshot(BTC2)
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as http:
        await ex.load_markets()
        rates = await ex.fetch_funding_rates()
        for sym, want in ((SYM1, want1), (SYM2, want2)):
            r = rates[sym]
            assert r["markPrice"] == pytest.approx(want.perp, rel=1e-10)
            assert r["indexPrice"] == pytest.approx(want.spot, rel=1e-10)
            assert r["fundingRate"] is None and r["fundingTimestamp"] == 0  # a delivery contract has no funding
        assert rates["BTC/USDT:USDT"]["markPrice"] == pytest.approx(float(DATA["BTC"].mark[DATA["BTC"].index_at(T0)]))
        assert want2.perp > want1.perp > want1.spot  # contango: the longer contract carries more

        raw = (await http.get("/fapi/v1/premiumIndex", params={"symbol": "BTCUSDT_240329"})).json()
        assert (raw["lastFundingRate"], raw["interestRate"], raw["nextFundingTime"]) == ("", "", 0)

        hs = DEFAULT_SPECS["BTC"].perp_half_spread_bps / 1e4
        (bid, ask) = (await ex.fetch_bids_asks([SYM1]))[SYM1]["bid"], (await ex.fetch_bids_asks([SYM1]))[SYM1]["ask"]
        assert bid == pytest.approx(want1.perp * (1 - hs), abs=0.01) and ask == pytest.approx(want1.perp * (1 + hs), abs=0.01)
        book = await ex.fetch_order_book(SYM1, 5)
        assert book["bids"][0][0] == bid and book["asks"][0][0] == ask
        candles = await ex.fetch_ohlcv(SYM1, "1h", None, 3)
        assert [c[0] // 1000 for c in candles] == [T0 - 3 * 3600, T0 - 2 * 3600, T0 - 3600]
        assert candles[-1][4] == pytest.approx(want1.perp, rel=1e-10)  # the last close is observed at T0
        assert candles[0][4] == pytest.approx(paper(T0 - 2 * 3600).dated_snapshot(BTC1).perp, rel=1e-10)


# --------------------------------------------------------------------------- the live feed


async def test_live_feed_quotes_the_quarterlies_in_the_same_two_requests(sim):
    async with client(sim) as ex:
        feed = await started_feed(ex, ["BTC", "ETH"])
        assert feed.dated_contracts == [BTC1, BTC2, "ETH-240329", "ETH-240628"]
        assert feed.future_symbol(BTC1) == SYM1 and feed.dated[BTC1] == SYM1

        want = paper(T0).dated_snapshot(BTC1)
        snap = feed.snapshot(BTC1)
        assert snap.symbol == BTC1 and snap.venue == "binance" and snap.now == pytest.approx(T0, abs=5)
        assert snap.perp == snap.mark == pytest.approx(want.perp, rel=1e-10)
        assert snap.spot == pytest.approx(feed.snapshot("BTC").spot) and snap.spot == pytest.approx(want.spot, rel=2e-4)
        assert (snap.funding_rate, snap.funding_rate_source, snap.last_settled_rate) == (0.0, "none (dated future)", None)
        assert snap.basis_pct == pytest.approx((want.perp / snap.spot - 1) * 100, rel=1e-9)

        # the perp is still the perp: a quarterly's premiumIndex row never overwrites it
        perp = feed.snapshot("BTC")
        assert perp.mark == pytest.approx(float(DATA["BTC"].mark[DATA["BTC"].index_at(T0)]), rel=1e-10)
        assert perp.funding_rate != 0.0

        sim.state.reset_counts()
        await feed.refresh()
        assert dict(sim.state.requests) == {"GET /fapi/v1/premiumIndex": 1, "GET /api/v3/ticker/bookTicker": 1}

        with pytest.raises(MarketDataUnavailable, match="expired"):
            feed.snapshot(BTC1, at=E1)
        with pytest.raises(MarketDataUnavailable, match="does not list"):
            feed.snapshot(BTC3)
        with pytest.raises(MarketDataUnavailable):
            feed.snapshot("BTC-240330")  # not a quarterly expiry
        slip = await feed.book_slippage(BTC1, "future", 100_000)
        assert slip is not None and slip[0] > 0 and slip[1] > 0


# --------------------------------------------------------------------------- trading and delivery


async def test_short_quarterly_is_isolated_pays_no_funding_and_is_delivered_at_the_index(sim):
    fee = DEFAULT_SPECS["BTC"].perp_taker_fee
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as admin:
        await ex.load_markets()
        total0 = sim.state.total_usdt()
        assert (await ex.set_margin_mode("isolated", SYM1))["code"] == 200
        assert (await ex.set_leverage(3, SYM1))["leverage"] == 3
        sell = await ex.create_order(SYM1, "market", "sell", 0.05, None, {"clientOrderId": "cal-fut-in"})
        assert sell["status"] == "closed" and sell["filled"] == 0.05 and sell["clientOrderId"] == "cal-fut-in"
        quote = paper(T0).dated_snapshot(BTC1).perp
        assert sell["average"] == pytest.approx(DEFAULT_SPECS["BTC"].costs.perp.fill_price(quote, "sell", 0.05 * quote),
                                                rel=1e-9)
        fetched = await ex.fetch_order(sell["id"], SYM1)
        assert fetched["filled"] == 0.05 and fetched["symbol"] == SYM1

        (pos,) = await ex.fetch_positions([SYM1])
        assert (pos["symbol"], pos["side"], pos["contracts"], pos["marginMode"]) == (SYM1, "short", 0.05, "isolated")
        assert pos["entryPrice"] == pytest.approx(sell["average"])
        assert pos["positionMargin"] == pytest.approx(sell["cost"] / 3, abs=1e-6)
        assert await ex.fetch_positions(["BTC/USDT:USDT"]) == []  # the perp is a separate position

        # a week of 8-hourly settlements: the perp would pay funding, the quarterly does not
        r = (await admin.post("/_sim/time", json={"t": T0 + 7 * 86400})).json()
        assert r["funding"] == []
        (pos,) = await ex.fetch_positions([SYM1])
        assert pos["positionMargin"] == pytest.approx(sell["cost"] / 3, abs=1e-6)
        await ex.add_margin(SYM1, 50)

        # across the delivery
        r = (await admin.post("/_sim/time", json={"t": E1 + 3600})).json()
        (row,) = r["funding"]
        index = paper(E1).snapshot("BTC", at=E1).spot  # the paper desk's delivery price
        realized = -0.05 * (index - sell["average"])
        assert (row["symbol"], row["incomeType"], row["time"]) == ("BTCUSDT_240329", "DELIVERED_SETTELMENT", E1 * 1000)
        assert float(row["income"]) == pytest.approx(realized, abs=1e-6)

        rows = await ex.fapiPrivateGetIncome({"incomeType": "DELIVERED_SETTELMENT"})
        assert [(x["symbol"], x["income"]) for x in rows] == [("BTCUSDT_240329", row["income"])]
        ledger = await ex.fetch_ledger("USDT", None, None, {"type": "future"})
        (entry,) = [e for e in ledger if e["type"] == "settlement"]
        assert entry["amount"] == pytest.approx(abs(realized), abs=1e-6) and entry["timestamp"] == E1 * 1000
        prices = await ex.fapiDataGetDeliveryPrice({"pair": "BTCUSDT"})
        assert prices[0]["deliveryTime"] == E1 * 1000 and float(prices[0]["deliveryPrice"]) == pytest.approx(index, abs=1e-8)

        assert await ex.fetch_positions([SYM1]) == []
        fut = (await ex.fetch_balance({"type": "future"}))["info"]
        assert float(fut["totalWalletBalance"]) == float(fut["totalCrossWalletBalance"])  # isolated margin returned
        commission = sum(float(x["income"]) for x in await ex.fapiPrivateGetIncome({"incomeType": "COMMISSION",
                                                                                    "startTime": T0 * 1000}))
        assert commission == pytest.approx(-sell["cost"] * fee, abs=1e-6)
        spot_usdt = (await ex.fetch_balance())["USDT"]["free"]
        total = spot_usdt + float(fut["totalWalletBalance"])
        assert total == pytest.approx(total0 + commission + float(row["income"]), abs=1e-6)
        assert sim.state.total_usdt() == pytest.approx(total, abs=1e-8)

        # delisted: the next quarter is listed in its place
        markets = await ex.load_markets(True)
        futures = {s: m["info"]["contractType"] for s, m in markets.items() if m["future"] and m["base"] == "BTC"}
        assert futures == {SYM2: "CURRENT_QUARTER", SYM3: "NEXT_QUARTER"}
        assert markets[SYM3]["created"] == E1 * 1000
        with pytest.raises(ccxt.BadSymbol):
            await ex.create_order(SYM1, "market", "buy", 0.05)
        with pytest.raises(ccxt.BadSymbol, match="Invalid symbol"):  # the venue refuses it too (-1121)
            await ex.fapiPrivatePostOrder({"symbol": "BTCUSDT_240329", "side": "BUY", "type": "MARKET", "quantity": "0.05"})
        with pytest.raises(ccxt.BadSymbol):  # ccxt no longer knows the delivered contract ...
            await ex.fetch_order(sell["id"], SYM1)
        raw = await ex.fapiPrivateGetOrder({"symbol": "BTCUSDT_240329", "orderId": sell["id"]})
        assert raw["executedQty"] == "0.050" and raw["status"] == "FILLED"  # ... the venue still has its orders


async def test_cross_margin_close_before_expiry_and_a_long_delivered_in_cross(sim):
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as admin:
        await ex.load_markets()
        total0 = sim.state.total_usdt()
        buy = await ex.create_order(SYM2, "market", "buy", 0.02)
        close = await ex.create_order(SYM2, "market", "sell", 0.02, None, {"reduceOnly": True})
        assert await ex.fetch_positions([SYM2]) == []
        again = await ex.create_order(SYM2, "market", "buy", 0.01)
        (pos,) = await ex.fetch_positions([SYM2])
        assert (pos["side"], pos["marginMode"]) == ("long", "cross")
        await admin.post("/_sim/time", json={"t": E2})  # exactly at the delivery time: delivered
        index = paper(E2).snapshot("BTC", at=E2).spot
        rows = [x for x in sim.state.income if x["incomeType"] == "DELIVERED_SETTELMENT"]
        assert [x["symbol"] for x in rows] == ["BTCUSDT_240628"]
        assert float(rows[0]["income"]) == pytest.approx(0.01 * (index - again["average"]), abs=1e-6)
        fees = sum(float(x["income"]) for x in sim.state.income if x["incomeType"] == "COMMISSION")
        pnl = sum(float(x["income"]) for x in sim.state.income if x["incomeType"] == "REALIZED_PNL")
        assert pnl == pytest.approx(close["cost"] - buy["cost"], abs=1e-6)
        assert sim.state.total_usdt() == pytest.approx(total0 + fees + pnl + float(rows[0]["income"]), abs=1e-6)
        assert sim.state.positions["BTCUSDT_240628"].amt == 0.0


async def test_after_delivery_the_feed_reloads_once_and_quotes_the_next_quarter(sim):
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as admin:
        feed = await started_feed(ex, ["BTC"])
        assert feed.dated_contracts == [BTC1, BTC2]
        await admin.post("/_sim/time", json={"t": E1 + 2 * 3600})
        sim.state.reset_counts()
        await feed.refresh()
        assert sim.state.requests["GET /fapi/v1/exchangeInfo"] == 1  # the markets were reloaded once
        assert feed.clock.now() == pytest.approx(E1 + 2 * 3600, abs=5)  # the venue clock moved with the sim
        assert feed.dated_contracts == [BTC2, BTC3]
        with pytest.raises(MarketDataUnavailable, match="expired"):
            feed.snapshot(BTC1)
        want = paper(E1 + 2 * 3600).dated_snapshot(BTC3)
        assert feed.snapshot(BTC3).perp == pytest.approx(want.perp, rel=1e-10)
        assert feed.snapshot(BTC2).perp == pytest.approx(paper(E1 + 2 * 3600).dated_snapshot(BTC2).perp, rel=1e-10)

        sim.state.reset_counts()
        await feed.refresh()
        assert "GET /fapi/v1/exchangeInfo" not in sim.state.requests  # nothing changed: no second reload
