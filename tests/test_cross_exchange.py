"""Cross-exchange basis in the backtest: short the perp where funding is richest, long it where it is
cheapest, on the shipped real funding of Binance, Bybit, Gate (8 h) and dYdX (1 h). Both engines
agree trade for trade; a trade's funding is each venue's own settlements; bad input is refused."""

from __future__ import annotations

import pytest
from mcp import Client
from pydantic import ValidationError

from basis_mcp.backtest import BacktestParams
from basis_mcp.backtest.cross import VENUE_TAKER_FEE, cross_market, run_cross_reference, run_cross_vectorized
from basis_mcp.backtest.runner import load_markets, run
from basis_mcp.clock import parse_time
from basis_mcp.history import load_extract, load_funding_venues
from tests.conftest import call, call_error

pytestmark = pytest.mark.anyio

PARAMS = [
    BacktestParams(strategy="cross_exchange", playbook="carry"),
    BacktestParams(strategy="cross_exchange", playbook="carry", fill_delay_seconds=0, carry_lookback_days=3,
                   carry_entry_8h_pct=0.01, carry_exit_8h_pct=0.0, carry_max_hold_days=60, carry_expected_hold_days=30),
    BacktestParams(strategy="cross_exchange", playbook="carry", venues=("binance", "dydx"), leverage=3,
                   fill_delay_seconds=3 * 3600),
]


@pytest.fixture(scope="module")
def markets():
    h = load_extract(symbols=["BTC", "ETH"])
    return {sym: load_markets(h, [sym], "2021-06-01", "2024-01-01", PARAMS[0])[0] for sym in ("BTC", "ETH")}


@pytest.mark.parametrize("params", PARAMS, ids=["default", "fast", "binance-dydx"])
def test_both_engines_agree_trade_for_trade(markets, params: BacktestParams) -> None:
    total = 0
    for m in markets.values():
        cm = cross_market(m, params.venues)
        v, r = run_cross_vectorized(cm, params), run_cross_reference(cm, params)
        assert [(t.entry_index, t.exit_index, t.reason, t.contract) for t in v] == \
               [(t.entry_index, t.exit_index, t.reason, t.contract) for t in r]
        for a, b in zip(v, r, strict=True):
            for f in ("funding_usd", "fees_usd", "slippage_usd", "pnl_usd", "settlements"):
                assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-6)
            assert a.pnl_usd == pytest.approx(a.funding_usd - a.fees_usd - a.slippage_usd, abs=1e-9)
            assert a.strategy == "cross_exchange" and a.basis_pnl_usd == 0.0
        total += len(v)
    assert total >= 10


_HIST: dict = {}


def _history(sym: str):
    if sym not in _HIST:
        _HIST.update(load_extract(symbols=["BTC", "ETH"]))
    return _HIST[sym]


def test_a_trades_funding_is_each_venues_own_settlements_and_fees_each_venues_own(markets) -> None:
    p = PARAMS[0]
    m = markets["BTC"]
    trades = run_cross_vectorized(cross_market(m), p)
    data = load_funding_venues()
    for t in trades[:10]:
        short_v, long_v = t.contract.replace("short ", "").split(" / long ")
        t0, t1 = parse_time(t.entry_time), parse_time(t.exit_time)
        total, n = 0.0, 0
        for venue, sign in ((short_v, 1.0), (long_v, -1.0)):
            s = data[(venue, "BTC")]
            for T, rate in zip(s.time.tolist(), s.rate.tolist(), strict=True):
                if t0 < T <= t1:
                    mark = float(m.mark[int((T - m.t[0]) // 3600)])
                    total += sign * t.quantity * mark * rate
                    n += 1
        assert t.funding_usd == pytest.approx(total, abs=1e-9) and t.settlements == n
        notional_in, notional_out = t.quantity * m.mark[t.entry_index], t.quantity * m.mark[t.exit_index]
        fee_rate = VENUE_TAKER_FEE[short_v] + VENUE_TAKER_FEE[long_v]
        assert t.fees_usd == pytest.approx((notional_in + notional_out) * fee_rate, rel=1e-12)
    # dYdX (1 h settlements, low funding) is the usual cheap leg of 2022-23
    assert any("long dydx" in t.contract for t in trades)


def test_the_equity_curve_ends_at_the_trades_pnl_and_carries_funding_while_open(markets) -> None:
    p = PARAMS[0]
    ms = list(markets.values())
    res = run(ms, p, extras=False)
    assert len(res.trades) >= 10
    assert res.equity[-1] - p.capital_usd == pytest.approx(sum(t.pnl_usd for t in res.trades), abs=0.01)
    # over a long open trade the curve rises with the differential it receives, not only at the exit
    t = max(res.trades, key=lambda x: x.hold_hours)
    i = int((parse_time(t.entry_time) - res.times[0]) // 3600)
    j = int((parse_time(t.exit_time) - res.times[0]) // 3600)
    others = [x for x in res.trades if x is not t and parse_time(x.entry_time) < res.times[j] and parse_time(x.exit_time) > res.times[i]]
    if not others and t.funding_usd > 0:
        mid = (i + j) // 2
        assert res.equity[mid] > res.equity[i]


def test_bad_cross_exchange_input_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="cross_exchange trades the carry playbook only"):
        BacktestParams(strategy="cross_exchange")
    with pytest.raises(ValidationError, match="needs two different venues"):
        BacktestParams(strategy="cross_exchange", playbook="carry", venues=("bybit", "bybit"))
    with pytest.raises(ValidationError, match="at least 2"):
        BacktestParams(strategy="cross_exchange", playbook="carry", venues=("bybit",))
    p = BacktestParams(strategy="cross_exchange", playbook="carry", notional_usd=100_000, leverage=1)
    m = load_markets({"BTC": _history("BTC")}, ["BTC"], "2022-01-01", "2022-03-01", p)[0]
    with pytest.raises(ValueError, match="per-venue cap of 40%"):
        run_cross_vectorized(cross_market(m), p)
    with pytest.raises(ValueError, match="needs funding from two venues"):
        cross_market(m, ("binance", "kraken"))


async def test_the_backtest_tool_runs_cross_exchange(make_server) -> None:
    async with Client(make_server()) as client:
        out = await call(client, "backtest", {"symbols": ["BTC", "ETH"], "start": "2022-01-01", "end": "2024-01-01",
                                              "strategy": "cross_exchange", "playbook": "carry"})
        assert out["trades"] and all(t["strategy"] == "cross_exchange" and " / long " in t["contract"] for t in out["trades"])
        assert out["summary"]["total_pnl_usd"] == pytest.approx(sum(t["pnl_usd"] for t in out["trades"]), abs=0.05)
        err = await call_error(client, "backtest", {"symbols": ["BTC"], "strategy": "cross_exchange"})
        assert "playbook" in err and "carry" in err
        err = await call_error(client, "backtest", {"symbols": ["BTC"], "strategy": "cross_exchange", "playbook": "carry",
                                                    "venues": ["okx", "bybit"]})
        assert "venues" in err
