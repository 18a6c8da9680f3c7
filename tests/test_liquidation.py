"""Isolated-margin liquidation on real data: BTC rallied +37 % in November 2024.

A 5x short perp (operator cap raised to the 5x hard ceiling) is liquidated when the hour's mark
high reaches its liquidation price; the isolated margin is lost, the spot leg is sold at once
so no naked leg remains, the agent is told in the next response, and the ledger reconciles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mcp import Client

from basis_mcp import margin as mm
from basis_mcp.config import DEFAULT_SPECS, Settings
from basis_mcp.history import load_extract
from tests.conftest import REPO, call, db_rows

pytestmark = pytest.mark.anyio


async def test_short_perp_is_liquidated_and_spot_unwound(make_server, db: Path) -> None:
    settings = Settings(max_leverage=5.0)
    async with Client(make_server(settings=settings, start="2024-11-05T00:00:00Z")) as client:
        entry = await call(
            client, "enter_trade", {"symbol": "BTC", "notional_usd": 5000, "leverage": 5, "idempotency_key": "liq-1"}
        )
        pos = entry["position"]
        lp = entry["liquidation_price"]
        wallet = pos["margin_usd"]
        assert lp == pytest.approx(
            mm.liquidation_price(wallet, -pos["quantity"], pos["entry_perp_price"], DEFAULT_SPECS["BTC"].brackets)
        )
        adv = await call(client, "advance_time", {"hours": 24 * 9})
        assert len(adv["liquidations"]) == 1
        liq = adv["liquidations"][0]
        # independently: walk the hours, crediting funding to the isolated wallet (which lifts
        # the liquidation price), until an hour's mark high reaches it
        h = load_extract(symbols=["BTC"])["BTC"]
        table = DEFAULT_SPECS["BTC"].brackets
        q, ep = pos["quantity"], pos["entry_perp_price"]
        w = wallet
        i = h.index_at(1730764800.0)  # 2024-11-05T00:00Z
        while True:
            i += 1
            t = h.times[i]
            k = np.flatnonzero(h.funding_time == t)
            if k.size:
                w += q * h.mark[i] * h.funding_rate[k[0]]
            if h.mark_high[i] >= mm.liquidation_price(w, -q, ep, table):
                break
        expected = np.datetime_as_string(np.datetime64(int(h.times[i]), "s"), unit="s") + "Z"
        assert liq["time"] == expected
        assert liq["margin_lost_usd"] == pytest.approx(w, abs=1e-6)
        assert liq["margin_lost_usd"] > 0

        book = await call(client, "portfolio_status", {"include_closed": 1})
        assert book["open_positions"] == []
        closed = book["closed_positions"][0]
        assert closed["status"] == "liquidated"
        purposes = [f["purpose"] for f in closed["fills"]]
        assert purposes == ["open", "open", "liquidation", "unwind"]
        alerts = [a for a in book["alerts"] + adv["alerts"] if a["rule"] == "liquidation"]
        assert alerts and alerts[0]["severity"] == "critical" and "LIQUIDATED" in alerts[0]["message"]

    # the perp leg lost exactly its isolated wallet (margin + funding collected); spot was sold
    funding = db_rows(db, "SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")[0]["s"]
    fills = db_rows(db, "SELECT * FROM fills ORDER BY id")
    perp = [f for f in fills if f["market"] == "perp"]
    q = perp[0]["quantity"]
    assert q * (perp[0]["price"] - perp[1]["price"]) == pytest.approx(-(wallet + funding), abs=0.01)
    assert db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'BTC'")[0]["free"] == pytest.approx(0.0, abs=1e-12)
    assert db_rows(db, "SELECT COUNT(*) AS n FROM paper_perp")[0]["n"] == 0
    realized = db_rows(db, "SELECT realized_pnl_usd FROM positions")[0]["realized_pnl_usd"]
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    assert realized == pytest.approx(cash - sum(f["fee_usd"] for f in fills) + funding, abs=0.01)
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    assert usdt - 100_000 == pytest.approx(realized, abs=0.01)

    # `basis-mcp status` reads the same book without starting a server
    out = subprocess.run([sys.executable, "-m", "basis_mcp", "status", "--db", str(db)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "liquidated" in out.stdout and "BTC" in out.stdout and f"{realized:,.2f}" in out.stdout
