"""The Bybit V5 simulator, driven through ccxt's real ``bybit`` client exactly as the desk would.

Every operation goes through `make_exchange("bybit", ..., base_url=sim.url)` over real HTTP on
127.0.0.1; expected numbers come from the shipped data (load_extract, load_funding_venues) and
DEFAULT_SPECS, not from the simulator. ccxt's client-side throttle is switched off (it has nothing
to do with the server).
"""

from __future__ import annotations

import contextlib
import json
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
from basis_mcp.history import load_extract, load_funding_venues
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.sim.bybit import make_state, running_bybit_sim
from basis_mcp.sim.instruments import parse_time

pytestmark = pytest.mark.anyio

KEY, SECRET = "bybit-key-123", "bybit-secret-456"
START = "2024-03-15T00:00:00Z"
T0 = parse_time(START)
SETTLE = T0 + 8 * 3600  # 08:00 UTC
HOUR = 3600
REPO = Path(__file__).resolve().parents[1]
DATA = load_extract()
BTC, BTC_PERP = "BTC/USDT", "BTC/USDT:USDT"


def data_rate(sym: str, T: int) -> float:
    h = DATA[sym]
    return float(h.funding_rate[np.searchsorted(h.funding_time, T)])


def data_at(sym: str, arr: str, t: int) -> float:
    h = DATA[sym]
    return float(getattr(h, arr)[h.index_at(t)])


@contextlib.asynccontextmanager
async def client(sim, key: str = KEY, secret: str = SECRET, **kw) -> AsyncIterator:
    ex = make_exchange("bybit", Credentials(key, secret), base_url=sim.url, **kw)
    ex.enableRateLimit = False
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture
def sim():
    with running_bybit_sim(api_key=KEY, secret=SECRET, start=START) as s:
        yield s


def admin(sim, path: str, body: dict | None = None) -> dict:
    r = httpx.post(sim.url + path, json=body) if body is not None else httpx.get(sim.url + path)
    r.raise_for_status()
    return r.json()


async def usdt(ex) -> dict:
    return (await ex.fetch_balance())["USDT"]


# --------------------------------------------------------------------------- market data


async def test_markets_tickers_funding_and_books(sim):
    async with client(sim) as ex:
        markets = await ex.load_markets()
        assert {BTC, BTC_PERP, "ETH/USDT", "ETH/USDT:USDT"} <= set(markets)
        spot, perp = markets[BTC], markets[BTC_PERP]
        assert spot["spot"] and perp["swap"] and perp["linear"] and perp["settle"] == "USDT"
        assert perp["info"]["contractType"] == "LinearPerpetual" and perp["info"]["fundingInterval"] == 480
        assert perp["precision"]["amount"] == DEFAULT_SPECS["BTC"].qty_step and spot["precision"]["amount"] == 1e-6
        assert perp["limits"]["cost"]["min"] == spot["limits"]["cost"]["min"] == DEFAULT_SPECS["BTC"].min_notional_usd
        assert markets["SOL/USDT"]["active"] is False  # SOL's data starts in 2025
        assert await ex.fetch_time() == T0 * 1000

        tickers = await ex.fetch_tickers(None, {"type": "spot"})
        assert tickers[BTC]["last"] == pytest.approx(data_at("BTC", "spot", T0))
        assert tickers["ETH/USDT"]["open"] == pytest.approx(data_at("ETH", "spot", T0 - 86_400))
        hs = DEFAULT_SPECS["BTC"].spot_half_spread_bps / 1e4
        assert tickers[BTC]["bid"] == pytest.approx(data_at("BTC", "spot", T0) * (1 - hs), abs=0.01)
        perps = await ex.fetch_tickers(params={"type": "swap", "subType": "linear"})  # what the live feed asks
        btc = perps[BTC_PERP]
        assert btc["last"] == pytest.approx(data_at("BTC", "perp", T0))
        assert btc["markPrice"] == pytest.approx(data_at("BTC", "mark", T0))
        assert btc["indexPrice"] == pytest.approx(data_at("BTC", "spot", T0))
        assert float(btc["info"]["nextFundingTime"]) == SETTLE * 1000
        assert ex.last_json_response["time"] == T0 * 1000  # the envelope's time is simulated time

        rates = await ex.fetch_funding_rates()
        assert rates[BTC_PERP]["fundingRate"] == pytest.approx(data_rate("BTC", SETTLE), abs=1e-12)
        assert rates[BTC_PERP]["fundingTimestamp"] == SETTLE * 1000 and rates[BTC_PERP]["interval"] == "8h"
        assert rates["ETH/USDT:USDT"]["markPrice"] == pytest.approx(data_at("ETH", "mark", T0))

        ba = await ex.fetch_bids_asks(params={"type": "spot"})
        assert {BTC, "ETH/USDT"} <= set(ba) and "SOL/USDT" not in ba
        for symbol, quote in ((BTC, ba[BTC]), (BTC_PERP, btc)):
            book = await ex.fetch_order_book(symbol, 50)
            bids, asks = book["bids"], book["asks"]
            assert len(bids) == len(asks) == 50 and book["timestamp"] == T0 * 1000
            assert (bids[0][0], asks[0][0]) == (quote["bid"], quote["ask"])
            assert all(a[0] < b[0] for a, b in zip(asks, asks[1:], strict=False))
            assert all(a[0] > b[0] for a, b in zip(bids, bids[1:], strict=False))
        assert await ex.fetch_my_liquidations(BTC_PERP) == []  # the simulator never liquidates


