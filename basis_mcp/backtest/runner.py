"""Run the engine over symbols and date ranges, sweep parameters, and summarise.

This is what the CLI (`basis-mcp backtest`) and the MCP tool (`backtest`) call.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from basis_mcp.backtest.calendar import run_calendar
from basis_mcp.backtest.cross import cross_equity, cross_market, run_cross_reference, run_cross_vectorized
from basis_mcp.backtest.engine import (
    always_on_trades,
    feature_key,
    features,
    rules_not_run,
    run_vectorized,
)
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.portfolio import simulate
from basis_mcp.backtest.prepare import Market, prepare, warm_up_covers
from basis_mcp.backtest.reference import run_reference
from basis_mcp.backtest.results import Trade, equity_curve, per_year, stats, yearly
from basis_mcp.clock import iso, parse_time
from basis_mcp.config import Settings
from basis_mcp.feed import base_asset
from basis_mcp.history import DataError, SymbolHistory
from basis_mcp.loaders import load_any, timeframe_name, with_market_facts

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
    always_on: dict[str, Any] = field(default_factory=dict)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    stale: dict[str, list[str]] = field(default_factory=dict)
    always_equity: np.ndarray | None = field(default=None, repr=False)
    bar: str = "1h"  # the bar size the rules ran on
    data_notes: list[str] = field(default_factory=list)  # alignments the loader made, rules the bars are too coarse for

    def to_json(self) -> dict[str, Any]:
        return {
            "symbols": self.symbols,
            "start": self.start,
            "end": self.end,
            "engine": self.engine,
            "bar": self.bar,
            "data_notes": self.data_notes,
            "params": self.params.model_dump(),
            "summary": self.summary,
            "fill_delay_sensitivity": self.sensitivity,
            "always_on_carry": self.always_on,
            "by_year": self.by_year,
            "by_symbol": self.by_symbol,
            "spot_gaps": {s: [{"from": t, "hours": n} for t, n in g] for s, g in self.gaps.items()},
            "stale_bars": self.stale,
            "trades": [t.as_dict() for t in sorted(self.trades, key=lambda t: (t.entry_time, t.exit_time, t.symbol))],
        }


def parse_when(name: str, v: str | float) -> float:
    """A date argument, or a `DataError` naming it."""
    try:
        t = parse_time(v) if isinstance(v, str) else float(v)
    except (ValueError, OverflowError, OSError, TypeError):
        raise DataError(f"{name}={str(v)[:40]!r}: bad date, expected ISO 8601 such as 2021-01-01") from None
    if not (-1e11 < t < 1e11):  # beyond year ±5000: not a date a market has
        raise DataError(f"{name}={str(v)[:40]!r}: bad date, expected ISO 8601 such as 2021-01-01")
    return t


def load_markets(
    histories: dict[str, SymbolHistory], symbols: Iterable[str], start: str | float, end: str | float, params: BacktestParams,
    settings: Settings | None = None, whole_history: bool = False,
) -> list[Market]:
    """Validated markets for the requested symbols and range (`DataError` names the problem).
    Symbols may be written BTC, BTCUSDT, BTC/USDT…; ``settings`` supplies the desk's
    per-symbol fees, steps and minimums (the defaults otherwise). Each market holds its range and the
    warm-up its features need (``whole_history``: every bar from the first; the reference, `prepare`)."""
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

    bars = {s: histories[s].bar_s for s in syms}
    if len(set(bars.values())) > 1:
        raise DataError("symbols: one bar size per run; " + ", ".join(f"{s} is {timeframe_name(b)}" for s, b in bars.items()))
    bar = next(iter(bars.values()))
    if bar != 3600 and params.strategy in ("calendar_spread", "cross_exchange"):
        raise DataError(f"strategy={params.strategy} backtests run on hourly bars (the simulated quarterly and the venues' "
                        f"funding are hourly); the data is {timeframe_name(bar)}")
    t0, t1 = parse_when("start", start), parse_when("end", end)
    markets = [prepare(histories[s], t0, t1, params, settings, whole_history) for s in syms]
    for m in markets:
        span = float(m.t[m.i1] - m.t[m.i0])
        if params.fill_delay_seconds > span:
            raise DataError(f"fill_delay={params.fill_delay_seconds / 3600:g}h is longer than the data range of {m.symbol} "
                            f"({span / 3600:g}h)")
        if not m.valid[m.i0 : m.i1 + 1].any():
            raise DataError(f"{m.symbol}: no usable bar between {iso(float(m.t[m.i0]))} and {iso(float(m.t[m.i1]))} "
                            "once missing and stale (zero-volume) candles are removed")
    return markets


def _trades(markets: list[Market], params: BacktestParams, engine: str, feats: dict[str, dict[str, np.ndarray]],
            settings: Settings) -> tuple[dict[str, list[Trade]], dict[str, Any]]:
    """The book's trades: the vectorised engine with capital (`portfolio.simulate`), or the per-row
    reference loop, which knows the rules only (capital unlimited, fixed sizing)."""
    if engine == "reference" and params.strategy != "cross_exchange":
        if params.sizing == "desk":
            raise DataError("sizing=desk runs on the vectorised engine only (the reference loop trades one symbol at a time)")
        if params.strategy == "calendar_spread":
            return {m.symbol: run_calendar(m, params, run_reference) for m in markets}, {}
        return {m.symbol: run_reference(m, params) for m in markets}, {}
    if params.strategy == "cross_exchange":  # the funding differential between venues (fixed notional, no capital pass)
        run_x = run_cross_reference if engine == "reference" else run_cross_vectorized
        return {m.symbol: run_x(cross_market(m, params.venues), params, settings) for m in markets}, {}
    if params.strategy == "calendar_spread":  # fixed notional per contract, one position per symbol (no capital pass)
        return {m.symbol: run_calendar(m, params, lambda cm, p: run_vectorized(cm, p)) for m in markets}, {}
    by_sym, stats = simulate(markets, params, feats, settings)
    return by_sym, stats.as_dict()


THREADED_MIN_BARS = 500_000  # below this many bars in all, one thread builds every symbol's features


def all_features(markets: list[Market], params: BacktestParams, feats: dict[str, dict[str, np.ndarray]] | None = None,
                 workers: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every symbol's `features` (those in ``feats`` kept). Many symbols over many bars: one thread per core,
    each building whole symbols (the compiled passes release the GIL, NumPy's large array operations too)."""
    feats = dict(feats or {})
    missing = [m for m in markets if m.symbol not in feats]
    n = min(len(missing), workers or os.cpu_count() or 1)
    if n > 1 and sum(m.t.size for m in missing) >= THREADED_MIN_BARS:
        with ThreadPoolExecutor(max_workers=n) as pool:
            built = list(pool.map(lambda m: features(m, params), missing))
    else:
        built = [features(m, params) for m in missing]
    feats.update({m.symbol: f for m, f in zip(missing, built, strict=True)})
    return feats


