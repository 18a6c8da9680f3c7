"""advance_time's fast path against the hour-by-hour reference loop, on the shipped data.

    python bench/replay.py [--rounds 2]

Each case sets one replay book up, copies it byte for byte, and replays the same months on the copies: hour
by hour (``reference=True``, the loop kept as the reference) and through the fast path (`Clockwork.fast_forward`).
The copies must end as the same book (every table, wall-clock times aside; the z-score trackers too) or the
bench fails. Rounds alternate the two paths on fresh copies; each path's best round counts.

  no position  2024-03-01 + 184 days with nothing open: the fast path samples the basis of every hour at once
  one open     a BTC cash-and-carry (carry playbook) open for the whole 61 days from 2024-03-01: every hour
               still ticks, with the book read from a cache between writes and commits not waiting for the disk

Prints each path's time per simulated hour; the line before last is the ratio with no position (goal >= 20x),
the last line the ratio with one position open (goal >= 3x).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from basis_mcp.config import Settings
from basis_mcp.desk import Desk

START = "2024-03-01T00:00:00Z"
WALL_CLOCK = {"audit": {"ts", "duration_ms", "prev_hash", "hash"}, "alerts": {"ts"}, "orders": {"created_wall"},
              "idempotency": {"created_at"}, "schema_migrations": {"applied_at"}, "confirmations": {"created_at", "expires_at"}}


def book_rows(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        out = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA table_info({name})") if r[1] not in WALL_CLOCK.get(name, ()))
            try:
                out[name] = conn.execute(f"SELECT {cols} FROM {name} ORDER BY rowid").fetchall()
            except sqlite3.OperationalError:  # WITHOUT ROWID: primary key order
                out[name] = conn.execute(f"SELECT {cols} FROM {name}").fetchall()
        return out
    finally:
        conn.close()


async def replay(db: Path, settings: Settings, hours: list[float], reference: bool) -> tuple[float, Any, list[str]]:
    """(seconds in advance_time, what the next hours would read, open positions at the end) for one copy."""
    desk = Desk.open_replay(settings, db)
    await desk.start()
    try:
        t0 = time.perf_counter()
        for h in hours:
            await desk.advance(h, reference=reference)
        took = time.perf_counter() - t0
        memory = {s: (list(z._buf), z._mean, z._m2, z._since_exact) for s, z in desk.market.z.items()}
        return took, (memory, dict(desk.market._last_sample_ts)), [r["symbol"] for r in desk.book.positions(("open",))]
    finally:
        desk.close()


async def case(name: str, settings: Settings, hours: list[float], rounds: int,
               setup: Callable[[Desk], Awaitable[Any]] | None = None) -> tuple[float, float, list[str]]:
    """Best seconds per simulated hour (hour by hour, fast) and the positions open at the end; asserts identical books."""
    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base" / "book.db"
        base.parent.mkdir()
        desk = Desk.open_replay(settings, base, start=START)
        await desk.start()
        try:
            if setup is not None:
                await setup(desk)
        finally:
            desk.close()
        best = {True: float("inf"), False: float("inf")}
        books: dict[bool, Any] = {}
        still_open: list[str] = []
        for r in range(rounds):
            for reference in (True, False):
                db = Path(d) / f"{r}-{'ref' if reference else 'fast'}" / "book.db"
                db.parent.mkdir()
                for suffix in ("", ".audit-key", ".audit-journal"):
                    if Path(str(base) + suffix).exists():
                        shutil.copyfile(str(base) + suffix, str(db) + suffix)
                took, memory, still_open = await replay(db, settings, hours, reference)
                best[reference] = min(best[reference], took)
                books.setdefault(reference, (book_rows(db), memory))
        if books[True] != books[False]:
            bad = [t for t in books[True][0] if books[True][0][t] != books[False][0].get(t)] or ["the z-score trackers"]
            raise SystemExit(f"{name}: the fast path left a different book ({', '.join(bad)})")
    n = sum(hours)
    print(f"{name}: {n:g} simulated hours from {START[:10]}: hour by hour {best[True] / n * 1e3:.3f} ms/h, "
          f"fast {best[False] / n * 1e3:.4f} ms/h; books identical")
    return best[True] / n, best[False] / n, still_open


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    ref0, fast0, _ = await case("no position", Settings(), [24 * 92, 24 * 92], args.rounds)

    async def enter(desk: Desk) -> None:
        await desk.enter("BTC", 4000, 2.0, "bench-1", "cash_and_carry", expected_hold_days=90, playbook="carry")

    ref1, fast1, still_open = await case("one open", Settings(), [24 * 61], args.rounds, enter)
    if still_open != ["BTC"]:
        raise SystemExit(f"one open: the position did not stay open for the whole window ({still_open})")
    print(f"replay: {ref0 / fast0:.1f}x faster with no position (goal >= 20x)")
    print(f"replay: {ref1 / fast1:.1f}x faster with one position open (goal >= 3x)")


if __name__ == "__main__":
    asyncio.run(main())
