"""Run the engine over symbols and date ranges, sweep parameters, and summarise.

This is what the CLI (`basis-mcp backtest`) and the MCP tool (`backtest`) call.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from basis_mcp.backtest.engine import features, run_vectorized
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.prepare import Market, prepare
from basis_mcp.backtest.reference import run_reference
from basis_mcp.backtest.results import Trade, equity_curve, per_year, stats
from basis_mcp.clock import iso, parse_time
from basis_mcp.config import Settings
from basis_mcp.feed import base_asset
from basis_mcp.history import DataError, SymbolHistory, load_any

Progress = Callable[[float, float, str], None]


@dataclass
class BacktestResult:
    symbols: list[str]
    start: str
    end: str
    params: BacktestParams
    engine: str
    trades: list[Trade]
    summary: dict[str, Any]
    by_year: list[dict[str, Any]]
    by_symbol: dict[str, dict[str, Any]]
    gaps: dict[str, list[tuple[str, int]]]
    times: np.ndarray = field(repr=False)
    equity: np.ndarray = field(repr=False)
    markets: list[Market] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "symbols": self.symbols,
            "start": self.start,
            "end": self.end,
            "engine": self.engine,
            "params": self.params.model_dump(),
            "summary": self.summary,
            "by_year": self.by_year,
            "by_symbol": self.by_symbol,
            "spot_gaps": {s: [{"from": t, "hours": n} for t, n in g] for s, g in self.gaps.items()},
            "trades": [t.as_dict() for t in self.trades],
        }


def position_capital(p: BacktestParams) -> float:
    """What one position ties up: the spot leg plus the perp's margin."""
    return p.notional_usd * (1.0 + 1.0 / p.leverage)


def parse_when(name: str, v: str | float) -> float:
    """A date argument, or a `DataError` naming it."""
    try:
        return parse_time(v) if isinstance(v, str) else float(v)
    except (ValueError, OverflowError, OSError):
        raise DataError(f"{name}={str(v)[:40]!r}: bad date, expected ISO 8601 such as 2021-01-01") from None


def load_markets(
    histories: dict[str, SymbolHistory], symbols: Iterable[str], start: str | float, end: str | float, params: BacktestParams,
    settings: Settings | None = None,
) -> list[Market]:
    """Validated markets for the requested symbols and range (`DataError` names the problem).
    Symbols may be written BTC, BTCUSDT, BTC/USDT…; ``settings`` supplies the desk's
    per-symbol fees, steps and minimums (the defaults otherwise)."""
    syms: list[str] = []
    for raw in symbols:
        if not raw.strip():
            continue
        try:
            sym = base_asset(raw)
        except ValueError as e:
            raise DataError(f"symbols: {raw!r}: {e}") from None
        if sym not in syms:
            syms.append(sym)
    if not syms:
        raise DataError("symbols: no symbols given")
    unknown = [s for s in syms if s not in histories]
    if unknown:
        raise DataError(f"symbols: unknown symbol(s) {', '.join(unknown)}; the data has {', '.join(sorted(histories))}")

    t0, t1 = parse_when("start", start), parse_when("end", end)
    return [prepare(histories[s], t0, t1, params, settings) for s in syms]


def run(
    markets: list[Market],
    params: BacktestParams,
    engine: str = "vectorized",
    progress: Progress | None = None,
    feats: dict[str, dict[str, np.ndarray]] | None = None,
) -> BacktestResult:
    trades: list[Trade] = []
    by_symbol: dict[str, dict[str, Any]] = {}
    for n, m in enumerate(markets, 1):
        if engine == "reference":
            ts = run_reference(m, params)
        else:
            f = (feats or {}).get(m.symbol) or features(m, params)
            ts = run_vectorized(m, params, f)
        trades += ts
        times, eq = equity_curve([m], ts, params.capital_usd)
        by_symbol[m.symbol] = stats(ts, times, eq, params.capital_usd, [m], position_capital(params))
        if progress:
            progress(n, len(markets), f"{m.symbol}: {len(ts)} trades")
    trades.sort(key=lambda t: (t.exit_time, t.symbol))
    times, eq = equity_curve(markets, trades, params.capital_usd)
    return BacktestResult(
        symbols=[m.symbol for m in markets],
        start=iso(min(float(m.t[m.i0]) for m in markets)) or "",
        end=iso(max(float(m.t[m.i1]) for m in markets)) or "",
        params=params,
        engine=engine,
        trades=trades,
        summary=stats(trades, times, eq, params.capital_usd, markets, position_capital(params)),
        by_year=per_year(trades, params.capital_usd),
        by_symbol=by_symbol,
        gaps={m.symbol: m.gaps for m in markets},
        times=times,
        equity=eq,
        markets=markets,
    )


def sweep(
    markets: list[Market], base: BacktestParams, grid: dict[str, list[float]], progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Every combination of ``grid`` values over ``base``; per-symbol features are computed once
    per z-score window and shared by all combinations."""
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    cache: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    rows = []
    for n, values in enumerate(combos, 1):
        try:
            params = base.model_copy(update=dict(zip(keys, values, strict=True)))
            params = BacktestParams.model_validate(params.model_dump())
        except ValueError:
            continue  # e.g. an exit threshold above the entry one: not a strategy
        fw = cache.setdefault(params.zscore_window, {})
        for m in markets:
            if m.symbol not in fw:
                fw[m.symbol] = features(m, params)
        res = run(markets, params, feats=fw)
        rows.append({**dict(zip(keys, values, strict=True)), **{k: res.summary[k] for k in (
            "trades", "win_rate_pct", "total_pnl_usd", "apy_pct", "apy_while_invested_pct", "sharpe", "max_drawdown_pct",
            "exposure_pct")}})
        if progress:
            progress(n, len(combos), f"{n}/{len(combos)} parameter sets")
    return rows


def run_from_data(
    data: str | Path | None,
    symbols: Iterable[str],
    start: str,
    end: str,
    params: BacktestParams,
    engine: str = "vectorized",
    progress: Progress | None = None,
) -> BacktestResult:
    return run(load_markets(load_any(data), symbols, start, end, params), params, engine, progress)


def write_outputs(result: BacktestResult, out_dir: Path, chart: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"backtest_{'-'.join(result.symbols)}_{result.start[:10]}_{result.end[:10]}"
    paths = {"json": out_dir / f"{stem}.json"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=2))
    if chart:
        from basis_mcp.backtest.chart import backtest_chart

        paths["png"] = out_dir / f"{stem}.png"
        paths["png"].write_bytes(backtest_chart(result))
    return paths
