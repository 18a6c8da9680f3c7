"""Parameter sweeps spread over the cores of one machine, or over a Dask cluster.

The combinations are cut into contiguous chunks, one task per chunk; each task runs
`basis_mcp.backtest.runner.sweep_rows` (the single-process code itself, so results are the same row for
row) and shares its per-symbol features between the combinations it holds. Rows come back in grid
order whatever order the tasks finish in.

- ``workers=N`` (N > 1): a `concurrent.futures.ProcessPoolExecutor` of N processes on this machine.
- ``dask="tcp://host:8786"``: the tasks go to that Dask scheduler (``pip install 'basis-mcp[cluster]'``
  on every worker); ``dask="local"`` starts a `distributed.LocalCluster` of ``workers`` processes for the
  run. Dask's own executor interface is used (``Client.get_executor``), not a home-made scheduler; the
  markets are scattered to the workers once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from typing import Any

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market
from basis_mcp.backtest.runner import sweep_combos, sweep_rows
from basis_mcp.history import DataError

Progress = Callable[[float, float, str], None]
CHUNKS_PER_WORKER = 2  # a little more tasks than workers: a slow chunk does not hold the others up


def _chunk(markets: Any, base: BacktestParams, keys: list[str], combos: list[tuple[float, ...]]
           ) -> tuple[list[dict[str, Any]], list[str]]:
    """One task: a contiguous run of combinations (``markets`` may arrive as a Dask future, resolved by Dask)."""
    return sweep_rows(markets, base, keys, combos)


def sweep_parallel(markets: list[Market], base: BacktestParams, grid: dict[str, list[float]], workers: int = 0,
                   dask: str | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
    """`runner.sweep`'s rows, computed by ``workers`` processes (0: every core) or on a Dask cluster."""
    combos = sweep_combos(base, grid)
    keys = list(grid)
    n = workers or os.cpu_count() or 1
    size = max(1, math.ceil(len(combos) / (n * CHUNKS_PER_WORKER)))
    chunks = [combos[i:i + size] for i in range(0, len(combos), size)]
    with ExitStack() as stack:
        if dask:
            from distributed import Client, LocalCluster  # the optional [cluster] extra

            if dask == "local":
                cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                           dashboard_address=None))
                client = stack.enter_context(Client(cluster))
            else:
                client = stack.enter_context(Client(dask))
            payload: Any = client.scatter(markets, broadcast=True)
            pool: Executor = client.get_executor()
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=n))
            payload = markets
        futures = {pool.submit(_chunk, payload, base, keys, chunk): i for i, chunk in enumerate(chunks)}
        results: list[tuple[list[dict[str, Any]], list[str]] | None] = [None] * len(chunks)
        done = 0
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done += len(chunks[futures[fut]])
            if progress:
                progress(done, len(combos), f"{done}/{len(combos)} parameter sets")
    rows = [r for res in results if res for r in res[0]]
    refused = [r for res in results if res for r in res[1]]
    if not rows:
        raise DataError("sweep: no valid parameter set among the combinations: " + "; ".join(refused[:5]))
    return rows
