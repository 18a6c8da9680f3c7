"""Calendar spread: long perp, short a quarterly future (SIMULATED price, `basis_mcp.dated`).
Opened, carried across funding settlements and closed through the MCP tools over stdio with
the money reconciling to fills, fees and funding; the watchdog closes it before expiry; an
entry whose hold would cross expiry, an expired or unlisted contract, and a venue without dated
futures are refused with nothing sent; a contract still open at expiry is settled at the index."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from mcp import Client

from basis_mcp import dated
from basis_mcp.backtest import BacktestParams, run_reference, run_vectorized
from basis_mcp.backtest.calendar import run_calendar
from basis_mcp.backtest.runner import load_markets
from basis_mcp.clock import parse_time
from basis_mcp.config import Settings
from basis_mcp.history import load_extract
from tests import scripted
from tests.conftest import call, call_error, db_rows, stdio_params

pytestmark = pytest.mark.anyio
START = "2024-03-01T00:00:00Z"
MARCH = "BTC-240329"  # the March 2024 quarterly: expires 2024-03-29T08:00Z


def contango(tmp: Path) -> Path:
    """BTC with funding 0.03 %/8h from 2023-12-25 that falls to 0.003 %/8h on 2024-02-15, for 100 days
    (past the March expiry): the simulated quarterly still prices the last 90 days' richer funding,
    so its premium over the perp pays more than the long perp now pays in funding."""
    m = scripted.Market(hours=24 * 100, basis_pct=0.0, rate=0.0003)
    m.set_rates_from("2024-02-15T00:00:00Z", 0.00003)
    return scripted.write(tmp, BTC=m, ETH=scripted.Market(hours=24 * 100, spot=2_000.0))


def test_the_quarterly_calendar_and_contract_codes() -> None:
    e = dated.quarterly_expiries(parse_time("2024-01-01T00:00:00Z"), parse_time("2025-01-01T00:00:00Z"))
    days = [datetime.fromtimestamp(x, UTC) for x in e]
    assert [d.strftime("%Y-%m-%d %H:%M") for d in days] == ["2024-03-29 08:00", "2024-06-28 08:00", "2024-09-27 08:00",
                                                            "2024-12-27 08:00"]
    assert all(d.weekday() == 4 for d in days)  # last Fridays
    assert dated.listed_expiries(parse_time(START)) == e[:2]
    assert dated.parse_contract("BTC-240329") == dated.parse_contract("btcusdt_240329") == dated.parse_contract(
        "BTC/USDT:USDT-240329") == ("BTC", e[0])
    for bad, why in (("BTC-240328", "not a quarterly expiry"), ("BTC-241329", "not a date"), ("BTC", "not a dated contract")):
        with pytest.raises(ValueError, match=why):
            dated.parse_contract(bad)
    assert dated.underlying("ETH-240628") == "ETH" and dated.underlying("ETH") == "ETH"


def test_the_simulated_future_prices_the_last_90_days_of_funding_and_rolls_down_to_expiry() -> None:
    h = load_extract(symbols=["BTC"])["BTC"]
    expiry = parse_time("2024-03-29T08:00:00Z")
    t = np.arange(parse_time("2024-01-01T00:00:00Z"), expiry + 1, 3600.0)
    carry = dated.funding_carry_apr(h.funding_time, h.funding_rate, t)
    # what a short perp was paid over the last 90 days, per year: the settlements summed by hand
    k = 1000
    in_window = (h.funding_time > t[k] - 90 * 86400) & (h.funding_time <= t[k])
    assert carry[k] == pytest.approx(h.funding_rate[in_window].sum() * 365 / 90, rel=1e-12)
    # before 90 days of history: what there is, over its own span (from the first interval's start)
    early = dated.funding_carry_apr(h.funding_time, h.funding_rate, float(h.funding_time[0] + 10 * 86400))
    first10 = h.funding_rate[h.funding_time <= h.funding_time[0] + 10 * 86400].sum()
    assert early[0] == pytest.approx(first10 * 365 / (10 + 1 / 3), rel=1e-9)
    idx = ((t - h.t0) // 3600).astype(int)
    fut = dated.simulated_price(h.perp[idx], carry, expiry - t)
    premium = (fut - h.perp[idx]) / h.perp[idx]
    assert premium[-1] == 0.0  # at expiry nothing is left to roll down
    clipped = np.clip(carry, *dated.CARRY_APR_BOUNDS)
    assert np.allclose(premium, clipped * (expiry - t) / dated.YEAR_S, rtol=1e-9, atol=1e-15)
    assert 0 < premium[0] < 0.1


async def test_calendar_spread_end_to_end_over_stdio(db: Path, tmp_path: Path) -> None:
    data = contango(tmp_path)
    async with Client(stdio_params(db, "--data", str(data), "--start", START)) as client:
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 4000, "hold_days": 20,
                                                      "strategy": "calendar_spread"})
        assert est["contract"] == MARCH and est["playbook_entry_ok"], est
        assert est["funding_usd"] < 0 and est["basis_capture_usd"] > 0  # the long perp pays; the premium rolls down
        assert "SIMULATED" in est["formula"]
        size = await call(client, "size_position", {"symbol": "BTC", "strategy": "calendar_spread"})
        assert size["max_notional_usd"] > 0
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "calendar_spread",
                                                 "expected_hold_days": 20, "idempotency_key": "cal-1"})
        pos = out["position"]
        perp, fut = pos["legs"]
        assert (perp["market"], perp["side"], fut["market"], fut["side"]) == ("perp", "long", "future", "short")
        assert fut["symbol"] == MARCH and fut["expiry"] == "2024-03-29T08:00:00Z"
        assert perp["held_quantity"] == pytest.approx(-fut["held_quantity"]) and perp["held_quantity"] > 0
        assert pos["entry_basis_pct"] == pytest.approx(est["entry_basis_pct"], abs=0.05) and fut["margin_usd"] > 0
        assert [f["role"] for f in pos["fills"]] == ["future", "perp"]  # the dated leg first
        adv = await call(client, "advance_time", {"hours": 48})
        mine = [f for f in adv["funding"] if f["position_id"] == pos["position_id"]]
        assert len(mine) == 6 and all(f["amount_usd"] < 0 for f in mine)  # the long perp pays positive funding
        assert adv["watchdog_actions"] == []
        d = (await call(client, "check_delta", {"position_id": pos["position_id"]}))["positions"][0]
        assert d["recommended_action"] == "hold" and {leg["market"] for leg in d["legs"]} == {"perp", "future"}
        assert abs(d["current_basis_pct"] - pos["entry_basis_pct"]) < 0.2  # the quarterly's premium, not the spot basis
        port = await call(client, "portfolio_status", {"include_fills": True})
        assert port["open_positions"][0]["strategy"] == "calendar_spread"
        assert port["equity_usd"] == pytest.approx(port["account_equity_usd"], abs=0.01)
        closed = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "cal-1-x"})
        assert closed["position"]["status"] == "closed"
        assert [f["role"] for f in closed["position"]["fills"][2:]] == ["future", "perp"]  # closed in exit order
        realized = closed["realized"]
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    pid = pos["position_id"]
    fills = db_rows(db, "SELECT * FROM fills WHERE position_id = ?", (pid,))
    funding = sum(r["amount_usd"] for r in db_rows(db, "SELECT amount_usd FROM funding_payments WHERE position_id = ?", (pid,)))
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    fees = sum(f["fee_usd"] for f in fills)
    assert realized["total_usd"] == pytest.approx(cash - fees + funding, abs=0.01)
    assert realized["funding_usd"] == pytest.approx(funding, abs=0.005) and funding < 0
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_future")[0]["n"] == 0
    assert usdt == pytest.approx(Settings().capital_usd + realized["total_usd"], abs=0.01)
    leg = db_rows(db, "SELECT symbol, expiry FROM legs WHERE market = 'future'")[0]
    assert leg["symbol"] == MARCH and leg["expiry"] == parse_time("2024-03-29T08:00:00Z")


async def test_the_watchdog_closes_the_spread_before_expiry(make_server, db: Path, tmp_path: Path) -> None:
    data = contango(tmp_path)
    async with Client(make_server(Settings(expiry_exit_hours=24), start="2024-03-20T00:00:00Z", data_path=data)) as client:
        out = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "strategy": "calendar_spread",
                                                 "contract": "BTCUSDT_240329", "expected_hold_days": 8, "idempotency_key": "e-1"})
        assert out["position"]["legs"][1]["symbol"] == MARCH
        adv = await call(client, "advance_time", {"hours": 24 * 9})  # to 2024-03-29T00:00Z
        act = next(a for a in adv["watchdog_actions"] if a["rule"] == "expiry_near")
        assert act["action"] == "close" and act["hours_to_expiry"] == pytest.approx(24.0)
    row = db_rows(db, "SELECT status, close_reason, closed_at FROM positions")[0]
    assert row["status"] == "closed" and row["close_reason"] == "watchdog: expiry_near"
    assert row["closed_at"] == parse_time("2024-03-28T08:00:00Z")
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_liquidations")[0]["n"] == 0  # nothing left for the venue to settle


async def test_a_hold_across_expiry_and_bad_contracts_are_refused_with_nothing_sent(make_server, db: Path,
                                                                                   tmp_path: Path) -> None:
    data = contango(tmp_path)
    async with Client(make_server(start="2024-03-20T00:00:00Z", data_path=data)) as client:
        base = {"symbol": "BTC", "notional_usd": 4000, "strategy": "calendar_spread"}
        err = await call_error(client, "enter_trade", {**base, "contract": MARCH, "expected_hold_days": 10, "idempotency_key": "b-1"})
        assert "expected_hold_days" in err and "across expiry" in err and "2024-03-28T08:00:00Z" in err
        err = await call_error(client, "enter_trade", {**base, "contract": "BTC-231229", "idempotency_key": "b-2"})
        assert "contract" in err and "expired" in err
        err = await call_error(client, "enter_trade", {**base, "contract": "BTC-240927", "idempotency_key": "b-3"})
        assert "not listed" in err and "BTC-240329, BTC-240628" in err
        err = await call_error(client, "enter_trade", {**base, "contract": "ETH-240628", "idempotency_key": "b-4"})
        assert "ETH contract" in err
        err = await call_error(client, "enter_trade", {**base, "contract": "BTC-240328", "idempotency_key": "b-5"})
        assert "not a quarterly expiry" in err
        err = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "contract": MARCH,
                                                       "idempotency_key": "b-6"})
        assert "cash_and_carry has no dated-future leg" in err
        # without a contract, a 10-day hold takes the June quarterly
        est = await call(client, "estimate_net_apy", {**base, "hold_days": 10})
        assert est["contract"] == "BTC-240628"
    assert db_rows(db, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0
    assert db_rows(db, "SELECT COUNT(*) AS n FROM positions")[0]["n"] == 0


async def test_a_calendar_spread_on_a_venue_without_dated_futures_is_refused(tmp_path: Path) -> None:
    from basis_mcp.desk import Desk
    from basis_mcp.errors import Rejected

    desk = Desk.open_replay(Settings(), tmp_path / "b.db", data_path=contango(tmp_path), start=START)
    await desk.start()
    try:
        desk.venue.markets = frozenset({"spot", "perp"})  # what the ccxt venue offers in this release
        with pytest.raises(Rejected, match=r"does not trade the future \(future\) leg; nothing was sent"):
            await desk.enter("BTC", 4000, None, "x-1", "calendar_spread")
        assert desk.store.one("SELECT COUNT(*) AS n FROM positions")["n"] == 0
    finally:
        desk.close()


async def test_a_contract_still_open_at_expiry_is_settled_at_the_index_and_the_perp_unwound(tmp_path: Path) -> None:
    """The watchdog's expiry rule set aside (a 1-hour buffer, and the desk not ticked): the venue settles
    the future at the spot index at expiry; the desk books it, unwinds the perp, and the money reconciles."""
    from basis_mcp.desk import Desk

    desk = Desk.open_replay(Settings(expiry_exit_hours=1), tmp_path / "d.db", data_path=contango(tmp_path),
                            start="2024-03-15T00:00:00Z")
    await desk.start()
    try:
        out = await desk.enter("BTC", 4000, None, "d-1", "calendar_spread", expected_hold_days=13, contract=MARCH)
        pid = out.position.position_id
        expiry = parse_time("2024-03-29T08:00:00Z")
        desk.clock.set(expiry + 3600)  # the desk was down over the expiry: no tick ran the watchdog
        await desk.clockwork.tick(expiry + 3600)
        row = desk.store.one("SELECT status, close_reason FROM positions WHERE id = ?", (pid,))
        assert row["status"] == "closed" and row["close_reason"].startswith("future delivered at expiry")
        fills = desk.store.q("SELECT f.*, o.purpose FROM fills f JOIN orders o ON o.id = f.order_id WHERE f.position_id = ?"
                             " ORDER BY f.id", (pid,))
        dlv = next(f for f in fills if f["purpose"] == "liquidation")
        assert dlv["price"] == pytest.approx(desk.feed.snapshot("BTC", at=expiry).spot) and dlv["fee_usd"] == 0
        alert = desk.store.one("SELECT message FROM alerts WHERE rule = 'delivery'")
        assert "SETTLED AT EXPIRY" in alert["message"]
        assert abs(await desk.reconcile.cash_discrepancy_usd()) < 0.01
    finally:
        desk.close()


# ----------------------------------------------------------------------------- the backtest


def regimes(tmp: Path, days: int = 330, seed: int = 7) -> Path:
    """A year of BTC whose funding switches between 0.04 %/8h and 0.005 %/8h every 25 days and whose perp
    walks randomly: the simulated quarterly (priced on the last 90 days of funding) is rich after funding
    falls and cheap after it rises, so calendar spreads are entered, won and lost."""
    rng = np.random.default_rng(seed)
    m = scripted.Market(hours=24 * days, spot=40_000.0, basis_pct=0.02)
    walk = 40_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.004, m.n)))
    m.perp[:] = walk
    m.spot[:] = walk / (1.0 + rng.normal(0.0002, 0.0004, m.n))
    m.mark[:] = m.perp
    m.mark_high[:] = m.perp * 1.001
    m.mark_low[:] = m.perp * 0.999
    period = ((m.funding_time - m.funding_time[0]) // (30 * 86400)) % 2
    m.funding_rate[:] = np.where(period == 0, 0.0005, 0.00002)
    return scripted.write(tmp, BTC=m)


CAL_PARAMS = [
    BacktestParams(strategy="calendar_spread", min_zscore=0.5, expected_hold_days=20, zscore_window=240),
    BacktestParams(strategy="calendar_spread", min_zscore=-1.0, exit_zscore=-3.0, expected_hold_days=10, zscore_window=200,
                   fill_delay_seconds=0, expiry_exit_hours=72, max_hold_days=15),
]


@pytest.mark.parametrize("params", CAL_PARAMS, ids=["delay1h", "nodelay"])
def test_calendar_backtest_engines_agree_and_follow_the_desk_contract_rules(tmp_path: Path, params: BacktestParams) -> None:
    h = load_extract(regimes(tmp_path))
    m = load_markets(h, ["BTC"], "2024-01-15", "2024-11-01", params)[0]
    v = run_calendar(m, params, run_vectorized)
    r = run_calendar(m, params, run_reference)
    assert [(t.contract, t.entry_index, t.exit_index, t.reason, t.quantity) for t in v] == \
           [(t.contract, t.entry_index, t.exit_index, t.reason, t.quantity) for t in r]
    assert len(v) >= 3
    for a, b in zip(v, r, strict=True):
        for f in ("basis_pnl_usd", "funding_usd", "fees_usd", "slippage_usd", "pnl_usd"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-6)
    buffer_s = params.expiry_exit_hours * 3600
    prev_exit = -1
    for t in v:
        base, expiry = dated.parse_contract(t.contract)
        entry, exit_ = parse_time(t.entry_time), parse_time(t.exit_time)
        # the contract the desk would have chosen at the signal: the nearest listed one the hold ends before
        signal = entry - params.fill_delay_seconds
        want = next(e for e in dated.listed_expiries(signal)
                    if signal + params.fill_delay_seconds + params.expected_hold_days * 86400 <= e - buffer_s)
        assert expiry == want, (t.contract, t.entry_time)
        assert exit_ <= expiry - buffer_s  # never held into the last day
        assert t.entry_index > prev_exit  # one position at a time, across contracts
        prev_exit = t.exit_index
        assert t.funding_usd < 0  # the long perp pays the (always positive) funding
        assert t.basis_pnl_usd + t.funding_usd - t.fees_usd - t.slippage_usd == pytest.approx(t.pnl_usd, abs=1e-6)


def test_a_backtest_position_still_open_at_the_last_trading_time_is_closed_there(tmp_path: Path) -> None:
    # (the premium here falls steadily as the 90-day funding average does: any z-score lets it in)
    p = BacktestParams(strategy="calendar_spread", min_zscore=-9.5, exit_zscore=-10.0, expected_hold_days=20, max_hold_days=30,
                       zscore_window=200)
    m = load_markets(load_extract(contango(tmp_path)), ["BTC"], START, "2024-04-02", p)[0]
    trades = run_calendar(m, p, run_vectorized)
    ref = run_calendar(m, p, run_reference)
    assert [(t.contract, t.entry_index, t.exit_index, t.reason) for t in trades] == \
           [(t.contract, t.entry_index, t.exit_index, t.reason) for t in ref]
    assert [t.pnl_usd for t in trades] == pytest.approx([t.pnl_usd for t in ref], abs=1e-6)
    first = trades[0]
    assert (first.contract, first.reason, first.exit_time) == (MARCH, "expiry_near", "2024-03-28T08:00:00Z")
    assert first.pnl_usd > 0 and first.funding_usd < 0  # the premium rolled down by more than the funding paid


async def test_the_backtest_tool_runs_the_calendar_spread_and_labels_it_simulated(make_server, tmp_path: Path) -> None:
    async with Client(make_server(start="2024-11-01T00:00:00Z", data_path=regimes(tmp_path))) as client:
        out = await call(client, "backtest", {"symbols": ["BTC"], "start": "2024-01-15", "end": "2024-11-01",
                                              "strategy": "calendar_spread", "min_zscore": -1.0, "exit_zscore": -3.0,
                                              "expected_hold_days": 20, "zscore_window": 240})
        assert out["trades"] and all(t["contract"].startswith("BTC-") for t in out["trades"])
        err = await call_error(client, "backtest", {"symbols": ["BTC"], "strategy": "calendar_spread", "playbook": "carry"})
        assert "convergence playbook only" in err


@pytest.mark.parametrize("strategy", ["cash_and_carry", "reverse_cash_and_carry", "calendar_spread"])
def test_the_equity_curve_ends_at_the_trades_pnl_and_marks_open_positions_with_their_own_signs(tmp_path: Path,
                                                                                               strategy: str) -> None:
    """The curve once marked every open position as long spot / short perp receiving funding: a reverse or
    calendar trade's funding was counted with the wrong sign while open and twice once closed (reverse carry,
    BTC+ETH 2022: the year showed −$213.78 for trades that closed at −$64.61)."""
    from basis_mcp.backtest.runner import run

    if strategy == "calendar_spread":
        p = BacktestParams(strategy=strategy, min_zscore=-1.0, exit_zscore=-3.0, expected_hold_days=20, zscore_window=240)
        h, span = load_extract(regimes(tmp_path)), ("2024-01-15", "2024-11-01")
    else:
        p = BacktestParams(strategy=strategy, playbook="carry")
        h, span = load_extract(symbols=["BTC", "ETH"]), ("2022-01-01", "2023-01-01")
    res = run(load_markets(h, sorted(h), *span, p), p, extras=False)
    assert len(res.trades) >= 3
    assert res.equity[-1] - p.capital_usd == pytest.approx(sum(t.pnl_usd for t in res.trades), abs=0.01)
    for t in res.trades:  # the bar before each exit: realised so far + this trade marked at mid, its funding so far
        k = int((parse_time(t.exit_time) - res.times[0]) // 3600) - 1
        before = sum(x.pnl_usd for x in res.trades if parse_time(x.exit_time) <= res.times[k])
        others_open = [x for x in res.trades if x is not t and parse_time(x.entry_time) <= res.times[k] < parse_time(x.exit_time)]
        if others_open:
            continue
        # this trade open at bar k: its P&L so far is within its entry costs + one bar's basis move of its final P&L
        # less the exit costs (a loose bound, but the old sign error was off by twice the funding received)
        open_pnl = res.equity[k] - p.capital_usd - before
        assert abs(open_pnl - t.pnl_usd) < t.fees_usd + t.slippage_usd + abs(t.basis_pnl_usd) + 0.5 * abs(t.funding_usd) + 1.0


async def test_with_a_fill_delay_the_hold_counts_from_the_fill_and_the_close_fills_by_the_last_trading_time(
        make_server, db: Path, tmp_path: Path) -> None:
    data = contango(tmp_path)
    settings = Settings(fill_delay_seconds=6 * 3600, expiry_exit_hours=24)
    async with Client(make_server(settings, start="2024-03-20T00:00:00Z", data_path=data)) as client:
        base = {"symbol": "BTC", "notional_usd": 4000, "strategy": "calendar_spread", "contract": MARCH}
        err = await call_error(client, "enter_trade", {**base, "expected_hold_days": 8.2, "idempotency_key": "fd-0"})
        assert "from the fill 6 h from now" in err and "across expiry" in err
        out = await call(client, "enter_trade", {**base, "expected_hold_days": 8, "idempotency_key": "fd-1"})
        assert out["fills_at"] == "2024-03-20T06:00:00Z"
        adv = await call(client, "advance_time", {"hours": 24 * 9})
        act = next(a for a in adv["watchdog_actions"] if a["rule"] == "expiry_near")
        assert act["action"] == "close_scheduled" and act["fills_at"] == "2024-03-28T08:00:00Z"
    row = db_rows(db, "SELECT status, closed_at FROM positions")[0]
    assert row["status"] == "closed" and row["closed_at"] == parse_time("2024-03-28T08:00:00Z")
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_liquidations")[0]["n"] == 0  # nothing left to deliver


async def test_a_calendar_spread_counts_once_in_its_tier_and_scan_skips_a_contract_past_its_last_trading_time(
        tmp_path: Path) -> None:
    from basis_mcp.desk import Desk

    desk = Desk.open_replay(Settings(capital_usd=20_000), tmp_path / "t.db", data_path=contango(tmp_path), start=START)
    await desk.start()
    try:
        out = await desk.enter("BTC", 4000, None, "t-1", "calendar_spread", expected_hold_days=20)
        row = desk.book.position(out.position.position_id)
        assert desk.book.exposure_by_symbol(row) == {"BTC": pytest.approx(row["notional_usd"])}
        assert desk.book.tier_usage() == {"anchor": pytest.approx(row["notional_usd"])}
    finally:
        desk.close()
    desk = Desk.open_replay(Settings(), tmp_path / "s.db", data_path=contango(tmp_path), start="2024-03-28T12:00:00Z")
    await desk.start()
    try:  # 20 h before the March expiry, 4 h past its last trading time: the scan points at June
        s = next(x for x in (await desk.scan(None)).snapshots if x.symbol == "BTC")
        assert s.calendar_contract == "BTC-240628"
    finally:
        desk.close()


async def test_an_up_wick_liquidates_the_short_quarterly_as_it_would_the_perp(tmp_path: Path) -> None:
    """The simulated quarterly carries the perp's intra-hour range: a wick to +60 % reaches the short future's
    liquidation price (2x isolated) even though the hour closes flat; the desk books it and unwinds the perp."""
    from basis_mcp.desk import Desk

    m = scripted.Market(hours=24 * 100, basis_pct=0.0, rate=0.0003)
    m.set_rates_from("2024-02-15T00:00:00Z", 0.00003)
    m.spike(m.at("2024-03-05T00:00:00Z"), high=160_000.0)
    data = scripted.write(tmp_path, BTC=m, ETH=scripted.Market(hours=24 * 100, spot=2_000.0))
    desk = Desk.open_replay(Settings(), tmp_path / "w.db", data_path=data, start=START)
    await desk.start()
    try:
        out = await desk.enter("BTC", 4000, None, "w-1", "calendar_spread", expected_hold_days=20)
        pid = out.position.position_id
        await desk.clockwork.advance(24 * 5, None)
        row = desk.store.one("SELECT status, close_reason FROM positions WHERE id = ?", (pid,))
        assert row["status"] == "liquidated" and row["close_reason"].startswith("future liquidated")
        assert abs(await desk.reconcile.cash_discrepancy_usd()) < 0.01
    finally:
        desk.close()


async def test_a_delivery_cancels_close_orders_resting_for_a_later_fill(tmp_path: Path) -> None:
    """A close scheduled for after the expiry (a data gap pushed its fill past it) is superseded by the delivery:
    its resting orders are cancelled, the perp is unwound, the money reconciles."""
    from basis_mcp.desk import Desk

    desk = Desk.open_replay(Settings(expiry_exit_hours=1), tmp_path / "c.db", data_path=contango(tmp_path),
                            start="2024-03-15T00:00:00Z")
    await desk.start()
    try:
        out = await desk.enter("BTC", 4000, None, "c-1", "calendar_spread", expected_hold_days=13, contract=MARCH)
        pid = out.position.position_id
        expiry = parse_time("2024-03-29T08:00:00Z")
        with desk.store.tx():  # as if the watchdog had scheduled the close for a fill after the expiry
            desk.store.x("UPDATE positions SET status = 'closing', close_reason = 'watchdog: expiry_near', execute_at = ?"
                         " WHERE id = ?", (expiry + 2 * 3600, pid))
            desk.execution.write_close_intents(pid, "late")
        desk.clock.set(expiry + 3600)
        await desk.clockwork.tick(expiry + 3600)
        row = desk.store.one("SELECT status, execute_at FROM positions WHERE id = ?", (pid,))
        assert row["status"] == "closed" and row["execute_at"] is None
        assert desk.store.one("SELECT COUNT(*) AS n FROM orders WHERE position_id = ? AND status = 'intent'", (pid,))["n"] == 0
        assert desk.store.one("SELECT COUNT(*) AS n FROM orders WHERE position_id = ? AND status = 'cancelled'", (pid,))["n"] == 2
        assert abs(await desk.reconcile.cash_discrepancy_usd()) < 0.01
    finally:
        desk.close()


async def test_the_benchmark_the_estimate_refusal_and_the_backtest_default_follow_the_desk(make_server, tmp_path: Path) -> None:
    from basis_mcp.backtest.runner import run

    h = load_extract(regimes(tmp_path))
    res = {}
    for strategy in ("cash_and_carry", "calendar_spread", "reverse_cash_and_carry"):
        p = BacktestParams(strategy=strategy, min_zscore=-1.0, exit_zscore=-3.0, expected_hold_days=20, zscore_window=240)
        res[strategy] = run(load_markets(h, ["BTC"], "2024-01-15", "2024-11-01", p), p).always_on
    # the always-on benchmark is cash-and-carry's whatever the run's strategy (its funding was sign-flipped for others)
    assert res["calendar_spread"]["total_pnl_usd"] == res["cash_and_carry"]["total_pnl_usd"] == \
           res["reverse_cash_and_carry"]["total_pnl_usd"] and res["cash_and_carry"]["funding_usd"] > 0
    async with Client(make_server(Settings(expiry_exit_hours=72), start="2024-03-27T00:00:00Z",
                                  data_path=contango(tmp_path))) as client:
        err = await call_error(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 4000, "hold_days": 200,
                                                            "strategy": "calendar_spread"})
        assert err.startswith("hold_days") or "hold_days=" in err
        out = await call(client, "backtest", {"symbols": ["BTC"], "start": "2024-01-10", "end": "2024-03-20",
                                              "strategy": "calendar_spread", "chart": False})
        assert out["params"]["expiry_exit_hours"] == 72
