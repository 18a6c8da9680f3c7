"""The read path's shortcuts (issue 13, item 5) never change what the desk sees. Found by a hostile review:
a read tool's per-call cache was the whole database's, so while a read awaited the venue, the watchdog's
ledger check and later calls read through it (a vanished perp went unnoticed; an operator's halt from
another process was not seen); and a queued outcome row was linked by a marker a client could send."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.server.app import CallAuditor, ServeOptions, build_server
from tests.conftest import REPO, call, call_error, db_rows

pytestmark = pytest.mark.anyio


def served(db: Path) -> tuple[Client, CallAuditor]:
    auditor = CallAuditor()
    return Client(build_server(ServeOptions(settings=Settings(), db_path=db, start="2024-03-15T00:00:00Z"), auditor)), auditor


def slow_first_read(desk, seconds: float) -> None:
    """The first free-capital read (risk_status' venue balance) waits, as a live venue's answer can."""
    orig, n = desk.risk.free_capital_usd, [0]

    async def slow(*a, **k):
        n[0] += 1
        if n[0] == 1:
            await anyio.sleep(seconds)
        return await orig(*a, **k)
    desk.risk.free_capital_usd = slow


async def test_an_operator_halt_is_seen_by_a_call_that_starts_while_another_read_waits(tmp_path: Path) -> None:
    db = tmp_path / "desk.db"
    client, auditor = served(db)
    async with client:
        await call(client, "risk_status")
        slow_first_read(auditor.desk, 3.0)
        seen = {}

        async def first() -> None:
            seen["A"] = (await call(client, "risk_status"))["trading_state"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.sleep(0.3)
            r = await anyio.to_thread.run_sync(lambda: subprocess.run(
                [sys.executable, "-m", "basis_mcp", "halt", "--db", str(db), "--reason", "operator stop"],
                cwd=REPO, capture_output=True, text=True))
            assert r.returncode == 0, r.stderr
            seen["B"] = (await call(client, "risk_status"))["trading_state"]
        assert seen == {"A": "ACTIVE", "B": "HALTED"}, seen


async def test_the_ledger_check_reads_the_venue_while_a_read_call_waits(tmp_path: Path) -> None:
    client, auditor = served(tmp_path / "desk.db")
    async with client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000.0, "idempotency_key": "k"})
        desk = auditor.desk
        rec = desk.reconcile
        real = await rec.venue_holdings()
        truth, reads = {"h": copy.deepcopy(real)}, [0]

        async def from_the_venue():  # answers without SQLite, as a live venue does
            reads[0] += 1
            return truth["h"]
        rec.venue_holdings = from_the_venue
        slow_first_read(desk, 5.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "risk_status", {})
            await anyio.sleep(0.3)
            await rec.check_ledger()
            balances, perps = copy.deepcopy(real)
            perps.clear()  # the perp leg is gone at the venue
            truth["h"] = (balances, perps)
            await rec.check_ledger()
            assert reads[0] == 2 and desk.risk.trading_state()[0] == "REDUCING", (reads, desk.risk.trading_state())


async def test_queued_audit_rows_keep_the_arguments_as_sent(tmp_path: Path) -> None:
    db = tmp_path / "desk.db"
    client, _ = served(db)
    async with client:
        await call(client, "risk_status")
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            await call_error(client, "risk_status", {"call": "previous row"})  # refused (unknown argument): queued
            await call(client, "seconds_to_funding", {"symbol": "BTC"})  # a read's pair: queued
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await call(client, "risk_status")
    rows = db_rows(db, "SELECT id, name, outcome, args_json FROM audit WHERE kind = 'tool' ORDER BY id")
    refused = [r for r in rows if r["outcome"] == "rejected"]
    assert [json.loads(r["args_json"]) for r in refused] == [{"call": "previous row"}]
    starts = {r["id"]: r["name"] for r in rows if r["outcome"] == "started"}
    for r in rows:
        if r["outcome"] in ("ok", "error"):  # every outcome points at its own call's start row
            assert starts[json.loads(r["args_json"])["call"]] == r["name"]
    r = subprocess.run([sys.executable, "-m", "basis_mcp", "audit", "verify", "--db", str(db)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


async def test_a_pending_alert_under_a_foreign_lock_waits_for_the_next_answer(tmp_path: Path) -> None:
    db = tmp_path / "desk.db"
    client, auditor = served(db)
    async with client:
        await call(client, "risk_status")
        auditor.desk.events.alert("info", "test_rule", "an alert for the agent")
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with anyio.fail_after(2):
                under = await call(client, "risk_status")  # answers; delivering the alert must wait for the lock
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert under["alerts"] == []
        assert [a["rule"] for a in (await call(client, "risk_status"))["alerts"]] == ["test_rule"]
        assert (await call(client, "risk_status"))["alerts"] == []  # delivered once
