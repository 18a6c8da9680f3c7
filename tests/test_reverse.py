"""Reverse cash-and-carry: short borrowed spot, long perp. Opened, carried across funding
settlements and hourly borrow accruals and closed through the MCP tools over stdio; the money
reconciles to fills, fees, funding and borrow; the watchdog closes on a borrow squeeze and
the carry playbook exits when borrow costs more than the funding received."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client

from basis_mcp.borrow import BorrowModel, borrow_8h_pct
from basis_mcp.clock import parse_time
from basis_mcp.config import Settings
from basis_mcp.playbooks import Signals
from tests import scripted
from tests.conftest import call, call_error, db_rows, stdio_params

pytestmark = pytest.mark.anyio
START = "2024-01-05T00:00:00Z"


def backwardation(tmp: Path, rate: float = -0.0003) -> Path:
    """BTC with the perp 0.5 % below spot and funding negative (longs receive), for 45 days."""
    return scripted.write(tmp, BTC=scripted.Market(hours=24 * 45, basis_pct=-0.5, rate=rate),
                          ETH=scripted.Market(hours=24 * 45, spot=2_000.0))


SQUEEZE = "2024-02-02T00:00:00Z"  # the modelled spike scenario squeezes borrow ×10 for 72 h every 45 days: one starts here


def test_the_borrow_model_is_deterministic_and_labelled() -> None:
    calm, spike = BorrowModel("calm"), BorrowModel("spike")
    t = parse_time("2024-01-05T00:00:00Z")
    assert calm.apr_pct_at("BTC", t) == calm.apr_pct_at("BTC", t) and 1.4 <= calm.apr_pct_at("BTC", t) <= 2.6
    assert calm.apr_pct_at("DOGE", t) > calm.apr_pct_at("ETH", t) > calm.apr_pct_at("BTC", t)
    in_spike = 45 * 86400 * 400 + 3600  # an hour into a squeeze
    assert spike.apr_pct_at("BTC", in_spike) == pytest.approx(10 * calm.apr_pct_at("BTC", in_spike))
    assert spike.label == "modelled:spike" and borrow_8h_pct(8760.0) == pytest.approx(8.0)


def test_a_reverse_position_reads_the_signals_mirrored_and_net_of_borrow() -> None:
    s = Signals(basis_pct=-0.5, basis_smooth_pct=-0.4, basis_std_pct=0.05, funding_recent_8h_pct=-0.03, funding_carry_8h_pct=-0.02)
    r = s.seen_by(-1, borrow_8h_pct=0.005)
    assert (r.basis_pct, r.basis_smooth_pct, r.basis_std_pct) == (0.5, 0.4, 0.05)
    assert r.funding_recent_8h_pct == pytest.approx(0.025) and r.funding_carry_8h_pct == pytest.approx(0.015)
    assert s.seen_by(1) is s


async def test_reverse_cash_and_carry_end_to_end_over_stdio(db: Path, tmp_path: Path) -> None:
    data = backwardation(tmp_path)
    args = ("--data", str(data), "--start", START)
    async with Client(stdio_params(db, *args)) as client:
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 4000, "hold_days": 7,
                                                      "strategy": "reverse_cash_and_carry"})
        assert est["playbook_entry_ok"] and est["borrow_usd"] < 0 and est["borrow_rate_source"] == "modelled:calm"
        assert est["basis_capture_usd"] > 0 and est["funding_usd"] > 0  # the long perp receives negative funding
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                                 "idempotency_key": "rev-1"})
        pos = out["position"]
        spot, perp = pos["legs"]
        assert (spot["market"], spot["side"], perp["market"], perp["side"]) == ("margin_spot", "short", "perp", "long")
        assert spot["held_quantity"] == pytest.approx(-perp["held_quantity"]) and perp["held_quantity"] > 0
        assert pos["entry_basis_pct"] == pytest.approx(-0.5, abs=0.01) and spot["margin_usd"] > 0 and perp["margin_usd"] > 0
        adv = await call(client, "advance_time", {"hours": 48})
        mine = [f for f in adv["funding"] if f["position_id"] == pos["position_id"]]
        assert len(mine) == 6 and all(f["amount_usd"] > 0 for f in mine)
        assert adv["watchdog_actions"] == []
        d = (await call(client, "check_delta", {"position_id": pos["position_id"]}))["positions"][0]
        assert d["recommended_action"] == "hold" and {leg["market"] for leg in d["legs"]} == {"margin_spot", "perp"}
        closed = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "rev-1-x"})
        assert closed["position"]["status"] == "closed"
        realized = closed["realized"]
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    pid = pos["position_id"]
    fills = db_rows(db, "SELECT * FROM fills WHERE position_id = ?", (pid,))
    funding = sum(r["amount_usd"] for r in db_rows(db, "SELECT amount_usd FROM funding_payments WHERE position_id = ?", (pid,)))
    borrow = db_rows(db, "SELECT * FROM borrow_payments WHERE position_id = ?", (pid,))
    assert len(borrow) == 48 and all(b["amount_usd"] < 0 for b in borrow)  # one accrual an hour
    assert db_rows(db, "SELECT COUNT(*) AS n FROM borrow_rates WHERE source = 'modelled:calm'")[0]["n"] >= 48
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    fees = sum(f["fee_usd"] for f in fills)
    borrow_usd = sum(b["amount_usd"] for b in borrow)
    assert realized["borrow_usd"] == pytest.approx(borrow_usd, abs=0.005)
    assert realized["total_usd"] == pytest.approx(cash - fees + funding + borrow_usd, abs=0.01)
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_margin")[0]["n"] == 0  # the loan is repaid
    assert usdt == pytest.approx(Settings().capital_usd + realized["total_usd"], abs=0.01)


async def test_a_borrow_squeeze_closes_the_reverse_position(make_server, db: Path, tmp_path: Path) -> None:
    data = backwardation(tmp_path)
    settings = Settings(borrow_scenario="spike", borrow_spike_apr_pct=15.0)
    async with Client(make_server(settings, start="2024-01-31T00:00:00Z", data_path=data)) as client:
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                                 "idempotency_key": "sq-1"})
        assert out["position"]["status"] == "open"
        adv = await call(client, "advance_time", {"hours": 50})
        act = next(a for a in adv["watchdog_actions"] if a["rule"] == "borrow_spike")
        assert act["action"] == "close" and act["borrow_apr_pct"] > 15
    row = db_rows(db, "SELECT status, close_reason, closed_at FROM positions")[0]
    assert row["status"] == "closed" and row["close_reason"] == "watchdog: borrow_spike"
    assert row["closed_at"] == parse_time(SQUEEZE)


async def test_the_carry_playbook_exits_when_borrow_costs_more_than_the_funding_received(make_server, db: Path,
                                                                                      tmp_path: Path) -> None:
    m = scripted.Market(hours=24 * 45, basis_pct=-0.5, rate=-0.0003)
    m.set_rates_from("2024-01-26T00:00:00Z", -0.00001)  # the funding longs receive falls to 0.001 %/8h
    data = scripted.write(tmp_path, BTC=m)
    # the borrow squeeze from SQUEEZE on costs ~0.018 %/8h: more than the funding received (the spike rule is set aside)
    settings = Settings(borrow_scenario="spike", borrow_spike_apr_pct=500.0)
    async with Client(make_server(settings, start="2024-01-25T00:00:00Z", data_path=data)) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                           "playbook": "carry", "idempotency_key": "c-1"})
        adv = await call(client, "advance_time", {"hours": 24 * 7})  # to 2024-02-01: calm borrow, the carry still pays
        assert adv["watchdog_actions"] == []
        adv = await call(client, "advance_time", {"hours": 24})
        act = next(a for a in adv["watchdog_actions"] if a["rule"] == "carry_funding_exit")
        assert act["funding_carry_8h_pct"] < -0.005
    row = db_rows(db, "SELECT status, closed_at FROM positions")[0]
    assert row["status"] == "closed" and row["closed_at"] >= parse_time(SQUEEZE)


async def test_a_reverse_trade_on_a_venue_that_does_not_lend_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Live venues in this release trade spot and perps only: a borrowed-spot leg is refused there, nothing sent."""
    from basis_mcp.desk import Desk
    from basis_mcp.errors import Rejected

    desk = Desk.open_replay(Settings(), tmp_path / "b.db", data_path=backwardation(tmp_path), start=START)
    await desk.start()
    try:
        desk.venue.markets = frozenset({"spot", "perp"})  # what the ccxt venue offers
        with pytest.raises(Rejected, match=r"does not trade the spot \(margin_spot\) leg; nothing was sent"):
            await desk.enter("BTC", 4000, None, "x-1", "reverse_cash_and_carry")
        assert desk.store.one("SELECT COUNT(*) AS n FROM positions")["n"] == 0
    finally:
        desk.close()


