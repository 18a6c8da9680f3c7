"""Isolated-margin liquidation, and what follows it.

An intra-hour wick in the mark price (the hour closes calm, so the hourly watchdog never sees
the margin ratio fall) reaches the short's liquidation price: the venue liquidates at the
bankruptcy price and the isolated margin is lost; the desk sells the spot leg at once so no
naked leg remains, tells the agent in the next response, the ledger reconciles, and the loss
(> 15 % of a small account) moves the desk to REDUCING.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from basis_mcp import margin as mm
from basis_mcp.config import DEFAULT_SPECS, Settings
from tests import scripted
from tests.conftest import REPO, call, call_error, db_rows

pytestmark = pytest.mark.anyio


async def test_wick_liquidates_the_short_spot_is_unwound_and_drawdown_reduces(make_server, db: Path, tmp_path: Path) -> None:
    m = scripted.Market()
    wick_hour = m.at("2024-01-02T05:00:00Z")
    m.spike(wick_hour, high=130_000.0)  # +30 % for minutes; the hour closes back at 100 100
    data = scripted.write(tmp_path, BTC=m)
    settings = Settings(capital_usd=20_000, max_leverage=5.0, max_position_notional_usd=5_000)
    async with Client(make_server(settings=settings, start="2024-01-01T01:00:00Z", data_path=data)) as client:
        entry = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 5000, "leverage": 5, "idempotency_key": "liq-1"})
        pos = entry["position"]
        q, ep, wallet = pos["quantity"], pos["entry_perp_price"], pos["margin_usd"]
        assert entry["liquidation_price"] == pytest.approx(mm.liquidation_price(wallet, -q, ep, DEFAULT_SPECS["BTC"].brackets))
        assert entry["liquidation_price"] < 130_000

        adv = await call(client, "advance_time", {"hours": 30})
        assert len(adv["liquidations"]) == 1
        liq = adv["liquidations"][0]
        assert liq["time"] == "2024-01-02T05:00:00Z"
        # three settlements (08:00, 16:00, 00:00) of 0.03 % were credited to the wallet before the wick
        funding = db_rows(db, "SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")[0]["s"]
        assert funding == pytest.approx(3 * q * m.mark[0] * 0.0003, abs=1e-6)
        assert liq["margin_lost_usd"] == pytest.approx(wallet + funding, abs=0.01)

        book = await call(client, "portfolio_status", {"include_closed": 1, "include_fills": True})
        assert book["open_positions"] == []
        closed = book["closed_positions"][0]
        assert closed["status"] == "liquidated"
        assert [f["purpose"] for f in closed["fills"]] == ["open", "open", "liquidation", "unwind"]
        alerts = adv["alerts"] + book["alerts"]
        liq_alerts = [a for a in alerts if a["rule"] == "liquidation"]
        assert liq_alerts and liq_alerts[0]["severity"] == "critical" and "LIQUIDATED" in liq_alerts[0]["message"]
        # lost ≈ $1 000 margin + fees on $20 000 capital: ~5 % drawdown, below 15 %: still ACTIVE
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE"

    # the perp leg lost exactly its isolated wallet; spot was sold; nothing is left at the venue
    fills = db_rows(db, "SELECT * FROM fills ORDER BY id")
    perp = [f for f in fills if f["market"] == "perp"]
    assert q * (perp[0]["price"] - perp[1]["price"]) == pytest.approx(-(wallet + funding), abs=0.01)
    assert perp[1]["price"] == pytest.approx(mm.bankruptcy_price(wallet + funding, -q, ep), rel=1e-6)
    assert db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'BTC'")[0]["free"] == pytest.approx(0.0, abs=1e-12)
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_perp")[0]["n"] == 0
    realized = db_rows(db, "SELECT realized_pnl_usd FROM positions")[0]["realized_pnl_usd"]
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    assert realized == pytest.approx(cash - sum(f["fee_usd"] for f in fills) + funding, abs=0.01)
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    assert usdt - 20_000 == pytest.approx(realized, abs=0.01)

    # `basis-mcp status` reads the same book without starting a server
    out = subprocess.run([sys.executable, "-m", "basis_mcp", "status", "--db", str(db)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "liquidated" in out.stdout and "BTC" in out.stdout and f"{realized:,.2f}" in out.stdout


def _big_wick(tmp_path: Path) -> tuple[Path, Settings]:
    """A wick past a 1x short's liquidation price (~2x entry) at 06:00, and a $9 000 account:
    $2 000 notional at 1x loses its $2 000 margin → 22 % drawdown."""
    m = scripted.Market()
    m.spike(m.at("2024-01-01T06:00:00Z"), high=210_000.0)
    settings = Settings(capital_usd=9_000, max_leverage=3.0, default_leverage=1.0, max_position_notional_usd=4_000,
                        tier_single_position={"anchor": 0.25}, tier_allocation={"anchor": 0.5})
    return scripted.write(tmp_path, BTC=m), settings


async def test_drawdown_beyond_15pct_moves_the_desk_to_reducing(make_server, db: Path, tmp_path: Path) -> None:
    data, settings = _big_wick(tmp_path)
    async with Client(make_server(settings=settings, start="2024-01-01T01:00:00Z", data_path=data)) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "dd-1", "leverage": 1})
        adv = await call(client, "advance_time", {"hours": 6})
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "REDUCING"
        assert "drawdown" in risk["trading_state_reason"] and risk["drawdown_pct"] > 15
        assert any(a["rule"] == "state_reducing" for a in adv["alerts"])  # told on the very next response
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "dd-2"})
        assert "trading_state='REDUCING'" in text and "exits only" in text
    audit = db_rows(db, "SELECT * FROM audit WHERE kind = 'alert' AND name = 'state_reducing'")
    assert audit and "drawdown" in audit[0]["detail"]


async def test_a_liquidation_read_again_after_a_crash_is_booked_once(make_server, db: Path, tmp_path: Path) -> None:
    data, settings = _big_wick(tmp_path)
    async with Client(make_server(settings=settings, start="2024-01-01T01:00:00Z", data_path=data)) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "rl-1", "leverage": 1})
        adv = await call(client, "advance_time", {"hours": 6})
        assert len(adv["liquidations"]) == 1
    before = db_rows(db, "SELECT COUNT(*) AS n FROM fills")[0]["n"]
    # as if the process died after booking the liquidation but before its cursor was stored
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'liquidation_cursor'")
    conn.close()
    async with Client(make_server(settings=settings, data_path=data)) as client:
        adv = await call(client, "advance_time", {"hours": 1})  # start-up re-read the venue's liquidation feed
        assert not [a for a in adv["alerts"] if a["rule"] == "liquidation"]
    assert db_rows(db, "SELECT COUNT(*) AS n FROM alerts WHERE rule = 'liquidation'")[0]["n"] == 1
    assert db_rows(db, "SELECT COUNT(*) AS n FROM fills")[0]["n"] == before
    assert [r["status"] for r in db_rows(db, "SELECT status FROM positions")] == ["liquidated"]
    assert float(db_rows(db, "SELECT value FROM meta WHERE key = 'liquidation_cursor'")[0]["value"]) > 0
