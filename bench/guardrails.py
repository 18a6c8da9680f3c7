"""Pre-trade check overhead per entry, as a ratio to the entry's own execution time.

    python bench/guardrails.py

One paper desk on a temporary database, replay clock at 2024-03-15 00:00 UTC (BTC and
ETH carry is profitable there, so every entry passes). Each repetition, side by side on
the same book:

  (a) the pre-trade checks of the entry: ``await desk.entry_readings(...)`` (prices,
      caps, free capital, duplicate and rate readings from the venue and SQLite) plus the
      pure ``pre_trade_violations(...)``;
  (b) the full ``desk.enter(...)`` of that entry (the same checks again under the desk
      lock, the intents, both legs, the fills, the idempotency record);

then the position is closed with ``desk.exit(...)`` (timed for information only) so the
next entry is not a duplicate. Medians over REPS repetitions after WARMUP.

An entry sends 2 orders and an exit 2 more, so 200 round trips in a minute would trip the
orders-per-minute limit (120/min at most) by design. Between repetitions, outside every
timed region, the bench moves its own finished orders' stamps (market time: the replay clock
stands still here) back two minutes in the temporary database; the rate check still runs its
query on every entry.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import anyio

from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.guardrails import pre_trade_violations

START = "2024-03-15T00:00:00Z"
WARMUP = 20
REPS = 1_000
PLAN = [("BTC", 4_000.0), ("ETH", 3_000.0)]  # alternated: both anchor symbols, inside every cap
LEVERAGE = 2.0
HOLD_DAYS = 7.0


def _ms(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=10)
    return f"median {statistics.median(xs) * 1e3:7.3f} ms   p10 {q[0] * 1e3:7.3f}   p90 {q[-1] * 1e3:7.3f}"


async def run(db: Path) -> None:
    settings = Settings(capital_usd=1_000_000, max_orders_per_minute=120)
    desk = Desk.open_replay(settings, db, start=START)
    await desk.start()
    readings_t: list[float] = []
    rules_t: list[float] = []
    checks_t: list[float] = []
    enter_t: list[float] = []
    exit_t: list[float] = []
    pc = time.perf_counter
    t_start = pc()
    try:
        for i in range(WARMUP + REPS):
            sym, notional = PLAN[i % len(PLAN)]

            t0 = pc()
            readings, _, _ = await desk.entry_readings(sym, notional, LEVERAGE, HOLD_DAYS)
            t1 = pc()
            violations = pre_trade_violations(readings)
            t2 = pc()
            if violations:
                raise SystemExit(f"entry {i} would be refused: {[str(v) for v in violations]}")

            t3 = pc()
            out = await desk.enter(sym, notional, LEVERAGE, f"bench-{i}", "cash_and_carry", HOLD_DAYS)
            t4 = pc()
            if out.position.status != "open" or out.replayed:
                raise SystemExit(f"entry {i} did not open a fresh position: {out.position.status}")

            t5 = pc()
            closed = await desk.exit(out.position.position_id, f"bench-{i}-exit")
            t6 = pc()
            if closed.position.status != "closed":
                raise SystemExit(f"exit {i} left the position {closed.position.status}")

            with desk.store.tx():  # untimed: keep the 60-s order window below the rate limit
                desk.store.x("UPDATE orders SET created_at = created_at - 120 WHERE created_at > ?", (desk.now() - 60.0,))

            if i >= WARMUP:
                readings_t.append(t1 - t0)
                rules_t.append(t2 - t1)
                checks_t.append(t2 - t0)
                enter_t.append(t4 - t3)
                exit_t.append(t6 - t5)
        state, reason = desk.trading_state()
        equity = desk.equity_usd()
    finally:
        desk.close()

    wall = pc() - t_start
    checks, entry = statistics.median(checks_t), statistics.median(enter_t)
    print(f"guardrails bench: {REPS} entries + exits (after {WARMUP} warm-up), BTC/ETH alternated, {LEVERAGE:g}x, "
          f"replay {START}, {wall:.1f} s wall")
    print(f"desk after the run: {state}{' (' + reason + ')' if reason else ''}, equity ${equity:,.2f} of $1,000,000")
    print(f"(a1) gather readings  entry_readings()     {_ms(readings_t)}")
    print(f"(a2) evaluate rules   pre_trade_violations {_ms(rules_t)}")
    print(f"(a)  pre-trade checks a1 + a2              {_ms(checks_t)}")
    print(f"(b)  full entry       desk.enter()         {_ms(enter_t)}")
    print(f"     exit (for info)  desk.exit()          {_ms(exit_t)}")
    print(f"     entry minus checks (intents, 2 legs, fills, idempotency): median {max(entry - checks, 0.0) * 1e3:7.3f} ms")
    print(f"guardrails: {checks / entry:.3f}x pre-trade check time per entry vs the entry's own execution time")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="basis-bench-") as d:
        anyio.run(run, Path(d) / "bench.db")


if __name__ == "__main__":
    main()