async def test_bad_strategy_input_names_the_field(make_server, tmp_path: Path) -> None:
    async with Client(make_server(start=START, data_path=backwardation(tmp_path))) as client:
        text = await call_error(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 4000, "hold_days": 7,
                                                             "strategy": "calendar_spreads"})
        assert "strategy" in text and "reverse_cash_and_carry" in text and "calendar_spread" in text


async def test_a_replay_from_june_2025_finds_and_opens_the_reverse_trade(make_server, db: Path) -> None:
    """Summer 2025: every basis is slightly negative (−0.04 %) with positive funding, so neither trade
    pays its round trip and the guardrails refuse both (honestly). The agent keeps scanning; in the
    2025-10-10 crash SOL's perp trades 1.4 % under spot: the scan points to the reverse trade, the
    estimate passes and the position opens."""
    async with Client(make_server(start="2025-06-01T00:00:00Z")) as client:
        scan = await call(client, "scan_basis", {})
        assert {s["strategy"] for s in scan["snapshots"]} == {"reverse_cash_and_carry"}
        est = await call(client, "estimate_net_apy", {"symbol": "SOL", "notional_usd": 2000, "hold_days": 3,
                                                      "strategy": "reverse_cash_and_carry"})
        assert not est["playbook_entry_ok"] and est["borrow_rate_source"] == "modelled:calm"
        target = parse_time("2025-10-10T22:00:00Z")
        while True:
            now = parse_time((await call(client, "risk_status", {}))["market_time"])
            if now >= target:
                break
            await call(client, "advance_time", {"hours": min(720.0, (target - now) / 3600)})
        sol = next(s for s in (await call(client, "scan_basis", {"symbols": ["SOL"]}))["snapshots"])
        assert sol["strategy"] == "reverse_cash_and_carry" and sol["basis_pct"] < -1.0
        est = await call(client, "estimate_net_apy", {"symbol": "SOL", "notional_usd": 2000, "hold_days": 3,
                                                      "strategy": "reverse_cash_and_carry"})
        assert est["playbook_entry_ok"] and est["net_usd"] > 0
        out = await call(client, "enter_trade", {"symbol": "SOL", "notional_usd": 2000, "strategy": "reverse_cash_and_carry",
                                                 "expected_hold_days": 3, "idempotency_key": "crash-1"})
        assert out["position"]["status"] == "open" and out["position"]["entry_basis_pct"] < -1.0


