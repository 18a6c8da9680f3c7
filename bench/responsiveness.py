"""How long `risk_status` waits while a long replay runs, as a ratio to an idle server.

    python bench/responsiveness.py

A real `basis-mcp serve` subprocess over stdio (the way Claude Desktop talks to it), a fresh
temporary book with one BTC position open (so every replayed hour runs the watchdog). Each
round, side by side on the same server:

  (a) idle: N_IDLE sequential `risk_status` calls;
  (b) loaded: `advance_time(2208)` (92 days, the most one call may ask) started in the
      background, and `risk_status` called back to back until the replay returns.

The p99 latency of (b) over the p99 of (a) is the round's ratio; the last line prints the
median ratio over ROUNDS rounds (goal: ≤ 5×). Before the fix, the replay held the event
loop for its whole run (~2 s), so the loaded p99 was the replay's own duration.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 3
N_IDLE = 150
HOURS = 2208


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


async def timed(client: Client, name: str, args: dict) -> float:
    t0 = time.perf_counter()
    r = await client.call_tool(name, args)
    dt = time.perf_counter() - t0
    if r.is_error:
        raise RuntimeError(f"{name}: {r.content[0].text}")
    return dt


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        params = StdioServerParameters(command=sys.executable, args=["-m", "basis_mcp", "serve", "--db", str(Path(d) / "b.db"),
                                                                     "--start", "2021-01-01"], cwd=str(REPO))
        async with Client(params) as client:
            await timed(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "bench-1",
                                                "expected_hold_days": 30})
            for _ in range(20):  # warm-up
                await timed(client, "risk_status", {})
            ratios = []
            for rnd in range(ROUNDS):
                idle = [await timed(client, "risk_status", {}) for _ in range(N_IDLE)]
                loaded: list[float] = []
                replay_s = 0.0

                async def replay() -> None:
                    nonlocal replay_s
                    replay_s = await timed(client, "advance_time", {"hours": HOURS})

                async with anyio.create_task_group() as tg:
                    tg.start_soon(replay)
                    await anyio.sleep(0.05)
                    while replay_s == 0.0:
                        loaded.append(await timed(client, "risk_status", {}))
                r = p99(loaded) / p99(idle)
                ratios.append(r)
                print(f"round {rnd + 1}: idle p99 {p99(idle) * 1e3:.2f} ms (median {statistics.median(idle) * 1e3:.2f}), "
                      f"during the replay p99 {p99(loaded) * 1e3:.2f} ms over {len(loaded)} calls "
                      f"(median {statistics.median(loaded) * 1e3:.2f}); the replay took {replay_s:.2f} s; ratio {r:.2f}x")
                # a fresh position for the next round if the watchdog closed this one
                book = await client.call_tool("portfolio_status", {})
                if not (book.structured_content or {}).get("open_positions"):
                    for sym in ("BTC", "ETH"):  # best effort: the entry rules may refuse at this market time
                        r = await client.call_tool("enter_trade", {"symbol": sym, "notional_usd": 4000,
                                                                   "idempotency_key": f"bench-{rnd + 2}-{sym}",
                                                                   "expected_hold_days": 30})
                        if not r.is_error:
                            break
    print(f"responsiveness: {statistics.median(ratios):.2f}x risk_status p99 during advance_time({HOURS}) vs idle (goal <= 5x)")


if __name__ == "__main__":
    anyio.run(main)
