"""advance_time's fast path (`Clockwork.fast_forward`) leaves the same book as the hour-by-hour reference loop.

One book is set up (entries, a resting order), copied byte for byte, and each copy replayed the same hours: one
hour by hour (``reference=True``), one through the fast path. Every table of the two files must then hold the
same rows in the same order (positions, legs, orders, fills, funding and borrow payments, basis samples, alerts,
the audit log, the paper venues' own books, meta), but for wall-clock times (and the audit hashes that cover
them), and every advance_time result must be the same. Windows: months with nothing open; a cash-and-carry
across settlements, a liquidation wick and the idle hours after it; a calendar spread through its forced exit
before expiry; a reverse trade accruing borrow hourly; data gaps with a position open and with none; orders
resting for a fill delay; a cross-exchange trade on two paper venues.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.history import FundingTable, funding_schedule, load_extract, mean_rate
from basis_mcp.readcache import ReadCache, Reads
from basis_mcp.signals import RollingZScore
from basis_mcp.store import Database
from tests import scripted

pytestmark = pytest.mark.anyio

WALL_CLOCK = {"audit": {"ts", "duration_ms", "prev_hash", "hash"}, "alerts": {"ts"}, "orders": {"created_wall"},
              "idempotency": {"created_at"}, "schema_migrations": {"applied_at"}, "confirmations": {"created_at", "expires_at"}}


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows, in rowid (or primary key) order, without the wall-clock columns."""
    conn = sqlite3.connect(db)
    try:
        out = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({name})") if r[1] not in WALL_CLOCK.get(name, ())]
            try:
                rows = conn.execute(f"SELECT {', '.join(cols)} FROM {name} ORDER BY rowid").fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID: primary key order
                rows = conn.execute(f"SELECT {', '.join(cols)} FROM {name}").fetchall()
            out[name] = rows
        return out
    finally:
        conn.close()


Setup = Callable[[Desk], Awaitable[Any]]


async def twin_replays(tmp: Path, settings: Settings, start: str, hours: list[float], setup: Setup | None = None,
                       data: Path | None = None) -> tuple[dict[str, list[tuple]], list[Any]]:
    """Set one book up, copy it, replay ``hours`` (one advance_time each) on each copy, hour by hour and fast;
    assert the two books and the advance_time results are the same. Returns the fast book and its results."""
    ref, fast = tmp / "ref" / "book.db", tmp / "fast" / "book.db"
    ref.parent.mkdir()
    fast.parent.mkdir()
    desk = Desk.open_replay(settings, ref, data_path=data, start=start)
    await desk.start()
    try:
        if setup is not None:
            await setup(desk)
    finally:
        desk.close()
    for suffix in ("", ".audit-key", ".audit-journal"):
        if Path(str(ref) + suffix).exists():
            shutil.copyfile(str(ref) + suffix, str(fast) + suffix)
    results, memory = {}, {}
    for path, reference in ((ref, True), (fast, False)):
        desk = Desk.open_replay(settings, path, data_path=data)
        await desk.start()
        try:
            results[reference] = [(await desk.advance(h, reference=reference)).model_dump() for h in hours]
            m = desk.market  # what the next hours will read: the z-score trackers, the last sample per symbol
            memory[reference] = ({s: (list(z._buf), z._mean, z._m2, z._since_exact) for s, z in m.z.items()},
                                 dict(m._last_sample_ts), desk.clock.now(), desk.pop_alerts())
        finally:
            desk.close()
    books = {True: dump(ref), False: dump(fast)}
    assert books[True].keys() == books[False].keys()
    for table in books[True]:
        assert books[False][table] == books[True][table], f"{table} differs"
    assert results[False] == results[True]
    assert memory[False][:3] == memory[True][:3]
    assert [a.model_dump(exclude={"time"}) for a in memory[False][3]] == [a.model_dump(exclude={"time"}) for a in memory[True][3]]
    return books[False], results[False]


def rules(book: dict[str, list[tuple]]) -> list[str]:
    """The alerts' rules, in order (alerts columns: id, market_ts, severity, rule, ...)."""
    return [r[3] for r in book["alerts"]]


