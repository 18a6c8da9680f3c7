"""The calendar spread: the paper desk, replaying the shipped data, makes the calendar backtest's trades.

A scripted agent trades the paper desk (`Desk.open_replay` over the shipped extract: the desk the MCP
tools drive, as in the cash-and-carry parity tests of `tests/test_backtest.py`) through a window where
the calendar backtest trades. It acts where the backtest's rules signal: it enters at the backtest's
entry signals, naming no contract (the desk chooses the quarterly, by the same rule the backtest
applies), with the backtest's expected hold; it exits at the backtest's z-score-reversion and
convergence signals, which are the agent's own rules (the desk has no calendar z-score). Every other
exit is the desk's watchdog's own decision: here the funding reversal (ETH, September 2020), which the
watchdog reads on the quarterly's premium as the backtest does. The desk's pre-trade checks apply
(the expected net after costs, with the desk's own funding assumption, must be positive).

The desk must make the same trades: the same contract, entry and exit fill times and exit reasons, and
P&L within the bar the cash-and-carry parity tests set (0.5 %). Measured: they agree far inside it, to
float rounding (largest gap per trade 5e-14 USD on P&Ls of −$16.53, −$2.74 and +$11.53; the checks
below use 0.5 % and $0.01). There is no model gap to
explain: the desk's paper future fills at the same SIMULATED price (`basis_mcp.dated`, the last 90
days' funding), its legs pay the perp's taker fee and slippage model as the backtest books them, and
the long perp pays every settlement at the mark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from basis_mcp.backtest import BacktestParams, run_reference, run_vectorized
from basis_mcp.backtest.calendar import run_calendar
from basis_mcp.backtest.runner import load_markets
from basis_mcp.clock import parse_time
from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.history import load_extract

pytestmark = pytest.mark.anyio

AGENT_EXITS = {"zscore_reversion", "convergence"}  # the strategy's rules, applied by the agent; the rest are the watchdog's


async def desk_replay(db: Path, p: BacktestParams, start: str, end: str, signals: list[tuple[float, str, str]]) -> list[dict]:
    """Replay ``start`` → ``end`` on the paper desk, acting at each ``(signal time, "enter" | "exit", symbol)``;
    the positions it made, each with the quarterly it sold."""
    settings = Settings(max_position_notional_usd=p.notional_usd, default_leverage=p.leverage, capital_usd=p.capital_usd,
                        zscore_window=p.zscore_window, max_hold_days=p.max_hold_days, fill_delay_seconds=p.fill_delay_seconds,
                        expiry_exit_hours=p.expiry_exit_hours)
    desk = Desk.open_replay(settings, db, start=start)
    await desk.start()
    try:
        for n, (t, action, sym) in enumerate(sorted(signals)):
            if t > desk.now():
                await desk.advance((t - desk.now()) / 3600.0)
            assert desk.now() == t
            pos = desk.book.position_for_symbol(sym)
            if action == "enter":
                assert pos is None, f"{sym}: still open at the backtest's next entry signal"
                await desk.enter(sym, p.notional_usd, p.leverage, f"e{n}", p.strategy, p.expected_hold_days)
            else:
                assert pos is not None and pos["status"] == "open", f"{sym}: closed before the backtest's exit signal"
                await desk.exit(pos["id"], f"x{n}", reason="agent")
        await desk.advance((parse_time(end) - desk.now()) / 3600.0)
        rows = [dict(r) for r in desk.store.q("SELECT * FROM positions WHERE status != 'failed' ORDER BY id")]
        for r in rows:
            r["contract"] = desk.store.one("SELECT symbol FROM legs WHERE position_id = ? AND market = 'future'", (r["id"],))["symbol"]
        return rows
    finally:
        desk.close()


@pytest.mark.parametrize(("symbols", "start", "end", "params"), [
    # the README's rules (30-day expected hold, z >= 0.5), fills one bar late: both exit on the z-score's reversion
    (["BTC", "ETH"], "2024-01-28T00:00:00Z", "2024-02-14T00:00:00Z",
     {"expected_hold_days": 30, "min_zscore": 0.5, "fill_delay_seconds": 3600}),
    # a 7-day expected hold, fills at the signal: the watchdog closes it on the funding reversal, days before expiry
    (["ETH"], "2020-09-14T00:00:00Z", "2020-09-24T00:00:00Z", {"expected_hold_days": 7, "min_zscore": 0.5, "fill_delay_seconds": 0}),
], ids=["z-exit-delay1h", "watchdog-exit-nodelay"])
async def test_the_desk_makes_the_calendar_backtests_trades(tmp_path: Path, symbols: list[str], start: str, end: str,
                                                            params: dict) -> None:
    p = BacktestParams(strategy="calendar_spread", **params)
    trades = []
    for m in load_markets(load_extract(symbols=symbols), symbols, start, end, p):
        got = run_calendar(m, p, run_vectorized)
        assert [(t.contract, t.entry_index, t.exit_index, t.reason) for t in got] == \
               [(t.contract, t.entry_index, t.exit_index, t.reason) for t in run_calendar(m, p, run_reference)]
        trades += got
    assert len(trades) == len(symbols), "the window must trade"
    assert any(t.reason not in AGENT_EXITS for t in trades) == (p.fill_delay_seconds == 0)  # the second case: the watchdog's
    delay = p.fill_delay_seconds
    signals = [(parse_time(t.entry_time) - delay, "enter", t.symbol) for t in trades]
    signals += [(parse_time(t.exit_time) - delay, "exit", t.symbol) for t in trades if t.reason in AGENT_EXITS]
    rows = await desk_replay(tmp_path / "calendar.db", p, start, end, signals)

    desk = sorted((r["symbol"], r["contract"], r["opened_at"], r["closed_at"], r["close_reason"].replace("watchdog: ", ""))
                  for r in rows)
    bt = sorted((t.symbol, t.contract, parse_time(t.entry_time), parse_time(t.exit_time),
                 "agent" if t.reason in AGENT_EXITS else t.reason) for t in trades)
    assert desk == bt
    assert {r["strategy"] for r in rows} == {"calendar_spread"}
    by_entry = {(r["symbol"], r["opened_at"]): r for r in rows}
    for t in trades:
        r = by_entry[(t.symbol, parse_time(t.entry_time))]
        assert r["quantity"] == pytest.approx(t.quantity, abs=1e-12)
        assert r["realized_pnl_usd"] == pytest.approx(t.pnl_usd, rel=0.005, abs=0.01)  # the parity bar: 0.5 %
        assert r["realized_pnl_usd"] == pytest.approx(t.pnl_usd, abs=0.01)  # in fact to the cent
