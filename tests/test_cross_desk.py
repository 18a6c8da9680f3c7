"""Cross-exchange basis on the paper desk: two paper exchanges (Binance with the shipped data, Bybit with its real
funding history), each with its own collateral pool, legs routed by venue, the per-venue cap, and the watchdog's
rules for one venue going down while the other is fine."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.desk.facade import Desk
from basis_mcp.errors import Rejected
from basis_mcp.history import load_funding_venues
from tests.conftest import call, call_error, db_rows, stdio_params

START = "2021-03-01T00:00:00Z"
pytestmark = pytest.mark.anyio
ENV = {"BASIS_MCP_PAPER_VENUES": "bybit", "BASIS_MCP_CAPITAL_USD": "20000"}


async def test_cross_exchange_end_to_end_over_stdio(db: Path) -> None:
    async with Client(stdio_params(db, "--start", START, env=ENV)) as client:
        scan = await call(client, "scan_basis", {"symbols": ["BTC"]})
        btc = next(s for s in scan["snapshots"] if s["venue"] == "binance")
        assert {btc["cross_short_venue"], btc["cross_long_venue"]} == {"binance", "bybit"}
        assert btc["cross_funding_diff_apr_pct"] >= 0 and btc["cross_edge_pct"] is not None
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 3000, "hold_days": 30,
                                                      "strategy": "cross_exchange"})
        assert est["short_venue"] != est["long_venue"] and "per hour" in est["formula"]
        assert est["legs_summary"] == ["short perp on the richest venue", "long perp on the cheapest venue"]
        assert "funding differential" in est["earns"] and any("unreachable" in r for r in est["risks"])
        assert est["fees_usd"] == pytest.approx(2 * 3000 * (0.0005 + 0.00055), rel=1e-9)  # each venue's own taker fee
        size = await call(client, "size_position", {"symbol": "BTC", "strategy": "cross_exchange"})
        assert any(c["name"].startswith("venue_share:paper:bybit") for c in size["caps"]), size["caps"]
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "strategy": "cross_exchange",
                                                 "short_venue": "bybit", "long_venue": "binance", "idempotency_key": "x-1"})
        pos = out["position"]
        short, long_ = pos["legs"]
        assert (short["venue"], short["symbol"], short["side"]) == ("paper:bybit", "BTC@bybit", "short")
        assert (long_["venue"], long_["symbol"], long_["side"]) == ("paper:binance", "BTC", "long")
        assert short["held_quantity"] == pytest.approx(-long_["held_quantity"]) and long_["held_quantity"] > 0
        funding = await call(client, "seconds_to_funding", {"symbol": "BTC"})
        assert [v["venue"] for v in funding["other_venues"]] == ["bybit"]
        assert funding["other_venues"][0]["expected_payment_usd"] is not None
        adv = await call(client, "advance_time", {"hours": 48})
        mine = [f for f in adv["funding"] if f["position_id"] == pos["position_id"]]
        assert sorted({f["symbol"] for f in mine}) == ["BTC", "BTC@bybit"]
        assert len(mine) == 12  # 6 settlements on each venue (both 8 h)
        assert all(f["amount_usd"] > 0 for f in mine if f["symbol"] == "BTC@bybit")  # the short receives positive funding
        assert adv["watchdog_actions"] == []
        d = (await call(client, "check_delta", {"position_id": pos["position_id"]}))["positions"][0]
        assert d["recommended_action"] == "hold"
        assert {leg["venue"] for leg in d["legs"]} == {"paper:binance", "paper:bybit"}
        port = await call(client, "portfolio_status", {})
        assert port["equity_usd"] == pytest.approx(port["account_equity_usd"], abs=0.01)
        pools = {v["venue"]: v for v in port["venues"]}
        assert set(pools) == {"paper:binance", "paper:bybit"} and all(v["reachable"] for v in pools.values())
        assert pools["paper:bybit"]["in_use_usd"] == pytest.approx(short["margin_usd"], rel=0.01)
        assert pools["paper:bybit"]["limit_usd"] == 8000.0
        closed = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "x-1-x"})
        assert closed["position"]["status"] == "closed"
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk
    # the money: realized = fills − fees + funding, per leg; each venue's cash moved by exactly its legs' flows
    fills = db_rows(db, "SELECT l.venue, f.side, f.quantity, f.price, f.fee_usd FROM fills f JOIN legs l ON l.id = f.leg_id")
    pays = db_rows(db, "SELECT l.venue, p.amount_usd FROM funding_payments p JOIN legs l ON l.id = p.leg_id")
    flows: dict[str, float] = {"paper:binance": 0.0, "paper:bybit": 0.0}
    for f in fills:
        flows[f["venue"]] += (f["quantity"] * f["price"] if f["side"] == "sell" else -f["quantity"] * f["price"]) - f["fee_usd"]
    for p in pays:
        flows[p["venue"]] += p["amount_usd"]
    assert closed["realized"]["total_usd"] == pytest.approx(sum(flows.values()), abs=0.005)
    primary = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    bybit = db_rows(db, "SELECT free FROM paper_bybit_balances WHERE asset = 'USDT'")[0]["free"]
    assert primary == pytest.approx(12_000 + flows["paper:binance"], abs=0.01)  # 60 % stayed on the primary venue
    assert bybit == pytest.approx(8_000 + flows["paper:bybit"], abs=0.01)  # 40 % moved to bybit's pool at start
    # every bybit settlement booked is the shipped real series' rate at that time
    real = load_funding_venues()[("bybit", "BTC")]
    rates = dict(zip(real.time.tolist(), real.rate.tolist(), strict=True))
    for r in db_rows(db, "SELECT ts, rate FROM funding_payments WHERE symbol = 'BTC@bybit'"):
        assert r["rate"] == pytest.approx(rates[int(r["ts"])], abs=1e-12)


async def test_cross_exchange_refusals_name_the_field(db: Path, tmp_path: Path) -> None:
    async with Client(stdio_params(db, "--start", START)) as client:  # one venue
        err = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "strategy": "cross_exchange",
                                                       "idempotency_key": "a"})
        assert "strategy" in err and "needs two venues" in err and "--paper-venues" in err
        err = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "short_venue": "bybit",
                                                       "idempotency_key": "b"})
        assert "short_venue" in err and "cash_and_carry trades on one venue" in err
    db2 = tmp_path / "two.db"
    async with Client(stdio_params(db2, "--start", START, env=ENV)) as client:
        for i, (args, field, why) in enumerate((
                ({"short_venue": "okx"}, "short_venue", "not a venue of this desk"),
                ({"short_venue": "bybit", "long_venue": "bybit"}, "long_venue", "must differ"),
                ({"long_venue": "Bybit"}, "long_venue", "should match pattern"),  # the schema: lower-case names
        )):
            err = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "strategy": "cross_exchange",
                                                           "idempotency_key": f"r-{i}", **args})
            assert f"{field}=" in err and why in err and "idempotency_key" not in err, err
        assert db_rows(db2, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0  # nothing was sent
        # the per-venue cap: a cash-and-carry on Binance commits $7,500 of the $8,000 (40 % of $20,000) a venue may hold
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 5000, "idempotency_key": "cc"})
        err = await call_error(client, "enter_trade", {"symbol": "ETH", "notional_usd": 3000, "strategy": "cross_exchange",
                                                       "long_venue": "binance", "short_venue": "bybit", "idempotency_key": "cap"})
        assert "paper:binance would hold" in err and "per-venue cap of 0.4 of capital ($8,000.00)" in err, err
        assert "paper:bybit" not in err  # the other venue has room
        ok = await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 1200, "strategy": "cross_exchange",
                                                "long_venue": "binance", "short_venue": "bybit", "idempotency_key": "cap2",
                                                "leverage": 3})
        assert ok["position"]["status"] == "open"  # $400 more on Binance at 3x: within the cap
    db3 = tmp_path / "late.db"  # after the shipped bybit history ends: no second market
    async with Client(stdio_params(db3, "--start", "2024-03-01", env=ENV)) as client:
        err = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "strategy": "cross_exchange",
                                                       "idempotency_key": "late"})
        assert "fewer than two" in err and "bybit" in err and "outside it" in err


async def test_a_new_venue_pool_is_a_transfer_and_capital_is_unchanged(tmp_path: Path) -> None:
    if True:
        desk = Desk.open_replay(Settings(capital_usd=10_000), tmp_path / "b.db", start=START)
        await desk.start()
        desk.close()
        # the same book later started with a second venue: its pool comes out of the primary's USDT
        desk = Desk.open_replay(Settings(capital_usd=10_000, paper_venues=["bybit"]), tmp_path / "b.db", start=START)
        await desk.start()
        bal = await desk.venue.balances_by_venue()
        assert bal == {"binance": {"USDT": 6_000.0}, "bybit": {"USDT": 4_000.0}}
        assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=1e-9)
        desk.close()
        desk = Desk.open_replay(Settings(capital_usd=10_000, paper_venues=["bybit"]), tmp_path / "b.db", start=START)
        await desk.start()  # restarted: funded once only
        assert (await desk.venue.balances_by_venue())["bybit"] == {"USDT": 4_000.0}
        desk.close()
    with pytest.raises(Exception, match="paper_venues"):
        Settings(paper_venues=["bybit", "bybit"])
    with pytest.raises(Exception, match="max_venue_share"):
        Settings(max_venue_share=0.5)


async def test_one_venue_down_keeps_the_other_legs_margin_safe_and_closes_when_it_is_back(tmp_path: Path) -> None:
    """Long BTC on Binance at 5x, short on Bybit, into the 19 May 2021 crash with Bybit unreachable: the watchdog cannot
    close the pair, so it adds margin to the Binance long on Binance (its own pool); Bybit back after more than ten
    minutes down: the position is closed. No venue's money goes missing."""
    if True:
        settings = Settings(capital_usd=20_000, paper_venues=["bybit"], max_leverage=5, default_leverage=5)
        desk = Desk.open_replay(settings, tmp_path / "d.db", start="2021-05-18T00:00:00Z")
        await desk.start()
        out = await desk.enter("BTC", 3000, 5, "c-1", "cross_exchange", expected_hold_days=30, short_venue="bybit",
                               long_venue="binance")
        pid = out.position.position_id
        desk.venue.others["bybit"].faults.unavailable_always = True
        adv = await desk.advance(48)
        added = [a for a in adv.watchdog_actions if a.get("rule") == "margin_while_venue_down"]
        assert added and all(a["leg"] == "long_perp" and a["added_usd"] > 0 for a in added), adv.watchdog_actions
        assert any(a["rule"] == "venue_unreachable" and "bybit" in a["message"] for a in desk.store.q("SELECT * FROM alerts"))
        assert desk.book.position(pid)["status"] == "open"  # nothing could be closed as a whole
        with pytest.raises(Rejected, match="paper:bybit does not answer"):  # no new entries touching the dead venue
            await desk.enter("ETH", 1000, 2, "c-2", "cross_exchange")
        n_orders = desk.store.one("SELECT COUNT(*) AS n FROM orders")["n"]
        with pytest.raises(Rejected, match="bybit does not answer .*nothing was sent, the position stays open and hedged"):
            await desk.exit(pid, "c-1-x")  # closing one leg while the other cannot be reached would leave it naked
        assert desk.store.one("SELECT COUNT(*) AS n FROM orders")["n"] == n_orders
        port = await desk.portfolio()  # the reads still work, and say which venue is down
        assert {v.venue: v.reachable for v in port.venues} == {"paper:binance": True, "paper:bybit": False}
        (delta,) = (await desk.check_delta(pid)).positions
        assert [leg.margin_ratio_pct is None for leg in delta.legs] == [True, False]  # bybit's leg: unknown, not invented
        readings, _, _ = await desk.entry_readings("ETH", 1000, 2, 7)  # a cash-and-carry on the healthy venue: nothing
        assert readings.leg_problems == () and readings.venue_reachable  # about the dead one stands in its way
        assert readings.free_capital_usd > 10_000
        desk.venue.others["bybit"].faults.unavailable_always = False
        adv = await desk.advance(1)
        assert [a["rule"] for a in adv.watchdog_actions] == ["venue_was_unreachable"], adv.watchdog_actions
        assert desk.book.position(pid)["status"] == "closed"
        assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
        assert desk.risk.trading_state()[0] == "ACTIVE"
        desk.close()