async def test_months_with_nothing_open(tmp_path: Path) -> None:
    book, results = await twin_replays(tmp_path, Settings(), "2024-03-01T00:00:00Z", [24 * 92, 24 * 30 + 5.5, 0.25])
    assert sum(r["ticks"] for r in results) == 24 * 122 + 5
    assert len(book["basis_samples"]) > 2 * 24 * 122  # the shipped data's BTC and ETH every hour, and the history before
    assert not book["fills"] and not rules(book)


@pytest.mark.parametrize("sample_s", [3600, 5400, 7200])
async def test_nothing_open_across_data_gaps_at_any_sampling_interval(tmp_path: Path, sample_s: int) -> None:
    m = scripted.Market()
    m.spot[m.at("2024-01-03T05:00:00Z"):m.at("2024-01-04T00:00:00Z")] = np.nan
    m.perp[m.at("2024-01-05T01:00:00Z"):m.at("2024-01-05T02:00:00Z")] = np.nan
    eth = scripted.Market(spot=2_000.0)
    eth.spot[eth.at("2024-01-06T00:00:00Z"):eth.at("2024-01-06T03:00:00Z")] = np.nan
    book, _ = await twin_replays(tmp_path, Settings(zscore_sample_seconds=sample_s), "2024-01-02T00:00:00Z",
                                 [3.5, 24 * 3 + 0.5, 24 * 5], data=scripted.write(tmp_path, BTC=m, ETH=eth))
    replayed = [r[1] for r in book["basis_samples"] if r[0] == "BTC" and r[1] > scripted.T0 + 8 * 86400]
    assert replayed and all(t % sample_s == 0 for t in replayed)  # (the warm-up history before the start is hourly)


async def test_a_cash_and_carry_across_settlements_and_a_liquidation_wick(tmp_path: Path) -> None:
    m = scripted.Market()
    m.spike(m.at("2024-01-02T05:00:00Z"), high=130_000.0)  # +30 % for minutes: the short perp is liquidated
    m.set_rate("2024-01-01T16:00:00Z", 0.001)

    async def setup(desk: Desk) -> None:
        await desk.enter("BTC", 5000, 5, "c-1", "cash_and_carry")

    settings = Settings(capital_usd=20_000, max_leverage=5.0, max_position_notional_usd=5_000)
    book, results = await twin_replays(tmp_path, settings, "2024-01-01T01:00:00Z", [7.5, 30, 24 * 10],
                                       setup, scripted.write(tmp_path, BTC=m))
    assert len(results[1]["liquidations"]) == 1 and len(results[0]["funding"]) == 1
    assert "liquidation" in rules(book)
    assert [r[1] for r in book["positions"]] == ["BTC"]


async def test_a_calendar_spread_across_its_forced_exit_before_expiry(tmp_path: Path) -> None:
    m = scripted.Market(hours=24 * 100, basis_pct=0.0, rate=0.0003)
    m.set_rates_from("2024-02-15T00:00:00Z", 0.00003)
    data = scripted.write(tmp_path, BTC=m, ETH=scripted.Market(hours=24 * 100, spot=2_000.0))

    async def setup(desk: Desk) -> None:
        await desk.enter("BTC", 4000, None, "e-1", "calendar_spread", expected_hold_days=8, contract="BTC-240329")

    book, results = await twin_replays(tmp_path, Settings(expiry_exit_hours=24), "2024-03-20T00:00:00Z", [24 * 9, 24 * 4],
                                       setup, data)
    assert [a["rule"] for a in results[0]["watchdog_actions"]] == ["expiry_near"]


async def test_a_reverse_trade_accruing_borrow_then_squeezed(tmp_path: Path) -> None:
    data = scripted.write(tmp_path, BTC=scripted.Market(hours=24 * 45, basis_pct=-0.5, rate=-0.0003),
                          ETH=scripted.Market(hours=24 * 45, spot=2_000.0))

    async def setup(desk: Desk) -> None:
        await desk.enter("BTC", 4000, None, "r-1", "reverse_cash_and_carry")

    settings = Settings(borrow_scenario="spike", borrow_spike_apr_pct=15.0)
    book, results = await twin_replays(tmp_path, settings, "2024-01-29T00:00:00Z", [30.5, 24 * 4], setup, data)
    assert len(book["borrow_payments"]) > 30
    assert "borrow_spike" in [a["rule"] for r in results for a in r["watchdog_actions"]]


