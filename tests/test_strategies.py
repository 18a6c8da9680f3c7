"""Trade shapes are declarations: a strategy registered here (two perps on different coins,
notional-sized, no playbook) is traded end to end through the MCP tools on the paper desk by
the same engines as cash-and-carry, and its money reconciles to the cent."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from basis_mcp import strategies
from basis_mcp.legs import plan_legs
from basis_mcp.strategies.base import LegSpec, StrategySpec
from basis_mcp.venue.faults import FaultPlan
from tests.conftest import call, call_error, db_rows

pytestmark = pytest.mark.anyio

PAIR = StrategySpec(
    name="eth_btc_pair",
    title="Long ETH perp, short BTC perp (test shape)",
    summary="equal dollars long ETH and short BTC perpetuals",
    legs=(
        LegSpec(role="eth_perp", market="perp", side="long", symbol="ETH"),
        LegSpec(role="btc_perp", market="perp", side="short", symbol="BTC", sizing="notional"),
    ),
    playbooks=(),
)


@pytest.fixture
def pair():
    strategies.register(PAIR)
    yield PAIR
    strategies.unregister(PAIR.name)


def test_strategy_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="at least two legs"):
        StrategySpec(name="x", title="", summary="", legs=(LegSpec("a", "perp", "short"),))
    with pytest.raises(ValueError, match="margin_spot"):
        LegSpec("a", "spot", "short")
    with pytest.raises(ValueError, match="not an order"):
        StrategySpec(name="x", title="", summary="", legs=PAIR.legs, entry_order=(0, 0))
    assert strategies.get("cash_and_carry").legs[0].market == "spot"


def test_plan_sizes_each_leg_on_its_own_step() -> None:
    prices = {"ETH": 3_000.0, "BTC": 60_000.0}
    planned = plan_legs(PAIR, "ETH", 3_000.0, lambda spec, s: prices[s], lambda s: {"ETH": 0.001, "BTC": 0.001}[s])
    assert [(p.symbol, p.quantity) for p in planned] == [("ETH", 1.0), ("BTC", 0.05)]
    assert planned[1].ratio == pytest.approx(0.05)


async def test_a_declared_two_perp_strategy_trades_end_to_end(pair, make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        out = await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 3000, "strategy": "eth_btc_pair",
                                                 "idempotency_key": "pair-1"})
        pos = out["position"]
        assert pos["status"] == "open" and pos["strategy"] == "eth_btc_pair" and pos["playbook"] == "none"
        eth, btc = pos["legs"]
        assert (eth["role"], eth["market"], eth["symbol"], eth["side"]) == ("eth_perp", "perp", "ETH", "long")
        assert (btc["role"], btc["market"], btc["symbol"], btc["side"]) == ("btc_perp", "perp", "BTC", "short")
        assert eth["held_quantity"] > 0 > btc["held_quantity"]
        # equal dollars on both legs at entry, within one BTC lot step
        assert abs(eth["held_quantity"] * eth["entry_price"] + btc["held_quantity"] * btc["entry_price"]) < 0.001 * btc["entry_price"]
        assert eth["margin_usd"] > 0 and btc["margin_usd"] > 0
        assert pos["entry_spot_price"] is None and pos["entry_basis_pct"] is None

        # an instrument belongs to one open position: cash-and-carry on BTC would share the BTC perp
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "cc-1"})
        assert f"position {pos['position_id']} is already open" in text

        adv = await call(client, "advance_time", {"hours": 48})
        paid = [f for f in adv["funding"] if f["position_id"] == pos["position_id"]]
        assert {f["symbol"] for f in paid} == {"ETH", "BTC"} and len(paid) == 12
        delta = (await call(client, "check_delta", {"position_id": pos["position_id"]}))["positions"][0]
        assert [leg["role"] for leg in delta["legs"]] == ["eth_perp", "btc_perp"]
        assert all(leg["margin_ratio_pct"] > 150 for leg in delta["legs"]) and delta["recommended_action"] == "hold"

        closed = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "pair-1-x"})
        assert closed["position"]["status"] == "closed"
        realized = closed["realized"]["total_usd"]
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]  # the watchdog's ledger check passed

    # the money, recomputed from the rows: fills, fees and funding per leg, and the venue's cash
    pid = pos["position_id"]
    fills = db_rows(db, "SELECT f.*, l.role FROM fills f JOIN legs l ON l.id = f.leg_id WHERE f.position_id = ?", (pid,))
    funding = db_rows(db, "SELECT f.amount_usd, l.role FROM funding_payments f JOIN legs l ON l.id = f.leg_id"
                          " WHERE f.position_id = ?", (pid,))
    assert {f["role"] for f in fills} == {"eth_perp", "btc_perp"} and {f["role"] for f in funding} == {"eth_perp", "btc_perp"}
    for role in ("eth_perp", "btc_perp"):
        net = sum(f["quantity"] * (1 if f["side"] == "buy" else -1) for f in fills if f["role"] == role)
        assert net == pytest.approx(0.0, abs=1e-12)
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    fees = sum(f["fee_usd"] for f in fills)
    got = cash - fees + sum(f["amount_usd"] for f in funding)
    assert realized == pytest.approx(got, abs=0.005)
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    wallets = sum(r["isolated_wallet"] for r in db_rows(db, "SELECT isolated_wallet FROM paper_perp"))
    capital = float(db_rows(db, "SELECT value FROM meta WHERE key = 'capital_usd'")[0]["value"])
    assert usdt + wallets == pytest.approx(capital + got, abs=0.01)


async def test_a_refused_later_leg_unwinds_the_earlier_one(pair, make_server, db: Path) -> None:
    faults = FaultPlan(reject_nth={2})  # the BTC short is refused after the ETH long filled
    async with Client(make_server(faults=faults)) as client:
        text = await call_error(client, "enter_trade", {"symbol": "ETH", "notional_usd": 3000, "strategy": "eth_btc_pair",
                                                        "idempotency_key": "pair-2"})
        assert "btc_perp leg refused" in text and "the eth_perp leg was unwound" in text
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "failed"
    assert db_rows(db, "SELECT COALESCE(SUM(ABS(quantity)), 0) AS q FROM paper_perp")[0]["q"] == 0


async def test_unknown_strategy_is_refused_with_the_list(make_server) -> None:
    async with Client(make_server()) as client:
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "strategy": "calendar",
                                                        "idempotency_key": "u-1"})
        assert "strategy" in text and "cash_and_carry" in text


@pytest.mark.parametrize(("step", "status"), [
    ("entry.leg1_filled", "failed"),  # the ETH long filled, the BTC short never sent: the ETH leg is unwound
    ("entry.leg2_marked_sent", "failed"),  # the BTC short marked sent but never reached the venue: not found, unwound
    ("entry.leg2_filled", "open"),  # both legs filled, the position not filed: completed
    ("exit.leg1_filled", "closed"),  # the first leg closed, the second not: the exit is completed
])
async def test_a_desk_killed_mid_trade_recovers_every_leg(pair, tmp_path: Path, step: str, status: str) -> None:
    """The desk stops dead at a checkpoint (everything it wrote is in SQLite, nothing else survives);
    a new desk on the same book completes or unwinds the position at start-up."""
    import anyio

    from basis_mcp.config import Settings
    from basis_mcp.desk import Desk

    db = tmp_path / "book.db"
    settings = Settings()
    exiting = step.startswith("exit")
    desk = Desk.open_replay(settings, db, faults=FaultPlan(pause_at=None if exiting else step))
    await desk.start()
    with anyio.move_on_after(5) as scope:
        out = await desk.enter("ETH", 3000, None, "k-1", "eth_btc_pair")
        if exiting:
            desk.faults.pause_at = step
            await desk.exit(out.position.position_id, "k-1-x")
    assert scope.cancelled_caught, "the desk did not stop at the checkpoint"
    desk.close()  # a dead process: the next desk finds only what was committed

    desk = Desk.open_replay(settings, db)
    await desk.start()
    try:
        rows = desk.store.q("SELECT * FROM positions")
        assert [r["status"] for r in rows] == [status], rows[0]["close_reason"]
        held = desk.book.held(rows[0]["id"])
        legs = desk.book.legs(rows[0]["id"])
        if status == "open":
            eth, btc = (held[leg.id] for leg in legs)
            assert eth > 0 > btc and abs(eth * legs[0].entry_price + btc * legs[1].entry_price) < 0.001 * legs[1].entry_price
        else:
            assert all(abs(q) < 1e-12 for q in held.values())
        assert desk.trading_state()[0] == "ACTIVE", desk.trading_state()[1]  # the ledger reconciles with the venue
        assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
    finally:
        desk.close()


PAIR_BTC_FIRST = StrategySpec(
    name="btc_eth_pair",
    title="Short BTC perp, long ETH perp, BTC sent first (test shape)",
    summary="equal dollars; the coarser BTC leg goes first",
    legs=PAIR.legs,
    entry_order=(1, 0),
    playbooks=(),
)


async def test_a_partial_coarse_leg_leaves_legs_the_steps_can_match(make_server, db: Path) -> None:
    """The BTC leg (0.001 lots, ~$60) fills a third; the ETH leg is sized to it and both are trimmed
    to hedge units every leg can hold on its own step: no naked-leg alert, no endless rebalancing."""
    strategies.register(PAIR_BTC_FIRST)
    try:
        async with Client(make_server(faults=FaultPlan(partial_nth={2: 0.33}))) as client:
            out = await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 3000, "strategy": "btc_eth_pair",
                                                     "idempotency_key": "k"})
            assert not any(a["rule"] == "naked_leg" for a in out["alerts"])
            adv = await call(client, "advance_time", {"hours": 6})
            assert adv["watchdog_actions"] == []
            d = (await call(client, "check_delta", {"position_id": out["position"]["position_id"]}))["positions"][0]
            assert d["recommended_action"] == "hold" and d["imbalance_pct"] < 2.0
    finally:
        strategies.unregister(PAIR_BTC_FIRST.name)


async def test_a_registered_strategy_with_a_dated_leg_trades_the_nearest_listed_contract(make_server, db: Path) -> None:
    """No engine knows about a new shape: a dated leg is given the nearest listed quarterly whose last trading
    time the hold ends before (a venue without dated futures refuses it: tests/test_calendar.py)."""
    dated = StrategySpec(name="perp_vs_future", title="", summary="", playbooks=(),
                         legs=(LegSpec("perp", "perp", "long"), LegSpec("future", "future", "short")))
    strategies.register(dated)
    try:
        async with Client(make_server()) as client:
            out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "strategy": "perp_vs_future",
                                                     "expected_hold_days": 7, "idempotency_key": "f-1"})
            fut = out["position"]["legs"][1]
            assert fut["symbol"] == "BTC-240329" and fut["expiry"] == "2024-03-29T08:00:00Z" and fut["held_quantity"] < 0
        assert db_rows(db, "SELECT symbol FROM paper_future")[0]["symbol"] == "BTC-240329"
    finally:
        strategies.unregister(dated.name)


async def test_caps_count_every_coin_a_position_trades(pair, make_server, db: Path) -> None:
    from basis_mcp.config import Settings

    # anchor tier (BTC, ETH) limited to $5,000: a $3,000 pair puts ~$6,000 of BTC and ETH in it
    settings = Settings(capital_usd=100_000, tier_allocation={"anchor": 0.05, "mid": 0.35, "speculative": 0.15})
    async with Client(make_server(settings)) as client:
        text = await call_error(client, "enter_trade", {"symbol": "ETH", "notional_usd": 3000, "strategy": "eth_btc_pair",
                                                        "idempotency_key": "c-1"})
        assert "anchor tier" in text and "headroom" in text
        # the position is named by its first leg's coin, never by another one (a SOL-named ETH/BTC pair)
        text = await call_error(client, "enter_trade", {"symbol": "SOL", "notional_usd": 1000, "strategy": "eth_btc_pair",
                                                        "idempotency_key": "c-2"})
        assert "symbol" in text and "first leg" in text
        out = await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 2000, "strategy": "eth_btc_pair",
                                                 "idempotency_key": "c-3"})
        anchor = next(t for t in (await call(client, "portfolio_status", {}))["tiers"] if t["tier"] == "anchor")
        legs = out["position"]["legs"]
        assert anchor["in_use_usd"] == pytest.approx(
            out["position"]["notional_usd"] + abs(legs[1]["held_quantity"]) * legs[1]["entry_price"], abs=0.01)


async def test_a_book_with_a_strategy_this_server_does_not_know_is_still_watched_and_closable(pair, tmp_path: Path) -> None:
    from basis_mcp.config import Settings
    from basis_mcp.desk import Desk

    db = tmp_path / "book.db"
    desk = Desk.open_replay(Settings(), db)
    await desk.start()
    pid = (await desk.enter("ETH", 3000, None, "u-1", "eth_btc_pair")).position.position_id
    desk.close()
    strategies.unregister(PAIR.name)  # a server started without the plugin that declared it

    desk = Desk.open_replay(Settings(), db)
    await desk.start()
    try:
        state, reason = desk.trading_state()
        assert state == "REDUCING" and f"position {pid} (eth_btc_pair)" in reason
        adv = await desk.advance(3)
        assert adv.ticks == 3 and not [a for a in desk.pop_alerts() if a.rule == "watchdog_error"]
        out = await desk.exit(pid, "u-1-x")
        assert out.position.status == "closed"
        assert all(abs(q) < 1e-12 for q in desk.book.held(pid).values())
    finally:
        desk.close()