async def test_the_second_venues_data_end_refuses_long_holds_and_closes_in_time(tmp_path: Path) -> None:
    """Bybit's shipped funding ends with 2023: an entry whose hold runs past it is refused; one that was open is closed by
    the watchdog while there is still a market (venue_data_ends), money intact."""
    desk = Desk.open_replay(Settings(capital_usd=20_000, paper_venues=["dydx"]), tmp_path / "e.db", start="2023-12-15T00:00:00Z")
    await desk.start()
    ends = desk.market.feeds["dydx"].span["BTC"][1]
    with pytest.raises(Rejected, match="after the replay data of a venue ends"):
        await desk.enter("BTC", 3000, 2, "e-1", "cross_exchange", expected_hold_days=25)
    out = await desk.enter("BTC", 3000, 2, "e-2", "cross_exchange", expected_hold_days=12)
    assert [leg.venue for leg in out.position.legs] == ["paper:dydx", "paper:binance"]  # dYdX paid more (hourly)
    pid = out.position.position_id
    adv = await desk.advance(24 * 30)
    assert [a["rule"] for a in adv.watchdog_actions] == ["venue_data_ends"], adv.watchdog_actions
    row = desk.book.position(pid)
    assert row["status"] == "closed" and ends - 2 * 3600 <= row["closed_at"] < ends
    assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
    assert desk.risk.trading_state()[0] == "ACTIVE"
    hourly = desk.store.one("SELECT COUNT(*) AS n FROM funding_payments WHERE symbol = 'BTC@dydx'")["n"]
    assert hourly > 8 * desk.store.one("SELECT COUNT(*) AS n FROM funding_payments WHERE symbol = 'BTC'")["n"] - 24
    desk.close()