async def test_data_gaps_with_a_position_open_and_with_none(tmp_path: Path) -> None:
    m = scripted.Market()
    m.spot[m.at("2024-01-03T00:00:00Z"):m.at("2024-01-03T07:00:00Z")] = np.nan  # 7 hours without spot
    m.spot[m.at("2024-01-10T00:00:00Z"):m.at("2024-01-11T00:00:00Z")] = np.nan  # a day, after the position is gone
    m.perp[m.at("2024-01-12T00:00:00Z"):m.at("2024-01-12T03:00:00Z")] = np.nan
    eth = scripted.Market(spot=2_000.0)
    eth.spot[eth.at("2024-01-05T00:00:00Z"):eth.at("2024-01-06T00:00:00Z")] = np.nan

    async def setup(desk: Desk) -> None:
        await desk.enter("BTC", 4000, None, "g-1", "cash_and_carry", expected_hold_days=3)

    book, _ = await twin_replays(tmp_path, Settings(max_hold_days=4), "2024-01-02T00:00:00Z", [24 * 3, 24 * 14], setup,
                                 scripted.write(tmp_path, BTC=m, ETH=eth))
    assert "market_data_stale" in rules(book) and "max_hold" in [r[3] for r in book["alerts"]]


async def test_orders_resting_for_a_fill_delay(tmp_path: Path) -> None:
    data = scripted.write(tmp_path, BTC=scripted.Market(basis_pct=0.5), ETH=scripted.Market(spot=2_000.0, basis_pct=0.5))

    async def setup(desk: Desk) -> None:
        out = await desk.enter("BTC", 4000, None, "d-1", "cash_and_carry", expected_hold_days=3)
        assert out.fills_at is not None
        await desk.advance(5, reference=True)
        await desk.enter("ETH", 3000, None, "d-2", "cash_and_carry", expected_hold_days=3)

    book, _ = await twin_replays(tmp_path, Settings(fill_delay_seconds=3 * 3600, max_hold_days=3),
                                 "2024-01-02T00:00:00Z", [1.5, 24 * 5], setup, data)
    assert {"entry_filled", "exit_filled", "max_hold"} <= set(rules(book))


async def test_a_cross_exchange_trade_on_two_paper_venues(tmp_path: Path) -> None:
    async def setup(desk: Desk) -> None:
        await desk.enter("BTC", 3000, 2, "x-1", "cross_exchange", expected_hold_days=12)

    book, results = await twin_replays(tmp_path, Settings(capital_usd=20_000, paper_venues=["dydx"]),
                                       "2023-12-15T00:00:00Z", [24 * 30], setup)
    assert [a["rule"] for a in results[0]["watchdog_actions"]] == ["venue_data_ends"]
    assert book["paper_dydx_funding"]


# ----------------------------------------------------------------------------- the pieces


def test_the_scalar_funding_table_matches_the_vectorised_schedule() -> None:
    rng = np.random.default_rng(3)
    for h in load_extract().values():
        table = FundingTable(h.funding_time, h.funding_rate)
        ts = np.concatenate((rng.integers(h.t0 - 86400 * 30, h.t_end + 86400 * 40, 3000), h.funding_time[::97],
                             h.funding_time[::89] + 1)).astype(np.float64)
        nxt, iv, last = funding_schedule(h.funding_time, h.funding_rate, ts)
        for i, t in enumerate(ts.tolist()):
            assert table.schedule(t) == (nxt[i], iv[i], None if np.isnan(last[i]) else last[i])
            u = t + float(rng.choice([0, 8 * 3600, 30 * 86400, -5]))
            m = mean_rate(h.funding_time, h.funding_rate, t, u)[0]
            assert table.mean(t, u) == (None if np.isnan(m) else m)
    for times in (np.array([], dtype=np.int64), np.array([1_700_000_000], dtype=np.int64)):
        table = FundingTable(times, np.full(times.size, 1e-4))
        for t in (1.6e9, 1.7e9, 1.8e9):
            nxt, iv, last = funding_schedule(times, np.full(times.size, 1e-4), t)
            assert table.schedule(t) == (nxt[0], iv[0], None if np.isnan(last[0]) else last[0])