def run(
    markets: list[Market],
    params: BacktestParams,
    engine: str = "vectorized",
    progress: Progress | None = None,
    feats: dict[str, dict[str, np.ndarray]] | None = None,
    settings: Settings | None = None,
    extras: bool = True,
) -> BacktestResult:
    """Trades, summary, per-year table; with ``extras``, the always-on carry benchmark and the
    fill-delay sensitivity (P&L with fills at the signal bar and one bar later), computed in the
    same run."""
    settings = settings or Settings()
    feats = all_features(markets, params, feats)
    if not extras:
        return _run(markets, params, engine, progress, feats, settings, extras, None)
    with ThreadPoolExecutor(max_workers=1) as side:
        # the fill-delay sensitivity's other pass(es) on a second core meanwhile (the compiled passes release the GIL)
        delayed = side.submit(_delay_pnls, markets, params, feats, settings)
        return _run(markets, params, engine, progress, feats, settings, extras, delayed)


def _run(markets: list[Market], params: BacktestParams, engine: str, progress: Progress | None,
         feats: dict[str, dict[str, np.ndarray]], settings: Settings, extras: bool, delayed: Any) -> BacktestResult:
    by_sym_trades, book = _trades(markets, params, engine, feats, settings)
    own = None
    if params.strategy == "cross_exchange":  # marked with each venue's funding, not the spot/perp basis
        crossed = {m.symbol: cross_market(m, params.venues) for m in markets}

        def own(m: Market, ts: list[Trade]) -> np.ndarray:
            return cross_equity(crossed[m.symbol], ts)
    trades: list[Trade] = []
    by_symbol: dict[str, dict[str, Any]] = {}
    always: dict[str, list[Trade]] = {}
    sym_curve, a_sym_curve = None, None  # (times, equity) of the last symbol: the book's own when it is the only one
    curves: dict[str, np.ndarray] = {}  # each symbol's own P&L per bar, built once for its row and the book's curve
    a_curves: dict[str, np.ndarray] = {}
    for n, m in enumerate(markets, 1):
        ts = by_sym_trades[m.symbol]
        trades += ts
        times, eq = sym_curve = equity_curve([m], ts, params.capital_usd, own, curves)
        by_symbol[m.symbol] = stats(ts, times, eq, params.capital_usd, [m], params.leverage)
        if extras:
            always[m.symbol] = always_on_trades(m, params, feats[m.symbol])
            a_t, a_eq = a_sym_curve = equity_curve([m], always[m.symbol], params.capital_usd, cache=a_curves)
            a = stats(always[m.symbol], a_t, a_eq, params.capital_usd, [m], params.leverage)
            mine = by_symbol[m.symbol]
            mine["always_on_pnl_usd"] = a["total_pnl_usd"]
            mine["pnl_at_constant_notional_usd"] = round(sum(t.pnl_at_constant_notional_usd for t in ts), 2)
            mine["always_on_pnl_at_constant_notional_usd"] = round(
                sum(t.pnl_at_constant_notional_usd for t in always[m.symbol]), 2)
            base_c, base_d = mine["always_on_pnl_at_constant_notional_usd"], a["total_pnl_usd"]
            mine["vs_always_on_pct"] = round(100.0 * mine["pnl_at_constant_notional_usd"] / base_c, 1) if base_c > 0 else None
            mine["vs_always_on_dollars_pct"] = round(100.0 * mine["total_pnl_usd"] / base_d, 1) if base_d > 0 else None
        if progress:
            progress(n, len(markets), f"{m.symbol}: {len(ts)} trades")
    trades.sort(key=lambda t: (t.exit_time, t.symbol))
    one = len(markets) == 1
    times, eq = sym_curve if one and sym_curve else equity_curve(markets, trades, params.capital_usd, own, curves)
    summary = stats(trades, times, eq, params.capital_usd, markets, params.leverage)
    if book:
        summary["margin"] = book
    always_json: dict[str, Any] = {}
    baseline = None
    a_eq = None
    sensitivity: dict[str, Any] = {}
    if extras:
        all_on = sorted((t for ts in always.values() for t in ts), key=lambda t: (t.exit_time, t.symbol))
        a_t, a_eq = a_sym_curve if one and a_sym_curve else equity_curve(markets, all_on, params.capital_usd, cache=a_curves)
        a_sum = stats(all_on, a_t, a_eq, params.capital_usd, markets, params.leverage)
        baseline = yearly(a_t, a_eq, params.capital_usd)
        always_json = {
            "what": "long spot / short perp all the time at notional_usd per symbol, re-sized once a year (a full round "
                    "trip each time), every funding payment collected",
            "total_pnl_usd": a_sum["total_pnl_usd"], "apy_pct": a_sum["apy_pct"], "funding_usd": a_sum["funding_usd"],
            "costs_usd": round(a_sum["fees_usd"] + a_sum["slippage_usd"], 2),
            "apy_on_notional_pct": {m.symbol: _apy_on_notional(always[m.symbol], params.notional_usd) for m in markets},
            "by_symbol_pnl_usd": {s: by_symbol[s]["always_on_pnl_usd"] for s in by_symbol},
        }
        sensitivity = _delay_sensitivity(markets, params, delayed.result(), summary["total_pnl_usd"])
    return BacktestResult(
        symbols=[m.symbol for m in markets],
        start=iso(min(float(m.t[m.i0]) for m in markets)) or "",
        end=iso(max(float(m.t[m.i1]) for m in markets)) or "",
        params=params,
        engine=engine,
        trades=trades,
        summary=summary,
        by_year=per_year(trades, params.capital_usd, times, eq, baseline),
        by_symbol=by_symbol,
        gaps={m.symbol: m.gaps for m in markets},
        times=times,
        equity=eq,
        markets=markets,
        always_on=always_json,
        sensitivity=sensitivity,
        stale={m.symbol: m.stale for m in markets},
        always_equity=a_eq,
        bar=timeframe_name(int(markets[0].bar_s)),
        data_notes=[n for m in markets for n in m.notes] + rules_not_run(markets[0].bar_s),
    )


