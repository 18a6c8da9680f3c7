"""The backtest engine against a per-row loop and a compiled single pass, on the full BTC + ETH history.

    pip install -e .[bench]            # numba, for the compiled single pass
    python bench/backtest.py           # the default cash-and-carry rules, both playbooks
    python bench/backtest.py --all     # and every strategy against the per-row oracle (minutes)

Three sides run the same rules on the same prepared data (2019-09 → 2026-05, ~115 000 hourly bars),
in this process:

- engine: `run_vectorized` per symbol, building its per-bar features inside the timed call, and
  returning the booked `Trade` list;
- per-row: `run_reference(..., rolling=True)`, the plain loop over every bar with the desk's own
  O(1) rolling z-score (`signals.RollingZScore`) instead of recomputing the 1,080-sample window
  at every bar: what a careful per-row implementation in Python costs;
- compiled: `compiled_loop.py`, the same rules as one numba-compiled pass, O(1) per bar, booking
  each trade's fills, fees and funding as it closes: the limit to compare the engine with.

The first (untimed) call compiles the loop and checks that the three make the same trades (entry
and exit bar, quantity, reason) with the same P&L (1e-6). Then each round runs every side once, in
an order that rotates from round to round, and the medians are compared. Rows: the default rules
(convergence, fills one bar after the signal) and the carry playbook. The last line is the engine's
time over the compiled pass's on the default rules (goal: parity; done at <= 3x).

``--all`` adds the older rows: every strategy and playbook the backtest runs (cash-and-carry and
reverse, both playbooks; calendar spread, contract by contract; cross-exchange on the four venues'
funding; cash-and-carry carry on 5-minute bars), the engine against the per-row *oracle*
(`run_reference`, which recomputes the whole z-score window at every bar by design: it is the
rules' reference, not a fair speed baseline), identical trades asserted.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from basis_mcp.backtest import BacktestParams, prepare, run_reference, run_vectorized
from basis_mcp.backtest.calendar import run_calendar
from basis_mcp.backtest.cross import cross_market, run_cross_reference, run_cross_vectorized
from basis_mcp.clock import parse_time
from basis_mcp.history import SymbolHistory, load_extract

sys.path.insert(0, str(Path(__file__).parent))
try:
    import compiled_loop
except ImportError as e:  # numba missing
    sys.exit(f"bench/backtest.py needs numba for the compiled single pass: pip install -e .[bench] ({e})")

ROUNDS = 7
ORACLE_ROUNDS = 3
START, END = parse_time("2019-09-01"), parse_time("2026-06-01")


def keys(trades) -> list[tuple[int, int, float, str]]:
    return [(t.entry_index, t.exit_index, t.quantity, t.reason) for t in trades]


def timed_rounds(sides: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each side over ``rounds`` rounds; every round runs each side once, the order rotating."""
    names = list(sides)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sides[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def three_sides(hourly: dict[str, SymbolHistory], playbook: str) -> tuple[str, dict[str, float], int, int]:
    p = BacktestParams(playbook=playbook)
    markets = [prepare(h, START, END, p) for h in hourly.values()]
    bars = sum(m.i1 - m.i0 + 1 for m in markets)
    args = [(compiled_loop.params_vector(m, p), compiled_loop.inputs(m)) for m in markets]
    n = 0
    for m, (P, a) in zip(markets, args, strict=True):  # compiles the loop; the three make the same trades
        eng, row, comp = run_vectorized(m, p), run_reference(m, p, rolling=True), compiled_loop.run_compiled(m, p, P, a)
        assert keys(eng) == keys(row) == compiled_loop.trade_keys(comp), f"{m.symbol} {playbook}: the trade lists differ"
        assert np.allclose([t.pnl_usd for t in eng], [t.pnl_usd for t in row], rtol=0, atol=1e-6)
        assert np.allclose([t.pnl_usd for t in eng], comp[4], rtol=0, atol=1e-6)
        n += len(eng)

    def engine() -> None:
        for m in markets:
            run_vectorized(m, p)

    def per_row() -> None:
        for m in markets:
            run_reference(m, p, rolling=True)

    def compiled() -> None:
        for m, (P, a) in zip(markets, args, strict=True):
            compiled_loop.run_compiled(m, p, P, a)

    med = timed_rounds({"engine": engine, "per-row": per_row, "compiled": compiled}, ROUNDS)
    name = f"c&c/{playbook}" + (" (default rules)" if p == BacktestParams() else "")
    print(f"{name:30s} {bars:,} bars, {n} trades identical on all three sides; median of {ROUNDS} interleaved rounds: "
          f"engine {med['engine'] * 1e3:7.2f} ms ({bars / med['engine'] / 1e6:5.1f} M bars/s), "
          f"per-row O(1) loop {med['per-row'] * 1e3:8.1f} ms ({med['per-row'] / med['engine']:.0f}x the engine), "
          f"compiled single pass {med['compiled'] * 1e3:6.2f} ms ({bars / med['compiled'] / 1e6:5.1f} M bars/s; "
          f"engine/compiled {med['engine'] / med['compiled']:.2f}x)")
    return name, med, bars, n


def five_minute(h: SymbolHistory) -> SymbolHistory:
    """The same market on 5-minute bars (12x the rows): each hourly close held for the hour's twelve bars."""
    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, 12)

    keep = h.funding_time <= h.t0 + (h.n * 12 - 1) * 300
    return SymbolHistory(symbol=h.symbol, t0=h.t0, spot=rep(h.spot), perp=rep(h.perp), mark=rep(h.mark),
                         mark_high=rep(h.mark_high), mark_low=rep(h.mark_low), funding_time=h.funding_time[keep],
                         funding_rate=h.funding_rate[keep], mark_is_proxy=rep(h.mark_is_proxy), stale=rep(h.stale), bar_s=300)