async def test_primary_venue_down_keeps_the_second_venues_leg_safe(tmp_path: Path) -> None:
    """The mirror of the Bybit-down case: Binance unreachable into the February 2021 rally, short BTC on Bybit at 5x:
    margin is added to the Bybit leg on Bybit; the alert names Binance."""
    settings = Settings(capital_usd=20_000, paper_venues=["bybit"], max_leverage=5, default_leverage=5)
    desk = Desk.open_replay(settings, tmp_path / "p.db", start="2021-02-05T00:00:00Z")
    await desk.start()
    out = await desk.enter("BTC", 3000, 5, "p-1", "cross_exchange", expected_hold_days=30, short_venue="bybit",
                           long_venue="binance")
    pid = out.position.position_id
    desk.venue.primary.faults.unavailable_always = True
    adv = await desk.advance(24 * 4)
    added = [a for a in adv.watchdog_actions if a.get("rule") == "margin_while_venue_down"]
    assert added and all(a["leg"] == "short_perp" and a["added_usd"] > 0 for a in added), adv.watchdog_actions
    assert desk.store.one("SELECT COUNT(*) AS n FROM paper_liquidations")["n"] == 0
    assert desk.store.one("SELECT COUNT(*) AS n FROM paper_bybit_liquidations")["n"] == 0  # the Bybit leg survived
    assert any("paper:binance unreachable" in r["message"] for r in desk.store.q("SELECT message FROM alerts"))
    desk.venue.primary.faults.unavailable_always = False
    adv = await desk.advance(1)  # the primary was down > 10 min: every position is closed once it answers
    assert [a["rule"] for a in adv.watchdog_actions] == ["venue_was_unreachable"]
    assert desk.book.position(pid)["status"] == "closed"
    assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
    desk.close()