def _apy_on_notional(trades: list[Trade], notional: float) -> float | None:
    """P&L at constant notional per dollar of notional per year held (the carry's own yield)."""
    years = sum(t.hold_hours for t in trades) / 24 / 365
    return (round(sum(t.pnl_at_constant_notional_usd for t in trades) / notional / years * 100, 3)
            if years > 0 and notional > 0 else None)


def _bar_seconds(markets: list[Market]) -> float:
    return float(markets[0].bar_s)


def _delay_pnls(markets: list[Market], params: BacktestParams, feats: dict[str, dict[str, np.ndarray]],
                settings: Settings) -> dict[float, float | None]:
    """The book's P&L with fills at the signal bar and one bar later (None: this run's own delay, known after it)."""
    other: dict[float, float | None] = {}
    for delay in (0.0, _bar_seconds(markets)):
        if abs(delay - params.fill_delay_seconds) < 1e-9:
            other[delay] = None
            continue
        p2 = params.model_copy(update={"fill_delay_seconds": delay})
        by, _ = _trades(markets, p2, "vectorized", feats, settings)
        other[delay] = round(sum(t.pnl_usd for ts in by.values() for t in ts), 2)
    return other


def _delay_sensitivity(markets: list[Market], params: BacktestParams, other: dict[float, float | None],
                       pnl_now: float) -> dict[str, Any]:
    bar = _bar_seconds(markets)
    at_signal, later = (pnl_now if other[d] is None else other[d] for d in (0.0, bar))
    return {
        "pnl_fill_at_signal_usd": at_signal,
        "pnl_fill_one_bar_later_usd": later,
        "one_bar_kept_pct": round(100.0 * later / at_signal, 1) if at_signal > 0 else None,
        "bar_seconds": bar,
        "this_run_fill_delay_seconds": params.fill_delay_seconds,
    }


