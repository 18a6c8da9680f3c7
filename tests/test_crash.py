"""SIGKILL the server at every step of an entry and of an exit, restart it, let one watchdog
tick run, and check: no naked leg, no lost fill, no duplicate order, the ledger reconciles.

The server is a real `basis-mcp serve` subprocess. A fault plan (``BASIS_MCP_FAULTS``) makes
it stop at a named step and write a marker file; the test then kills it with SIGKILL from
outside, so the process dies exactly there with whatever it had committed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.conftest import call, db_rows, kill9, stdio_params

pytestmark = pytest.mark.anyio

ENTRY = {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "crash-entry"}
EXIT_KEY = "crash-exit"
CAPITAL = 100_000.0

ENTRY_STEPS = [
    "entry.intent_written",  # position + both intents committed, nothing sent
    "entry.leg1_marked_sent",  # spot order marked sent, not yet at the venue
    "venue.executed.1",  # spot order executed at the venue, fill not recorded by the desk
    "entry.leg1_filled",  # spot fill recorded, perp not sent
    "entry.leg2_marked_sent",  # perp marked sent, not at the venue
    "venue.executed.2",  # perp executed at the venue, fill not recorded
    "entry.leg2_filled",  # perp fill recorded, nothing trimmed yet
    "entry.all_filled",  # every fill recorded, position row not final
]
EXIT_STEPS = [
    "exit.intent_written",
    "exit.leg1_marked_sent",
    "venue.executed.1",  # perp buy-back executed at the venue, not recorded
    "exit.leg1_filled",
    "exit.leg2_marked_sent",
    "venue.executed.2",  # spot sale executed at the venue, not recorded
    "exit.leg2_filled",
    "exit.all_filled",
]


async def kill_at(db: Path, tmp: Path, step: str, tool: str, args: dict) -> None:
    """Start the server paused at ``step``, fire ``tool``, SIGKILL the process when it gets there."""
    env = {"BASIS_MCP_FAULTS": json.dumps({"pause_at": step, "pause_dir": str(tmp)})}
    marker = tmp / f"paused-{step}"
    marker.unlink(missing_ok=True)
    client = Client(stdio_params(db, env=env))
    await client.__aenter__()
    try:
        async with anyio.create_task_group() as tg:

            async def fire() -> None:
                with contextlib.suppress(Exception):
                    await client.call_tool(tool, args)

            tg.start_soon(fire)
            with anyio.fail_after(30):
                while not marker.exists():
                    await anyio.sleep(0.02)
            kill9(db)
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(BaseException):
            await client.__aexit__(None, None, None)


def check_invariants(db: Path) -> None:
    venue_orders = db_rows(db, "SELECT * FROM paper_orders")
    desk_orders = {o["client_order_id"]: o for o in db_rows(db, "SELECT * FROM orders")}
    fills = db_rows(db, "SELECT f.*, o.client_order_id FROM fills f JOIN orders o ON o.id = f.order_id")
    fills_by_coid = {f["client_order_id"]: f for f in fills}

    # no lost fill: everything the venue executed is in the desk's ledger, at the same quantity and price
    for v in venue_orders:
        f = fills_by_coid.get(v["client_order_id"])
        assert f is not None, f"venue order {v['client_order_id']} has no desk fill"
        assert f["quantity"] == pytest.approx(v["filled_qty"]) and f["price"] == pytest.approx(v["avg_price"])
        assert desk_orders[v["client_order_id"]]["status"] in ("filled", "partially_filled")
    # ... and nothing is in the ledger that the venue did not execute
    assert {f["client_order_id"] for f in fills} == {v["client_order_id"] for v in venue_orders}

    # no duplicate order: each entry leg went to the venue at most once, and no position's leg ever
    # overshot (a close, unwind or retry never sold more spot than was held or bought back more perp
    # than was short) — a resent order would do one or the other
    legs: dict[tuple, int] = {}
    held: dict[tuple, float] = {}
    for v in sorted(venue_orders, key=lambda v: v["seq"]):
        o = desk_orders[v["client_order_id"]]
        if o["purpose"] == "open":
            k = (o["position_id"], o["market"])
            legs[k] = legs.get(k, 0) + 1
            assert legs[k] == 1, f"position {k[0]}: {legs[k]} venue orders for the {k[1]} entry leg"
        k = (o["position_id"], o["market"])
        held[k] = held.get(k, 0.0) + (v["filled_qty"] if v["side"] == "buy" else -v["filled_qty"])
        assert (held[k] >= -1e-12) if o["market"] == "spot" else (held[k] <= 1e-12), f"position {k[0]} {k[1]} overshot: {held[k]}"

    # no naked leg: per position the legs match; the venue holds exactly the desk's open positions
    for p in db_rows(db, "SELECT * FROM positions"):
        spot = sum(f["quantity"] * (1 if f["side"] == "buy" else -1) for f in fills if f["position_id"] == p["id"] and f["market"] == "spot")
        perp = sum(f["quantity"] * (1 if f["side"] == "buy" else -1) for f in fills if f["position_id"] == p["id"] and f["market"] == "perp")
        assert spot + perp == pytest.approx(0.0, abs=1e-12), f"position {p['id']} ({p['status']}): spot {spot} vs perp {perp}"
        if p["status"] in ("closed", "failed", "liquidated"):
            assert spot == pytest.approx(0.0, abs=1e-12)
        else:
            assert p["status"] == "open", f"position {p['id']} left in {p['status']}"
    venue_perp = sum(r["quantity"] for r in db_rows(db, "SELECT quantity FROM paper_perp"))
    venue_btc = db_rows(db, "SELECT COALESCE(SUM(free), 0) AS s FROM paper_balances WHERE asset = 'BTC'")[0]["s"]
    assert venue_btc + venue_perp == pytest.approx(0.0, abs=1e-12)

    # the ledger reconciles with the venue's money, to the cent:
    # USDT + isolated wallets = capital + Σ fill cash flows − fees + funding + Σ open perp qty × entry
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    perps = db_rows(db, "SELECT * FROM paper_perp")
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    fees = sum(f["fee_usd"] for f in fills)
    funding = db_rows(db, "SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")[0]["s"]
    lhs = usdt + sum(p["isolated_wallet"] for p in perps)
    rhs = CAPITAL + cash - fees + funding + sum(p["quantity"] * p["entry_price"] for p in perps)
    assert lhs == pytest.approx(rhs, abs=0.01)


async def restart_and_tick(db: Path, retry: tuple[str, dict]) -> dict:
    """Restart, let one watchdog tick run, check the book, then (same server) retry the killed call."""
    async with Client(stdio_params(db)) as client:
        adv = await call(client, "advance_time", {"hours": 1})  # one watchdog tick
        risk = await call(client, "risk_status", {})
        book = await call(client, "portfolio_status", {"include_closed": 5})
        check_invariants(db)  # read beside the running server, before the retry
        return {"risk": risk, "book": book, "alerts": adv["alerts"] + risk["alerts"] + book["alerts"],
                "retry": await client.call_tool(*retry)}


@pytest.mark.parametrize("step", ENTRY_STEPS)
async def test_sigkill_during_entry(db: Path, tmp_path: Path, step: str) -> None:
    await kill_at(db, tmp_path, step, "enter_trade", ENTRY)
    # after the restart's tick, a retry with the same key never trades twice: it returns the first outcome
    state = await restart_and_tick(db, retry=("enter_trade", ENTRY))
    assert state["risk"]["trading_state"] == "ACTIVE", state["risk"]["trading_state_reason"]
    positions = db_rows(db, "SELECT * FROM positions")
    assert len(positions) == 1
    p = positions[0]
    both_legs_reached_venue = step in ("venue.executed.2", "entry.leg2_filled", "entry.all_filled")
    assert p["status"] == ("open" if both_legs_reached_venue else "failed"), p["close_reason"]
    assert any(a["rule"] == "recovered" and "mid-entry" in a["message"] for a in state["alerts"])
    r = state["retry"]
    if both_legs_reached_venue:
        assert not r.is_error and r.structured_content["replayed"]
        assert r.structured_content["position"]["position_id"] == p["id"]
    else:
        assert r.is_error and "idempotency_key" in r.content[0].text
    check_invariants(db)


@pytest.mark.parametrize("step", EXIT_STEPS)
async def test_sigkill_during_exit(db: Path, tmp_path: Path, step: str) -> None:
    async with Client(stdio_params(db)) as client:
        pid = (await call(client, "enter_trade", ENTRY))["position"]["position_id"]
        await call(client, "advance_time", {"hours": 9})  # a settlement in between
    exit_args = {"position_id": pid, "idempotency_key": EXIT_KEY}
    await kill_at(db, tmp_path, step, "exit_trade", exit_args)
    state = await restart_and_tick(db, retry=("exit_trade", exit_args))
    assert state["risk"]["trading_state"] == "ACTIVE", state["risk"]["trading_state_reason"]
    p = db_rows(db, "SELECT * FROM positions WHERE id = ?", (pid,))[0]
    assert p["status"] == "closed", f"{step}: {p['status']} {p['close_reason']}"  # an interrupted exit is completed
    recovered = [a for a in state["alerts"] if a["rule"] == "recovered"]
    assert recovered and "mid-exit" in recovered[0]["message"]  # the agent is told what happened
    # the realised P&L equals the ledger
    fills = db_rows(db, "SELECT * FROM fills WHERE position_id = ?", (pid,))
    funding = db_rows(db, "SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments WHERE position_id = ?", (pid,))[0]["s"]
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    assert p["realized_pnl_usd"] == pytest.approx(cash - sum(f["fee_usd"] for f in fills) + funding, abs=0.01)
    again = state["retry"]
    assert not again.is_error, again.content[0].text
    assert again.structured_content["replayed"]
    assert again.structured_content["realized"]["total_usd"] == pytest.approx(p["realized_pnl_usd"], abs=0.01)
    check_invariants(db)
