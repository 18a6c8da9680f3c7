"""Every watchdog trigger, driven by a scripted market, acting on the tick the condition appears.

Each test writes an hourly market in the shipped-data format, opens a position through the MCP
client, moves the market into one condition and advances the replay clock; the watchdog
(server-side, no agent call needed) must act on that very tick: both legs closed at the same
market time, an audit row with the rule and its numbers, and an alert in the next response.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.guardrails import PositionReadings, WatchdogLimits, defer_planned_exit, watchdog_actions
from basis_mcp.venue.faults import FaultPlan
from tests import scripted
from tests.conftest import call, call_error, db_rows

pytestmark = pytest.mark.anyio

START = "2024-01-05T01:00:00Z"
Q = 0.04  # BTC bought for $4 000 at 100 000


def closed_by_watchdog(db: Path, rule: str, at: str) -> None:
    """Both legs closed on the tick at ``at``, the audit row names the rule with numbers."""
    p = db_rows(db, "SELECT * FROM positions ORDER BY id DESC LIMIT 1")[0]
    assert p["status"] == "closed", (p["status"], p["close_reason"])
    assert p["close_reason"] == f"watchdog: {rule}"
    closes = db_rows(db, "SELECT * FROM fills WHERE position_id = ? AND id > 2 ORDER BY id", (p["id"],))
    assert {f["market"] for f in closes} == {"spot", "perp"}
    from basis_mcp.clock import parse_time

    assert {f["ts"] for f in closes} == {parse_time(at)}, "both legs must close on the same tick"
    spot = sum(f["quantity"] * (1 if f["side"] == "buy" else -1) for f in db_rows(db, "SELECT * FROM fills WHERE market='spot'"))
    perp = sum(f["quantity"] * (1 if f["side"] == "buy" else -1) for f in db_rows(db, "SELECT * FROM fills WHERE market='perp'"))
    assert spot == pytest.approx(0) and perp == pytest.approx(0)
    audit = db_rows(db, "SELECT * FROM audit WHERE kind = 'watchdog' AND name = ?", (rule,))
    assert audit, f"no audit row for {rule}"
    assert audit[0]["outcome"] == "triggered" and audit[0]["detail"]
    assert '"position_id"' in audit[0]["args_json"]


def alert_for(resp: dict, rule: str) -> dict:
    hits = [a for a in resp["alerts"] if a["rule"] == rule]
    assert hits, f"no {rule} alert in {[a['rule'] for a in resp['alerts']]}"
    return hits[0]


async def open_position(client: Client, **extra) -> dict:
    args = {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "wd-1", **extra}
    return (await call(client, "enter_trade", args))["position"]


async def test_margin_ratio_below_130_closes_both_legs(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    lev = 5.0
    ep = scripted.perp_entry_fill(100_100.0, Q)
    wallet = Q * ep / lev
    # the price at which margin ratio = 1.15 (between liquidation at 1.0 and the 1.30 close line)
    crash_price = (wallet + Q * ep) / (Q * (1 + 1.15 * 0.004))
    i = m.at("2024-01-05T03:00:00Z")
    m.set_from(i, spot=crash_price / 1.001, perp=crash_price)  # hedged rally: basis unchanged
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(settings=Settings(max_leverage=5.0), start=START, data_path=data)) as client:
        await open_position(client, leverage=lev)
        adv = await call(client, "advance_time", {"hours": 3})
        assert adv["liquidations"] == []
        assert [a["rule"] for a in adv["watchdog_actions"]] == ["margin_ratio_below_130"]
        alert_for(adv, "margin_ratio_below_130")
    closed_by_watchdog(db, "margin_ratio_below_130", "2024-01-05T03:00:00Z")


async def test_margin_ratio_below_150_adds_margin_from_free_capital(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    lev = 5.0
    ep = scripted.perp_entry_fill(100_100.0, Q)
    wallet = Q * ep / lev
    price = (wallet + Q * ep) / (Q * (1 + 1.40 * 0.004))  # ratio 1.40
    m.set_from(m.at("2024-01-05T03:00:00Z"), spot=price / 1.001, perp=price)
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(settings=Settings(max_leverage=5.0), start=START, data_path=data)) as client:
        pos = await open_position(client, leverage=lev)
        adv = await call(client, "advance_time", {"hours": 3})
        act = adv["watchdog_actions"][0]
        assert act["rule"] == "margin_ratio_below_150" and act["action"] == "add_margin" and act["added_usd"] > 0
        alert_for(adv, "margin_ratio_below_150")
        delta = (await call(client, "check_delta", {"position_id": pos["position_id"]}))["positions"][0]
        # topped up past the 200 % ratio target, to put the liquidation price the target 25 % above the mark
        assert delta["margin_ratio_pct"] > 200.0
        assert delta["distance_to_liquidation_pct"] == pytest.approx(25.0, abs=0.05)
        assert delta["recommended_action"] == "hold"
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "open"
    assert db_rows(db, "SELECT * FROM audit WHERE kind = 'watchdog' AND name = 'margin_ratio_below_150'")


async def test_a_rally_that_eats_the_margin_buffer_is_topped_up_long_before_the_margin_ratio_falls(
        make_server, db: Path, tmp_path: Path) -> None:
    """A long carry hold through a rally: the liquidation price is kept at least 15 % above the mark."""
    m = scripted.Market()
    m.set_from(m.at("2024-01-05T04:00:00Z"), spot=132_000 / 1.001, perp=132_000)  # +32 %: the 2x short is 13 % from liquidation
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        pos = await open_position(client, playbook="carry")
        assert pos["playbook"] == "carry"
        adv = await call(client, "advance_time", {"hours": 4})
        act = next(a for a in adv["watchdog_actions"] if a["rule"] == "liquidation_distance")
        assert act["action"] == "add_margin" and act["added_usd"] > 0 and act["liquidation_distance_pct"] < 15
        delta = (await call(client, "check_delta", {"position_id": pos["position_id"]}))["positions"][0]
        assert delta["distance_to_liquidation_pct"] == pytest.approx(25.0, abs=0.05)
        assert delta["margin_ratio_pct"] > 1000  # the margin-ratio rule was never near
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "open"


async def test_margin_ratio_below_150_closes_when_margin_cannot_be_added(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    ep = scripted.perp_entry_fill(100_100.0, Q)
    price = (Q * ep / 5 + Q * ep) / (Q * (1 + 1.40 * 0.004))
    m.set_from(m.at("2024-01-05T03:00:00Z"), spot=price / 1.001, perp=price)
    data = scripted.write(tmp_path, BTC=m)
    faults = FaultPlan(reject_add_margin=True)
    async with Client(make_server(settings=Settings(max_leverage=5.0), start=START, data_path=data, faults=faults)) as client:
        await open_position(client, leverage=5)
        adv = await call(client, "advance_time", {"hours": 3})
        assert adv["watchdog_actions"][0]["action"] == "close"
    closed_by_watchdog(db, "margin_ratio_below_150", "2024-01-05T03:00:00Z")


async def test_one_hourly_print_never_stops_out_or_flips(make_server, db: Path, tmp_path: Path) -> None:
    """The noise the old rules fired on: one hour at 5x the entry basis, one hour below zero."""
    m = scripted.Market()
    m.set_from(m.at("2024-01-05T04:00:00Z"), perp=100_000 * 1.005)  # 0.50 % for one hour
    m.set_from(m.at("2024-01-05T05:00:00Z"), perp=100_000 * (1 - 0.0005))  # −0.05 % for one hour
    m.set_from(m.at("2024-01-05T06:00:00Z"), perp=100_000 * 1.001)  # back to 0.10 %
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        await open_position(client)
        adv = await call(client, "advance_time", {"hours": 12})
        assert adv["watchdog_actions"] == []
    assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "open"


async def test_a_basis_blowout_that_persists_stops_out(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    m.set_from(m.at("2024-01-05T04:00:00Z"), perp=100_000 * 1.0035)  # basis 0.10 % → 0.35 % and it stays there
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        await open_position(client)
        adv = await call(client, "advance_time", {"hours": 12})
        alert_for(adv, "basis_blowout")
    # the 8 h average passes 3 x the entry basis (0.30 %) once 7 of its 8 samples are 0.35 %: at 10:00
    closed_by_watchdog(db, "basis_blowout", "2024-01-05T10:00:00Z")
    audit = db_rows(db, "SELECT args_json FROM audit WHERE kind = 'watchdog' AND name = 'basis_blowout'")[0]["args_json"]
    assert '"stop_level_pct"' in audit and '"basis_smooth_pct"' in audit


async def test_funding_reversal_with_little_basis_left_closes(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    m.set_rates_from("2024-01-05T08:00:00Z", -0.0001)  # −0.01 %/8h < −0.005 %, basis 0.10 % < 0.15 %
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        await open_position(client)
        adv = await call(client, "advance_time", {"hours": 26})
        alert_for(adv, "funding_reversal")
        assert [f["amount_usd"] < 0 for f in adv["funding"]] == [True, True, True]
    # the last day's mean turns below −0.005 %/8h with the third negative settlement (08:00, 16:00, 00:00)
    closed_by_watchdog(db, "funding_reversal", "2024-01-06T00:00:00Z")


async def test_one_negative_settlement_does_not_close(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    m.set_rate("2024-01-05T08:00:00Z", -0.0001)
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        await open_position(client)
        adv = await call(client, "advance_time", {"hours": 20})
        assert adv["watchdog_actions"] == []


async def test_a_persistent_basis_sign_flip_closes(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    m.set_from(m.at("2024-01-05T05:00:00Z"), perp=100_000 * (1 - 0.0005))  # +0.10 % → −0.05 % and it stays
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        await open_position(client)
        adv = await call(client, "advance_time", {"hours": 12})
        alert_for(adv, "basis_inverted")
    # the 8 h average falls below −1 std (0.10 % → −0.05 % lifts the std too) with the seventh negative sample: 11:00
    closed_by_watchdog(db, "basis_inverted", "2024-01-05T11:00:00Z")


async def test_carry_leaves_when_the_week_of_funding_turns_against_it(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    m.set_rates_from("2024-01-05T08:00:00Z", -0.0002)  # shorts pay 0.02 %/8h from here on
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        pos = await open_position(client, playbook="carry")
        assert pos["playbook"] == "carry"
        adv = await call(client, "advance_time", {"hours": 24})
        assert adv["watchdog_actions"] == []  # a day of it is not a week: the carry stays
        adv = await call(client, "advance_time", {"hours": 24 * 4})
        alert_for(adv, "carry_funding_exit")
    # the 7-day mean of 21 settlements, n at −0.02 % and 21 − n at 0.03 %, falls below −0.005 % at n = 15: 01-10 00:00
    closed_by_watchdog(db, "carry_funding_exit", "2024-01-10T00:00:00Z")


async def test_delta_imbalance_is_rebalanced(make_server, db: Path, tmp_path: Path) -> None:
    data = scripted.write(tmp_path, BTC=scripted.Market())
    # perp leg fills half; the trim of the spot excess is refused: the entry is left 2:1
    faults = FaultPlan(partial_nth={2: 0.5}, reject_nth={3})
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        entry = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "wd-1"})
        assert any(a["rule"] == "naked_leg" for a in entry["alerts"])
        adv = await call(client, "advance_time", {"hours": 1})
        act = adv["watchdog_actions"][0]
        assert act["rule"] == "delta_imbalance" and act["action"] == "rebalance" and act["imbalance_pct"] == pytest.approx(50.0)
        alert_for(adv, "delta_imbalance")
        d = (await call(client, "check_delta", {}))["positions"][0]
        assert d["spot_quantity"] == pytest.approx(0.02) and d["perp_quantity"] == pytest.approx(-0.02)
        assert d["imbalance_pct"] == 0 and d["recommended_action"] == "hold"
    trims = db_rows(db, "SELECT * FROM fills WHERE market = 'spot' AND side = 'sell'")
    assert len(trims) == 1 and trims[0]["quantity"] == pytest.approx(0.02)
    assert db_rows(db, "SELECT * FROM audit WHERE kind = 'watchdog' AND name = 'delta_imbalance'")


async def test_max_hold_waits_for_a_settlement_worth_collecting_then_exits(make_server, db: Path, tmp_path: Path) -> None:
    data = scripted.write(tmp_path, BTC=scripted.Market(basis_pct=0.3))  # rich enough to pay for a 1-day hold
    s = Settings(max_hold_days=1.0, max_position_notional_usd=25_000)
    async with Client(make_server(settings=s, start="2024-01-05T07:00:00Z", data_path=data)) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 25_000, "idempotency_key": "hold-1",
                                           "expected_hold_days": 1})
        # 24.5 h later it is 07:30: held > 1 day, but 08:00 pays this short 0.25 × 100 300 × 0.03 % = $7.5 > $5
        adv = await call(client, "advance_time", {"hours": 24.5})
        assert adv["watchdog_actions"] == []
        deferred = alert_for(adv, "exit_deferred")
        assert deferred["data"]["rule"] == "max_hold" and deferred["data"]["next_funding_usd"] > 5
        assert db_rows(db, "SELECT status FROM positions")[0]["status"] == "open"
        adv = await call(client, "advance_time", {"hours": 0.5})
        assert [f["time"] for f in adv["funding"]] == ["2024-01-06T08:00:00Z"]  # collected
        alert_for(adv, "max_hold")
    closed_by_watchdog(db, "max_hold", "2024-01-06T08:00:00Z")


def test_emergency_exits_never_wait_planned_ones_do() -> None:
    from basis_mcp.guardrails import LegRisk
    from basis_mcp.playbooks import Signals

    lim = WatchdogLimits()
    base = dict(position_id=1, symbol="BTC", status="open", entry_basis_pct=0.1, held={"spot": 1.0, "perp": -1.0},
                imbalance_pct=0.0, held_seconds=3600, seconds_to_funding=600, next_funding_usd=30.0)

    def margin(ratio: float) -> tuple[LegRisk, ...]:
        return (LegRisk(role="perp", symbol="BTC", margin_ratio=ratio),)

    calm = Signals(basis_pct=0.1, basis_smooth_pct=0.1, basis_std_pct=0.05, funding_recent_8h_pct=0.03,
                   funding_carry_8h_pct=0.03)
    blowout = PositionReadings(signals=Signals(0.5, 0.5, 0.05, 0.03, 0.03), margins=margin(5.0), **base)
    acts = watchdog_actions(blowout, lim)
    assert acts[0].rule == "basis_blowout" and acts[0].emergency
    spike = PositionReadings(signals=Signals(0.9, 0.2, 0.05, 0.03, 0.03), margins=margin(5.0), **base)  # one print, not the average
    assert watchdog_actions(spike, lim) == []
    low = PositionReadings(signals=calm, margins=margin(1.2), **base)
    assert watchdog_actions(low, lim)[0].emergency
    old = PositionReadings(signals=calm, margins=margin(5.0), **{**base, "held_seconds": 31 * 86400})
    act = watchdog_actions(old, lim)[0]
    assert act.rule == "max_hold" and not act.emergency and defer_planned_exit(old, lim)
    carry_old = PositionReadings(signals=calm, margins=margin(5.0), playbook="carry", **{**base, "held_seconds": 31 * 86400})
    assert watchdog_actions(carry_old, lim) == []  # carry holds up to a year
    small = PositionReadings(signals=calm, margins=margin(5.0), **{**base, "held_seconds": 31 * 86400, "next_funding_usd": 4.0})
    assert not defer_planned_exit(small, lim)


async def test_venue_unreachable_blocks_entries_and_closes_when_back(make_server, db: Path, tmp_path: Path) -> None:
    data = scripted.write(tmp_path, BTC=scripted.Market(), ETH=scripted.Market(spot=2_000.0))
    faults = FaultPlan()
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        await open_position(client)
        faults.unavailable_always = True
        adv = await call(client, "advance_time", {"hours": 2})  # down at 02:00, still down at 03:00 (> 10 min)
        alert_for(adv, "venue_unreachable")
        text = await call_error(client, "enter_trade", {"symbol": "ETH", "notional_usd": 2000, "idempotency_key": "e-1"})
        assert "venue" in text and "unreachable" in text
        faults.unavailable_always = False
        adv = await call(client, "advance_time", {"hours": 1})
        alert_for(adv, "venue_was_unreachable")
    closed_by_watchdog(db, "venue_was_unreachable", "2024-01-05T04:00:00Z")


async def test_stalled_market_data_blocks_entries_and_the_watchdog_does_not_act_on_it(make_server, tmp_path: Path) -> None:
    data = scripted.write(tmp_path, BTC=scripted.Market())
    faults = FaultPlan(stall_market_data=True)
    async with Client(make_server(start=START, data_path=data, faults=faults)) as client:
        await call(client, "advance_time", {"hours": 2})
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "s-1"})
        assert "market_data_age_seconds=7200" in text and "3599s limit" in text


async def test_realised_vol_circuit_breaker_pauses_entries(make_server, tmp_path: Path) -> None:
    m = scripted.Market()
    i = m.at("2024-01-05T01:00:00Z")
    m.spike(i, high=106_000.0, low=94_000.0)  # Parkinson vol of that hour ≈ 7.6 %/h
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start=START, data_path=data)) as client:
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "v-1"})
        assert "realised_vol_1h_pct" in text and "circuit breaker" in text
        risk = await call(client, "risk_status", {})
        vol = next(x for x in risk["limits"] if x["name"] == "realised_vol_1h_pct" and x["symbol"] == "BTC")
        assert vol["current"] > 5 and vol["ok"] is False
        await call(client, "advance_time", {"hours": 1})  # the next hour is calm again
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "v-2"})
