"""OKX through ccxt, offline: the local OKX simulator's USDT-margined quarterlies and its private API, driven by
ccxt's real ``okx`` client, then `LiveVenue` trading spot, swap and futures legs on it in coins.

Expected prices come from the paper desk's own model (`basis_mcp.feed.ReplayFeed` over the shipped data), fees
from DEFAULT_SPECS, contract sizes from OKX's published ``ctVal`` (0.01 BTC): not from the simulator.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import ccxt.async_support as ccxt
import httpx
import numpy as np
import pytest

from basis_mcp.clock import SimClock
from basis_mcp.config import DEFAULT_SPECS, Settings
from basis_mcp.dated import contract_code, listed_expiries
from basis_mcp.feed import ReplayFeed
from basis_mcp.history import load_extract
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.live.venue import LiveVenue
from basis_mcp.sim.instruments import parse_time
from basis_mcp.sim.okx import running_okx_sim
from basis_mcp.venue.base import OrderRequest, VenueError, VenueTimeout

pytestmark = pytest.mark.anyio

KEY, SECRET, PASSPHRASE = "okx-key-1", "okx-secret-2", "okx-pass-3"
START = "2024-03-15T00:00:00Z"
T0 = parse_time(START)
SETTLE = T0 + 8 * 3600
E1, E2 = (int(e) for e in listed_expiries(T0))  # 2024-03-29 08:00 and 2024-06-28 08:00 UTC
BTC1, BTC2 = (contract_code("BTC", e) for e in (E1, E2))  # BTC-240329, BTC-240628
SYM1, SYM2 = (f"BTC/USDT:USDT-{c.split('-')[1]}" for c in (BTC1, BTC2))
ID1, SWAP, PERP = "BTC-USDT-240329", "BTC-USDT-SWAP", "BTC/USDT:USDT"
CT = 0.01  # OKX: coins per BTC-USDT swap or futures contract
DATA = load_extract()
PERP_FEE, SPOT_FEE = DEFAULT_SPECS["BTC"].perp_taker_fee, DEFAULT_SPECS["BTC"].spot_taker_fee


def paper(t: float) -> ReplayFeed:
    return ReplayFeed(DATA, SimClock(t))


def data_rate(T: int) -> float:
    h = DATA["BTC"]
    return float(h.funding_rate[np.searchsorted(h.funding_time, T)])


@pytest.fixture
def sim():
    with running_okx_sim(start=START, api_key=KEY, secret=SECRET, passphrase=PASSPHRASE, quarterlies=["BTC"]) as s:
        yield s


@contextlib.asynccontextmanager
async def client(sim, key: str = KEY, secret: str = SECRET, passphrase: str = PASSPHRASE) -> AsyncIterator:
    ex = make_exchange("okx", Credentials(key, secret, passphrase), base_url=sim.url)
    ex.enableRateLimit = False
    try:
        yield ex
    finally:
        await ex.close()


@contextlib.asynccontextmanager
async def live_venue(sim) -> AsyncIterator[LiveVenue]:
    async with client(sim) as ex:
        feed = LiveFeed("okx", ex, VenueClock(), ["BTC", "ETH"])
        await feed.start()
        yield LiveVenue("okx", ex, feed, Settings(), feed.clock)


def admin_time(sim, t: int) -> list[dict]:
    r = httpx.post(sim.url + "/_sim/time", json={"t": t})
    r.raise_for_status()
    return r.json()["funding"]


# --------------------------------------------------------------------------- listing and quotes


async def test_quarterlies_are_listed_with_okx_contract_facts(sim):
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as http:
        markets = await ex.load_markets()
        assert {s for s, m in markets.items() if m["future"]} == {SYM1, SYM2}  # BTC only: quarterlies=["BTC"]
        for sym, expiry, alias in ((SYM1, E1, "quarter"), (SYM2, E2, "next_quarter")):
            m = markets[sym]
            assert (m["id"], m["type"], m["linear"], m["settle"], m["active"]) == (f"BTC-USDT-{sym[-6:]}", "future", True,
                                                                                  "USDT", True)
            assert m["expiry"] == expiry * 1000 and m["contractSize"] == CT
            assert m["precision"]["amount"] == 0.1 and m["limits"]["amount"]["min"] == 0.1  # lotSz / minSz, contracts
            assert (m["info"]["alias"], m["info"]["instFamily"], m["info"]["ctValCcy"]) == (alias, "BTC-USDT", "BTC")
        assert markets[PERP]["contractSize"] == CT and markets[PERP]["precision"]["amount"] == 0.01
        assert markets["BTC/USDT"]["contractSize"] is None  # spot: coins
        eth = (await http.get("/api/v5/public/instruments", params={"instType": "FUTURES", "instFamily": "ETH-USDT"})).json()
        assert eth == {"code": "0", "msg": "", "data": []}


async def test_quarterly_quotes_are_the_paper_desks_model_and_the_live_feed_quotes_them(sim):
    want1, want2 = paper(T0).dated_snapshot(BTC1), paper(T0).dated_snapshot(BTC2)
    hs = DEFAULT_SPECS["BTC"].perp_half_spread_bps / 1e4
    async with client(sim) as ex:
        await ex.load_markets()
        tickers = await ex.fetch_tickers(params={"type": "future"})
        assert set(tickers) == {SYM1, SYM2}
        for sym, want in ((SYM1, want1), (SYM2, want2)):
            t = tickers[sym]
            assert t["last"] == pytest.approx(want.perp, rel=1e-10)
            assert t["bid"] == pytest.approx(want.perp * (1 - hs), abs=0.01) and t["ask"] == pytest.approx(want.perp * (1 + hs), abs=0.01)
        marks = await ex.fetch_mark_prices(params={"type": "future"})
        assert marks[SYM1]["markPrice"] == pytest.approx(want1.perp, rel=1e-10)
        assert want2.perp > want1.perp > want1.spot  # contango: the longer contract carries more

        feed = LiveFeed("okx", ex, VenueClock(), ["BTC", "ETH"])
        await feed.start()
        assert feed.dated_contracts == [BTC1, BTC2] and feed.dated[BTC1] == SYM1
        snap = feed.snapshot(BTC1)
        assert snap.perp == snap.mark == pytest.approx(want1.perp, rel=1e-10)
        assert (snap.perp_bid, snap.perp_ask) == (tickers[SYM1]["bid"], tickers[SYM1]["ask"])
        assert (snap.funding_rate, snap.funding_rate_source) == (0.0, "none (dated future)")
        assert snap.spot == pytest.approx(want1.spot, rel=2e-4) and feed.snapshot("BTC").funding_interval_hours == 8
        sim.state.reset_counts()
        await feed.refresh()
        assert dict(sim.state.requests) == {"GET /api/v5/public/funding-rate": 1, "GET /api/v5/market/tickers": 3}
        slip = await feed.book_slippage(BTC1, "future", 100_000)  # OKX's books count contracts
        assert slip is not None and 0 < slip[0] < 0.01 and 0 < slip[1] < 0.01

        admin_time(sim, E1 + 2 * 3600)  # delivered: the markets reload once, the next quarter is quoted at once
        sim.state.reset_counts()
        await feed.refresh()
        assert sim.state.requests["GET /api/v5/public/instruments"] == 5  # SPOT, FUTURES, SWAP, OPTION (BTC-USD, ETH-USD)
        btc3 = contract_code("BTC", listed_expiries(E1)[1])
        assert feed.dated_contracts == [BTC2, btc3]
        assert feed.snapshot(btc3).perp == pytest.approx(paper(E1 + 2 * 3600).dated_snapshot(btc3).perp, rel=1e-10)
        sim.state.reset_counts()
        await feed.refresh()
        assert "GET /api/v5/public/instruments" not in sim.state.requests  # nothing changed: no second reload


# --------------------------------------------------------------------------- the private API through ccxt


async def test_an_order_round_trip_is_in_contracts_with_okx_fees_and_isolated_margin(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        total0 = sim.state.total_usdt()
        assert (await ex.fetch_balance())["free"] == {"USDT": total0}
        await ex.set_leverage(3, SYM1, {"marginMode": "isolated"})
        assert (sim.state.margin_type["BTCUSDT_240329"], sim.state.leverage["BTCUSDT_240329"]) == ("ISOLATED", 3)

        ack = await ex.create_order(SYM1, "market", "sell", 5, None, {"clientOrderId": "cal1", "marginMode": "isolated"})
        assert ack["status"] is None and ack["filled"] is None and ack["clientOrderId"] == "cal1"  # OKX acks with ids
        o = await ex.fetch_order(ack["id"], SYM1)
        quote = paper(T0).dated_snapshot(BTC1).perp
        avg = DEFAULT_SPECS["BTC"].costs.perp.fill_price(quote, "sell", 5 * CT * quote)
        assert (o["status"], o["amount"], o["filled"], o["side"]) == ("closed", 5, 5, "sell")
        assert o["average"] == pytest.approx(avg, rel=1e-9)
        assert o["fee"] == {"cost": pytest.approx(5 * CT * o["average"] * PERP_FEE, abs=1e-8), "currency": "USDT"}
        assert sim.state.positions["BTCUSDT_240329"].amt == pytest.approx(-5 * CT)  # 5 contracts = 0.05 BTC
        raw = (await ex.private_get_trade_order({"instId": ID1, "clOrdId": "cal1"}))["data"][0]
        assert float(raw["fee"]) < 0 and float(raw["fee"]) == pytest.approx(-o["fee"]["cost"])  # OKX: negative = paid
        assert (raw["state"], raw["sz"], raw["accFillSz"], raw["tdMode"], raw["instType"]) == ("filled", "5", "5", "isolated",
                                                                                             "FUTURES")
        (pos,) = await ex.fetch_positions([SYM1])
        assert (pos["contracts"], pos["contractSize"], pos["side"], pos["marginMode"], pos["leverage"]) == (5, CT, "short",
                                                                                                          "isolated", 3)
        assert float(pos["info"]["margin"]) == pytest.approx(5 * CT * o["average"] / 3, abs=1e-6)
        assert float(pos["info"]["liqPx"]) > o["average"]  # a short is liquidated above its entry
        (trade,) = await ex.fetch_my_trades(SYM1)
        assert (trade["amount"], trade["order"], trade["fee"]["cost"]) == (5, ack["id"], pytest.approx(o["fee"]["cost"]))

        with pytest.raises(ccxt.InvalidOrder, match="51121"):  # half a lot (0.05 contracts)
            await ex.private_post_trade_order({"instId": ID1, "tdMode": "isolated", "side": "sell", "ordType": "market", "sz": "0.05"})
        with pytest.raises(ccxt.InvalidOrder, match="51016"):
            await ex.create_order(SYM1, "market", "sell", 1, None, {"clientOrderId": "cal1", "marginMode": "isolated"})
        with pytest.raises(ccxt.BadRequest, match="clOrdId"):  # OKX's client ids are letters and digits
            await ex.create_order(SYM1, "market", "sell", 1, None, {"clientOrderId": "cal-2", "marginMode": "isolated"})
        with pytest.raises(ccxt.ExchangeError, match="51169"):  # nothing long to reduce
            await ex.create_order(SYM1, "market", "sell", 1, None, {"reduceOnly": True, "marginMode": "isolated"})
        part = await ex.create_order(SYM1, "market", "buy", 2, None, {"reduceOnly": True, "marginMode": "isolated"})
        assert (await ex.fetch_order(part["id"], SYM1))["reduceOnly"] is True
        assert sim.state.positions["BTCUSDT_240329"].amt == pytest.approx(-3 * CT)

        margin = await ex.private_post_account_position_margin_balance({"instId": ID1, "posSide": "net", "type": "add", "amt": "25"})
        assert margin["data"][0]["type"] == "add"
        spot = await ex.create_order("BTC/USDT", "market", "buy", 0.01)  # spot sizes are coins; the fee in BTC
        spot = await ex.fetch_order(spot["id"], "BTC/USDT")
        assert (spot["filled"], spot["fee"]["currency"]) == (0.01, "BTC") and spot["fee"]["cost"] == pytest.approx(0.01 * SPOT_FEE)
        assert (await ex.fetch_balance())["free"]["BTC"] == pytest.approx(0.01 * (1 - SPOT_FEE))
        # the account moved by exactly the fills, the fees and the P&L (margin stays the account's)
        fees = sum(float(b["fee"]) for b in (await ex.private_get_account_bills({"type": "2", "ccy": "USDT"}))["data"])
        pnl = sum(float(b["pnl"]) for b in (await ex.private_get_account_bills({"type": "2", "ccy": "USDT"}))["data"])
        assert sim.state.total_usdt() == pytest.approx(total0 + fees + pnl - spot["cost"], abs=1e-6)


async def test_bad_credentials_are_refused_with_okx_error_codes(sim):
    for key, secret, phrase, code in (("nope", SECRET, PASSPHRASE, "50111"), (KEY, "wrong", PASSPHRASE, "50113"),
                                      (KEY, SECRET, "wrong", "50105")):
        async with client(sim, key, secret, phrase) as ex:
            await ex.load_markets()
            with pytest.raises(ccxt.AuthenticationError, match=code):
                await ex.fetch_balance()
            with pytest.raises(ccxt.AuthenticationError, match=code):
                await ex.create_order(PERP, "market", "buy", 1, None, {"marginMode": "isolated"})
    async with httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.get("/api/v5/account/balance")
        assert r.status_code == 401 and r.json()["code"] == "50103"  # no key header at all
    assert sim.state.orders == []


async def test_funding_bills_and_the_delivery_at_expiry(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        total0 = sim.state.total_usdt()
        for sym in (PERP, SYM1):
            await ex.set_leverage(3, sym, {"marginMode": "isolated"})
        await ex.create_order(PERP, "market", "buy", 10, None, {"marginMode": "isolated"})
        short_fut = await ex.create_order(SYM1, "market", "sell", 10, None, {"marginMode": "isolated"})
        short_fut = await ex.fetch_order(short_fut["id"], SYM1)

        admin_time(sim, SETTLE + 60)
        (bill,) = (await ex.private_get_account_bills({"type": "8"}))["data"]
        rate, mark = data_rate(SETTLE), float(DATA["BTC"].mark[DATA["BTC"].index_at(SETTLE)])
        assert (bill["instId"], bill["instType"], bill["ts"], bill["sz"], bill["mgnMode"]) == (SWAP, "SWAP", str(SETTLE * 1000),
                                                                                             "10", "isolated")
        assert float(bill["px"]) == pytest.approx(rate, rel=1e-9)
        assert float(bill["balChg"]) == pytest.approx(-10 * CT * mark * rate, abs=1e-8)
        assert bill["subType"] == ("173" if rate > 0 else "174")  # a long pays a positive rate
        history = await ex.fetch_funding_history(PERP)
        assert [(h["timestamp"], h["amount"]) for h in history] == [(SETTLE * 1000, pytest.approx(float(bill["balChg"])))]

        settled = admin_time(sim, E1 + 3600)
        (row,) = [r for r in settled if r["incomeType"] == "DELIVERED_SETTELMENT"]
        (dlv,) = (await ex.private_get_account_bills_archive({"type": "3"}))["data"]
        index = paper(E1).snapshot("BTC", at=E1).spot  # the paper desk's delivery price
        assert (dlv["instId"], dlv["subType"], dlv["sz"], dlv["ts"]) == (ID1, "113", "10", str(E1 * 1000))  # delivery short
        assert float(dlv["px"]) == pytest.approx(index, abs=1e-8)
        assert float(dlv["pnl"]) == pytest.approx(-10 * CT * (index - short_fut["average"]), abs=1e-6)
        assert float(dlv["pnl"]) == pytest.approx(float(row["income"]), abs=1e-8)
        assert [p["symbol"] for p in await ex.fetch_positions()] == [PERP]  # the future is closed
        paid = sum(float(b["balChg"]) for b in (await ex.private_get_account_bills_archive({"type": "8"}))["data"])
        assert len((await ex.private_get_account_bills_archive({"type": "8"}))["data"]) == (E1 + 3600 - SETTLE) // (8 * 3600) + 1
        fees = sum(float(b["fee"]) for b in (await ex.private_get_account_bills_archive({"type": "2"}))["data"])
        assert sim.state.total_usdt() == pytest.approx(total0 + fees + paid + float(dlv["pnl"]), abs=1e-6)
        with pytest.raises(ccxt.BadSymbol):  # delivered: no longer listed, refused by the venue too
            await ex.private_post_trade_order({"instId": ID1, "tdMode": "isolated", "side": "buy", "ordType": "market", "sz": "1"})
        raw = (await ex.private_get_trade_order({"instId": ID1, "ordId": short_fut["id"]}))["data"][0]
        assert raw["state"] == "filled"  # ... but its orders are still there


# --------------------------------------------------------------------------- LiveVenue on OKX


async def test_live_venue_trades_spot_perp_and_future_legs_in_coins(sim):
    async with live_venue(sim) as v:
        assert v.markets == {"spot", "perp", "future"} and v.feed.dated_contracts == [BTC1, BTC2]
        with pytest.raises(VenueError, match="ETH-240329: not listed on live:okx") as e:
            await v.set_leverage("ETH-240329", 2)
        assert e.value.code == "bad_symbol"

        await v.set_leverage(BTC1, 3)
        await v.set_leverage("BTC", 3)
        assert sim.state.margin_type == {"BTCUSDT_240329": "ISOLATED", "BTCUSDT": "ISOLATED"}
        assert sim.state.leverage == {"BTCUSDT_240329": 3, "BTCUSDT": 3}
        sell = await v.place_order(OrderRequest("bm-1-fo-1a2b3c4d", BTC1, "future", "sell", 0.05, False))
        assert (sell.status, sell.filled_qty, sell.requested_qty, sell.market) == ("filled", 0.05, 0.05, "future")
        assert sell.fee_usd == pytest.approx(0.05 * sell.avg_price * PERP_FEE, abs=1e-8)
        assert sell.mid_price == pytest.approx(v.feed.snapshot(BTC1).perp)
        assert sim.state.orders[-1].client_order_id == "bm1fo1a2b3c4d"  # OKX's letters-and-digits clOrdId
        buy = await v.place_order(OrderRequest("bm-1-po-1a2b3c4d", "BTC", "perp", "buy", 0.047, False))
        assert (buy.filled_qty, sim.state.positions["BTCUSDT"].amt) == (0.047, pytest.approx(0.047))  # 4.7 contracts
        spot = await v.place_order(OrderRequest("bm-2-so-1a2b3c4d", "BTC", "spot", "buy", 0.01, False))
        assert spot.filled_qty >= 0.01 and spot.fee_usd == pytest.approx((spot.filled_qty / (1 - SPOT_FEE)) * SPOT_FEE
                                                                         * spot.avg_price, rel=1e-3)

        fut = await v.fetch_position("future", BTC1)
        assert (fut.symbol, fut.quantity, fut.leverage) == (BTC1, -0.05, 3)
        assert fut.isolated_wallet_usd == pytest.approx(0.05 * sell.avg_price / 3, abs=1e-6)
        assert (await v.fetch_perp_position("BTC")).quantity == pytest.approx(0.047)
        assert await v.held_instruments("future") == [BTC1] and await v.held_instruments("perp") == ["BTC"]
        await v.add_margin(BTC1, 25.0, market="future")
        assert (await v.fetch_position("future", BTC1)).isolated_wallet_usd == pytest.approx(fut.isolated_wallet_usd + 25)
        bal = await v.fetch_balances()
        assert bal["BTC"] == pytest.approx(spot.filled_qty) and bal["USDT"] == pytest.approx(sim.state.available())

        again = await v.fetch_order("bm-1-fo-1a2b3c4d", BTC1, "future")
        assert (again.status, again.filled_qty, again.side, again.fee_usd) == ("filled", 0.05, "sell", pytest.approx(sell.fee_usd))
        assert await v.fetch_order("never-sent", "BTC", "perp") is None
        part = await v.place_order(OrderRequest("bm-1-fc-1a2b3c4d", BTC1, "future", "buy", 0.02, True))
        assert part.filled_qty == 0.02 and sim.state.orders[-1].reduce_only

        admin_time(sim, SETTLE + 30)
        (f,) = await v.funding_history(T0)
        rate, mark = data_rate(SETTLE), float(DATA["BTC"].mark[DATA["BTC"].index_at(SETTLE)])
        assert (f.symbol, f.time, f.quantity) == ("BTC", SETTLE, pytest.approx(0.047))
        assert f.rate == pytest.approx(rate) and f.amount_usd == pytest.approx(-0.047 * mark * rate, abs=1e-8)
        assert f.mark_price == pytest.approx(mark, rel=1e-6)
        assert await v.funding_history(SETTLE) == []

        assert await v.liquidations(T0, [BTC1, "BTC"]) == []  # nothing delivered yet
        admin_time(sim, E1 + 1800)
        await v.feed.refresh()
        assert BTC1 not in v.feed.dated and await v.held_instruments("future") == []
        (ev,) = await v.liquidations(T0, [BTC1, "BTC"])
        assert (ev.symbol, ev.time, ev.quantity, ev.market, ev.kind, ev.loss_usd) == (BTC1, E1, pytest.approx(-0.03), "future",
                                                                                    "delivery", 0.0)
        assert ev.client_order_id == f"dlv-{BTC1}-{E1}" and ev.price == pytest.approx(paper(E1).snapshot("BTC", at=E1).spot)
        assert await v.liquidations(E1, [BTC1]) == []
        old = await v.fetch_order("bm-1-fo-1a2b3c4d", BTC1, "future")  # delisted: read on its raw instId
        assert (old.status, old.filled_qty, old.avg_price) == ("filled", 0.05, pytest.approx(sell.avg_price))
        assert await v.fetch_order("never-sent", BTC1, "future") is None
    async with live_venue(sim) as fresh:  # a restarted desk reads the same delivery from the bills alone
        assert await fresh.liquidations(T0, [BTC1]) == [ev]


async def test_live_venue_on_okx_faults_a_partial_fill_and_an_unknown_outcome(sim):
    async with live_venue(sim) as v:
        await v.set_leverage("BTC", 3)
        httpx.post(sim.url + "/_sim/faults", json={"partial_fill_next": 1, "partial_fraction": 0.5}).raise_for_status()
        part = await v.place_order(OrderRequest("bm-3-po-1a2b3c4d", "BTC", "perp", "buy", 0.05, False))
        assert (part.status, part.requested_qty, part.filled_qty) == ("partially_filled", 0.05, 0.025)  # 2.5 of 5 contracts
        assert sim.state.positions["BTCUSDT"].amt == pytest.approx(0.025)

        httpx.post(sim.url + "/_sim/faults", json={"http_5xx_next": 1}).raise_for_status()
        with pytest.raises(VenueTimeout):  # a 503: the outcome is unknown to the desk, never resent ...
            await v.place_order(OrderRequest("bm-4-po-1a2b3c4d", "BTC", "perp", "buy", 0.01, False))
        assert await v.fetch_order("bm-4-po-1a2b3c4d", "BTC", "perp") is None  # ... looked up by client id: not executed
        httpx.post(sim.url + "/_sim/faults", json={"timeout_after_execute_next": 1, "timeout_delay_s": 0.5}).raise_for_status()
        late = await v.place_order(OrderRequest("bm-7-po-1a2b3c4d", "BTC", "perp", "buy", 0.01, False))
        assert late.filled_qty == 0.01 and (await v.fetch_order("bm-7-po-1a2b3c4d", "BTC", "perp")).filled_qty == 0.01

        httpx.post(sim.url + "/_sim/faults", json={"reject_next": 1}).raise_for_status()
        with pytest.raises(VenueError) as e:
            await v.place_order(OrderRequest("bm-5-po-1a2b3c4d", "BTC", "perp", "buy", 0.01, False))
        assert e.value.code == "insufficient_balance" and "51008" in str(e.value)
        with pytest.raises(VenueError):  # under one lot (0.00005 BTC = 0.005 contracts): nothing to send
            await v.place_order(OrderRequest("bm-6-po-1a2b3c4d", "BTC", "perp", "buy", 0.00005, False))
        assert sim.state.positions["BTCUSDT"].amt == pytest.approx(0.035)
