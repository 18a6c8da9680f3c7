"""Read-tool latency as a ratio to a no-op tool on the bare MCP SDK, both over stdio, in one run.

    python bench/tool_overhead.py

Two real subprocesses, each driven by the SDK client as it ships (``mcp.Client`` over stdio, output
schemas validated by the client as they always are):

  (a) the bare SDK: an ``MCPServer`` with one tool that returns a small pydantic model (this file,
      run with ``--bare``);
  (b) ``basis-mcp serve`` on a fresh replay book (shipped data) with one BTC cash-and-carry position
      open, so the read tools have a book to read.

Each round calls, for every read tool, the bare no-op and then the tool, alternating, ``CALLS``
times each: both sides see the same machine at the same moment. Latencies are pooled over the
rounds; the ratio per tool is its p50 over the no-op's p50 from the same rounds. The last line prints
the worst read tool's ratio (goal: ≤ 2×).

Read tools are the read-only tools that answer from the book and the market state. ``backtest`` and
``plot_basis`` are read-only too but compute (a backtest over years, a chart): they are timed in
``bench/backtest.py`` and not here.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 5
CALLS = 60
READ_TOOLS: dict[str, dict] = {
    "seconds_to_funding": {"symbol": "BTC"},
    "compute_zscore": {"symbol": "BTC"},
    "risk_status": {},
    "portfolio_status": {},
    "check_delta": {},
    "estimate_net_apy": {"symbol": "BTC", "hold_days": 30, "notional_usd": 4000},
    "size_position": {"symbol": "BTC"},
    "scan_basis": {},
}


class Pong(BaseModel):
    ok: bool
    t: float


def bare_server() -> None:
    """The baseline: the bare SDK with a no-op tool returning a small structured result."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bare")

    @server.tool(name="noop", description="does nothing")
    def noop() -> Pong:
        return Pong(ok=True, t=time.time())

    server.run("stdio")


async def timed(client, name: str, args: dict) -> float:
    t0 = time.perf_counter()
    r = await client.call_tool(name, args)
    dt = time.perf_counter() - t0
    if r.is_error:
        raise RuntimeError(f"{name}: {r.content[0].text}")
    return dt


async def main() -> None:
    from mcp import Client, StdioServerParameters

    with tempfile.TemporaryDirectory() as d:
        ours = StdioServerParameters(command=sys.executable, cwd=str(REPO),
                                     args=["-m", "basis_mcp", "serve", "--db", str(Path(d) / "b.db"), "--start", "2024-03-01"])
        bare = StdioServerParameters(command=sys.executable, args=[str(Path(__file__).resolve()), "--bare"], cwd=str(REPO))
        async with Client(ours) as srv, Client(bare) as ref:
            await timed(srv, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "bench-overhead",
                                             "expected_hold_days": 30})
            for name, args in READ_TOOLS.items():  # warm-up: imports, caches, first queries
                for _ in range(10):
                    await timed(srv, name, args)
                    await timed(ref, "noop", {})
            base: dict[str, list[float]] = {n: [] for n in READ_TOOLS}
            tool: dict[str, list[float]] = {n: [] for n in READ_TOOLS}
            for _ in range(ROUNDS):
                for name, args in READ_TOOLS.items():
                    for _ in range(CALLS):
                        base[name].append(await timed(ref, "noop", {}))
                        tool[name].append(await timed(srv, name, args))
            worst, worst_name = 0.0, ""
            for name in READ_TOOLS:
                b, t = statistics.median(base[name]), statistics.median(tool[name])
                ratio = t / b
                print(f"{name:>20}: p50 {t * 1e3:6.2f} ms vs bare no-op {b * 1e3:5.2f} ms  ->  {ratio:.2f}x")
                if ratio > worst:
                    worst, worst_name = ratio, name
            print(f"tool_overhead: {worst:.2f}x worst read tool ({worst_name}) p50 vs a no-op tool on the bare SDK, "
                  "both over stdio with the SDK client")


if __name__ == "__main__":
    if "--bare" in sys.argv:
        bare_server()
    else:
        import anyio

        anyio.run(main)