async def test_ohlcv_pages_every_hour_once_in_order(sim):
    since = (T0 - 1500 * HOUR) * 1000
    async with client(sim) as ex:
        await ex.load_markets()
        for symbol, arr in ((BTC, "spot"), (BTC_PERP, "perp")):
            candles, cursor, calls = [], since, 0
            while True:
                batch = await ex.fetch_ohlcv(symbol, "1h", cursor, 1000)
                calls += 1
                if calls == 1:
                    raw = ex.last_json_response["result"]["list"]
                    assert len(raw) == 1000 and int(raw[0][0]) > int(raw[-1][0])  # Bybit sends newest first
                if not batch:
                    break
                candles += batch
                cursor = batch[-1][0] + 1
            times = [c[0] for c in candles]
            assert times == list(range(since, T0 * 1000, HOUR * 1000))  # 1500 hours, each once, in order
            assert calls == 3
            for c in candles[::97]:
                t = c[0] // 1000
                assert c[4] == pytest.approx(data_at("BTC", arr, t + HOUR))  # a candle closes an hour on
                assert c[1] == pytest.approx(data_at("BTC", arr, t)) and c[2] >= max(c[1], c[4]) - 1e-9
        assert len(await ex.fetch_ohlcv(BTC, "1h", since, 5000)) == 1000  # Bybit's page limit
        newest = await ex.fetch_ohlcv(BTC, "1h", None, 3)
        assert [c[0] for c in newest] == [(T0 - k * HOUR) * 1000 for k in (3, 2, 1)]
        mark = await ex.fetch_ohlcv(BTC_PERP, "1h", since, 5, {"price": "mark"})
        assert [c[4] for c in mark] == pytest.approx([data_at("BTC", "mark", since // 1000 + (k + 1) * HOUR)
                                                      for k in range(5)])
        four = await ex.fetch_ohlcv(BTC_PERP, "4h", since, 3)
        assert [c[0] for c in four] == [since + k * 4 * HOUR * 1000 for k in range(3)]


async def test_funding_rate_history_pages_past_200(sim):
    since = (T0 - 100 * 86_400) * 1000 + 1  # the first settlement after since is 8 h on
    async with client(sim) as ex:
        await ex.load_markets()
        rows, cursor = [], since
        while True:
            batch = await ex.fetch_funding_rate_history(BTC_PERP, cursor, 200)
            if not batch:
                break
            raw = ex.last_json_response["result"]["list"]
            assert len(raw) <= 200 and (len(raw) < 2 or int(raw[0]["fundingRateTimestamp"]) > int(raw[1]["fundingRateTimestamp"]))
            rows += batch
            cursor = batch[-1]["timestamp"] + 1
        times = [r["timestamp"] // 1000 for r in rows]
        assert times == list(range(T0 - 100 * 86_400 + 8 * HOUR, T0 + 1, 8 * HOUR)) and len(rows) == 300
        assert all(r["fundingRate"] == pytest.approx(data_rate("BTC", r["timestamp"] // 1000), abs=1e-12) for r in rows)
        latest = await ex.fetch_funding_rate_history(BTC_PERP)  # no since: the 200 up to now
        assert len(latest) == 200 and latest[-1]["timestamp"] == T0 * 1000
        with pytest.raises(ccxt.BadRequest):  # Bybit refuses startTime without endTime
            await ex.public_get_v5_market_funding_history({"category": "linear", "symbol": "BTCUSDT", "startTime": since})


# --------------------------------------------------------------------------- trading and the account


async def test_trades_positions_balance_and_funding_add_up(sim):
    spec = DEFAULT_SPECS["BTC"]
    async with client(sim) as ex:
        await ex.load_markets()
        w0 = (await usdt(ex))["total"]
        assert w0 == pytest.approx(200_000.0)
        ack = await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "spot-buy-1"})
        assert ack["clientOrderId"] == "spot-buy-1" and ack["filled"] is None  # Bybit answers the ids only
        buy = await ex.fetch_order(ack["id"], BTC)
        assert (buy["status"], buy["filled"], buy["amount"]) == ("closed", 0.01, 0.01)
        assert buy["fee"] == {"cost": pytest.approx(0.01 * spec.costs.leg("spot").taker_fee), "currency": "BTC"}
        assert buy["average"] > data_at("BTC", "spot", T0)
        short = await ex.fetch_order((await ex.create_order(BTC_PERP, "market", "sell", 0.01, None,
                                                            {"clientOrderId": "perp-short-1"}))["id"], BTC_PERP)
        assert short["status"] == "closed" and short["filled"] == 0.01 and short["fee"]["currency"] == "USDT"
        assert short["fee"]["cost"] == pytest.approx(short["cost"] * spec.costs.leg("perp").taker_fee, abs=1e-8)
        trades = await ex.fetch_my_trades(BTC_PERP, None, None, {"orderId": short["id"]})
        assert len(trades) == 1 and trades[0]["fee"]["cost"] == pytest.approx(short["fee"]["cost"])

        (pos,) = await ex.fetch_positions()
        assert (pos["symbol"], pos["side"], pos["contracts"]) == (BTC_PERP, "short", 0.01)
        assert pos["entryPrice"] == pytest.approx(short["average"]) and pos["leverage"] == 10
        bal = await ex.fetch_balance()
        assert bal["BTC"]["total"] == pytest.approx(0.01 - buy["fee"]["cost"])
        w1 = bal["USDT"]["total"]
        assert w1 - w0 == pytest.approx(-buy["cost"] - short["fee"]["cost"], abs=1e-6)
        assert bal["USDT"]["used"] == pytest.approx(pos["initialMargin"], abs=1e-6)

        settled = admin(sim, "/_sim/time", {"t": SETTLE + 60})["funding"]  # cross 08:00
        assert len(settled) == 1
        (fund,) = await ex.fetch_funding_history(BTC_PERP, T0 * 1000)
        mark, rate = data_at("BTC", "mark", SETTLE), data_rate("BTC", SETTLE)
        assert fund["timestamp"] == SETTLE * 1000 and fund["rate"] == pytest.approx(rate, abs=1e-12)
        assert fund["amount"] == pytest.approx(-0.01 * mark * rate, abs=1e-8)  # execFee: what the account paid
        w2 = (await usdt(ex))["total"]
        assert w2 - w1 == pytest.approx(-fund["amount"], abs=1e-6)

        sell = await ex.fetch_order((await ex.create_order(BTC, "market", "sell", bal["BTC"]["total"]))["id"], BTC)
        cover = await ex.fetch_order((await ex.create_order(BTC_PERP, "market", "buy", 0.01, None,
                                                            {"reduceOnly": True}))["id"], BTC_PERP)
        assert sell["fee"]["currency"] == "USDT" and cover["reduceOnly"] is True
        assert await ex.fetch_positions() == []
        pnl = 0.01 * (short["average"] - cover["average"])
        w3 = (await usdt(ex))["total"]
        fees = short["fee"]["cost"] + cover["fee"]["cost"] + sell["fee"]["cost"]  # the USDT fees
        assert w3 - w0 == pytest.approx(-buy["cost"] + sell["cost"] - fees - fund["amount"] + pnl, abs=1e-6)
        assert sim.state.total_usdt() == pytest.approx(w3, abs=1e-8)
        # /v5/execution/list: three trades on the perp account (two orders and the funding), newest first
        raw = (await ex.private_get_v5_execution_list({"category": "linear", "symbol": "BTCUSDT"}))["result"]["list"]
        assert [r["execType"] for r in raw] == ["Trade", "Funding", "Trade"]


async def test_leverage_isolated_margin_and_reduce_only(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        await ex.set_leverage(5, BTC_PERP)
        with pytest.raises(ccxt.BadRequest, match="110043"):  # Bybit: "Set leverage not modified"
            await ex.set_leverage(5, BTC_PERP)
        with pytest.raises(ccxt.BadRequest):
            await ex.set_leverage(500, BTC_PERP)
        await ex.set_margin_mode("isolated", BTC_PERP)
        await ex.set_margin_mode("isolated", BTC_PERP)  # already so: accepted, as on Bybit
        info = (await ex.private_get_v5_account_info())["result"]
        assert info["marginMode"] == "ISOLATED_MARGIN"

        with pytest.raises(ccxt.InvalidOrder):  # reduce-only with no position would open one
            await ex.create_order(BTC_PERP, "market", "buy", 0.01, None, {"reduceOnly": True})
        await ex.create_order(BTC_PERP, "market", "sell", 0.02)
        (pos,) = await ex.fetch_positions()
        assert pos["leverage"] == 5 and pos["side"] == "short"
        margin0 = float(pos["info"]["positionBalance"])
        assert margin0 == pytest.approx(0.02 * pos["entryPrice"] / 5, rel=1e-6)
        before = await usdt(ex)
        with pytest.raises(ccxt.NotSupported):  # ccxt's bybit has no add_margin: the implicit endpoint does it
            await ex.add_margin(BTC_PERP, 25)
        await ex.private_post_v5_position_add_margin({"category": "linear", "symbol": "BTCUSDT", "margin": "25"})
        (pos,) = await ex.fetch_positions()
        assert float(pos["info"]["positionBalance"]) == pytest.approx(margin0 + 25)
        after = await usdt(ex)
        assert after["total"] == pytest.approx(before["total"]) and after["free"] == pytest.approx(before["free"] - 25)
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.private_post_v5_position_add_margin({"category": "linear", "symbol": "BTCUSDT", "margin": "1e9"})
        with pytest.raises(ccxt.InvalidOrder):  # no ETH position to put margin on
            await ex.private_post_v5_position_add_margin({"category": "linear", "symbol": "ETHUSDT", "margin": "5"})
        with pytest.raises(ccxt.ExchangeError):  # the account's mode cannot change under an open position
            await ex.set_margin_mode("cross", BTC_PERP)

        with pytest.raises(ccxt.InvalidOrder):  # more than the position: would flip it
            await ex.create_order(BTC_PERP, "market", "buy", 0.03, None, {"reduceOnly": True})
        with pytest.raises(ccxt.InvalidOrder):  # same side as the position
            await ex.create_order(BTC_PERP, "market", "sell", 0.01, None, {"reduceOnly": True})
        await ex.create_order(BTC_PERP, "market", "buy", 0.02, None, {"reduceOnly": True})
        assert await ex.fetch_positions() == []
        assert (await usdt(ex))["used"] == pytest.approx(0.0, abs=1e-9)  # the isolated margin came back


# --------------------------------------------------------------------------- errors and faults


async def test_errors_map_to_ccxt_exceptions(sim):
    async with client(sim) as ex:
        await ex.load_markets()
        with pytest.raises(ccxt.OrderNotFound):
            await ex.fetch_order("5eb04c1a-9b1e-0000-0000-0000deadbeef", BTC_PERP)
        with pytest.raises(ccxt.OrderNotFound):
            await ex.cancel_order("1234", BTC)
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.create_order(BTC, "market", "buy", 5.0)  # ~$350k of BTC from a $200k wallet
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.create_order(BTC_PERP, "market", "sell", 40.0)  # $2.8M at 10x
        with pytest.raises(ccxt.InsufficientFunds):  # selling coin the account does not hold
            await ex.create_order(BTC, "market", "sell", 0.01)
        with pytest.raises(ccxt.InvalidOrder):
            await ex.create_order(BTC_PERP, "market", "buy", 0.001)  # $70 < the $100 minimum
        with pytest.raises(ccxt.InvalidOrder):
            await ex.create_order(BTC_PERP, "limit", "buy", 0.01, 50_000)  # market orders only
        with pytest.raises(ccxt.BadSymbol):
            await ex.public_get_v5_market_tickers({"category": "linear", "symbol": "NOPEUSDT"})

        admin(sim, "/_sim/faults", {"http_5xx_next": 1})
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await ex.fetch_tickers(params={"type": "spot"})
        admin(sim, "/_sim/faults", {"rate_limit_next": 1})
        with pytest.raises(ccxt.RateLimitExceeded):
            await ex.fetch_balance()
        admin(sim, "/_sim/faults", {"reject_next": 1})
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.create_order(BTC_PERP, "market", "sell", 0.01)
        assert sim.state.positions.get("BTCUSDT") is None
    async with client(sim, key="someone-else") as ex:
        with pytest.raises(ccxt.AuthenticationError, match="10003"):
            await ex.load_markets()  # with keys, ccxt reads the signed coin list first


async def test_bad_signature_and_stale_timestamp_are_refused(sim):
    async with client(sim, secret="not-the-secret") as ex:
        with pytest.raises(ccxt.AuthenticationError, match="10004"):
            await ex.fetch_balance()  # load_markets reads the signed coin list first
    async with client(sim) as ex:
        await ex.load_markets()
        ex.options["timeDifference"] = 60_000  # our clock a minute behind: outside the 5 s recv window
        with pytest.raises(ccxt.InvalidNonce):
            await ex.fetch_balance()


async def test_timeout_after_execute_leaves_the_order_on_the_books(sim):
    admin(sim, "/_sim/faults", {"timeout_after_execute_next": 1, "timeout_delay_s": 2.0})
    async with client(sim, timeout_ms=500) as ex:
        await ex.load_markets()
        with pytest.raises(ccxt.RequestTimeout):
            await ex.create_order(BTC_PERP, "market", "sell", 0.01, None, {"clientOrderId": "lost-ack"})
        ex.timeout = 10_000
        # the desk's recovery path: look the order up by its client id
        rows = (await ex.private_get_v5_order_realtime({"category": "linear", "symbol": "BTCUSDT",
                                                        "orderLinkId": "lost-ack"}))["result"]["list"]
        assert len(rows) == 1 and rows[0]["orderStatus"] == "Filled" and rows[0]["cumExecQty"] == "0.01"
        (closed,) = await ex.fetch_closed_orders(BTC_PERP, None, None, {"orderLinkId": "lost-ack"})  # unified ccxt
        assert (closed["clientOrderId"], closed["filled"], closed["status"]) == ("lost-ack", 0.01, "closed")
        with pytest.raises(ccxt.OrderNotFound):  # orderId outranks orderLinkId on Bybit: a None id finds nothing
            await ex.fetch_order(None, BTC_PERP, {"orderLinkId": "lost-ack"})
        (pos,) = await ex.fetch_positions()
        assert pos["contracts"] == 0.01
        with pytest.raises(ccxt.InvalidOrder):  # Bybit refuses a reused orderLinkId
            await ex.create_order(BTC_PERP, "market", "sell", 0.01, None, {"clientOrderId": "lost-ack"})


def test_admin_deposit_and_state(sim):
    assert admin(sim, "/_sim/deposit", {"asset": "USDT", "amount": 1000})["wallet_usdt"] == pytest.approx(201_000)
    admin(sim, "/_sim/deposit", {"asset": "ETH", "amount": 2})
    snap = admin(sim, "/_sim/state")
    assert snap["t"] == T0 and snap["coins"] == {"ETH": 2.0} and snap["margin_mode"] == "REGULAR_MARGIN"
    usdt_row = next(c for c in snap["account"]["coin"] if c["coin"] == "USDT")
    assert float(usdt_row["walletBalance"]) == pytest.approx(201_000)
    eth_row = next(c for c in snap["account"]["coin"] if c["coin"] == "ETH")
    assert (float(eth_row["walletBalance"]), float(eth_row["usdValue"])) == pytest.approx((2, 2 * data_at("ETH", "spot", T0)))
    assert admin(sim, "/_sim/time", {"advance_s": 3600})["t"] == T0 + 3600
    r = httpx.get(sim.url + "/v5/no/such/path")
    assert r.status_code == 404 and admin(sim, "/_sim/requests")["unknown"] == ["GET /v5/no/such/path"]


# --------------------------------------------------------------------------- funding sources and the process


async def test_bybit_shipped_funding_and_overrides():
    bybit = load_funding_venues()[("bybit", "BTC")]
    start = "2023-06-01T00:00:00Z"
    t = parse_time(start)
    custom_t = np.arange(t - 30 * 86_400, t + 30 * 86_400, 8 * HOUR)
    with running_bybit_sim(api_key=KEY, secret=SECRET, start=start, funding="bybit-shipped",
                           funding_overrides={"ETHUSDT": (custom_t, np.full(custom_t.size, 0.00042))}) as sim:
        async with client(sim) as ex:
            await ex.load_markets()
            rows = await ex.fetch_funding_rate_history(BTC_PERP, (t - 10 * 86_400) * 1000 + 1, 200)
            assert len(rows) == 30
            for r in rows:
                j = int(np.searchsorted(bybit.time, r["timestamp"] // 1000))
                assert bybit.time[j] == r["timestamp"] // 1000 and r["fundingRate"] == pytest.approx(bybit.rate[j])
            assert any(abs(r["fundingRate"] - data_rate("BTC", r["timestamp"] // 1000)) > 1e-7 for r in rows)
            eth = (await ex.fetch_funding_rates())["ETH/USDT:USDT"]
            assert eth["fundingRate"] == pytest.approx(0.00042)
        assert admin(sim, "/_sim/state")["funding_overrides"]["BTCUSDT"] == [int(bybit.time[0]), int(bybit.time[-1])]
    # outside Bybit's span (it ends 2023-12-31) the default data stands
    state, spans = make_state(start=START, funding="bybit-shipped")
    assert state.instruments["BTCUSDT"].funding_rate(SETTLE) == pytest.approx(data_rate("BTC", SETTLE))
    inside = int(bybit.time[100])
    assert state.instruments["BTCUSDT"].funding_rate(inside) == pytest.approx(bybit.rate[100])
    with pytest.raises(ValueError):
        make_state(funding="okx-shipped")


def test_runs_as_a_process():
    proc = subprocess.Popen(
        [sys.executable, "-m", "basis_mcp.sim.bybit", "--port", "0", "--api-key", KEY, "--secret", SECRET],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = json.loads(proc.stdout.readline())
        assert line["t"] == T0
        for _ in range(100):
            try:
                assert httpx.get(line["url"] + "/_sim/time", timeout=1).json() == {"t": T0}
                break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("the simulator process never answered")
        r = httpx.get(line["url"] + "/v5/market/tickers", params={"category": "linear", "symbol": "BTCUSDT"})
        assert r.json()["retCode"] == 0 and r.json()["result"]["list"][0]["symbol"] == "BTCUSDT"
    finally:
        proc.terminate()
        proc.wait(10)
