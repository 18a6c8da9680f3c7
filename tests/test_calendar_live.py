"""A calendar spread (long perp, short a Binance USD-M quarterly) traded LIVE through ccxt, offline.

The local Binance simulator lists the quarterlies (``running_sim(quarterlies=...)``: SIMULATED prices,
the paper desk's model) and delivers them at the index; `basis_mcp.live.venue.LiveVenue` trades
``market="future"`` legs on it. First the venue on its own (isolated margin and leverage per contract,
positions by contract code, a contract the venue does not list refused, orders and the delivery read
back after the contract is delisted), then a real ``basis-mcp serve --market live --live`` process over
stdio: open / funding / close, and a spread the desk still holds when the contract delivers (the desk
stopped across the expiry, restarted after it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from basis_mcp.config import DEFAULT_SPECS, Settings
from basis_mcp.dated import contract_code, listed_expiries
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.live.venue import LiveVenue
from basis_mcp.sim.binance import parse_time, running_sim
from basis_mcp.venue.base import OrderRequest, VenueError
from tests.conftest import call, call_error, db_rows, stdio_params

pytestmark = pytest.mark.anyio

KEY, SECRET = "cal5k3y9", "cal7s2c4"  # short: the server builds its scrubbing pattern from every encoding of each key
START = "2024-06-08T00:00:00Z"  # 30-day funding below the 90-day carry: an 18-day June spread passes the return check
T0 = parse_time(START)
EXPIRY = int(listed_expiries(T0)[0])  # 2024-06-28 08:00 UTC
JUNE = contract_code("BTC", EXPIRY)  # BTC-240628
JUNE_ID = "BTCUSDT_240628"
SETTLE = parse_time("2024-06-08T08:00:00Z")
NOTIONAL, HOLD = 3000, 18
DELIVERY_ID = f"dlv-{JUNE}-{EXPIRY}"


@pytest.fixture
def sim():
    with running_sim(start=START, api_key=KEY, secret=SECRET, quarterlies=["BTC"]) as s:
        yield s


def admin(sim, path: str, body: dict | None = None) -> dict:
    r = httpx.post(sim.url + path, json=body) if body is not None else httpx.get(sim.url + path)
    r.raise_for_status()
    return r.json()


def serve(db: Path, sim) -> Client:
    env = {"BASIS_MCP_VENUE_URL": sim.url, "BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": SECRET}
    return Client(stdio_params(db, "--market", "live", "--live", "--venue", "binance", "--symbols", "BTC,ETH", env=env))


async def confirmed(client: Client, tool: str, args: dict) -> dict:
    """Live mode: the first call returns a confirmation token and sends nothing; the second sends."""
    first = await call(client, tool, args)
    assert first.get("position") is None and first["confirmation"]["token"], first
    return await call(client, tool, {**args, "confirmation_token": first["confirmation"]["token"]})


async def wait_for(pred, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.1)


def money(db: Path) -> float:
    """Σ fill cash flows − fees + funding: what the desk's ledger says the venue account gained."""
    fills = db_rows(db, "SELECT side, quantity, price, fee_usd FROM fills")
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] - f["fee_usd"] for f in fills)
    return cash + db_rows(db, "SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")[0]["s"]


def delivery_price(sim) -> float:
    return sim.state._quarterlies[JUNE_ID].delivery_price()


ENTRY = {"symbol": "BTC", "notional_usd": NOTIONAL, "strategy": "calendar_spread", "contract": JUNE,
         "expected_hold_days": HOLD}


# --------------------------------------------------------------------------- the venue on its own


@contextlib.asynccontextmanager
async def live_venue(sim) -> AsyncIterator[LiveVenue]:
    ex = make_exchange("binance", Credentials(KEY, SECRET), base_url=sim.url)
    ex.enableRateLimit = False
    try:
        feed = LiveFeed("binance", ex, VenueClock(), ["BTC", "ETH"])
        await feed.start()
        yield LiveVenue("binance", ex, feed, Settings(), feed.clock)
    finally:
        await ex.close()


