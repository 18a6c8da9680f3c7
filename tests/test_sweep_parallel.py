"""Sweeps spread over processes and over a local Dask cluster give the single-process rows, row for row
(issue 14, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from basis_mcp.backtest.parallel import sweep_parallel
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.runner import load_markets, sweep
from basis_mcp.history import DataError, load_extract
from tests.conftest import REPO

GRID = {"min_zscore": [1.0, 1.5, 2.0], "min_basis_pct": [0.03, 0.05], "exit_zscore": [0.0, 2.5]}  # 2.5 > entry: refused


@pytest.fixture(scope="module")
def markets():
    return load_markets(load_extract(), ["BTC", "ETH"], "2021-01-01", "2021-07-01", BacktestParams())


@pytest.fixture(scope="module")
def single(markets):
    return sweep(markets, BacktestParams(), GRID)


def test_the_grid_has_refused_and_valid_sets(single):
    assert 6 <= len(single) < 12  # exit z above entry z is not a strategy: those combinations are refused
    assert {(r["min_zscore"], r["exit_zscore"]) for r in single} >= {(1.0, 0.0), (2.0, 0.0)}


def test_processes_give_the_single_process_rows(markets, single):
    assert sweep_parallel(markets, BacktestParams(), GRID, workers=2) == single


def test_a_local_dask_cluster_gives_the_single_process_rows(markets, single):
    pytest.importorskip("distributed")
    seen: list[float] = []
    rows = sweep_parallel(markets, BacktestParams(), GRID, workers=2, dask="local", progress=lambda d, t, m: seen.append(d))
    assert rows == single
    assert seen and seen[-1] == 12


def test_no_valid_set_is_an_error_naming_why(markets):
    with pytest.raises(DataError, match="no valid parameter set"):
        sweep_parallel(markets, BacktestParams(), {"min_zscore": [1.0], "exit_zscore": [2.0]}, workers=2)


def test_the_cli_sweeps_on_workers_and_prints_the_same_table():
    args = [sys.executable, "-m", "basis_mcp", "backtest", "--symbols", "BTC", "--start", "2021-01-01", "--end",
            "2021-04-01", "--sweep", "min_zscore=1.0,2.0", "--sweep", "min_basis_pct=0.03,0.05"]
    one = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    two = subprocess.run(args + ["--workers", "2"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert one.stdout == two.stdout and len(one.stdout.splitlines()) == 5, json.dumps([one.stdout, two.stdout])
