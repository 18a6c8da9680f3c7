"""The tamper-evident audit log, and the kill switch only the operator can undo."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import REPO, call, call_error, db_rows

pytestmark = pytest.mark.anyio


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "basis_mcp", *args], capture_output=True, text=True, cwd=REPO, timeout=60)


async def _some_activity(make_server) -> None:
    async with Client(make_server()) as client:
        await call(client, "scan_basis", {})
        await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": -1, "idempotency_key": "a"})
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "a1"})
        await call_error(client, "enter_trade", {"symbol": "ETH", "notional_usd": 1000, "idempotency_key": "a2", "api_secret": "hunter2-SECRET"})
        await call(client, "advance_time", {"hours": 2})


async def test_every_tool_call_is_audited_with_outcome_and_duration(make_server, db: Path) -> None:
    await _some_activity(make_server)
    rows = db_rows(db, "SELECT * FROM audit WHERE kind = 'tool' ORDER BY id")
    assert [(r["name"], r["outcome"]) for r in rows] == [
        ("scan_basis", "started"), ("scan_basis", "ok"), ("enter_trade", "rejected"), ("enter_trade", "started"),
        ("enter_trade", "ok"), ("enter_trade", "rejected"), ("advance_time", "started"), ("advance_time", "ok"),
    ]
    assert all(r["ts"] > 0 and r["market_ts"] > 0 for r in rows)
    ends = [r for r in rows if r["outcome"] == "ok"]
    assert all(r["duration_ms"] is not None and r["duration_ms"] >= 0 for r in ends)
    assert json.loads(rows[3]["args_json"]) == {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "a1"}
    assert json.loads(rows[4]["args_json"]) == {"call": rows[3]["id"]}
    assert "notional_usd=-1" in rows[2]["detail"]
    # a secret-looking argument is refused and never stored
    everything = "\n".join(str(tuple(r)) for r in db_rows(db, "SELECT * FROM audit"))
    assert "hunter2-SECRET" not in everything
    assert json.loads(rows[5]["args_json"])["api_secret"] == "***"
    # the desk's own decisions are in the same chain
    kinds = {r["kind"] for r in db_rows(db, "SELECT kind FROM audit")}
    assert {"tool", "desk", "system"} <= kinds


async def test_audit_verify_detects_edit_insert_and_delete(make_server, db: Path, tmp_path: Path) -> None:
    await _some_activity(make_server)
    ok = cli("audit", "verify", "--db", str(db))
    assert ok.returncode == 0 and ok.stdout.startswith("OK")
    n = db_rows(db, "SELECT COUNT(*) AS n FROM audit")[0]["n"]
    key, journal = Path(str(db) + ".audit-key"), Path(str(db) + ".audit-journal")

    def tampered(sql: str, params: tuple = ()) -> str:
        copy = tmp_path / f"t{abs(hash(sql))}.db"
        src = sqlite3.connect(db)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.execute(sql, params)
        dst.commit()
        dst.close()
        r = cli("audit", "verify", "--db", str(copy), "--audit-key", str(key), "--audit-journal", str(journal))
        assert r.returncode == 1, r.stdout
        return r.stdout

    assert "edited" in tampered("UPDATE audit SET outcome = outcome || '!' WHERE id = 2")
    assert "edited" in tampered("UPDATE audit SET args_json = '{}' WHERE id = 3")
    assert "deleted or inserted" in tampered("DELETE FROM audit WHERE id = 2")
    assert "cut from the end" in tampered(f"DELETE FROM audit WHERE id = {n}")
    out = tampered(
        "INSERT INTO audit(id, ts, market_ts, kind, name, args_json, outcome, detail, duration_ms, prev_hash, hash)"
        " SELECT 100000, ts, market_ts, kind, name, args_json, outcome, detail, duration_ms, hash, hash FROM audit WHERE id = ?", (n,)
    )
    assert "deleted or inserted" in out or "edited" in out


async def test_audit_export_writes_json_lines(make_server, db: Path, tmp_path: Path) -> None:
    await _some_activity(make_server)
    out = tmp_path / "audit.jsonl"
    r = cli("audit", "export", "--db", str(db), "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == db_rows(db, "SELECT COUNT(*) AS n FROM audit")[0]["n"]
    assert {"id", "ts", "kind", "name", "args", "outcome", "hash", "prev_hash"} <= set(lines[0])
    assert lines[1]["prev_hash"] == lines[0]["hash"]


async def test_halt_is_one_way_for_the_agent_and_the_operator_resumes_a_running_server(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        risk = await call(client, "halt_trading", {"reason": "numbers look off"})
        assert risk["trading_state"] == "HALTED" and "numbers look off" in risk["trading_state_reason"]
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "h1"})
        assert "HALTED" in text
        # no tool resumes: there is none, and config-looking arguments are refused
        names = {t.name for t in (await client.list_tools()).tools}
        assert not any("resume" in n or "config" in n or "limit" in n and n != "risk_status" for n in names)
        text = await call_error(client, "halt_trading", {"reason": "x", "trading_state": "ACTIVE"})
        assert "unknown argument 'trading_state'" in text
        # the operator resumes from the command line while the server keeps running
        r = cli("resume", "--db", str(db), "--reason", "checked, all fine")
        assert r.returncode == 0 and "HALTED → ACTIVE" in r.stdout
        ok = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "h2"})
        assert ok["position"]["status"] == "open"
        assert any(a["rule"] == "state_active" for a in ok["alerts"])
    rows = db_rows(db, "SELECT * FROM audit WHERE kind = 'operator'")
    assert rows and rows[0]["name"] == "set_state_active"
    assert cli("audit", "verify", "--db", str(db)).returncode == 0  # two writers, one intact chain


def test_operator_commands_find_each_books_default_database(tmp_path: Path) -> None:
    import os

    from basis_mcp.store import Store

    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    env.pop("BASIS_MCP_DB", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "basis_mcp", *args], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)

    r = run("halt", "--market", "live", "--live")
    assert r.returncode == 1 and "live book" in r.stderr and "basis-mcp-live-binance.db" in r.stderr and "--market" in r.stderr
    live_db = Path(r.stderr.split("database ", 1)[1].splitlines()[0])
    Store(live_db).close()  # as a live server would have left it
    r = run("halt", "--market", "live", "--live", "--reason", "stop the live book")
    assert r.returncode == 0 and "ACTIVE → HALTED" in r.stdout
    assert db_rows(live_db, "SELECT value FROM meta WHERE key = 'trading_state'")[0]["value"] == "HALTED"
    # the replay book and the paper-on-live book are other files, untouched
    r = run("status", "--market", "live")
    assert r.returncode == 1 and "paper book" in r.stderr and "basis-mcp-paper-binance.db" in r.stderr
    r = run("status")
    assert "replay book" in r.stderr and "basis-mcp.db" in r.stderr


def test_verify_beside_a_server_committing_all_along_is_not_a_false_alarm(tmp_path: Path) -> None:
    """The journal is read before the table: a row committed (and checkpointed) while the chain is walked
    is not mistaken for rows cut from the end."""
    import threading
    import time

    from basis_mcp import audit
    from basis_mcp.store import Store

    db = tmp_path / "busy.db"
    store = Store(db)
    for i in range(1500):
        store.append_audit(ts=time.time(), market_ts=None, kind="tool", name="scan_basis", args={"i": i}, outcome="ok",
                           durable=False)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.append_audit(ts=time.time(), market_ts=None, kind="tool", name="risk_status", args={"i": i},
                               outcome="ok", durable=False)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        verdicts = [audit.verify(db, store.audit_paths) for _ in range(6)]
    finally:
        stop.set()
        t.join()
        store.close()
    assert all(v.ok for v in verdicts), [v.problems for v in verdicts if not v.ok]
    assert verdicts[-1].rows > 1500  # the writer really was committing while the chain was checked
