"""Two-leg execution against a paper venue that fails on purpose."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from basis_mcp.venue.faults import FaultPlan
from tests import scripted
from tests.conftest import call, call_error, db_rows
from tests.test_crash import check_invariants

pytestmark = pytest.mark.anyio
START = "2024-01-05T01:00:00Z"
ENTRY = {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "f-1"}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return scripted.write(tmp_path, BTC=scripted.Market())


@contextlib.asynccontextmanager
async def opened(make_server, data: Path) -> AsyncIterator[tuple[Client, FaultPlan, int]]:
    """A client on a fault-switchable paper venue with one BTC position open (faults off so far)."""
    faults = FaultPlan()
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        pid = (await call(client, "enter_trade", ENTRY))["position"]["position_id"]
        yield client, faults, pid


async def test_rejected_second_leg_unwinds_the_first(make_server, db: Path, data: Path) -> None:
    async with Client(make_server(start=START, data_path=data, faults=FaultPlan(reject_nth={2}))) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "perp leg refused" in text and "spot leg was unwound" in text
        # the same key answers with the same failure; a new key trades normally
        again = await call_error(client, "enter_trade", ENTRY)
        assert "idempotency_key" in again and "failed" in again
        ok = await call(client, "enter_trade", {**ENTRY, "idempotency_key": "f-2"})
        assert ok["position"]["status"] == "open"
    p = db_rows(db, "SELECT * FROM positions WHERE id = 1")[0]
    assert p["status"] == "failed"
    purposes = [(f["market"], f["side"], f["purpose"]) for f in db_rows(db, "SELECT f.*, o.purpose FROM fills f JOIN orders o ON o.id = f.order_id WHERE f.position_id = 1")]
    assert purposes == [("spot", "buy", "open"), ("spot", "sell", "unwind")]
    check_invariants(db)


async def test_rejected_first_leg_trades_nothing(make_server, db: Path, data: Path) -> None:
    async with Client(make_server(start=START, data_path=data, faults=FaultPlan(reject_nth={1}))) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "spot leg refused" in text and "nothing executed" in text
    assert db_rows(db, "SELECT COUNT(*) AS n FROM fills")[0]["n"] == 0
    check_invariants(db)


async def test_partial_first_leg_sizes_the_second(make_server, db: Path, data: Path) -> None:
    async with Client(make_server(start=START, data_path=data, faults=FaultPlan(partial_nth={1: 0.6}))) as client:
        pos = (await call(client, "enter_trade", ENTRY))["position"]
    assert pos["quantity"] == pytest.approx(0.024)
    fills = db_rows(db, "SELECT * FROM fills ORDER BY id")
    assert [f["quantity"] for f in fills] == [pytest.approx(0.024), pytest.approx(0.024)]
    check_invariants(db)


async def test_partial_second_leg_trims_the_first(make_server, db: Path, data: Path) -> None:
    async with Client(make_server(start=START, data_path=data, faults=FaultPlan(partial_nth={2: 0.75}))) as client:
        pos = (await call(client, "enter_trade", ENTRY))["position"]
        assert pos["quantity"] == pytest.approx(0.03)
        assert [f["purpose"] for f in pos["fills"]] == ["open", "open", "rebalance"]
    check_invariants(db)


async def test_timeout_after_execution_is_looked_up_not_resent(make_server, db: Path, data: Path) -> None:
    faults = FaultPlan(timeout_after_execute_nth={1, 2})
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        pos = (await call(client, "enter_trade", ENTRY))["position"]
        assert pos["status"] == "open" and len(pos["fills"]) == 2
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_orders")[0]["n"] == 2  # never resent
    assert faults.orders_seen == 2
    check_invariants(db)


@pytest.mark.parametrize("fault", [{"unavailable_nth": {1}}, {"rate_limited_nth": {1}}])
async def test_5xx_or_429_on_the_first_leg_trades_nothing(make_server, db: Path, data: Path, fault: dict) -> None:
    async with Client(make_server(start=START, data_path=data, faults=FaultPlan(**fault))) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "venue unavailable" in text and "nothing executed" in text
        assert ("429" in text) == ("rate_limited_nth" in fault)
    assert db_rows(db, "SELECT COUNT(*) AS n FROM fills")[0]["n"] == 0
    check_invariants(db)


async def test_5xx_on_the_second_leg_unwinds_the_first(make_server, db: Path, data: Path) -> None:
    async with Client(make_server(start=START, data_path=data, faults=FaultPlan(unavailable_nth={2}))) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "spot leg was unwound" in text
    check_invariants(db)


async def test_refused_perp_close_leaves_the_position_open_and_hedged(make_server, db: Path, data: Path) -> None:
    async with opened(make_server, data) as (client, faults, pid):
        faults.reject_nth = {faults.orders_seen + 1}
        text = await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-1"})
        assert "still open and hedged" in text
        d = (await call(client, "check_delta", {"position_id": pid}))["positions"][0]
        assert d["spot_quantity"] == -d["perp_quantity"] > 0
        out = await call(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-2"})
        assert out["position"]["status"] == "closed"
    check_invariants(db)


async def test_refused_spot_close_is_retried_by_the_watchdog(make_server, db: Path, data: Path) -> None:
    async with opened(make_server, data) as (client, faults, pid):
        n = faults.orders_seen
        faults.reject_nth = {n + 2, n + 3}  # the spot sale and its immediate retry are refused
        text = await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-1"})
        assert "exit incomplete" in text
        assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "closing"
        adv = await call(client, "advance_time", {"hours": 1})  # the watchdog finishes the exit
        assert any(a["rule"] == "recovered" for a in adv["alerts"])
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "closed"
    check_invariants(db)


async def test_timeout_with_failed_lookups_leaves_the_outcome_unknown_until_the_venue_answers(
    make_server, db: Path, data: Path
) -> None:
    # the perp leg executes but its answer is lost, and every lookup of it fails too: the desk must
    # neither call it "not executed" (and unwind the spot into a naked short) nor send anything more
    faults = FaultPlan(timeout_after_execute_nth={2}, lookups_fail=3)
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "outcome unknown" in text and "watchdog reconciles" in text
        assert faults.orders_seen == 2  # nothing sent after the unknown leg
        assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "opening"
        assert db_rows(db, "SELECT status FROM orders WHERE market = 'perp'")[0]["status"] == "unknown"
        # the same key cannot start a second trade while the first is unresolved
        again = await call_error(client, "enter_trade", ENTRY)
        assert "idempotency_key" in again and "opening" in again
        adv = await call(client, "advance_time", {"hours": 1})  # the venue answers now: both legs had filled
        assert any(a["rule"] == "recovered" and "entry completed" in a["message"] for a in adv["alerts"])
        pos = (await call(client, "portfolio_status", {"include_fills": True}))["open_positions"]
        assert [p["status"] for p in pos] == ["open"]
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
        # and the key now replays the entry the watchdog completed
        replay = await call(client, "enter_trade", ENTRY)
        assert replay["replayed"] and replay["position"]["position_id"] == pos[0]["position_id"]
    assert faults.orders_seen == 2
    check_invariants(db)


async def test_venue_down_during_reconciliation_does_not_reduce_the_desk(make_server, db: Path, data: Path) -> None:
    faults = FaultPlan(timeout_after_execute_nth={2}, lookups_fail=50)
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        await call_error(client, "enter_trade", ENTRY)
        adv = await call(client, "advance_time", {"hours": 1})
        assert any(a["rule"] == "reconcile_pending" for a in adv["alerts"])
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]  # a venue that does not answer is not a broken ledger
        faults.lookups_fail = 0
        await call(client, "advance_time", {"hours": 1})
        assert [p["status"] for p in (await call(client, "portfolio_status", {"include_fills": True}))["open_positions"]] == ["open"]
    check_invariants(db)


async def test_timeout_of_an_order_that_never_arrived_is_found_missing_and_unwound(make_server, db: Path, data: Path) -> None:
    faults = FaultPlan(timeout_before_execute_nth={2})
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "not found at the venue" in text and "spot leg was unwound" in text
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "failed"
    check_invariants(db)


async def test_partial_buy_back_then_refusals_keep_the_remainder_hedged(make_server, db: Path, data: Path) -> None:
    async with opened(make_server, data) as (client, faults, pid):
        n = faults.orders_seen
        # the buy-back fills 40 % and its retry is refused: only 40 % of the spot may be sold
        faults.partial_nth = {n + 1: 0.4}
        faults.reject_nth = {n + 2}
        text = await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-1"})
        assert "exit incomplete" in text and "still hedged" in text
        d = (await call(client, "check_delta", {"position_id": pid}))["positions"][0]
        assert d["spot_quantity"] == pytest.approx(-d["perp_quantity"]) and d["spot_quantity"] == pytest.approx(0.04 * 0.6)
        assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "closing"
        sold = db_rows(db, "SELECT SUM(filled_qty) AS q FROM paper_orders WHERE market = 'spot' AND side = 'sell'")[0]["q"]
        assert sold == pytest.approx(0.04 * 0.4)
        again = await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-1"})
        assert "closing" in again
        await call(client, "advance_time", {"hours": 1})  # the watchdog finishes the exit
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "closed"
    coids = [r["client_order_id"] for r in db_rows(db, "SELECT client_order_id FROM orders")]
    assert len(coids) == len(set(coids))
    check_invariants(db)


async def test_repeated_refusals_never_reuse_a_client_order_id(make_server, db: Path, data: Path) -> None:
    async with opened(make_server, data) as (client, faults, pid):
        for i in range(3):  # three refused exits, each a new attempt on the same position
            faults.reject_nth = {faults.orders_seen + 1}
            await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": f"x-{i}"})
        out = await call(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-ok"})
        assert out["position"]["status"] == "closed"
    coids = [r["client_order_id"] for r in db_rows(db, "SELECT client_order_id FROM orders WHERE position_id = ?", (pid,))]
    assert len(coids) == len(set(coids)) and len(coids) >= 2 + 3 * 2 + 2
    check_invariants(db)


async def test_a_trim_with_unknown_outcome_is_looked_up_before_anything_else_is_sent(make_server, db: Path, data: Path) -> None:
    # the perp leg fills 75 %, the trim of the extra spot executes but its answer and lookups are lost
    faults = FaultPlan(partial_nth={2: 0.75}, timeout_after_execute_nth={3}, lookups_fail=3)
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        text = await call_error(client, "enter_trade", ENTRY)
        assert "outcome unknown" in text
        await call(client, "advance_time", {"hours": 3})
        open_ = (await call(client, "portfolio_status", {"include_fills": True}))["open_positions"]
        assert [p["quantity"] for p in open_] == [pytest.approx(0.03)]
    assert faults.orders_seen == 3  # the trim was found executed, never sent again
    check_invariants(db)


async def test_a_spot_sale_with_unknown_outcome_is_never_sent_twice(make_server, db: Path, data: Path) -> None:
    async with opened(make_server, data) as (client, faults, pid):
        n = faults.orders_seen
        faults.timeout_after_execute_nth = {n + 2}  # the spot sale executes, the answer is lost...
        faults.lookups_fail = 3  # ...and so are the lookups
        text = await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-1"})
        assert "exit incomplete" in text and "outcome is unknown" in text
        assert faults.orders_seen == n + 2
        await call(client, "advance_time", {"hours": 1})
    assert faults.orders_seen == n + 2
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "closed"
    check_invariants(db)


async def test_an_outage_while_the_watchdog_finishes_an_exit_is_waited_out_not_reduced(make_server, db: Path, data: Path) -> None:
    async with opened(make_server, data) as (client, faults, pid):
        n = faults.orders_seen
        faults.partial_nth = {n + 1: 0.5}
        faults.reject_nth = {n + 2}
        await call_error(client, "exit_trade", {"position_id": pid, "idempotency_key": "x-1"})  # half left, hedged
        m = faults.orders_seen
        faults.unavailable_nth = set(range(m + 1, m + 4))  # the venue answers 503 to the next orders
        alerts = []
        for _ in range(3):
            alerts += (await call(client, "advance_time", {"hours": 1}))["alerts"]
            risk = await call(client, "risk_status", {})
            assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
        assert sum(a["rule"] == "exit_incomplete" for a in alerts) <= 1  # said once, retried quietly
        await call(client, "advance_time", {"hours": 1})
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "closed"
    check_invariants(db)