async def test_live_venue_trades_a_quarterly_and_reads_its_delivery_after_delisting(sim) -> None:
    async with live_venue(sim) as v:
        assert v.markets == {"spot", "perp", "future"} and v.feed.dated_contracts == [JUNE, "BTC-240927"]
        with pytest.raises(VenueError, match="ETH-240628: not listed on live:binance") as e:
            await v.set_leverage("ETH-240628", 2)  # the simulator lists BTC quarterlies only
        assert e.value.code == "bad_symbol" and sim.state.orders == []

        await v.set_leverage(JUNE, 3)
        assert sim.state.margin_type[JUNE_ID] == "ISOLATED" and sim.state.leverage[JUNE_ID] == 3
        assert "BTCUSDT" not in sim.state.margin_type  # the perp untouched
        sell = await v.place_order(OrderRequest("cal-v-1", JUNE, "future", "sell", 0.05, False))
        assert (sell.status, sell.filled_qty, sell.market, sell.symbol) == ("filled", 0.05, "future", JUNE)
        assert sell.mid_price == pytest.approx(v.feed.snapshot(JUNE).perp) and sell.fee_usd == pytest.approx(
            0.05 * sell.avg_price * DEFAULT_SPECS["BTC"].perp_taker_fee, abs=1e-8)  # from the venue's trades
        pos = await v.fetch_position("future", JUNE)
        assert (pos.symbol, pos.quantity, pos.leverage) == (JUNE, -0.05, 3)
        assert pos.isolated_wallet_usd == pytest.approx(0.05 * sell.avg_price / 3, abs=1e-6)
        assert await v.held_instruments("future") == [JUNE] and await v.held_instruments("perp") == []
        assert await v.fetch_perp_position("BTC") is None  # the perp is another position
        await v.add_margin(JUNE, 25.0, market="future")
        assert (await v.fetch_position("future", JUNE)).isolated_wallet_usd == pytest.approx(pos.isolated_wallet_usd + 25)

        # a partial close is reduce-only; the lookup by client id while the contract trades
        part = await v.place_order(OrderRequest("cal-v-2", JUNE, "future", "buy", 0.02, True))
        assert part.filled_qty == 0.02 and sim.state.orders[-1].reduce_only
        assert (await v.fetch_order("cal-v-1", JUNE, "future")).filled_qty == 0.05
        assert await v.liquidations(T0, [JUNE, "BTC"]) == []  # nothing delivered yet

        # across the delivery: the venue closes the 0.03 short at the index and delists the contract
        admin(sim, "/_sim/time", {"t": EXPIRY + 1800})
        await v.feed.refresh()
        assert JUNE not in v.feed.dated and await v.held_instruments("future") == []
        (ev,) = await v.liquidations(T0, [JUNE, "BTC"])
        assert (ev.symbol, ev.time, ev.quantity, ev.market, ev.kind, ev.client_order_id, ev.loss_usd) == (
            JUNE, EXPIRY, pytest.approx(-0.03), "future", "delivery", DELIVERY_ID, 0.0)
        assert ev.price == pytest.approx(delivery_price(sim), abs=1e-8)
        assert await v.liquidations(EXPIRY, [JUNE]) == []  # the desk's cursor past it: not read again
        # ccxt no longer knows the contract: its orders are read on the venue's own id
        old = await v.fetch_order("cal-v-1", JUNE, "future")
        assert (old.status, old.filled_qty, old.side, old.avg_price) == ("filled", 0.05, "sell", pytest.approx(sell.avg_price))
        assert old.fee_usd == pytest.approx(sell.fee_usd, abs=1e-8)
        assert await v.fetch_order("never-sent", JUNE, "future") is None

    async with live_venue(sim) as fresh:  # a restarted desk never saw the position: its trades give the size
        (again,) = await fresh.liquidations(T0, [JUNE])
        assert again == ev


# --------------------------------------------------------------------------- the desk, live, end to end


async def test_live_calendar_spread_opens_earns_funding_and_closes_through_ccxt(db: Path, sim) -> None:
    w0 = sim.state.total_usdt()
    async with serve(db, sim) as client:
        scan = await call(client, "scan_basis", {"symbols": ["BTC", "ETH"]})
        hint = {s["symbol"]: s.get("calendar_contract") for s in scan["snapshots"]}
        assert hint == {"BTC": JUNE, "ETH": None}  # ETH has no quarterly on this venue: no calendar hint
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": NOTIONAL,
                                                       "strategy": "calendar_spread", "hold_days": HOLD})
        assert est["contract"] == JUNE and est["playbook_entry_ok"], est

        # a contract the venue does not list is refused by name, with nothing sent
        text = await call_error(client, "enter_trade", {**ENTRY, "symbol": "ETH", "contract": "ETH-240628",
                                                        "idempotency_key": "cal-eth"})
        assert "ETH-240628 is not listed" in text and "binance" in text
        text = await call_error(client, "enter_trade", {**ENTRY, "symbol": "ETH", "contract": None, "idempotency_key": "cal-eth2"})
        assert "none for ETH on binance" in text
        assert sim.state.orders == []

        first = await call(client, "enter_trade", {**ENTRY, "idempotency_key": "cal-1"})
        orders = first["confirmation"]["orders"]
        assert [(o["market"], o["side"], o["margin"]) for o in orders] == [("perp", "buy", "isolated"), ("future", "sell", "isolated")]
        assert orders[1]["symbol"] == "BTC/USDT:USDT-240628" and sim.state.orders == []
        pos = (await call(client, "enter_trade", {**ENTRY, "idempotency_key": "cal-1",
                                                   "confirmation_token": first["confirmation"]["token"]}))["position"]
        assert pos["status"] == "open"
        q = pos["quantity"]
        book = admin(sim, "/_sim/state")["futures"]
        assert book["positions"]["BTCUSDT"]["amt"] == pytest.approx(q)  # the long perp
        assert book["positions"][JUNE_ID]["amt"] == pytest.approx(-q)  # the short quarterly
        assert book["margin_type"] == {"BTCUSDT": "ISOLATED", JUNE_ID: "ISOLATED"}
        fut_o, perp_o = sim.state.orders  # the dated leg first (the thinner book)
        assert (fut_o.symbol, fut_o.side, perp_o.symbol, perp_o.side) == (JUNE_ID, "SELL", "BTCUSDT", "BUY")

        # the 08:00 settlement: the long perp pays a positive rate, the quarterly pays nothing
        (row,) = admin(sim, "/_sim/time", {"t": SETTLE + 30})["funding"]
        assert row["symbol"] == "BTCUSDT"
        await wait_for(lambda: db_rows(db, "SELECT COUNT(*) AS n FROM funding_payments")[0]["n"] == 1)
        (f,) = db_rows(db, "SELECT l.role, l.market, p.* FROM funding_payments p JOIN legs l ON l.id = p.leg_id")
        assert (f["role"], f["market"], f["ts"]) == ("perp", "perp", SETTLE)
        assert f["amount_usd"] == pytest.approx(float(row["income"]), abs=1e-8)
        assert f["rate"] > 0 and f["amount_usd"] < 0 and f["quantity"] == pytest.approx(q, rel=0.05)

        out = await confirmed(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "cal-1-x"})
        assert out["position"]["status"] == "closed"
        assert out["realized"]["funding_usd"] == pytest.approx(f["amount_usd"], abs=0.005)
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    assert [(o.symbol, o.side, o.reduce_only) for o in sim.state.orders[2:]] == [(JUNE_ID, "BUY", True), ("BTCUSDT", "SELL", True)]
    assert all(p["amt"] == 0 for p in admin(sim, "/_sim/state")["futures"]["positions"].values())
    # realized = Σ fills − fees + funding, and the venue account moved by exactly that
    assert out["realized"]["total_usd"] == pytest.approx(money(db), abs=0.005)  # the tool shows cents; the book and the venue agree to 1e-6 below
    assert sim.state.total_usdt() - w0 == pytest.approx(money(db), abs=1e-6)


