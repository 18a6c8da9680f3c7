"""A live desk looks again for a funding payment its leg should have received but the venue had not posted
when it read (issue 13 review): only for the symbol that settled, backing off, for ten minutes; otherwise it
reads venue events at a settlement and at the 5-minute backstop. Counted over an hour of 5-second ticks on a
real book (a BTC carry position paid at 08:00), with a venue schedule where another symbol settles every 4 h."""

from __future__ import annotations

import sqlite3
import types
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.desk import clockwork as cw
from basis_mcp.server.app import CallAuditor, ServeOptions, build_server
from basis_mcp.store import Database

INTERVAL_H = {"BTC": 8, "XYZ": 4}


def at(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("reread") / "desk.db"

    async def trade() -> None:
        async with Client(build_server(ServeOptions(settings=Settings(), db_path=db, start="2024-03-15T00:00:00Z"),
                                       CallAuditor())) as c:
            assert not (await c.call_tool("enter_trade", {"symbol": "BTC", "notional_usd": 2000.0,
                                                          "idempotency_key": "k"})).is_error
            assert not (await c.call_tool("advance_time", {"hours": 9})).is_error  # paid at 08:00
    anyio.run(trade)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE legs SET venue = 'live:binance'")  # as a live desk's legs are named
    conn.commit()
    conn.close()
    return db


class Feed:
    venue = "binance"

    def __init__(self, symbols: list[str]):
        self.symbols, self.now = symbols, 0.0

    def snapshot(self, sym: str):
        h = INTERVAL_H[sym] * 3600
        return types.SimpleNamespace(next_funding_time=(self.now // h + 1) * h, funding_interval_hours=INTERVAL_H[sym])


def reads_in_an_hour(db: Path, symbols: list[str], start: float, monkeypatch) -> int:
    c = cw.Clockwork.__new__(cw.Clockwork)
    c.store, c.venue = Database(db, None), types.SimpleNamespace(remote=True)
    feed = Feed(symbols)
    c.market = types.SimpleNamespace(feeds={"binance": feed})
    c._payment_retry = (float("nan"), float("-inf"), cw.PAYMENT_RETRY_S)
    c.events_synced_at = start - 1
    wall = [1000.0]
    monkeypatch.setattr(cw, "time", types.SimpleNamespace(monotonic=lambda: wall[0]))
    n, now = 0, start
    while now < start + 3600:
        feed.now = now
        if c.venue_events_due(now):
            n += 1
            c.events_synced_at = now
        now += 5.0
        wall[0] += 5.0
    c.store.close()
    return n


def test_another_symbols_settlement_does_not_send_the_desk_looking_for_btcs_payment(book: Path, monkeypatch) -> None:
    alone = reads_in_an_hour(book, ["BTC"], at("2024-03-15T12:00:00"), monkeypatch)
    assert alone <= 13  # the 5-minute backstop
    assert reads_in_an_hour(book, ["BTC", "XYZ"], at("2024-03-15T12:00:00"), monkeypatch) <= alone + 1


def test_a_payment_not_posted_is_looked_for_with_backoff_for_ten_minutes(book: Path, monkeypatch) -> None:
    # 16:00: BTC settles and its leg has no payment (nothing posts it here): the settlement's read, then looks
    # at +10, +30, +70, +150, +310 s, then only the backstop
    n = reads_in_an_hour(book, ["BTC", "XYZ"], at("2024-03-15T16:00:00"), monkeypatch)
    assert 13 <= n <= 19, n
