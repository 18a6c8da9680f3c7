"""A calendar spread (long perp, short an OKX USDT-margined quarterly) traded LIVE through ccxt, offline, end to end:
a real ``basis-mcp serve --market live --live --venue okx`` process over stdio (the SDK's client) against the local
OKX simulator (`basis_mcp.sim.okx`: its quarterlies priced by the paper desk's model, its private API signed with
the key, secret and passphrase, sizes in contracts). The spread is opened, carried across two funding settlements,
closed before expiry; its P&L reconciles to the recorded fills, fees and funding, and to the venue account's move.
Then a spread still held when the contract delivers (the desk stopped across the expiry): the delivery is booked
from the account's bills and the perp unwound.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from basis_mcp.dated import contract_code, listed_expiries
from basis_mcp.sim.instruments import parse_time
from basis_mcp.sim.okx import running_okx_sim
from tests.conftest import call, call_error, db_rows, stdio_params

pytestmark = pytest.mark.anyio

KEY, SECRET, PASSPHRASE = "okx5k3y9", "okx7s2c4", "okx3p8w1"  # short: the server scrubs every encoding of each
START = "2024-06-08T00:00:00Z"  # 30-day funding below the 90-day carry: an 18-day June spread passes the return check
T0 = parse_time(START)
EXPIRY = int(listed_expiries(T0)[0])  # 2024-06-28 08:00 UTC
JUNE = contract_code("BTC", EXPIRY)  # BTC-240628
JUNE_ID = "BTCUSDT_240628"  # the simulator's books (OKX: BTC-USDT-240628)
SETTLE = parse_time("2024-06-08T08:00:00Z")
NOTIONAL, HOLD = 3000, 18
ENTRY = {"symbol": "BTC", "notional_usd": NOTIONAL, "strategy": "calendar_spread", "contract": JUNE,
         "expected_hold_days": HOLD}


@pytest.fixture
def sim():
    with running_okx_sim(start=START, api_key=KEY, secret=SECRET, passphrase=PASSPHRASE, quarterlies=["BTC"]) as s:
        yield s


def serve(db: Path, sim) -> Client:
    env = {"BASIS_MCP_VENUE_URL": sim.url, "OKX_API_KEY": KEY, "OKX_API_SECRET": SECRET, "OKX_API_PASSWORD": PASSPHRASE}
    return Client(stdio_params(db, "--market", "live", "--live", "--venue", "okx", "--symbols", "BTC,ETH", env=env))


def move_to(sim, t: int) -> list[dict]:
    r = httpx.post(sim.url + "/_sim/time", json={"t": t})
    r.raise_for_status()
    return r.json()["funding"]


async def confirmed(client: Client, tool: str, args: dict) -> dict:
    """Live mode: the first call returns a confirmation token and sends nothing; the second sends."""
    first = await call(client, tool, args)
    assert first.get("position") is None and first["confirmation"]["token"], first
    return await call(client, tool, {**args, "confirmation_token": first["confirmation"]["token"]})


async def wait_for(pred, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.1)


def money(db: Path) -> float:
    """Σ fill cash flows − fees + funding: what the desk's ledger says the venue account gained."""
    fills = db_rows(db, "SELECT side, quantity, price, fee_usd FROM fills")
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] - f["fee_usd"] for f in fills)
    return cash + db_rows(db, "SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")[0]["s"]


def n_funding(db: Path) -> int:
    return db_rows(db, "SELECT COUNT(*) AS n FROM funding_payments")[0]["n"]


