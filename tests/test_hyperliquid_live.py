"""Live orders on Hyperliquid, offline: the local Hyperliquid server (`basis_mcp.sim.hyperliquid`, trading in
`basis_mcp.sim.hyperliquid_exchange`) on 127.0.0.1, configured with one wallet; ccxt's real ``hyperliquid``
client signs every action with that wallet's key (a fixed test key; its address derived by ccxt's own code).

First ccxt against the server (orders, fills and fees, reduce-only, Hyperliquid's refusals, a wrong signer,
resting orders, hourly funding, a liquidation), then `LiveVenue` on Hyperliquid in process (perps only, the
cloid lookup after a lost answer, positions, cash, margin, funding, liquidations), then a real
``basis-mcp serve --market live --live --venue binance,hyperliquid`` over stdio: a cross-exchange position
opened, carried across two hourly settlements, closed, its P&L reconciled to the fills, fees and funding.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import httpx
import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.live import hyperliquid as hl
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.live.venue import LiveVenue
from basis_mcp.sim.binance import running_sim
from basis_mcp.sim.bybit import apply_funding
from basis_mcp.sim.hyperliquid import running_hyperliquid_sim
from basis_mcp.sim.hyperliquid_signing import address_of, l1_digest, recover_address
from basis_mcp.sim.instruments import parse_time
from basis_mcp.venue.base import OrderRequest, VenueError, VenueTimeout
from tests.conftest import call, db_rows, stdio_params

pytestmark = pytest.mark.anyio

KEY = "0x" + "5e" * 32  # a fixed test key: never a real wallet's
WALLET = address_of(KEY)
OTHER_KEY = "0x" + "7a" * 32
START = "2024-03-15T00:30:00Z"
T0 = parse_time(START)
HOUR = 3600
BTC = "BTC/USDC:USDC"
TAKER, MAKER = 0.00045, 0.00015
BN_KEY, BN_SECRET = "bnk4c1d7", "bns93ab2"


@pytest.fixture
def sim():
    with running_hyperliquid_sim(start=START, wallet=WALLET) as s:
        yield s


@contextlib.asynccontextmanager
async def client(sim, key: str = KEY) -> AsyncIterator[Any]:
    ex = make_exchange("hyperliquid", Credentials(WALLET, key), base_url=sim.url)
    ex.enableRateLimit = False
    try:
        await ex.load_markets()
        yield ex
    finally:
        await ex.close()


def info(sim, body: dict[str, Any]) -> Any:
    r = httpx.post(sim.url + "/info", json=body)
    r.raise_for_status()
    return r.json()


def admin(sim, path: str, body: dict | None = None) -> dict:
    r = httpx.post(sim.url + path, json=body) if body is not None else httpx.get(sim.url + path)
    r.raise_for_status()
    return r.json()


def mid(sim) -> float:
    return sim.state.instruments["BTCUSDT"].quote("perp", sim.state.t)[1]


async def signed(ex, action: dict[str, Any]) -> Any:
    """Send a hand-built action, signed by ccxt (no client-side rounding in the way)."""
    nonce = ex.incrementing_nonce()
    return await ex.privatePostExchange({"action": action, "nonce": nonce, "signature": ex.sign_l1_action(action, nonce)})


def ioc(px: str, sz: str, buy: bool = True, reduce: bool = False) -> dict[str, Any]:
    return {"type": "order", "orders": [{"a": 0, "b": buy, "p": px, "s": sz, "r": reduce, "t": {"limit": {"tif": "Ioc"}}}],
            "grouping": "na"}


# ---------------------------------------------------------------------------------------- ccxt against the server


async def test_order_round_trip_then_reduce_only_close(sim):
    st = sim.state
    async with client(sim) as ex:
        await ex.set_leverage(3, BTC, {"marginMode": "isolated"})
        coid = hl.cloid("desk-1")
        o = await ex.create_order(BTC, "market", "sell", 0.05, mid(sim), {"clientOrderId": coid})
        assert (o["filled"], o["clientOrderId"], o["id"]) == (0.05, coid, str(st.hl_orders[0].oid))
        (fill,) = await ex.fetch_my_trades(BTC)
        px = fill["price"]
        assert fill["side"] == "sell" and fill["takerOrMaker"] == "taker" and fill["fee"]["currency"] == "USDC"
        assert fill["fee"]["cost"] == pytest.approx(round(px * 0.05 * TAKER, 6), abs=1e-9)
        assert px < mid(sim) and fill["info"]["dir"] == "Open Short"
        (pos,) = await ex.fetch_positions()
        assert (pos["side"], pos["contracts"], pos["marginMode"], pos["leverage"]) == ("short", 0.05, "isolated", 3)
        assert pos["initialMargin"] == pytest.approx(0.05 * px / 3, abs=1e-6)  # marginUsed − uPnL: the isolated margin
        bal = await ex.fetch_balance()
        assert bal["USDC"]["free"] == pytest.approx(100_000 - 0.05 * px / 3 - fill["fee"]["cost"], abs=1e-6)
        found = await ex.fetch_order(None, BTC, {"clientOrderId": coid})
        assert (found["status"], found["filled"], found["side"], found["clientOrderId"]) == ("closed", 0.05, "sell", coid)
        assert await ex.fetch_open_orders(BTC) == []

        with pytest.raises(ccxt.InvalidOrder, match="Reduce only order would increase position"):  # a sell adds to a short
            await ex.create_order(BTC, "market", "sell", 0.01, mid(sim), {"clientOrderId": hl.cloid("x"), "reduceOnly": True})
        admin(sim, "/_sim/time", {"advance_s": HOUR})
        close = await ex.create_order(BTC, "market", "buy", 0.05, mid(sim), {"clientOrderId": hl.cloid("desk-2"),
                                                                            "reduceOnly": True})
        assert close["filled"] == 0.05 and await ex.fetch_positions() == []
        back = (await ex.fetch_my_trades(BTC))[-1]
        assert back["info"]["dir"] == "Close Short" and float(back["info"]["closedPnl"]) == pytest.approx(
            0.05 * (px - back["price"]), abs=1e-6)
    paid = sum(float(r["delta"]["usdc"]) for r in st.funding_rows)
    fees = sum(float(f["fee"]) for f in st.fills)
    assert st.total_usdt() == pytest.approx(100_000 + 0.05 * (px - back["price"]) - fees + paid, abs=1e-5)
    assert st.requests["POST /exchange order"] == 3  # the refused reduce-only order reached the venue too


async def test_bad_size_price_and_value_are_refused_with_hyperliquids_words(sim):
    async with client(sim) as ex:
        ref = f"{round(mid(sim) * 1.01):d}"
        with pytest.raises(ccxt.InvalidOrder, match="Order has invalid size"):  # BTC has szDecimals 5
            await signed(ex, ioc(ref, "0.000001"))
        with pytest.raises(ccxt.InvalidOrder, match=r"Price must be divisible by tick size. asset=0"):  # 6 significant figures
            await signed(ex, ioc(ref + ".5", "0.01"))
        with pytest.raises(ccxt.InvalidOrder, match=r"Order must have minimum value of \$10"):
            await signed(ex, ioc(ref, "0.0001"))
        with pytest.raises(ccxt.InvalidOrder, match="could not immediately match"):  # an Ioc buy far below the ask
            await signed(ex, ioc(f"{round(mid(sim) * 0.9):d}", "0.01"))
        # a market order's size is rounded by ccxt to the market's 5 decimals before it is signed
        o = await ex.create_order(BTC, "market", "buy", 0.0123456, mid(sim), {"clientOrderId": hl.cloid("r")})
        assert o["filled"] == 0.01235
    assert [f["sz"] for f in sim.state.fills] == ["0.01235"]
    assert [o.status for o in sim.state.hl_orders] == ["iocCancelRejected", "filled"]  # the refused ones left no order


async def test_a_wrong_signer_is_refused_and_nothing_happens(sim):
    other = address_of(OTHER_KEY)
    async with client(sim, OTHER_KEY) as ex:  # the wallet's address, signed with another key
        with pytest.raises(ccxt.InvalidOrder, match=f"User or API Wallet {other} does not exist"):
            await ex.create_order(BTC, "market", "buy", 0.01, mid(sim), {"clientOrderId": hl.cloid("w")})
        with pytest.raises(ccxt.InvalidOrder, match=f"User or API Wallet {other} does not exist"):
            await ex.set_leverage(2, BTC, {"marginMode": "isolated"})
    async with client(sim) as ex:  # the right key, but the action changed after signing: some other address signed it
        action = ioc(f"{round(mid(sim) * 1.01):d}", "0.01")
        nonce = ex.incrementing_nonce()
        sig = ex.sign_l1_action(action, nonce)
        assert recover_address(l1_digest(action, nonce), sig) == WALLET
        action["orders"][0]["s"] = "0.02"
        with pytest.raises(ccxt.InvalidOrder, match="User or API Wallet 0x[0-9a-f]{40} does not exist"):
            await ex.privatePostExchange({"action": action, "nonce": nonce, "signature": sig})
        action["orders"][0]["s"] = "0.0100"  # signed as spelled; Hyperliquid hashes the number as it writes it ("0.01")
        with pytest.raises(ccxt.InvalidOrder, match="User or API Wallet 0x[0-9a-f]{40} does not exist"):
            await ex.privatePostExchange({"action": action, "nonce": nonce + 1, "signature": ex.sign_l1_action(action, nonce + 1)})
        action["orders"][0]["s"] = "0.01"
        request = {"action": action, "nonce": nonce + 2, "signature": ex.sign_l1_action(action, nonce + 2)}
        assert (await ex.privatePostExchange(request))["status"] == "ok"
        with pytest.raises(ccxt.ExchangeError, match="nonce"):  # a nonce is used once: the same request again is refused
            await ex.privatePostExchange(request)
    assert len(sim.state.fills) == 1 and sim.state.leverage == {}
    assert recover_address(l1_digest(action, nonce + 2), request["signature"], plain=True) == WALLET  # without coincurve too


async def test_a_resting_order_fills_as_maker_when_the_hour_crosses_it_and_cancels(sim):
    st = sim.state
    async with client(sim) as ex:
        limit = 70_000.0  # below the bid now (≈71,452); BTC trades under it within four hours
        rest = await ex.create_order(BTC, "limit", "buy", 0.02, limit, {"clientOrderId": hl.cloid("gtc-1")})
        away = await ex.create_order(BTC, "limit", "buy", 0.02, 60_000.0, {"clientOrderId": hl.cloid("gtc-2")})
        assert "resting" in rest["info"] and {o["id"] for o in await ex.fetch_open_orders(BTC)} == {rest["id"], away["id"]}
        with pytest.raises(ccxt.InvalidOrder, match="Post only order would have immediately matched"):
            await ex.create_order(BTC, "limit", "buy", 0.02, 72_000.0, {"clientOrderId": hl.cloid("alo"), "postOnly": True})
        admin(sim, "/_sim/time", {"advance_s": 4 * HOUR})
        (fill,) = await ex.fetch_my_trades(BTC)
        assert (fill["price"], fill["takerOrMaker"], fill["order"]) == (limit, "maker", rest["id"])
        assert fill["fee"]["cost"] == pytest.approx(round(limit * 0.02 * MAKER, 6), abs=1e-9)
        assert (await ex.fetch_order(rest["id"], BTC))["status"] == "closed"
        await ex.cancel_order(None, BTC, {"clientOrderId": hl.cloid("gtc-2")})
        assert (await ex.fetch_order(away["id"], BTC))["status"] == "canceled" and await ex.fetch_open_orders(BTC) == []
        with pytest.raises(ccxt.OrderNotFound, match="never placed, already canceled, or filled"):
            await ex.cancel_order(away["id"], BTC)
    assert st.positions["BTCUSDT"].amt == 0.02


async def test_funding_is_paid_every_hour_on_open_positions_at_the_oracle(sim):
    st = sim.state
    inst = st.instruments["BTCUSDT"]
    async with client(sim) as ex:
        await ex.set_leverage(2, BTC, {"marginMode": "isolated"})
        await ex.create_order(BTC, "market", "sell", 0.1, mid(sim), {"clientOrderId": hl.cloid("f")})
        iso0 = st.positions["BTCUSDT"].iso_wallet
        admin(sim, "/_sim/time", {"advance_s": 3 * HOUR})  # 01:00, 02:00 and 03:00 settle
        rows = await ex.fetch_funding_history(BTC, T0 * 1000)
    hours = [T0 - T0 % HOUR + k * HOUR for k in (1, 2, 3)]
    assert [r["timestamp"] for r in rows] == [T * 1000 for T in hours]
    for r, T in zip(rows, hours, strict=True):
        rate = inst.funding_rate(T)
        assert r["rate"] == pytest.approx(rate, abs=1e-15) and r["info"]["delta"]["szi"] == "-0.1"
        assert r["amount"] == pytest.approx(round(0.1 * inst.spot(T) * rate, 6), abs=1e-9)  # a short receives a positive rate
    assert st.positions["BTCUSDT"].iso_wallet == pytest.approx(iso0 + sum(r["amount"] for r in rows), abs=1e-9)
    page = info(sim, {"type": "userFunding", "user": WALLET, "startTime": hours[1] * 1000})
    assert [r["time"] for r in page] == [hours[1] * 1000, hours[2] * 1000]
    assert info(sim, {"type": "userFunding", "user": "0x" + "00" * 20, "startTime": 0}) == []


async def test_an_isolated_position_under_maintenance_is_liquidated_at_the_hour(sim):
    st = sim.state
    async with client(sim) as ex:
        await ex.set_leverage(40, BTC, {"marginMode": "isolated"})  # BTC falls ~4.5 % by 04:00: a 40x long goes
        await ex.create_order(BTC, "market", "buy", 0.05, mid(sim), {"clientOrderId": hl.cloid("liq")})
        admin(sim, "/_sim/time", {"advance_s": 4 * HOUR})
        (liq,) = await ex.fetch_my_liquidations(BTC)
        assert (liq["side"], liq["contracts"]) == ("sell", 0.05) and await ex.fetch_positions() == []
    assert st.positions["BTCUSDT"].iso_wallet == 0 and st.fills[-1]["liquidation"]["liquidatedUser"] == WALLET


# ---------------------------------------------------------------------------------------- LiveVenue on Hyperliquid


@contextlib.asynccontextmanager
async def venue(sim, key: str = KEY) -> AsyncIterator[LiveVenue]:
    ex = make_exchange("hyperliquid", Credentials(WALLET, key), base_url=sim.url)
    clock = VenueClock()
    feed = LiveFeed("hyperliquid", ex, clock, ["BTC", "ETH"])
    try:
        await feed.start()
        yield LiveVenue("hyperliquid", ex, feed, Settings(), clock)
    finally:
        await feed.close()


async def test_live_venue_trades_perps_only_and_finds_a_lost_order_by_its_cloid(sim):
    st = sim.state
    async with venue(sim) as v:
        await v.verify_credentials()
        assert v.markets == {"perp"} and await v.fetch_balances() == {"USDT": 100_000.0}
        with pytest.raises(VenueError) as e:
            await v.place_order(OrderRequest("s-1", "BTC", "spot", "buy", 0.01, False))
        assert e.value.code == "bad_market"
        await v.set_leverage("BTC", 2)
        res = await v.place_order(OrderRequest("hl-1", "BTC", "perp", "sell", 0.05, False))
        (fill,) = st.fills
        assert (res.status, res.filled_qty, res.venue_order_id) == ("filled", 0.05, str(fill["oid"]))
        assert res.avg_price == float(fill["px"]) and res.fee_usd == float(fill["fee"]) and res.ts == T0
        assert st.hl_orders[0].cloid == hl.cloid("hl-1") and await v.fetch_order("hl-1", "BTC", "perp") == res
        assert await v.fetch_order("never-sent", "BTC", "perp") is None

        v.ex.timeout = 500  # the next order executes, its answer comes 1.5 s late
        admin(sim, "/_sim/faults", {"timeout_after_execute_next": 1, "timeout_delay_s": 1.5})
        st.reset_counts()
        with pytest.raises(VenueTimeout):
            await v.place_order(OrderRequest("hl-2", "BTC", "perp", "buy", 0.02, True))
        v.ex.timeout = 10_000
        found = await v.fetch_order("hl-2", "BTC", "perp")  # executed: found by its cloid, not sent again
        assert (found.status, found.filled_qty, found.side, found.avg_price) == ("filled", 0.02, "buy", float(st.fills[-1]["px"]))
        assert found.fee_usd == float(st.fills[-1]["fee"])
        assert st.requests["POST /exchange order"] == 1 and len(st.hl_orders) == 2

        admin(sim, "/_sim/faults", {"partial_fill_next": 1, "partial_fraction": 0.5})
        part = await v.place_order(OrderRequest("hl-3", "BTC", "perp", "sell", 0.04, False))
        assert (part.status, part.filled_qty) == ("partially_filled", 0.02)  # an Ioc: the rest is cancelled

        pos = await v.fetch_perp_position("BTC")
        iso = st.positions["BTCUSDT"].iso_wallet
        assert (pos.quantity, pos.leverage) == (-0.05, 2) and pos.isolated_wallet_usd == pytest.approx(iso, abs=1e-9)
        v._invalidate()
        assert (await v.fetch_balances())["USDT"] + iso == pytest.approx(st.total_usdt(), abs=1e-6)
        await v.add_margin("BTC", 25)
        assert (await v.fetch_perp_position("BTC")).isolated_wallet_usd == pytest.approx(iso + 25, abs=1e-9)

        admin(sim, "/_sim/time", {"advance_s": 2 * HOUR})
        await v.feed.refresh()
        events = await v.funding_history(T0)
        rows = st.funding_rows
        assert [e.time for e in events] == [r["time"] / 1000 for r in rows] and len(events) == 2
        assert [e.amount_usd for e in events] == [float(r["delta"]["usdc"]) for r in rows]  # received: +
        inst = st.instruments["BTCUSDT"]
        for e in events:
            assert (e.symbol, e.quantity, e.rate) == ("BTC", -0.05, pytest.approx(inst.funding_rate(int(e.time)), abs=1e-15))
            assert e.amount_usd == pytest.approx(-e.quantity * e.mark_price * e.rate, abs=1e-9)
            assert e.mark_price == pytest.approx(inst.spot(int(e.time)), rel=1e-4)  # the oracle, to the payment's rounding
        assert await v.funding_history(events[0].time) == events[1:]
        assert await v.liquidations(T0, ["BTC"]) == []


async def test_live_venue_reads_a_liquidation_once_and_refuses_a_wrong_key(sim):
    async with venue(sim, OTHER_KEY) as bad:
        with pytest.raises(VenueError) as e:
            await bad.verify_credentials()
        assert e.value.code == "auth" and "User or API Wallet" in str(e.value)
    async with venue(sim) as v:
        await v.set_leverage("BTC", 40)
        await v.place_order(OrderRequest("l-1", "BTC", "perp", "buy", 0.05, False))
        admin(sim, "/_sim/time", {"advance_s": 4 * HOUR})
        (ev,) = await v.liquidations(T0, ["BTC"])
        row = sim.state.fills[-1]
        assert (ev.symbol, ev.quantity, ev.price, ev.time) == ("BTC", 0.05, float(row["px"]), row["time"] / 1000)
        assert ev.client_order_id == f"hl-liq-{row['tid']}" and ev.loss_usd == pytest.approx(-float(row["closedPnl"]))
        assert await v.liquidations(ev.time, ["BTC"]) == [] and await v.fetch_perp_position("BTC") is None


# ---------------------------------------------------------------------------------------- end to end through the MCP server


async def confirmed(client: Client, tool: str, args: dict) -> dict:
    first = await call(client, tool, args)
    assert first.get("position") is None and first["confirmation"]["token"], first
    return await call(client, tool, {**args, "confirmation_token": first["confirmation"]["token"]})


async def wait_for(pred, timeout: float = 30.0) -> None:
    import anyio

    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.1)


async def test_cross_exchange_binance_hyperliquid_live_end_to_end(db: Path) -> None:
    start = "2024-03-15T00:10:00Z"
    t0 = parse_time(start)
    with running_sim(start=start, api_key=BN_KEY, secret=BN_SECRET) as bn, \
            running_hyperliquid_sim(start=start, wallet=WALLET) as hs:
        # Hyperliquid's hourly BTC funding 0.005 %/h above Binance's (its own rate / 8) for the last 40 days and the
        # next two: a differential the desk's entry check accepts (an exact copy of Binance's would earn nothing)
        inst = hs.state.instruments["BTCUSDT"]
        hours = list(range(t0 - t0 % HOUR - 40 * 86_400, t0 + 2 * 86_400, HOUR))
        apply_funding(hs.state, overrides={"BTC": (hours, [inst.funding_rate(T) + 0.00005 for T in hours])})
        bn_w0, hl_w0 = bn.state.total_usdt(), hs.state.total_usdt()
        env = {"BASIS_MCP_VENUE_URL": f"binance={bn.url},hyperliquid={hs.url}", "BINANCE_API_KEY": BN_KEY,
               "BINANCE_API_SECRET": BN_SECRET, "HYPERLIQUID_API_KEY": WALLET, "HYPERLIQUID_API_SECRET": KEY}
        params = stdio_params(db, "--market", "live", "--live", "--venue", "binance,hyperliquid", "--symbols", "BTC", env=env)
        async with Client(params) as client:
            scan = await call(client, "scan_basis", {"symbols": ["BTC"]})
            assert {s["venue"] for s in scan["snapshots"] if s["symbol"] == "BTC"} == {"binance", "hyperliquid"}
            args = {"symbol": "BTC", "notional_usd": 3000, "strategy": "cross_exchange", "short_venue": "hyperliquid",
                    "long_venue": "binance", "idempotency_key": "hl-x1"}
            pos = (await confirmed(client, "enter_trade", args))["position"]
            assert pos["status"] == "open", pos
            short, long_ = sorted(pos["legs"], key=lambda leg: leg["side"] != "short")
            assert (short["venue"], long_["venue"]) == ("live:hyperliquid", "live:binance")
            q = long_["held_quantity"]
            assert q > 0 and short["held_quantity"] == pytest.approx(-q)
            hpos = hs.state.positions["BTCUSDT"]
            assert hpos.amt == pytest.approx(-q) and hs.state.margin_type["BTCUSDT"] == "ISOLATED"
            assert hs.state.hl_orders[0].cloid.startswith("0x") and len(hs.state.hl_orders[0].cloid) == 34

            settled = []
            for k in (1, 2):  # two hourly settlements on Hyperliquid (none on Binance: 8-hourly)
                T = t0 - t0 % HOUR + k * HOUR + 30
                admin(bn, "/_sim/time", {"t": T})
                settled += admin(hs, "/_sim/time", {"t": T})["funding"]
            assert len(settled) == 2
            await wait_for(lambda: db_rows(db, "SELECT COUNT(*) AS n FROM funding_payments")[0]["n"] == 2)
            pays = db_rows(db, "SELECT l.venue, p.* FROM funding_payments p JOIN legs l ON l.id = p.leg_id ORDER BY p.ts")
            assert {p["venue"] for p in pays} == {"live:hyperliquid"} and [p["symbol"] for p in pays] == ["BTC@hyperliquid"] * 2
            assert [p["amount_usd"] for p in pays] == [float(r["delta"]["usdc"]) for r in settled]
            assert [p["ts"] for p in pays] == [r["time"] / 1000 for r in settled]
            assert all(p["quantity"] == pytest.approx(-q) for p in pays)

            out = await confirmed(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "hl-x1-x"})
            assert out["position"]["status"] == "closed"
            assert out["realized"]["funding_usd"] == pytest.approx(sum(p["amount_usd"] for p in pays), abs=0.005)  # to the cent
            risk = await call(client, "risk_status", {})
            assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
        assert hs.state.positions["BTCUSDT"].amt == 0 and bn.state.positions["BTCUSDT"].amt == 0
        assert [(o.buy, o.reduce_only, o.status) for o in hs.state.hl_orders] == [(False, False, "filled"), (True, True, "filled")]

        fills = db_rows(db, "SELECT l.venue, f.side, f.quantity, f.price, f.fee_usd FROM fills f JOIN legs l ON l.id = f.leg_id")
        assert len(fills) == 4
        flows = {"live:binance": 0.0, "live:hyperliquid": 0.0}
        for f in fills:
            flows[f["venue"]] += (1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] - f["fee_usd"]
        for p in pays:
            flows[p["venue"]] += p["amount_usd"]
        hl_fees = sum(float(f["fee"]) for f in hs.state.fills)
        assert sum(f["fee_usd"] for f in fills if f["venue"] == "live:hyperliquid") == pytest.approx(hl_fees, abs=1e-9)
        assert out["realized"]["total_usd"] == pytest.approx(sum(flows.values()), abs=0.01)
        assert hs.state.total_usdt() - hl_w0 == pytest.approx(flows["live:hyperliquid"], abs=0.01)
        assert bn.state.total_usdt() - bn_w0 == pytest.approx(flows["live:binance"], abs=0.01)


async def test_a_catch_up_read_of_funding_books_every_coin_across_full_pages(sim, monkeypatch):
    """Every coin settles at the same hourly millisecond: a page of userFunding can end part-way through
    an hour. The next page starts AT that hour (not after it), so no coin's payment is skipped. (Pages of
    15 rows on both sides instead of Hyperliquid's 500: the same paging, in 40 hours instead of 300.)"""
    from basis_mcp.sim import hyperliquid_exchange

    monkeypatch.setattr(hyperliquid_exchange, "FUNDING_PAGE", 15)
    monkeypatch.setattr(hl, "FUNDING_PAGE", 15)
    async with venue(sim) as v:
        for sym, q in (("BTC/USDC:USDC", 0.05), ("ETH/USDC:USDC", 1.0)):
            px = sim.state.instruments[sym.split("/")[0] + "USDT"].quote("perp", sim.state.t)[1]
            await v.ex.create_order(sym, "market", "sell", q, px, {"clientOrderId": hl.cloid("paging-" + sym)})
            if sym.startswith("BTC"):  # ETH opens an hour later: pages no longer end on an hour
                admin(sim, "/_sim/time", {"t": T0 + 3600})
        for h in range(2, 41):
            admin(sim, "/_sim/time", {"t": T0 + h * 3600})
        events = await v.funding_history(T0)
        want = {(r["delta"]["coin"], r["time"] / 1000) for r in sim.state.funding_rows}
        assert len(sim.state.funding_rows) > 4 * hl.FUNDING_PAGE  # several full pages
        assert {(e.symbol, e.time) for e in events} == want and len(events) == len(want)
