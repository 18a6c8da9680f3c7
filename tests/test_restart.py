"""Stop the server mid-position (cleanly, and with SIGKILL), start it on the same database:
the position, its funding so far and the z-score history are all still there."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import call, db_rows, kill9, stdio_params

pytestmark = pytest.mark.anyio


async def _open_and_accrue(client: Client) -> tuple[dict, dict, dict]:
    entry = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "restart-1"})
    await call(client, "advance_time", {"hours": 17})  # two settlements
    book = await call(client, "portfolio_status", {"include_fills": True})
    z = await call(client, "compute_zscore", {"symbol": "BTC"})
    return entry, book, z


async def _check_after_restart(client: Client, entry: dict, book: dict, z: dict) -> None:
    pid = entry["position"]["position_id"]
    book2 = await call(client, "portfolio_status", {"include_fills": True})
    assert book2["market_time"] == book["market_time"]
    assert [p["position_id"] for p in book2["open_positions"]] == [pid]
    p2 = book2["open_positions"][0]
    assert p2["fills"] == book["open_positions"][0]["fills"]
    assert p2["pnl"]["funding_usd"] == pytest.approx(book["open_positions"][0]["pnl"]["funding_usd"])
    assert p2["pnl"]["funding_usd"] != 0
    assert book2["equity_usd"] == pytest.approx(book["equity_usd"], abs=1e-6)
    z2 = await call(client, "compute_zscore", {"symbol": "BTC"})
    for k in ("samples", "zscore", "mean_pct", "std_pct", "last_sample_time", "first_sample_time"):
        assert z2[k] == z[k], k
    # the same idempotency key still returns the first result after a restart
    again = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "restart-1"})
    assert again["replayed"] and again["position"]["position_id"] == pid
    # and the book carries on: the next settlement is paid to the same position
    adv = await call(client, "advance_time", {"hours": 8})
    assert any(f["position_id"] == pid for f in adv["funding"])


async def test_clean_restart_keeps_the_book(db: Path) -> None:
    async with Client(stdio_params(db)) as client:
        entry, book, z = await _open_and_accrue(client)
    async with Client(stdio_params(db)) as client:
        await _check_after_restart(client, entry, book, z)


async def test_sigkill_restart_keeps_the_book(db: Path) -> None:
    client = Client(stdio_params(db))
    await client.__aenter__()
    try:
        entry, book, z = await _open_and_accrue(client)
        n_samples = db_rows(db, "SELECT COUNT(*) AS n FROM basis_samples")[0]["n"]
        kill9(db)
    finally:
        try:
            await client.__aexit__(None, None, None)
        except Exception:
            pass  # the server is gone; the transport may complain
    assert db_rows(db, "SELECT COUNT(*) AS n FROM basis_samples")[0]["n"] == n_samples
    async with Client(stdio_params(db)) as client:
        await _check_after_restart(client, entry, book, z)
