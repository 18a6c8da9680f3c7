"""A whole cash-and-carry trade driven the way a client drives it, on the shipped real data.

scan → z-score → net APY → size → enter → advance across ≥ 3 funding settlements →
check_delta → exit, then the money is reconciled against the SQLite rows and the shipped
funding rates, to the cent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client

from basis_mcp.history import load_extract
from tests.conftest import call, db_rows, stdio_params

pytestmark = pytest.mark.anyio


async def drive_full_trade(client: Client, db: Path, symbol: str = "BTC", key: str = "e2e-entry-1") -> dict:
    scan = await call(client, "scan_basis", {})
    assert {s["symbol"] for s in scan["snapshots"]} >= {"BTC", "ETH"}
    assert scan["snapshots"] == sorted(scan["snapshots"], key=lambda s: -s["edge_pct"])  # across strategies, widest first
    assert all(s["edge_pct"] == pytest.approx(abs(s["basis_pct"])) for s in scan["snapshots"])
    snap = next(s for s in scan["snapshots"] if s["symbol"] == symbol)
    assert snap["basis_pct"] == pytest.approx((snap["perp_price"] - snap["spot_price"]) / snap["spot_price"] * 100, rel=1e-5)

    z = await call(client, "compute_zscore", {"symbol": symbol})
    assert z["ready"] and z["samples"] == 1080 and z["zscore"] is not None

    apy = await call(client, "estimate_net_apy", {"symbol": symbol, "notional_usd": 5000, "hold_days": 7})
    assert apy["net_usd"] == pytest.approx(
        apy["basis_capture_usd"] + apy["funding_usd"] - apy["fees_usd"] - apy["slippage_usd"], abs=0.02
    )

    size = await call(client, "size_position", {"symbol": symbol})
    assert size["binding_cap"] == "max_position_notional"
    assert 0 < size["recommended_notional_usd"] <= 5000

    entry = await call(
        client, "enter_trade", {"symbol": symbol, "notional_usd": size["recommended_notional_usd"], "idempotency_key": key}
    )
    pos = entry["position"]
    pid = pos["position_id"]
    assert pos["status"] == "open" and not entry["replayed"]
    assert pos["quantity"] == pytest.approx(size["quantity"])
    assert len(pos["fills"]) == 2

    retry = await call(
        client, "enter_trade", {"symbol": symbol, "notional_usd": size["recommended_notional_usd"], "idempotency_key": key}
    )
    assert retry["replayed"] and retry["position"]["position_id"] == pid
    assert len(db_rows(db, "SELECT * FROM positions")) == 1

    adv = await call(client, "advance_time", {"hours": 30})
    mine = [f for f in adv["funding"] if f["position_id"] == pid]
    assert len(mine) >= 3, adv["funding"]

    delta = await call(client, "check_delta", {"position_id": pid})
    d = delta["positions"][0]
    assert d["spot_quantity"] == pytest.approx(-d["perp_quantity"])
    assert d["imbalance_pct"] < 2.0
    assert d["recommended_action"] == "hold"
    assert d["funding_received_usd"] == pytest.approx(sum(f["amount_usd"] for f in mine), abs=0.005 * (len(mine) + 1))

    # the desk's book (ledger) and the paper account agree while the position is open
    book = await call(client, "portfolio_status", {"include_fills": True})
    assert book["equity_usd"] == pytest.approx(book["account_equity_usd"], abs=0.01)
    # by default the summary counts the fills without listing them, and is otherwise the same
    brief = await call(client, "portfolio_status", {})
    (listed,) = [p for p in book["open_positions"] if p["position_id"] == pid]
    (counted,) = [p for p in brief["open_positions"] if p["position_id"] == pid]
    assert listed["fill_count"] == len(listed["fills"]) >= 2 and counted["fills"] == []
    assert {**counted, "fills": listed["fills"]} == listed
    assert book["pnl_since_start_usd"] == pytest.approx(book["realized_pnl_usd"] + book["unrealized_pnl_usd"]
                                                        + book["funding_received_usd"] - book["fees_paid_usd"], abs=0.01)

    s2f = await call(client, "seconds_to_funding", {"symbol": symbol})
    assert 0 < s2f["seconds_to_funding"] <= 8 * 3600
    assert s2f["expected_payment_usd"] is not None

    exit_ = await call(client, "exit_trade", {"position_id": pid, "idempotency_key": key + "-exit"})
    assert exit_["position"]["status"] == "closed"
    return {"entry": entry, "exit": exit_, "advance": adv, "pid": pid, "symbol": symbol}


def assert_reconciles(db: Path, result: dict) -> None:
    pid, symbol = result["pid"], result["symbol"]
    realized = result["exit"]["realized"]

    fills = db_rows(db, "SELECT * FROM fills WHERE position_id = ?", (pid,))
    funding = db_rows(db, "SELECT * FROM funding_payments WHERE position_id = ?", (pid,))
    assert len(fills) == 4
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
    fees = sum(f["fee_usd"] for f in fills)
    fund = sum(f["amount_usd"] for f in funding)
    assert realized["total_usd"] == pytest.approx(cash - fees + fund, abs=0.01)
    assert realized["fees_usd"] == pytest.approx(fees, abs=0.01)
    assert realized["funding_usd"] == pytest.approx(fund, abs=0.01)
    assert realized["total_usd"] == pytest.approx(
        realized["basis_pnl_usd"] + realized["funding_usd"] - realized["fees_usd"] - realized["slippage_usd"], abs=0.01
    )
    # basis P&L at mids is q × (entry basis − exit basis) in dollars
    q = fills[0]["quantity"]
    mids = {(f["market"], f["side"]): f["mid_price"] for f in fills}
    basis_in = mids[("perp", "sell")] - mids[("spot", "buy")]
    basis_out = mids[("perp", "buy")] - mids[("spot", "sell")]
    assert realized["basis_pnl_usd"] == pytest.approx(q * (basis_in - basis_out), abs=0.01)

    # funding equals the shipped settled rate × position size × mark at each settlement
    hist = load_extract()[symbol]
    assert len(funding) >= 3
    for f in funding:
        k = int(np.searchsorted(hist.funding_time, f["ts"]))
        assert hist.funding_time[k] == f["ts"], "settlement at a time with no shipped rate"
        rate = float(hist.funding_rate[k])
        mark = float(hist.mark[hist.index_at(f["ts"])])
        assert f["rate"] == rate
        assert f["amount_usd"] == pytest.approx(rate * q * mark, abs=0.005)
        assert f["quantity"] == pytest.approx(-q)

    # the paper venue's cash moved by exactly the realised P&L
    usdt = db_rows(db, "SELECT free FROM paper_balances WHERE asset = 'USDT'")[0]["free"]
    capital = float(db_rows(db, "SELECT value FROM meta WHERE key = 'capital_usd'")[0]["value"])
    assert usdt - capital == pytest.approx(realized["total_usd"], abs=0.01)
    # every call was audited
    assert db_rows(db, "SELECT COUNT(*) AS n FROM audit WHERE kind = 'tool'")[0]["n"] >= 10


async def test_full_trade_over_stdio_subprocess(db: Path) -> None:
    async with Client(stdio_params(db, "--start", "2024-03-01")) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {
            "scan_basis", "compute_zscore", "estimate_net_apy", "size_position", "enter_trade",
            "exit_trade", "check_delta", "seconds_to_funding", "portfolio_status", "advance_time",
        } <= tools
        result = await drive_full_trade(client, db)
        book = await call(client, "portfolio_status", {"include_closed": 5, "include_fills": True})
        assert book["realized_pnl_usd"] == pytest.approx(result["exit"]["realized"]["total_usd"], abs=0.01)
        assert book["pnl_since_start_usd"] == pytest.approx(result["exit"]["realized"]["total_usd"], abs=0.01)
    assert_reconciles(db, result)


async def test_full_trade_in_process_legacy_jsonrpc(db: Path, make_server) -> None:
    async with Client(make_server(), mode="legacy") as client:
        result = await drive_full_trade(client, db, symbol="ETH", key="legacy-eth-1")
    assert_reconciles(db, result)


async def test_tool_contract_every_tool_has_schemas_and_annotations(make_server) -> None:
    async with Client(make_server()) as client:
        tools = (await client.list_tools()).tools
    for t in tools:
        assert t.description and len(t.description) > 80, t.name
        assert t.output_schema is not None and t.output_schema.get("type") == "object", t.name
        assert "alerts" in t.output_schema["properties"], t.name
        assert t.annotations is not None and t.annotations.read_only_hint is not None, t.name
        assert t.input_schema["type"] == "object"
        assert "ctx" not in t.input_schema.get("properties", {}), t.name
    by = {t.name: t for t in tools}
    assert by["scan_basis"].annotations.read_only_hint is True
    assert by["enter_trade"].annotations.destructive_hint is True
    assert by["enter_trade"].annotations.idempotent_hint is True
    assert "idempotency_key" in by["enter_trade"].input_schema["required"]


async def test_prompt_teaches_the_loop(make_server) -> None:
    async with Client(make_server()) as client:
        prompts = (await client.list_prompts()).prompts
        assert any(p.name == "basis_trading_loop" for p in prompts)
        got = await client.get_prompt("basis_trading_loop", {"symbol": "eth"})
    text = got.messages[0].content.text
    for word in ("scan_basis", "compute_zscore", "estimate_net_apy", "size_position", "enter_trade",
                 "check_delta", "seconds_to_funding", "exit_trade", "percent", "Focus on ETH"):
        assert word in text