def test_extending_a_rolling_zscore_is_adding_each_sample() -> None:
    rng = np.random.default_rng(5)
    for window in (2, 3, 30, 100):
        one, many = RollingZScore(window), RollingZScore(window)
        for _ in range(12):
            xs = rng.normal(0.1, 0.05, int(rng.integers(0, 4 * window))).tolist()
            for x in xs:
                one.add(x)
            many.extend(xs)
            assert (list(one._buf), one._mean, one._m2, one._since_exact) == (list(many._buf), many._mean, many._m2,
                                                                              many._since_exact)


def test_the_read_cache_drops_what_a_write_may_change(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    a = Database(path, "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v REAL);"
                       "CREATE TABLE IF NOT EXISTS u (k TEXT PRIMARY KEY, v REAL);"
                       "CREATE TABLE IF NOT EXISTS log (n INTEGER);"
                       "CREATE TRIGGER IF NOT EXISTS logged AFTER INSERT ON u BEGIN INSERT INTO log VALUES (1); END;")
    b = Database(path, None)  # another connection to the same file (the paper venue's)
    with a.read_cache(), b.read_cache():
        a.x("INSERT INTO t VALUES ('x', 1)")
        assert a.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 1
        a.x("UPDATE t SET v = 2 WHERE k = 'x'")  # its own write: at once
        assert a.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 2
        assert b.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 2
        with a.tx():
            a.x("UPDATE t SET v = 3 WHERE k = 'x'")
            assert a.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 3
            assert b.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 2  # not committed yet
        assert b.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 3  # the commit reaches the other connection
        with pytest.raises(RuntimeError), a.tx():
            a.x("UPDATE t SET v = 4 WHERE k = 'x'")
            assert a.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 4
            raise RuntimeError
        assert a.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 3  # rolled back
        assert a.one("SELECT COUNT(*) AS n FROM log")["n"] == 0
        a.x("INSERT INTO u VALUES ('y', 1)")  # the trigger writes a table the statement does not name
        assert a.one("SELECT COUNT(*) AS n FROM log")["n"] == 1
        a.conn.execute("INSERT INTO t VALUES ('z', 9)")  # behind the cache's back: total_changes tells
        assert a.one("SELECT COUNT(*) AS n FROM t")["n"] == 2
        assert a.q("SELECT k FROM t ORDER BY k") == a.q("SELECT k FROM t ORDER BY k")
        other = sqlite3.connect(path)  # another process's commit: seen at the next revalidate
        other.execute("UPDATE t SET v = 7 WHERE k = 'x'")
        other.commit()
        other.close()
        a.revalidate()
        assert a.one("SELECT v FROM t WHERE k = ?", ("x",))["v"] == 7
        assert isinstance(a.cache, ReadCache)
        with Reads.recording() as reads:  # code that only read t (through the cache) and wrote nothing
            a.one("SELECT v FROM t WHERE k = ?", ("x",))
            b.q("SELECT k FROM u")
        assert reads.quiet
        a.x("INSERT INTO log VALUES (2)")  # a table it did not read
        assert reads.unchanged()
        with Reads.recording() as standing:
            a.q("SELECT k FROM u")
        assert standing.quiet
        b.x("UPDATE t SET v = 8 WHERE k = 'x'")  # one it read, through the other connection
        assert not reads.unchanged() and standing.unchanged()
        with Reads.recording() as reads:
            a.one("SELECT v FROM t WHERE k = ?", ("x",))
            a.x("UPDATE u SET v = 2")
        assert not reads.quiet  # it wrote
        with Reads.recording() as reads:
            Database(path, None).one("SELECT 1 FROM t")  # past the caches
        assert reads.opaque and not reads.quiet
    assert a.cache is None and b.cache is None
    assert not standing.unchanged()  # the caches closed: nothing they recorded stands
    a.close()
    b.close()