async def test_a_spread_held_across_expiry_is_delivered_at_the_index_and_the_perp_unwound(db: Path, sim) -> None:
    w0 = sim.state.total_usdt()
    async with serve(db, sim) as client:
        pos = (await confirmed(client, "enter_trade", {**ENTRY, "idempotency_key": "cal-d"}))["position"]
        assert pos["status"] == "open"
    q = pos["quantity"]
    # the desk is stopped; the venue's clock crosses the expiry: funding on the perp all the way, then the delivery
    settled = admin(sim, "/_sim/time", {"t": EXPIRY + 1800})["funding"]
    (dlv,) = [r for r in settled if r["incomeType"] == "DELIVERED_SETTELMENT"]
    perp_funding = [r for r in settled if r["incomeType"] == "FUNDING_FEE"]
    assert dlv["symbol"] == JUNE_ID and {r["symbol"] for r in perp_funding} == {"BTCUSDT"}
    assert len(perp_funding) == (EXPIRY - SETTLE) // (8 * 3600) + 1  # every 8 h from 06-08 08:00 to the expiry
    assert sim.state.positions[JUNE_ID].amt == 0

    async with serve(db, sim) as client:  # start-up copies what the venue did: the delivery, then unwinds the perp
        (row,) = db_rows(db, "SELECT * FROM positions")
        assert (row["status"], row["close_reason"]) == ("closed", "future delivered at expiry; perp unwound"), dict(row)
        (o,) = db_rows(db, "SELECT * FROM orders WHERE purpose = 'liquidation'")
        assert (o["client_order_id"], o["market"], o["side"], o["status"]) == (DELIVERY_ID, "future", "buy", "filled")
        assert o["filled_qty"] == pytest.approx(q) and o["avg_price"] == pytest.approx(delivery_price(sim), abs=1e-8)
        (fill,) = db_rows(db, "SELECT * FROM fills WHERE order_id = ?", (o["id"],))
        assert fill["fee_usd"] == 0 and fill["ts"] == EXPIRY
        (alert,) = db_rows(db, "SELECT * FROM alerts WHERE rule = 'delivery'")
        assert "SETTLED AT EXPIRY" in alert["message"] and "perp leg unwound" in alert["message"]
        pays = db_rows(db, "SELECT * FROM funding_payments ORDER BY ts")
        assert [p["ts"] for p in pays] == [r["time"] / 1000 for r in perp_funding]
        assert sum(p["amount_usd"] for p in pays) == pytest.approx(sum(float(r["income"]) for r in perp_funding), abs=1e-7)
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    unwind = sim.state.orders[-1]
    assert (unwind.symbol, unwind.side, unwind.reduce_only, len(sim.state.orders)) == ("BTCUSDT", "SELL", True, 3)
    assert all(p["amt"] == 0 for p in admin(sim, "/_sim/state")["futures"]["positions"].values())
    assert row["realized_pnl_usd"] == pytest.approx(money(db), abs=1e-6)
    assert sim.state.total_usdt() - w0 == pytest.approx(money(db), abs=1e-6)