SWEEP_COLUMNS = ("trades", "win_rate_pct", "total_pnl_usd", "apy_pct", "apy_while_invested_pct", "sharpe",
                 "max_drawdown_pct", "exposure_pct")


WARM_UP_FIELDS = ("zscore_window", "basis_smoothing_hours", "funding_exit_hours", "carry_lookback_days")


def warm_up_params(base: BacktestParams, grid: dict[str, list[float]]) -> BacktestParams:
    """``base`` with the longest lookbacks in ``grid``: markets built with it hold the warm-up every combination
    needs (`prepare.warm_up_start`)."""
    longest = {k: max(grid[k]) for k in WARM_UP_FIELDS if grid.get(k)}
    return base.model_copy(update=longest) if longest else base


def sweep_combos(base: BacktestParams, grid: dict[str, list[float]]) -> list[tuple[float, ...]]:
    """Every combination of ``grid``'s values, in grid order (unknown names refused)."""
    unknown = [k for k in grid if k not in BacktestParams.model_fields]
    if unknown:
        raise DataError(f"sweep: unknown parameter(s) {', '.join(unknown)}")
    return list(itertools.product(*(grid[k] for k in grid)))


def sweep_rows(markets: list[Market], base: BacktestParams, keys: list[str], combos: list[tuple[float, ...]],
               progress: Progress | None = None, total: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The summary row of each valid combination (``keys`` = ``combos``), and why the others were refused;
    per-symbol features are computed once per `feature_key` and shared by every combination with that key."""
    refused: list[str] = []
    cache: dict[tuple, dict[str, dict[str, np.ndarray]]] = {}
    rows = []
    for n, values in enumerate(combos, 1):
        named = dict(zip(keys, values, strict=True))
        try:
            params = BacktestParams.model_validate({**base.model_dump(), **named})
        except ValueError as e:  # e.g. an exit threshold above the entry one: not a strategy
            refused.append(f"{named}: {str(e).splitlines()[-1].strip()}")
            continue
        short = [m.symbol for m in markets if not warm_up_covers(m, params)]
        if short:
            raise DataError(f"sweep: {named} needs a longer warm-up before the range than the markets of {', '.join(short)} "
                            "hold: build them with runner.warm_up_params(base, grid)")
        fw = cache.setdefault(feature_key(params), {})
        for m in markets:
            if m.symbol not in fw:
                fw[m.symbol] = features(m, params)
        res = run(markets, params, feats=fw, extras=False)
        rows.append({**named, **{k: res.summary[k] for k in SWEEP_COLUMNS}})
        if progress:
            progress(n, total or len(combos), f"{n}/{total or len(combos)} parameter sets")
    return rows, refused


def sweep(
    markets: list[Market], base: BacktestParams, grid: dict[str, list[float]], progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Every combination of ``grid`` values over ``base``, in this process (`basis_mcp.backtest.parallel` spreads
    the same work over processes or a Dask cluster)."""
    rows, refused = sweep_rows(markets, base, list(grid), sweep_combos(base, grid), progress)
    if not rows:
        raise DataError("sweep: no valid parameter set among the combinations: " + "; ".join(refused[:5]))
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
    symbols = list(symbols)
    settings, facts = with_market_facts(Settings(), data, [base_asset(s) for s in symbols if s.strip()])
    markets = [replace(m, notes=m.notes + tuple(n for n in facts if n.startswith(m.symbol + ":")))
               for m in load_markets(load_any(data, symbols), symbols, start, end, params, settings)]
    return run(markets, params, engine, progress)
