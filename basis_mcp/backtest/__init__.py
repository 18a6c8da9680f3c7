"""Backtesting the cash-and-carry rules on history: a vectorised engine, a per-row reference
loop that must agree with it trade for trade, and the results, charts and surfaces around them.

The names below load on first use (PEP 562): the server imports ``basis_mcp.backtest.params`` at
start-up and must not pay for the compiled engine (numba) until a backtest runs."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market, prepare  # (eager: the function shadows its module's name)

_WHERE = {"run_vectorized": "engine", "run_reference": "reference", "Trade": "results"}
__all__ = ["BacktestParams", "Market", "Trade", "prepare", "run_reference", "run_vectorized"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"basis_mcp.backtest.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
