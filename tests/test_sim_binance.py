"""The Binance simulator, driven through ccxt exactly as the desk drives a real venue.

Every operation goes through `make_exchange("binance", ..., base_url=sim.url)`; expected
numbers come from the shipped data (load_extract) and DEFAULT_SPECS, not from the simulator.
ccxt's own client-side throttle is switched off here (it would add seconds of sleeping after
the weight-80 all-symbol tickers call); it has nothing to do with the server.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import ccxt.async_support as ccxt
import httpx
import numpy as np
import pytest

from basis_mcp.config import DEFAULT_SPECS
from basis_mcp.history import load_extract
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.sim.binance import SimState, parse_time, running_sim
from basis_mcp.sim.trading import TradingApi

pytestmark = pytest.mark.anyio

KEY, SECRET = "test-key-123", "test-secret-456"
START = "2024-03-15T00:00:00Z"
T0 = parse_time(START)
SETTLE = T0 + 8 * 3600  # 08:00 UTC
REPO = Path(__file__).resolve().parents[1]
DATA = load_extract()


def data_rate(sym: str, T: int) -> float:
    h = DATA[sym]
    return float(h.funding_rate[np.searchsorted(h.funding_time, T)])


def data_at(sym: str, arr: str, t: int) -> float:
    h = DATA[sym]
    return float(getattr(h, arr)[h.index_at(t)])


@contextlib.asynccontextmanager
async def client(sim, key: str = KEY, secret: str = SECRET, **kw) -> AsyncIterator:
    ex = make_exchange("binance", Credentials(key, secret), base_url=sim.url, **kw)
    ex.enableRateLimit = False
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture
def sim():
    with running_sim(api_key=KEY, secret=SECRET, start=START, extra_symbols=3) as s:
        yield s


# --------------------------------------------------------------------------- market data


async def test_markets_and_market_data(sim):
    async with client(sim) as ex:
        markets = await ex.load_markets()
        spot, perp = markets["BTC/USDT"], markets["BTC/USDT:USDT"]
        assert spot["spot"] and perp["swap"] and perp["linear"] and perp["settle"] == "USDT"
        assert perp["info"]["contractType"] == "PERPETUAL"
        assert perp["precision"]["amount"] == DEFAULT_SPECS["BTC"].qty_step
        assert spot["precision"]["amount"] == 0.00001  # Binance's spot lot step is much finer than the perp's
        assert markets["SOL/USDT:USDT"]["precision"]["amount"] == 1.0
        assert spot["precision"]["price"] == 0.01
        assert (
            spot["limits"]["cost"]["min"]
            == perp["limits"]["cost"]["min"]
            == DEFAULT_SPECS["BTC"].min_notional_usd
        )
        assert {"S001/USDT", "S003/USDT:USDT"} <= set(markets)
        assert markets["SOL/USDT"]["active"] is False  # SOL's data starts in 2025

        assert await ex.fetch_time() == T0 * 1000

        rates = await ex.fetch_funding_rates()
        btc = rates["BTC/USDT:USDT"]
        assert btc["fundingRate"] == pytest.approx(data_rate("BTC", SETTLE), abs=1e-12)
        assert btc["fundingTimestamp"] == SETTLE * 1000
        assert btc["markPrice"] == pytest.approx(data_at("BTC", "mark", T0), abs=1e-6)
        assert btc["indexPrice"] == pytest.approx(data_at("BTC", "spot", T0), abs=1e-6)
        s001 = rates["S001/USDT:USDT"]  # BTC / 2, 4 h funding at half BTC's 8 h rate
        assert s001["markPrice"] == pytest.approx(btc["markPrice"] / 2, rel=1e-9)
        assert s001["fundingTimestamp"] == (T0 + 4 * 3600) * 1000
        assert s001["fundingRate"] == pytest.approx(data_rate("BTC", T0 + 4 * 3600) / 2, abs=1e-12)

        intervals = await ex.fetch_funding_intervals()
        assert set(intervals) == {"S001/USDT:USDT"} and intervals["S001/USDT:USDT"]["interval"] == "4h"

        hs = DEFAULT_SPECS["BTC"].spot_half_spread_bps / 1e4
        mid = data_at("BTC", "spot", T0)
        ba = await ex.fetch_bids_asks()
        assert {"BTC/USDT", "ETH/USDT", "S002/USDT"} <= set(ba) and "SOL/USDT" not in ba
        assert ba["BTC/USDT"]["bid"] == pytest.approx(mid * (1 - hs), abs=0.01)
        assert ba["BTC/USDT"]["ask"] == pytest.approx(mid * (1 + hs), abs=0.01)
        ba_swap = await ex.fetch_bids_asks(["BTC/USDT:USDT", "ETH/USDT:USDT"])
        assert set(ba_swap) == {"BTC/USDT:USDT", "ETH/USDT:USDT"}
        assert ba_swap["BTC/USDT:USDT"]["bid"] < data_at("BTC", "perp", T0) < ba_swap["BTC/USDT:USDT"]["ask"]

        tickers = await ex.fetch_tickers()
        assert tickers["ETH/USDT"]["last"] == pytest.approx(data_at("ETH", "spot", T0))
        assert tickers["ETH/USDT"]["open"] == pytest.approx(data_at("ETH", "spot", T0 - 86_400))
        swap_tickers = await ex.fetch_tickers(None, {"type": "swap"})
        assert swap_tickers["ETH/USDT:USDT"]["last"] == pytest.approx(data_at("ETH", "perp", T0))

        for symbol in ("BTC/USDT", "BTC/USDT:USDT"):
            book = await ex.fetch_order_book(symbol, 50)
            bids, asks = book["bids"], book["asks"]
            assert len(bids) == len(asks) == 50
            quote = ba[symbol] if symbol in ba else ba_swap[symbol]
            assert (bids[0][0], asks[0][0]) == (quote["bid"], quote["ask"])
            assert all(a[0] < b[0] for a, b in zip(asks, asks[1:], strict=False))
            assert all(a[0] > b[0] for a, b in zip(bids, bids[1:], strict=False))
            # walking $1M of asks costs about what the impact model charges
            leg = DEFAULT_SPECS["BTC"].costs.leg("spot" if symbol == "BTC/USDT" else "perp")
            book_mid = (bids[0][0] + asks[0][0]) / 2
            left, cost, qty = 1e6, 0.0, 0.0
            for price, size in asks:
                take = min(size, left / price)
                cost, qty, left = cost + take * price, qty + take, left - take * price
                if left <= 1e-6:
                    break
            assert cost / qty == pytest.approx(leg.fill_price(book_mid, "buy", 1e6), rel=2e-4)


async def test_funding_rates_is_one_request():
    with running_sim(api_key=KEY, secret=SECRET, start=START, extra_symbols=100) as sim:
        async with client(sim) as ex:
            await ex.load_markets()
            sim.state.reset_counts()
            rates = await ex.fetch_funding_rates()
            assert len(rates) == 102  # BTC, ETH, S001..S100 (SOL has no data yet)
            assert dict(sim.state.requests) == {"GET /fapi/v1/premiumIndex": 1}


# --------------------------------------------------------------------------- the carry, end to end


async def test_carry_round_trip_reconciles_to_the_cent(sim):
    perp_fee = DEFAULT_SPECS["BTC"].perp_taker_fee
    spot_fee = DEFAULT_SPECS["BTC"].spot_taker_fee
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as admin:
        await ex.load_markets()
        spot0 = (await ex.fetch_balance())["USDT"]["free"]
        fut0 = float((await ex.fetch_balance({"type": "future"}))["info"]["totalWalletBalance"])
        assert (spot0, fut0) == (100_000.0, 100_000.0)

        assert (await ex.set_margin_mode("isolated", "BTC/USDT:USDT"))["code"] == 200
        assert (await ex.set_leverage(2, "BTC/USDT:USDT"))["leverage"] == 2

        buy = await ex.create_order(
            "BTC/USDT", "market", "buy", 0.1, None, {"clientOrderId": "carry-spot-in"}
        )
        assert buy["status"] == "closed" and buy["filled"] == 0.1 and buy["clientOrderId"] == "carry-spot-in"
        assert buy["fee"] == {"currency": "BTC", "cost": pytest.approx(0.1 * spot_fee)}
        mid = data_at("BTC", "spot", T0)
        assert buy["average"] == pytest.approx(
            DEFAULT_SPECS["BTC"].costs.spot.fill_price(mid, "buy", 0.1 * mid), rel=1e-9
        )

        short = await ex.create_order(
            "BTC/USDT:USDT", "market", "sell", 0.1, None, {"clientOrderId": "carry-perp-in"}
        )
        assert short["status"] == "closed" and short["filled"] == 0.1
        pos = (await ex.fetch_positions(["BTC/USDT:USDT"]))[0]
        assert (pos["side"], pos["contracts"], pos["marginMode"]) == ("short", 0.1, "isolated")
        assert pos["entryPrice"] == pytest.approx(short["average"])
        assert pos["positionMargin"] == pytest.approx(
            short["cost"] / 2, abs=1e-6
        )  # isolated wallet = notional / 2x

        added = await ex.add_margin("BTC/USDT:USDT", 100)
        assert (added["type"], added["amount"], added["status"]) == ("add", 100.0, "ok")
        pos = (await ex.fetch_positions(["BTC/USDT:USDT"]))[0]
        assert pos["positionMargin"] == pytest.approx(short["cost"] / 2 + 100, abs=1e-6)

        # across 08:00 (admin endpoint, as a test in another process would do it)
        r = (await admin.post("/_sim/time", json={"advance_s": 9 * 3600})).json()
        assert r["t"] == T0 + 9 * 3600 and len(r["funding"]) == 1
        expected_funding = (
            0.1 * data_at("BTC", "mark", SETTLE) * data_rate("BTC", SETTLE)
        )  # short receives +rate
        history = await ex.fetch_funding_history("BTC/USDT:USDT", T0 * 1000)
        assert len(history) == 1 and history[0]["timestamp"] == SETTLE * 1000
        assert history[0]["amount"] == pytest.approx(expected_funding, abs=1e-8)
        pos = (await ex.fetch_positions(["BTC/USDT:USDT"]))[0]
        assert pos["positionMargin"] == pytest.approx(short["cost"] / 2 + 100 + expected_funding, abs=1e-6)

        close = await ex.create_order(
            "BTC/USDT:USDT",
            "market",
            "buy",
            0.1,
            None,
            {"reduceOnly": True, "clientOrderId": "carry-perp-out"},
        )
        assert close["status"] == "closed" and close["reduceOnly"] is True
        assert await ex.fetch_positions(["BTC/USDT:USDT"]) == []

        btc = (await ex.fetch_balance())["BTC"]["free"]
        assert btc == pytest.approx(0.1 - 0.1 * spot_fee, abs=1e-12)  # the buy fee was taken in BTC
        sellable = math.floor(btc / 0.001 + 1e-9) * 0.001
        sell = await ex.create_order(
            "BTC/USDT", "market", "sell", sellable, None, {"clientOrderId": "carry-spot-out"}
        )
        assert sell["fee"]["currency"] == "USDT"

        spot_bal = await ex.fetch_balance()
        fut = (await ex.fetch_balance({"type": "future"}))["info"]
        assert spot_bal["BTC"]["free"] == pytest.approx(btc - sellable, abs=1e-12)
        expected_total = (
            spot0
            + fut0
            - buy["cost"]
            + sell["cost"] * (1 - spot_fee)
            + short["cost"]
            - close["cost"]  # realised P&L of the short
            - (short["cost"] + close["cost"]) * perp_fee
            + expected_funding
        )
        total = spot_bal["USDT"]["free"] + float(fut["totalWalletBalance"])
        assert total == pytest.approx(expected_total, abs=0.005)
        assert float(fut["totalWalletBalance"]) == float(
            fut["totalCrossWalletBalance"]
        )  # isolated wallet released
        assert sim.state.total_usdt() == pytest.approx(total, abs=1e-8)

        incomes = {r["incomeType"] for r in (await admin.get("/_sim/state")).json()["income"]}
        assert incomes == {"COMMISSION", "FUNDING_FEE", "REALIZED_PNL"}


async def test_four_hour_symbol_settles_every_four_hours(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        await ex.create_order("S001/USDT:USDT", "market", "sell", 0.05)
        sim.state.set_time(T0 + 8 * 3600)
        hist = await ex.fetch_funding_history("S001/USDT:USDT", T0 * 1000)
        assert [h["timestamp"] for h in hist] == [(T0 + 4 * 3600) * 1000, SETTLE * 1000]
        for h in hist:
            T = h["timestamp"] // 1000
            expected = 0.05 * data_at("BTC", "mark", T) / 2 * data_rate("BTC", T) / 2
            assert h["amount"] == pytest.approx(expected, abs=1e-8)
        sim.state.set_time(T0)  # going back settles nothing, coming forward again settles nothing twice
        sim.state.set_time(T0 + 8 * 3600)
        assert len(await ex.fetch_funding_history("S001/USDT:USDT", T0 * 1000)) == 2


# --------------------------------------------------------------------------- orders


async def test_fetch_order_by_client_id_and_unknown(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        for symbol, coid in (("BTC/USDT", "q-spot"), ("BTC/USDT:USDT", "q-perp")):
            placed = await ex.create_order(symbol, "market", "buy", 0.01, None, {"clientOrderId": coid})
            by_coid = await ex.fetch_order(None, symbol, {"clientOrderId": coid})
            by_orig = await ex.fetch_order(None, symbol, {"origClientOrderId": coid})
            by_id = await ex.fetch_order(placed["id"], symbol)
            for o in (by_coid, by_orig, by_id):
                assert (o["id"], o["clientOrderId"], o["status"], o["filled"]) == (
                    placed["id"],
                    coid,
                    "closed",
                    0.01,
                )
                assert o["average"] == pytest.approx(placed["average"]) and o["timestamp"] == T0 * 1000
            with pytest.raises(ccxt.OrderNotFound):
                await ex.fetch_order(None, symbol, {"clientOrderId": "never-sent"})
        with pytest.raises(ccxt.OrderNotFound):  # the perp order does not exist on spot
            await ex.fetch_order(None, "BTC/USDT", {"clientOrderId": "q-perp"})
    r = httpx.get(sim.url + "/api/v3/order?symbol=BTCUSDT&orderId=1")  # unsigned: refused before lookup
    assert r.status_code == 401 and r.json()["code"] == -2015


async def test_duplicate_client_order_id_refused(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        await ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": "dup"})
        with pytest.raises(ccxt.InvalidOrder, match="-2010"):
            await ex.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": "dup"})
        await ex.create_order(
            "BTC/USDT:USDT", "market", "sell", 0.01, None, {"clientOrderId": "dup"}
        )  # other market: fine
        # make_exchange classifies errors by path behind a rewritten URL: the real class, not ExchangeError
        with pytest.raises(ccxt.InvalidOrder, match="-4116"):
            await ex.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None, {"clientOrderId": "dup"})
    assert len(sim.state.orders) == 2 and sim.state.positions["BTCUSDT"].amt == -0.01


async def test_reduce_only_that_would_open_or_grow_is_refused(sim):
    async with client(sim, fix_errors=True) as ex:
        await ex.load_markets()
        with pytest.raises(ccxt.InvalidOrder, match="-2022"):  # no position
            await ex.create_order("BTC/USDT:USDT", "market", "buy", 0.01, None, {"reduceOnly": True})
        await ex.create_order("BTC/USDT:USDT", "market", "sell", 0.02)
        with pytest.raises(
            ccxt.InvalidOrder, match="ReduceOnly Order is rejected"
        ):  # would increase the short
            await ex.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None, {"reduceOnly": True})
        with pytest.raises(ccxt.InvalidOrder, match="-2022"):  # would flip to long
            await ex.create_order("BTC/USDT:USDT", "market", "buy", 0.03, None, {"reduceOnly": True})
        # below the $100 minimum notional is fine when reducing
        await ex.create_order("BTC/USDT:USDT", "market", "buy", 0.001, None, {"reduceOnly": True})
        with pytest.raises(ccxt.InvalidOrder, match="-4164"):
            await ex.create_order("BTC/USDT:USDT", "market", "buy", 0.001)
        assert sim.state.positions["BTCUSDT"].amt == pytest.approx(-0.019)
        with pytest.raises(ccxt.InvalidOrder, match="-2022"):
            await ex.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None, {"reduceOnly": True})


def test_filters_and_balances_in_process():
    st = SimState(start=START, spot_usdt=1_000.0)
    trading = TradingApi(st)  # the order API over the state (composition, no I/O)
    with pytest.raises(Exception, match="LOT_SIZE"):
        trading.place_order("spot", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.000015"})
    with pytest.raises(Exception, match="-1111"):
        trading.place_order("perp", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0015"})
    with pytest.raises(Exception, match="NOTIONAL"):
        trading.place_order("spot", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"})
    with pytest.raises(Exception, match="insufficient balance"):
        trading.place_order("spot", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.1"})
    with pytest.raises(Exception, match="Invalid orderType"):
        trading.place_order(
            "spot", {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "1"}
        )
    with pytest.raises(Exception, match="Market is closed"):  # SOL has no data in March 2024
        trading.place_order("spot", {"symbol": "SOLUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"})
    o = trading.place_order("spot", {"symbol": "ETHUSDT", "side": "BUY", "type": "MARKET", "quoteOrderQty": "500"})
    assert o["status"] == "FILLED" and float(o["cummulativeQuoteQty"]) <= 500
    assert st.spot_bal["USDT"] == pytest.approx(1_000 - float(o["cummulativeQuoteQty"]), abs=1e-8)
    assert not st.orders[0].reduce_only and st.total_usdt() == pytest.approx(st.spot_bal["USDT"] + 100_000)


async def test_margin_mode_leverage_and_margin(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        await ex.create_order("ETH/USDT:USDT", "market", "sell", 0.1)
        with pytest.raises(ccxt.BadRequest, match="-4049"):  # cross (Binance's default): no isolated margin
            await ex.add_margin("ETH/USDT:USDT", 10)
        with pytest.raises(ccxt.OperationRejected, match="-4048"):  # not with a position open
            await ex.set_margin_mode("isolated", "ETH/USDT:USDT")
        assert (await ex.set_margin_mode("isolated", "BTC/USDT:USDT"))["msg"] == "success"
        # ccxt 4.5 raises on -4046 by default; make_exchange turns that off: "already isolated" is fine
        assert (await ex.set_margin_mode("isolated", "BTC/USDT:USDT"))["code"] == -4046
        lev = await ex.set_leverage(3, "BTC/USDT:USDT")
        assert lev == {"leverage": 3, "maxNotionalValue": lev["maxNotionalValue"], "symbol": "BTCUSDT"}
        with pytest.raises(ccxt.BadRequest, match="-4028"):
            await ex.set_leverage(101, "ETH/USDT:USDT")  # ETH's first bracket allows 100x here
        with pytest.raises(ccxt.OperationRejected, match="-4054"):
            await ex.add_margin("BTC/USDT:USDT", 10)

        await ex.create_order("BTC/USDT:USDT", "market", "sell", 0.03)
        before = sim.state.total_usdt()
        p2 = (await ex.fetch_positions(["BTC/USDT:USDT"], {"useV2": True}))[
            0
        ]  # v2 carries leverage + marginType
        p3 = (await ex.fetch_positions(["BTC/USDT:USDT"]))[0]  # v3 (ccxt's default) has neither
        assert (p2["leverage"], p2["marginMode"], p3["leverage"], p3["marginMode"]) == (
            3,
            "isolated",
            None,
            "isolated",
        )
        assert p3["liquidationPrice"] > p3["entryPrice"] and p3["maintenanceMarginPercentage"] == 0.004
        await ex.add_margin("BTC/USDT:USDT", 50)
        await ex.reduce_margin("BTC/USDT:USDT", 20)
        with pytest.raises(ccxt.InsufficientFunds, match="-4051"):
            await ex.reduce_margin("BTC/USDT:USDT", 10_000)
        pos = sim.state.positions["BTCUSDT"]
        assert pos.iso_wallet == pytest.approx(
            0.03 * float(sim.state.orders[-1].avg_price) / 3 + 30, abs=1e-6
        )
        assert sim.state.total_usdt() == pytest.approx(before, abs=1e-9)  # margin moves are internal


# --------------------------------------------------------------------------- faults


async def test_fault_latency(sim):
    async with client(sim) as ex:
        t = time.monotonic()
        await ex.fetch_time()
        fast = time.monotonic() - t
        sim.state.faults.latency_ms = 300
        t = time.monotonic()
        await ex.fetch_time()
        assert time.monotonic() - t >= 0.3 > fast


async def test_fault_5xx_and_429(sim):
    async with client(sim) as ex:
        sim.state.faults.http_5xx_next = 2
        for _ in range(2):
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await ex.fetch_time()
        assert await ex.fetch_time() == T0 * 1000
        sim.state.faults.rate_limit_next = 1
        # Binance's handle_errors maps every 418/429 to DDoSProtection before it reads the -1003 body
        with pytest.raises(ccxt.DDoSProtection, match="-1003") as e:
            await ex.fetch_funding_rates()
        assert type(e.value) is ccxt.DDoSProtection and not isinstance(e.value, ccxt.RateLimitExceeded)
        assert await ex.fetch_time() == T0 * 1000


async def test_fault_timeout_after_execute(sim):
    sim.state.faults.timeout_after_execute_next = 1
    sim.state.faults.timeout_delay_s = 1.5
    async with client(sim, timeout_ms=400) as ex:
        await ex.load_markets()
        with pytest.raises(ccxt.RequestTimeout):
            await ex.create_order(
                "BTC/USDT:USDT", "market", "sell", 0.01, None, {"clientOrderId": "lost-reply"}
            )
        o = await ex.fetch_order(None, "BTC/USDT:USDT", {"clientOrderId": "lost-reply"})
        assert (o["status"], o["filled"]) == ("closed", 0.01)
        assert (await ex.fetch_positions(["BTC/USDT:USDT"]))[0]["contracts"] == 0.01
        with pytest.raises(ccxt.ExchangeError, match="-4116"):  # retrying with the same id cannot double-fill
            await ex.create_order(
                "BTC/USDT:USDT", "market", "sell", 0.01, None, {"clientOrderId": "lost-reply"}
            )


async def test_fault_partial_fill(sim):
    sim.state.faults.partial_fill_next = 2
    sim.state.faults.partial_fraction = 0.4
    async with client(sim) as ex:
        await ex.load_markets()
        for symbol in ("BTC/USDT", "BTC/USDT:USDT"):
            o = await ex.create_order(
                symbol, "market", "buy", 0.1, None, {"clientOrderId": f"part-{symbol[-4:]}"}
            )
            assert (o["status"], o["amount"], o["filled"], o["remaining"]) == (
                "expired",
                0.1,
                0.04,
                pytest.approx(0.06),
            )
            again = await ex.fetch_order(None, symbol, {"clientOrderId": f"part-{symbol[-4:]}"})
            assert (again["status"], again["filled"], again["remaining"]) == (
                "expired",
                0.04,
                pytest.approx(0.06),
            )
        assert (await ex.fetch_balance())["BTC"]["free"] == pytest.approx(0.04 * (1 - 0.001))
        assert sim.state.positions["BTCUSDT"].amt == pytest.approx(0.04)
        full = await ex.create_order("BTC/USDT", "market", "buy", 0.1)  # the switch is used up
        assert (full["status"], full["filled"]) == ("closed", 0.1)


async def test_fault_reject(sim):
    sim.state.faults.reject_next = 3
    async with client(sim) as ex:
        await ex.load_markets()
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.create_order("BTC/USDT", "market", "buy", 0.01)
        with pytest.raises(ccxt.InsufficientFunds, match="-2019"):
            await ex.create_order("BTC/USDT:USDT", "market", "sell", 0.01)
        assert sim.state.orders == [] and sim.state.total_usdt() == 200_000.0
        sim.state.faults.update({"reject_next": 1, "reject_code": -1013, "reject_msg": "Market is closed."})
        with pytest.raises(ccxt.MarketClosed):
            await ex.create_order("ETH/USDT", "market", "buy", 0.1)


async def test_authentication(sim):
    for key, secret, code in ((KEY + "x", SECRET, -2015), (KEY, SECRET + "x", -1022)):
        async with client(sim, key=key, secret=secret) as ex:
            assert await ex.fetch_time() == T0 * 1000  # public endpoints need no key
            # with credentials, ccxt's load_markets also asks the signed /sapi margin-pair lists,
            # so bad credentials already fail there
            with pytest.raises(ccxt.AuthenticationError, match=str(code)) as e:
                await ex.load_markets()
            assert SECRET not in str(e.value) and KEY not in str(e.value)
            with pytest.raises(ccxt.AuthenticationError, match=str(code)):
                await ex.fetch_balance({"type": "future"})
    async with client(sim) as ex:
        await ex.fetch_balance()  # one successful spot private call ...
        sim.state.api_key = "rotated-key"
        # ... and ccxt reads a later -2015 as a temporary ban (DDoSProtection), not AuthenticationError
        with pytest.raises(ccxt.DDoSProtection, match="-2015"):
            await ex.fetch_balance({"type": "future"})
        sim.state.api_key = KEY
    async with httpx.AsyncClient(base_url=sim.url) as h:
        r = await h.get("/fapi/v3/account", params={"timestamp": 1}, headers={"X-MBX-APIKEY": "nope"})
        assert (r.status_code, r.json()["code"]) == (401, -2015)
        r = await h.get("/fapi/v3/account", params={"timestamp": 1})  # no key header at all
        assert (r.status_code, r.json()) == (
            401,
            {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
        )
        r = await h.get(
            "/fapi/v3/account", params={"timestamp": 1, "signature": "00"}, headers={"X-MBX-APIKEY": KEY}
        )
        assert (r.status_code, r.json()["code"]) == (400, -1022)
        assert (
            KEY not in (await h.get("/_sim/state")).text and SECRET not in (await h.get("/_sim/state")).text
        )
        assert (await h.get("/api/v3/time")).json() == {"serverTime": T0 * 1000}


# --------------------------------------------------------------------------- as a subprocess


async def test_subprocess_with_admin_endpoints():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "basis_mcp.sim.binance",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--secret",
            SECRET,
            "--start",
            START,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = json.loads(proc.stdout.readline())["url"]
        async with httpx.AsyncClient(base_url=url) as admin:
            for _ in range(100):  # the line is printed just before uvicorn accepts
                with contextlib.suppress(httpx.TransportError):
                    if (await admin.get("/_sim/time")).json()["t"] == T0:
                        break
                time.sleep(0.05)
            ex = make_exchange("binance", Credentials(KEY, SECRET), base_url=url)
            ex.enableRateLimit = False
            try:
                await ex.load_markets()
                await ex.create_order(
                    "ETH/USDT:USDT", "market", "sell", 0.5, None, {"clientOrderId": "sub-1"}
                )
                r = (await admin.post("/_sim/time", json={"t": "2024-03-15T16:00:00Z"})).json()
                assert [f["time"] for f in r["funding"]] == [SETTLE * 1000, (SETTLE + 8 * 3600) * 1000]
                assert (await admin.post("/_sim/faults", json={"http_5xx_next": 1})).json()[
                    "http_5xx_next"
                ] == 1
                with pytest.raises(ccxt.ExchangeNotAvailable):
                    await ex.fetch_time()
                assert await ex.fetch_time() == (SETTLE + 8 * 3600) * 1000
                assert (await admin.post("/_sim/faults", json={"no_such_fault": 1})).status_code == 400
                await admin.post("/_sim/deposit", json={"account": "spot", "asset": "USDT", "amount": 5})
                state = (await admin.get("/_sim/state")).json()
                assert state["spot"]["USDT"] == 100_005.0
                assert state["orders"][0]["clientOrderId"] == "sub-1"
                assert state["futures"]["positions"]["ETHUSDT"]["amt"] == -0.5
                assert state["requests"]["by_path"]["POST /fapi/v1/order"] == 1
                await ex.fetch_funding_history("ETH/USDT:USDT", T0 * 1000)
                await admin.delete("/_sim/requests")
                assert (await admin.get("/_sim/requests")).json()["total"] == 0
            finally:
                await ex.close()
    finally:
        proc.terminate()
        proc.wait(5)
