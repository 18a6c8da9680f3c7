"""Features are built over the requested span and the warm-up its rules need, not the whole history
(issue 14, item 2): the same trades, to the cent, as the reference that keeps every bar from the first."""

from __future__ import annotations

import numpy as np
import pytest

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.runner import load_markets, run
from basis_mcp.history import load_extract

SPANS = [
    ("convergence", "cash_and_carry", ["BTC", "ETH"], "2021-02-01", "2021-06-01", {}),
    ("carry", "cash_and_carry", ["BTC", "ETH"], "2024-01-10", "2024-06-01", {}),
    ("carry", "reverse_cash_and_carry", ["ETH"], "2022-06-01", "2022-09-01", {}),
    ("carry", "reverse_cash_and_carry", ["SOL"], "2025-03-20", "2025-10-20", {}),  # SOL's history is short: clamped
    ("convergence", "calendar_spread", ["BTC", "ETH"], "2024-01-01", "2024-06-01", {"min_zscore": 0.5, "expected_hold_days": 30}),
]


@pytest.fixture(scope="module")
def histories():
    return load_extract()


@pytest.mark.parametrize(("playbook", "strategy", "symbols", "start", "end", "extra"), SPANS)
def test_the_span_and_its_warm_up_trade_as_the_whole_history(histories, playbook, strategy, symbols, start, end, extra):
    p = BacktestParams(playbook=playbook, strategy=strategy, **extra)
    cut = load_markets(histories, symbols, start, end, p)
    whole = load_markets(histories, symbols, start, end, p, whole_history=True)
    for c, w in zip(cut, whole, strict=True):
        assert c.t.size < w.t.size and c.t[c.i0] == w.t[w.i0] and c.t[c.i1] == w.t[w.i1]
        if c.symbol != "SOL":
            assert c.t.size < (c.i1 - c.i0 + 1) + 24 * 60  # the warm-up is weeks (the 45-day z window), not years
    a, b = run(cut, p), run(whole, p)
    key = [(t.symbol, t.entry_time, t.exit_time, t.reason, t.quantity) for t in a.trades]
    assert key == [(t.symbol, t.entry_time, t.exit_time, t.reason, t.quantity) for t in b.trades]
    assert len(key) >= 2, "the span must trade"
    for x, y in zip(a.trades, b.trades, strict=True):
        assert x.pnl_usd == pytest.approx(y.pnl_usd, abs=1e-9) and x.funding_usd == pytest.approx(y.funding_usd, abs=1e-9)
    assert a.summary["total_pnl_usd"] == b.summary["total_pnl_usd"]
    assert np.allclose(a.equity, b.equity, rtol=0, atol=1e-8)


def test_features_built_on_threads_are_the_ones_built_in_order(histories, monkeypatch):
    """Many symbols: one thread per core builds whole symbols' features (issue 14, item 3); the arrays are
    the same, bit for bit, and so is the run."""
    from basis_mcp.backtest import runner

    p = BacktestParams()
    markets = load_markets(histories, ["BTC", "ETH", "SOL"], "2025-03-01", "2025-09-01", p)
    in_order = runner.all_features(markets, p, workers=1)
    monkeypatch.setattr(runner, "THREADED_MIN_BARS", 0)
    threaded = runner.all_features(markets, p, workers=3)
    assert in_order.keys() == threaded.keys() == {"BTC", "ETH", "SOL"}
    for sym, f in in_order.items():
        assert f.keys() == threaded[sym].keys()
        for k, a in f.items():
            assert np.array_equal(a, threaded[sym][k], equal_nan=True), (sym, k)
    a, b = run(markets, p, feats=in_order), run(markets, p)
    assert [t.pnl_usd for t in a.trades] == [t.pnl_usd for t in b.trades] and a.summary == b.summary
