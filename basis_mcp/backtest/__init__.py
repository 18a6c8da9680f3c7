"""Backtesting the cash-and-carry rules on history: a vectorised engine, a per-row reference
loop that must agree with it trade for trade, and the results, charts and surfaces around them."""

from basis_mcp.backtest.engine import run_vectorized
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market, prepare
from basis_mcp.backtest.reference import run_reference
from basis_mcp.backtest.results import Trade

__all__ = ["BacktestParams", "Market", "Trade", "prepare", "run_reference", "run_vectorized"]