async def test_restarts_with_another_venue_set_keep_the_money(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    two = Settings(capital_usd=20_000, paper_venues=["bybit"])
    desk = Desk.open_replay(two, db, start=START)
    await desk.start()
    out = await desk.enter("BTC", 3000, 2, "r-1", "cross_exchange", expected_hold_days=30, short_venue="bybit",
                           long_venue="binance")
    desk.close()
    with pytest.raises(Rejected, match=r"position 1 has a leg on bybit: start with --paper-venues including bybit"):
        Desk.open_replay(Settings(capital_usd=20_000), db)  # the open leg would vanish
    with pytest.raises(Rejected, match="has a leg on bybit"):
        Desk.open_replay(Settings(capital_usd=20_000, paper_venues=["gate"]), db)
    desk = Desk.open_replay(two, db)
    await desk.start()
    await desk.advance(30)
    await desk.exit(out.position.position_id, "r-1-x")
    desk.close()
    desk = Desk.open_replay(Settings(capital_usd=20_000), db)  # nothing open on bybit: its pool comes back
    await desk.start()
    assert (await desk.venue.balances_by_venue()).keys() == {"binance"}
    assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
    await desk.advance(30)
    desk.close()
    desk = Desk.open_replay(two, db)  # back again, funded again from the primary once
    await desk.start()
    assert (await desk.venue.balances_by_venue())["bybit"] == {"USDT": 8_000.0}
    assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
    assert desk.risk.trading_state()[0] == "ACTIVE"
    desk.close()


async def test_a_venue_down_for_settlements_has_them_booked_when_it_answers(tmp_path: Path) -> None:
    """One funding cursor per venue: Bybit unreachable across three settlements pays them into its own wallet; the desk
    books them when it answers again, and the cash identity holds."""
    desk = Desk.open_replay(Settings(capital_usd=20_000, paper_venues=["bybit"]), tmp_path / "c.db", start=START)
    await desk.start()
    out = await desk.enter("BTC", 3000, 2, "c-1", "cross_exchange", expected_hold_days=30, short_venue="bybit",
                           long_venue="binance")
    desk.venue.others["bybit"].faults.unavailable_always = True
    await desk.advance(30)  # the paper exchange settles on its own (it is the exchange), the desk cannot read it
    desk.venue.others["bybit"].faults.unavailable_always = False
    await desk.advance(1)
    rows = desk.store.q("SELECT COUNT(*) AS n FROM funding_payments WHERE symbol = 'BTC@bybit'")
    assert rows[0]["n"] == 3  # 08:00, 16:00, 00:00 the next day
    assert await desk.reconcile.cash_discrepancy_usd() == pytest.approx(0.0, abs=0.01)
    fills = desk.store.q("SELECT f.fee_usd, f.quantity * f.price AS usd FROM fills f JOIN legs l ON l.id = f.leg_id"
                         " WHERE l.venue = 'paper:bybit'")
    assert fills and all(r["fee_usd"] == pytest.approx(r["usd"] * 0.00055, rel=1e-9) for r in fills)  # Bybit's own fee
    for raw in ("BTC@bybit", "BTC/USDT:USDT@bybit"):
        with pytest.raises(Rejected, match="name the coin"):
            await desk.enter(raw, 1000, 2, f"s-{raw}", "cash_and_carry")
    assert out.position.status == "open"
    desk.close()
