"""Versioned schema migrations, on a real book made with the release code (schema v1).

`tests/fixtures/v1_book.db` was written by basis-mcp at commit ddd259d (see
`tests/fixtures/make_v1_book.py`): open and closed positions, fills, funding, alerts, a halt
and a resume, audit rows in the old unkeyed chain. The current code must upgrade it with every
row intact, key its audit chain without breaking the old one, and carry on trading.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.server.app import ServeOptions, build_server
from basis_mcp.store import SCHEMA_VERSION
from tests.conftest import REPO, call, db_rows

pytestmark = pytest.mark.anyio
FIXTURE = REPO / "tests" / "fixtures" / "v1_book.db"
KEPT = ("positions", "orders", "fills", "funding_payments", "basis_samples", "alerts", "idempotency", "paper_balances",
        "paper_perp", "paper_orders", "paper_funding")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "basis_mcp", *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def dump(db: Path, table: str) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
    finally:
        conn.close()
    for r in rows:
        r.pop("delivered", None)  # alerts: delivering them is what reading the book does
    return rows


MOVED_TO_LEGS = {"entry_spot": ("spot", "entry_price"), "exit_spot": ("spot", "exit_price"),
                 "entry_perp": ("perp", "entry_price"), "exit_perp": ("perp", "exit_price")}


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    db = tmp_path / "book.db"
    shutil.copy(FIXTURE, db)
    return db


def test_the_fixture_is_a_real_v1_book(v1: Path) -> None:
    meta = {r["key"]: r["value"] for r in db_rows(v1, "SELECT key, value FROM meta")}
    assert meta["schema_version"] == "1" and meta["mode"] == "replay"
    statuses = sorted(r["status"] for r in db_rows(v1, "SELECT status FROM positions"))
    assert statuses == ["closed", "open", "open"]
    assert db_rows(v1, "SELECT COUNT(*) AS n FROM funding_payments")[0]["n"] >= 10
    assert db_rows(v1, "SELECT COUNT(*) AS n FROM audit")[0]["n"] >= 20
    # read-only verify of a book this version has not opened yet: the old check, nothing written
    before = v1.read_bytes()
    r = cli("audit", "verify", "--db", str(v1))
    assert r.returncode == 0 and "not yet upgraded" in r.stdout, r.stdout
    assert v1.read_bytes() == before and not Path(str(v1) + ".audit-key").exists()


async def test_a_v1_book_upgrades_intact_and_carries_on_trading(v1: Path) -> None:
    before = {t: dump(v1, t) for t in KEPT}
    legacy_rows = db_rows(v1, "SELECT COUNT(*) AS n FROM audit")[0]["n"]
    server = build_server(ServeOptions(settings=Settings(), db_path=v1))
    async with Client(server) as client:
        book = await call(client, "portfolio_status", {"include_closed": 5, "include_fills": True})
        assert [p["symbol"] for p in book["open_positions"]] == ["ETH", "BTC"]
        assert len(book["closed_positions"]) == 1
        after = {t: dump(v1, t) for t in KEPT}
        legs = {(r["position_id"], r["market"]): r for r in dump(v1, "legs")}
        for t in KEPT:  # every old row and every old value intact, by column name
            assert len(after[t]) >= len(before[t]), f"{t}: {len(before[t])} rows before, {len(after[t])} after"
            for old, new in zip(before[t], after[t][: len(before[t])], strict=True):  # (new rows may follow: an alert)
                for col, value in old.items():
                    if t == "positions" and col in MOVED_TO_LEGS:  # these live on the position's legs now
                        market, leg_col = MOVED_TO_LEGS[col]
                        assert legs[(old["id"], market)][leg_col] == value, f"position {old['id']} {col}"
                    else:
                        assert new[col] == value, f"{t} row {old.get('id')} column {col} changed in the upgrade"
        assert {r["playbook"] for r in db_rows(v1, "SELECT playbook FROM positions")} == {"convergence"}
        # every position is a cash-and-carry of two legs; every order, fill and funding payment points at its leg
        assert len(legs) == 2 * len(before["positions"])
        for p in before["positions"]:
            spot, perp = legs[(p["id"], "spot")], legs[(p["id"], "perp")]
            assert (spot["role"], spot["side"], perp["role"], perp["side"]) == ("spot", "long", "perp", "short")
            assert perp["margin_usd"] == p["margin_usd"] and spot["quantity"] == perp["quantity"] == p["quantity"]
        for t in ("orders", "fills"):
            for r in after[t]:
                assert legs[(r["position_id"], r["market"])]["id"] == r["leg_id"], f"{t} {r['id']} on the wrong leg"
        assert all(legs[(r["position_id"], "perp")]["id"] == r["leg_id"] for r in after["funding_payments"])
        problems = db_rows(v1, "PRAGMA foreign_key_check")
        assert problems == [] and db_rows(v1, "PRAGMA integrity_check")[0][0] == "ok"
        # the book's P&L reads the same through the legs as it did through the old columns
        closed = book["closed_positions"][0]
        fills = [r for r in before["fills"] if r["position_id"] == closed["position_id"]]
        funding = [r for r in before["funding_payments"] if r["position_id"] == closed["position_id"]]
        recomputed = (sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in fills)
                      - sum(f["fee_usd"] for f in fills) + sum(f["amount_usd"] for f in funding))
        assert closed["pnl"]["total_usd"] == pytest.approx(recomputed, abs=0.005)
        assert closed["entry_spot_price"] == pytest.approx(
            next(p["entry_spot"] for p in before["positions"] if p["id"] == closed["position_id"]), rel=1e-7)
        # it carries on: exit one position, open another, across funding
        eth = next(p for p in book["open_positions"] if p["symbol"] == "ETH")
        out = await call(client, "exit_trade", {"position_id": eth["position_id"], "idempotency_key": "after-upgrade-exit"})
        assert out["position"]["status"] == "closed"
        await call(client, "advance_time", {"hours": 10})
        pos = await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 2000, "idempotency_key": "after-upgrade"})
        assert pos["position"]["status"] == "open"
    meta = {r["key"]: r["value"] for r in db_rows(v1, "SELECT key, value FROM meta")}
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    migrations = db_rows(v1, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [m["version"] for m in migrations] == list(range(2, SCHEMA_VERSION + 1))
    anchor = db_rows(v1, "SELECT * FROM audit WHERE id = ?", (legacy_rows + 1,))[0]
    assert anchor["name"] == "audit_keyed" and anchor["outcome"] == "ok"
    r = cli("audit", "verify", "--db", str(v1))
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout
    assert f"rows 1..{legacy_rows} are the book's schema-v1 chain" in r.stdout
    # the old rows are protected too: editing one (and recomputing the old unkeyed chain) is caught
    copy = v1.with_name("tampered.db")
    shutil.copy(v1, copy)
    conn = sqlite3.connect(copy)
    conn.execute("UPDATE audit SET outcome = outcome || '!' WHERE id = 3")
    conn.commit()
    conn.close()
    r = cli("audit", "verify", "--db", str(copy), "--audit-key", str(v1) + ".audit-key",
            "--audit-journal", str(v1) + ".audit-journal")
    assert r.returncode == 1 and "row 3" in r.stdout, r.stdout
    # ... and so is editing one and recomputing the whole unkeyed v1 part of the chain
    from basis_mcp.audit import FIELDS, legacy_hash

    conn = sqlite3.connect(copy)
    prev = "0" * 64
    for row in conn.execute(f"SELECT {', '.join(FIELDS)} FROM audit WHERE id <= ? ORDER BY id", (legacy_rows,)).fetchall():
        h = legacy_hash(prev, dict(zip(FIELDS, row, strict=True)))
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, row[0]))
        prev = h
    conn.commit()
    conn.close()
    r = cli("audit", "verify", "--db", str(copy), "--audit-key", str(v1) + ".audit-key",
            "--audit-journal", str(v1) + ".audit-journal")
    assert r.returncode == 1 and f"row {legacy_rows + 1}" in r.stdout, r.stdout


async def test_a_book_from_a_newer_version_is_refused_untouched(v1: Path) -> None:
    conn = sqlite3.connect(v1)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = v1.read_bytes()
    r = subprocess.run([sys.executable, "-m", "basis_mcp", "serve", "--db", str(v1)], capture_output=True, text=True,
                       cwd=REPO, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "schema-v99 book" in r.stderr and "upgrade basis-mcp" in r.stderr, r.stderr
    assert v1.read_bytes() == before
    r = cli("status", "--db", str(v1))
    assert r.returncode == 0  # status only reads
    r = cli("halt", "--db", str(v1))
    assert r.returncode == 1 and "newer basis-mcp" in r.stderr