async def test_okx_calendar_spread_opens_carries_funding_and_closes_through_ccxt(db: Path, sim) -> None:
    w0 = sim.state.total_usdt()
    async with serve(db, sim) as client:
        scan = await call(client, "scan_basis", {"symbols": ["BTC", "ETH"]})
        hint = {s["symbol"]: s.get("calendar_contract") for s in scan["snapshots"]}
        assert hint == {"BTC": JUNE, "ETH": None}  # ETH has no quarterly on this venue
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": NOTIONAL,
                                                       "strategy": "calendar_spread", "hold_days": HOLD})
        assert est["contract"] == JUNE and est["playbook_entry_ok"], est
        text = await call_error(client, "enter_trade", {**ENTRY, "symbol": "ETH", "contract": "ETH-240628",
                                                        "idempotency_key": "okx-eth"})
        assert "ETH-240628 is not listed" in text and "okx" in text
        assert sim.state.orders == []

        first = await call(client, "enter_trade", {**ENTRY, "idempotency_key": "okx-1"})
        orders = first["confirmation"]["orders"]
        assert [(o["market"], o["side"], o["margin"]) for o in orders] == [("perp", "buy", "isolated"),
                                                                          ("future", "sell", "isolated")]
        assert orders[1]["symbol"] == "BTC/USDT:USDT-240628" and sim.state.orders == []
        pos = (await call(client, "enter_trade", {**ENTRY, "idempotency_key": "okx-1",
                                                   "confirmation_token": first["confirmation"]["token"]}))["position"]
        assert pos["status"] == "open"
        q = pos["quantity"]
        st = sim.state
        assert st.positions["BTCUSDT"].amt == pytest.approx(q) and st.positions[JUNE_ID].amt == pytest.approx(-q)
        assert st.margin_type == {"BTCUSDT": "ISOLATED", JUNE_ID: "ISOLATED"}
        fut_o, perp_o = st.orders  # the dated leg first (the thinner book)
        assert (fut_o.symbol, fut_o.side, perp_o.symbol, perp_o.side) == (JUNE_ID, "SELL", "BTCUSDT", "BUY")
        assert fut_o.client_order_id.isalnum() and perp_o.client_order_id.isalnum()  # OKX's clOrdId rule
        contracts = q / 0.01  # ctVal 0.01 BTC: the desk's 0.001 BTC steps are whole lots of 0.1 contract
        assert round(contracts, 6) == round(contracts, 1) and fut_o.orig_qty == perp_o.orig_qty == pytest.approx(q)

        # two 8-hourly settlements: the long perp pays a positive rate, the quarterly pays nothing
        rows = move_to(sim, SETTLE + 30) + move_to(sim, SETTLE + 8 * 3600 + 30)
        assert [r["symbol"] for r in rows] == ["BTCUSDT", "BTCUSDT"]
        await wait_for(lambda: n_funding(db) == 2)
        pays = db_rows(db, "SELECT l.role, l.market, p.* FROM funding_payments p JOIN legs l ON l.id = p.leg_id ORDER BY p.ts")
        assert [(p["role"], p["market"], p["ts"]) for p in pays] == [("perp", "perp", SETTLE), ("perp", "perp", SETTLE + 8 * 3600)]
        for p, r in zip(pays, rows, strict=True):
            assert p["amount_usd"] == pytest.approx(float(r["income"]), abs=1e-8)
            assert p["rate"] > 0 and p["amount_usd"] < 0 and p["quantity"] == pytest.approx(q, rel=1e-9)

        out = await confirmed(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "okx-1-x"})
        assert out["position"]["status"] == "closed"
        assert out["realized"]["funding_usd"] == pytest.approx(sum(p["amount_usd"] for p in pays), abs=0.005)  # in cents
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    closes = [(o.symbol, o.side, o.reduce_only) for o in sim.state.orders[2:]]
    assert closes == [(JUNE_ID, "BUY", True), ("BTCUSDT", "SELL", True)]
    assert all(p.amt == 0 for p in sim.state.positions.values())
    fees = db_rows(db, "SELECT SUM(fee_usd) AS s FROM fills")[0]["s"]
    assert fees == pytest.approx(sum(o.commission for o in sim.state.orders), abs=1e-8)  # the venue's fees, in USD
    # realized = Σ fills − fees + funding, to the cent, and the venue account moved by exactly that
    assert out["realized"]["total_usd"] == pytest.approx(money(db), abs=0.01)
    assert sim.state.total_usdt() - w0 == pytest.approx(money(db), abs=1e-6)  # the ledger is the venue's, exactly


async def test_an_okx_spread_held_across_expiry_is_delivered_and_the_perp_unwound(db: Path, sim) -> None:
    w0 = sim.state.total_usdt()
    async with serve(db, sim) as client:
        pos = (await confirmed(client, "enter_trade", {**ENTRY, "idempotency_key": "okx-d"}))["position"]
        assert pos["status"] == "open"
    q = pos["quantity"]
    settled = move_to(sim, EXPIRY + 1800)  # the desk is stopped; the venue funds the perp, then delivers the future
    (dlv,) = [r for r in settled if r["incomeType"] == "DELIVERED_SETTELMENT"]
    funding = [r for r in settled if r["incomeType"] == "FUNDING_FEE"]
    assert dlv["symbol"] == JUNE_ID and len(funding) == (EXPIRY - SETTLE) // (8 * 3600) + 1
    price = sim.state.contract(JUNE_ID).delivery_price()

    async with serve(db, sim) as client:  # start-up copies what the venue did: the delivery, then unwinds the perp
        (row,) = db_rows(db, "SELECT * FROM positions")
        assert (row["status"], row["close_reason"]) == ("closed", "future delivered at expiry; perp unwound"), dict(row)
        (o,) = db_rows(db, "SELECT * FROM orders WHERE purpose = 'liquidation'")
        assert (o["client_order_id"], o["market"], o["side"], o["status"]) == (f"dlv-{JUNE}-{EXPIRY}", "future", "buy", "filled")
        assert o["filled_qty"] == pytest.approx(q) and o["avg_price"] == pytest.approx(price, abs=1e-8)
        pays = db_rows(db, "SELECT * FROM funding_payments ORDER BY ts")
        assert [p["ts"] for p in pays] == [r["time"] / 1000 for r in funding]
        assert sum(p["amount_usd"] for p in pays) == pytest.approx(sum(float(r["income"]) for r in funding), abs=1e-7)
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    unwind = sim.state.orders[-1]
    assert (unwind.symbol, unwind.side, unwind.reduce_only, len(sim.state.orders)) == ("BTCUSDT", "SELL", True, 3)
    assert all(p.amt == 0 for p in sim.state.positions.values())
    assert row["realized_pnl_usd"] == pytest.approx(money(db), abs=0.01)
    assert sim.state.total_usdt() - w0 == pytest.approx(money(db), abs=1e-6)