def oracle_rows(hourly: dict[str, SymbolHistory]) -> None:
    """Every strategy and playbook: the engine against the per-row oracle (identical trades asserted)."""
    for strategy, playbook in (("cash_and_carry", "convergence"), ("cash_and_carry", "carry"),
                               ("reverse_cash_and_carry", "convergence"), ("reverse_cash_and_carry", "carry"),
                               ("calendar_spread", "convergence"), ("cross_exchange", "carry"),
                               ("cash_and_carry@5m", "carry")):
        strategy, _, bar = strategy.partition("@")
        hist = hourly if not bar else {s: five_minute(h) for s, h in hourly.items()}
        calendar, cross = strategy == "calendar_spread", strategy == "cross_exchange"
        p = BacktestParams(strategy=strategy, playbook=playbook, **({"expected_hold_days": 30, "min_zscore": 0.5} if calendar else {}))
        name = (f"{ {'reverse_cash_and_carry': 'reverse', 'calendar_spread': 'calendar', 'cross_exchange': 'cross'}.get(strategy, 'c&c')}"
                f"/{playbook}" + (f"@{bar}" if bar else ""))
        if calendar:
            vec_run, ref_run = (lambda m, p: run_calendar(m, p, run_vectorized)), (lambda m, p: run_calendar(m, p, run_reference))
        else:
            vec_run, ref_run = run_vectorized, run_reference
        markets = [prepare(h, START, END, p) for h in hist.values()]
        if cross:  # the venues' funding, set up once per symbol outside the timed calls (as prepare() is)
            crossed = {m.symbol: cross_market(m) for m in markets}
            vec_run = lambda m, p, c=crossed: run_cross_vectorized(c[m.symbol], p)  # noqa: E731
            ref_run = lambda m, p, c=crossed: run_cross_reference(c[m.symbol], p)  # noqa: E731
        bars = sum(m.i1 - m.i0 + 1 for m in markets)
        n = 0
        for m in markets:
            v, r = vec_run(m, p), ref_run(m, p)
            assert keys(v) == keys(r), f"{name}: the trade lists differ"
            n += len(v)

        def vec(markets=markets, p=p, run=vec_run) -> None:
            for m in markets:
                run(m, p)

        def ref(markets=markets, p=p, run=ref_run) -> None:
            for m in markets:
                run(m, p)

        med = timed_rounds({"engine": vec, "oracle": ref}, ORACLE_ROUNDS)
        print(f"{name:30s} {bars:,} bars, {n} trades identical; median of {ORACLE_ROUNDS} interleaved rounds: per-row oracle "
              f"{med['oracle'] * 1e3:9.1f} ms, engine {med['engine'] * 1e3:7.2f} ms ({med['oracle'] / med['engine']:.0f}x)")


def main() -> None:
    hourly = load_extract(symbols=["BTC", "ETH"])
    if "--all" in sys.argv[1:]:
        oracle_rows(hourly)
    three_sides(hourly, "carry")
    name, med, bars, n = three_sides(hourly, "convergence")
    print(f"backtest: {med['engine'] / med['compiled']:.2f}x the compiled single pass's time, the engine on the default "
          f"cash-and-carry rules over full BTC+ETH hourly ({bars:,} bars, {n} identical trades; engine "
          f"{med['engine'] * 1e3:.2f} ms, compiled {med['compiled'] * 1e3:.2f} ms, per-row O(1) loop "
          f"{med['per-row'] * 1e3:.0f} ms = {med['per-row'] / med['engine']:.0f}x the engine)")


if __name__ == "__main__":
    main()