async def test_size_position_counts_the_reverse_trades_capital(make_server, tmp_path: Path) -> None:
    """Borrowed spot ties up margin, not its whole value: at 2x the same notional needs two thirds
    of a cash-and-carry's capital (spot margin + perp margin vs the whole spot + perp margin)."""
    settings = Settings(capital_usd=6_000, max_position_notional_usd=50_000)
    async with Client(make_server(settings, start=START, data_path=backwardation(tmp_path))) as client:
        cc = await call(client, "size_position", {"symbol": "BTC", "target_notional_usd": 2000})
        rev = await call(client, "size_position", {"symbol": "BTC", "target_notional_usd": 2000, "strategy": "reverse_cash_and_carry"})
        assert rev["strategy"] == "reverse_cash_and_carry" and rev["max_notional_usd"] == pytest.approx(cc["max_notional_usd"])
        assert rev["recommended_notional_usd"] == pytest.approx(cc["recommended_notional_usd"])
        assert rev["capital_required_usd"] == pytest.approx(2 / 3 * cc["capital_required_usd"], rel=0.01)
        assert rev["margin_usd"] == pytest.approx(rev["recommended_notional_usd"], rel=0.01)  # spot and perp margin at 2x
        big = await call(client, "size_position", {"symbol": "BTC", "strategy": "reverse_cash_and_carry"})
        small = await call(client, "size_position", {"symbol": "BTC"})
        assert big["binding_cap"] == small["binding_cap"] == "tier_single_position"


async def test_no_reverse_entry_into_a_borrow_squeeze(make_server, tmp_path: Path) -> None:
    settings = Settings(borrow_scenario="spike", borrow_spike_apr_pct=15.0)
    async with Client(make_server(settings, start="2024-02-02T02:00:00Z", data_path=backwardation(tmp_path))) as client:
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                                        "idempotency_key": "sq-2"})
        assert "borrow_apr_pct" in text and "borrow_spike" in text
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "cc-2"})
        assert "borrow" not in text  # the forward trade does not borrow (it is refused here only for its economics)


async def test_a_reverse_position_shows_its_spot_prices(make_server, tmp_path: Path) -> None:
    async with Client(make_server(start=START, data_path=backwardation(tmp_path))) as client:
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                                 "idempotency_key": "p-1"})
        pos = out["position"]
        assert pos["entry_spot_price"] == pos["legs"][0]["entry_price"] and pos["entry_perp_price"] == pos["legs"][1]["entry_price"]
        closed = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "p-1-x"})
        assert closed["position"]["exit_spot_price"] == closed["position"]["legs"][0]["exit_price"] is not None


# ----------------------------------------------------------------------------- the backtest

REVERSE_SETS = [
    dict(playbook="convergence", min_basis_pct=0.02, min_zscore=1.0),
    dict(playbook="convergence", min_basis_pct=0.02, min_zscore=1.0, fill_delay_seconds=0.0, borrow_scenario="spike"),
    dict(playbook="carry"),
    dict(playbook="carry", borrow_scenario="spike", carry_entry_8h_pct=0.0),
]


@pytest.mark.parametrize("overrides", REVERSE_SETS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_the_reverse_backtest_engines_agree_trade_for_trade(overrides: dict) -> None:
    """Vectorised and reference engines, reverse trade, on the real negative-basis periods: the same
    trades, and every trade's P&L = basis − slippage − fees + funding + borrow (borrow ≤ 0, hourly)."""
    from basis_mcp.backtest import BacktestParams, prepare, run_reference, run_vectorized
    from basis_mcp.history import load_extract

    p = BacktestParams(strategy="reverse_cash_and_carry", **overrides)
    histories = load_extract()
    total = 0
    for sym, start, end in (("BTC", "2022-01-01", "2023-01-01"), ("ETH", "2022-01-01", "2023-01-01"),
                            ("SOL", "2025-06-01", "2026-05-16")):
        m = prepare(histories[sym], parse_time(start), parse_time(end), p)
        v, r = run_vectorized(m, p), run_reference(m, p)
        assert [(t.entry_index, t.exit_index, t.reason, t.quantity) for t in v] == \
               [(t.entry_index, t.exit_index, t.reason, t.quantity) for t in r]
        for a, b in zip(v, r, strict=True):
            for f in ("basis_pnl_usd", "funding_usd", "fees_usd", "slippage_usd", "borrow_usd", "pnl_usd"):
                assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-6)
            assert a.borrow_usd < 0 and a.strategy == "reverse_cash_and_carry"
            assert a.pnl_usd == pytest.approx(a.basis_pnl_usd - a.slippage_usd - a.fees_usd + a.funding_usd + a.borrow_usd,
                                              abs=1e-6)
            # the borrow: every hour held, on the quantity at that hour's spot, at the modelled rate
            model = BorrowModel(p.borrow_scenario)
            spot = None
            hours = []
            for k in range(a.entry_index + 1, a.exit_index + 1):
                spot = m.spot[k] if not np.isnan(m.spot[k]) else spot
                hours.append(a.quantity * spot * model.hourly_rate(sym, float(m.t[k])))
            assert a.borrow_usd == pytest.approx(-sum(hours), rel=1e-9)
        total += len(v)
    assert total >= 2  # the rules do trade (rarely: the reverse trade seldom pays its round trip here)


async def test_the_backtest_tool_runs_the_reverse_trade(make_server) -> None:
    async with Client(make_server(start="2026-05-01T00:00:00Z")) as client:
        out = await call(client, "backtest", {"symbols": ["SOL"], "strategy": "reverse_cash_and_carry", "start": "2025-06-01",
                                              "chart": False})
    assert out["params"]["strategy"] == "reverse_cash_and_carry" and out["summary"]["borrow_usd"] < 0
    assert out["trades"] and all(t["strategy"] == "reverse_cash_and_carry" for t in out["trades"])


async def test_the_portfolio_counts_a_reverse_positions_margin_not_its_borrowed_notional(make_server, tmp_path: Path) -> None:
    async with Client(make_server(start=START, data_path=backwardation(tmp_path))) as client:
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                                 "idempotency_key": "pf-1"})
        pf = await call(client, "portfolio_status", {"include_fills": True})
    pos = out["position"]
    assert pf["capital_in_use_usd"] == pytest.approx(pos["margin_usd"], abs=0.01)
    assert pos["margin_usd"] == pytest.approx(sum(leg["margin_usd"] for leg in pos["legs"]))
    assert pf["cash_usd"] == pytest.approx(Settings().capital_usd - pos["margin_usd"] - sum(f["fee_usd"] for f in pos["fills"]),
                                           abs=0.01)


async def test_a_loan_recall_in_a_squeeze_buys_the_spot_back_and_unwinds_the_perp(make_server, db: Path,
                                                                                  tmp_path: Path) -> None:
    """The spike scenario's venue recalls open loans 24 h into a squeeze. With the borrow-spike rule set
    above the squeeze (so the watchdog does not close first), the recall buys the coins back at market,
    the desk books it on the borrowed-spot leg, unwinds the perp at once, and the money reconciles."""
    from basis_mcp.borrow import BorrowModel

    data = backwardation(tmp_path)
    assert BorrowModel("spike").recall_times(parse_time("2024-01-31T00:00:00Z"), parse_time("2024-02-05T00:00:00Z")) == [
        parse_time(SQUEEZE) + 24 * 3600]
    assert BorrowModel("calm").recall_times(0, 10**10) == []
    settings = Settings(borrow_scenario="spike", borrow_spike_apr_pct=500.0)
    async with Client(make_server(settings, start="2024-01-31T00:00:00Z", data_path=data)) as client:
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "reverse_cash_and_carry",
                                                 "idempotency_key": "rc-1"})
        pid = out["position"]["position_id"]
        adv = await call(client, "advance_time", {"hours": 80})
        assert adv["watchdog_actions"] == []
        liq = next(x for x in adv["liquidations"] if x.get("position_id") == pid)
        assert liq["buyback_price"] > 0 and liq["fee_usd"] > 0
        port = await call(client, "portfolio_status", {"include_closed": 1, "include_fills": True})
        closed = port["closed_positions"][0]
        assert closed["status"] == "closed" and closed["close_reason"].startswith("spot loan recalled by the venue")
        assert port["equity_usd"] == pytest.approx(port["account_equity_usd"], abs=0.01)
    recall_t = parse_time(SQUEEZE) + 24 * 3600
    row = db_rows(db, "SELECT closed_at, realized_pnl_usd FROM positions WHERE id = ?", (pid,))[0]
    assert row["closed_at"] == recall_t
    fills = db_rows(db, "SELECT * FROM fills WHERE position_id = ?", (pid,))
    funding = sum(r["amount_usd"] for r in db_rows(db, "SELECT amount_usd FROM funding_payments WHERE position_id = ?", (pid,)))
    borrow = sum(r["amount_usd"] for r in db_rows(db, "SELECT amount_usd FROM borrow_payments WHERE position_id = ?", (pid,)))
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    assert row["realized_pnl_usd"] == pytest.approx(cash - sum(f["fee_usd"] for f in fills) + funding + borrow, abs=0.01)
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_margin")[0]["n"] == 0
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_perp")[0]["n"] == 0
    assert usdt == pytest.approx(Settings().capital_usd + row["realized_pnl_usd"], abs=0.01)


def test_the_backtest_closes_a_reverse_position_at_the_loan_recall_like_the_desk(tmp_path: Path) -> None:
    from basis_mcp.backtest import BacktestParams, prepare, run_reference, run_vectorized
    from basis_mcp.history import load_extract

    h = load_extract(backwardation(tmp_path))["BTC"]
    p = BacktestParams(strategy="reverse_cash_and_carry", playbook="carry", borrow_scenario="spike", fill_delay_seconds=0)
    m = prepare(h, parse_time("2024-01-20T00:00:00Z"), parse_time("2024-02-08T00:00:00Z"), p)
    v, r = run_vectorized(m, p), run_reference(m, p)
    assert [(t.entry_index, t.exit_index, t.reason) for t in v] == [(t.entry_index, t.exit_index, t.reason) for t in r]
    recalled = [t for t in v if t.reason == "loan_recall"]
    assert recalled and recalled[0].exit_time == "2024-02-03T00:00:00Z"  # 24 h into the squeeze, as on the desk
    assert recalled[0].borrow_usd == pytest.approx(next(t for t in r if t.reason == "loan_recall").borrow_usd, abs=1e-9)
