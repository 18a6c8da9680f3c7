"""The backtest: two engines that agree trade for trade, and agree with the paper desk."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from basis_mcp.backtest import BacktestParams, prepare, run_reference, run_vectorized
from basis_mcp.backtest.runner import load_markets, run, sweep
from basis_mcp.clock import parse_time
from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.errors import Rejected
from basis_mcp.history import DataError, load_extract
from basis_mcp.loaders import load_freqtrade_dir
from tests.conftest import REPO

pytestmark = pytest.mark.anyio

PARAM_SETS = [
    BacktestParams(),
    BacktestParams(fill_delay_seconds=0),
    BacktestParams(playbook="carry"),
    BacktestParams(playbook="carry", fill_delay_seconds=0, carry_lookback_days=3, carry_entry_8h_pct=0.01,
                   carry_exit_8h_pct=0.0, carry_max_hold_days=60, carry_expected_hold_days=30),
    BacktestParams(playbook="carry", fill_delay_seconds=3 * 3600, basis_stop_sigmas=0.5, basis_smoothing_hours=2),
    BacktestParams(min_zscore=1.2, fill_delay_seconds=2 * 3600, basis_stop_sigmas=0.5, flip_sigmas=0.2,
                   funding_exit_8h_pct=0.005, funding_exit_hours=8, basis_smoothing_hours=3),
    BacktestParams(min_zscore=2.0, min_basis_pct=0.08),
    BacktestParams(min_zscore=1.0, exit_zscore=-0.5, expected_hold_days=14),
    BacktestParams(min_zscore=2.5, exit_basis_pct=0.02, max_hold_days=10, leverage=3),
    BacktestParams(min_basis_pct=0.03, min_zscore=1.2, exit_zscore=0.3, zscore_window=500, notional_usd=20_000),
    BacktestParams(min_zscore=1.8, exit_zscore=-1.0, expected_hold_days=3, spot_fee=0.00075, perp_fee=0.0002,
                   slippage_multiplier=2.0),
]


@pytest.fixture(scope="module")
def histories():
    return load_extract(symbols=["BTC", "ETH"])


def key(t):
    return (t.symbol, t.entry_index, t.exit_index, t.reason, t.quantity)


@pytest.mark.parametrize("params", PARAM_SETS, ids=lambda p: f"{p.playbook}-z{p.min_zscore}-b{p.min_basis_pct}-w{p.zscore_window}"
                         f"-d{p.fill_delay_seconds:g}-s{p.basis_stop_sigmas:g}")
def test_vectorised_and_reference_engines_agree_trade_for_trade(histories, params: BacktestParams) -> None:
    total = 0
    reasons: set[str] = set()
    # the default sets over the whole span; the variants over two years each (the reference loop is slow by design)
    full = params in (BacktestParams(), BacktestParams(playbook="carry"))
    start, end = ("2020-01-01", "2026-05-16") if full else ("2021-01-01", "2023-01-01")
    for sym in ("BTC", "ETH"):
        m = prepare(histories[sym], parse_time(start), parse_time(end), params)
        v, r = run_vectorized(m, params), run_reference(m, params)
        assert [key(t) for t in v] == [key(t) for t in r]
        for a, b in zip(v, r, strict=True):
            for f in ("basis_pnl_usd", "funding_usd", "fees_usd", "slippage_usd", "pnl_usd"):
                assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-6)
            assert a.settlements == b.settlements
            assert a.pnl_usd == pytest.approx(a.basis_pnl_usd + a.funding_usd - a.fees_usd - a.slippage_usd, abs=1e-6)
            reasons.add(a.reason)
        total += len(v)
    assert total > (4 if params.playbook == "carry" else 10)  # the rules do trade
    if params.basis_stop_sigmas < 1:  # the tight sets reach the server's own exits too, not only the strategy's
        assert reasons & {"basis_blowout", "basis_inverted", "funding_reversal", "carry_funding_exit"}, reasons


def test_trade_economics_are_the_desks(histories) -> None:
    """One trade recomputed by hand: fills from the cost model, funding = q × mark × rate."""
    p = BacktestParams()
    m = prepare(histories["BTC"], parse_time("2020-01-01"), parse_time("2026-05-16"), p)
    t = next(t for t in run_vectorized(m, p) if t.settlements >= 2)
    i, j, q = t.entry_index, t.exit_index, t.quantity
    c = m.costs
    buy = c.spot.fill_price(m.spot[i], "buy", q * m.spot[i])
    sell_p = c.perp.fill_price(m.perp[i], "sell", q * m.perp[i])
    buy_p = c.perp.fill_price(m.perp[j], "buy", q * m.perp[j])
    sell = c.spot.fill_price(m.spot[j], "sell", q * m.spot[j])
    fees = q * (buy * c.spot.taker_fee + sell_p * c.perp.taker_fee + buy_p * c.perp.taker_fee + sell * c.spot.taker_fee)
    ft = m.f_time
    paid = [(T, r) for T, r in zip(ft, m.f_rate, strict=True) if m.t[i] < T <= m.t[j]]
    funding = sum(q * m.mark[m.index_at(T)] * r for T, r in paid)
    assert len(paid) == t.settlements
    assert t.fees_usd == pytest.approx(fees) and t.funding_usd == pytest.approx(funding)
    assert t.pnl_usd == pytest.approx(q * (sell - buy) + q * (sell_p - buy_p) - fees + funding)


# ----------------------------------------------------------------------------- parity with the desk


async def desk_replay(db: Path, symbols: list[str], start: str, end: str, p: BacktestParams) -> list[dict]:
    """A scripted agent with the backtest's rules trades the paper desk hour by hour; the desk's
    own pre-trade checks and watchdog apply, exactly as for any agent. convergence: the agent
    exits on convergence or z reversion; carry: the agent tries to enter whenever it is flat and
    the server's carry rule and watchdog do the rest."""
    settings = Settings(
        max_position_notional_usd=p.notional_usd, default_leverage=p.leverage, max_leverage=max(p.leverage, 3.0),
        zscore_window=p.zscore_window, max_hold_days=p.max_hold_days, capital_usd=p.capital_usd,
        fill_delay_seconds=p.fill_delay_seconds, borrow_scenario=p.borrow_scenario,
    )
    d = p.direction  # the reverse trade reads the basis and its z-score mirrored
    desk = Desk.open_replay(settings, db, start=start)
    await desk.start()
    t_end = parse_time(end)
    n = 0
    while True:
        last_bar = desk.now() >= t_end  # the range includes its end bar: exits only there, then close out
        closed_this_bar = {r["symbol"] for r in desk.store.q("SELECT symbol FROM positions WHERE closed_at = ?", (desk.now(),))}
        for sym in symbols:
            snap = desk.feed.snapshot(sym)
            if snap.spot_time != snap.now or snap.perp_time != snap.now:  # the agent only acts on fresh bars
                continue
            b = d * snap.basis_pct
            z = desk.compute_zscore(sym, p.zscore_window).zscore
            z = None if z is None else d * z
            pos = desk.book.position_for_symbol(sym)
            if pos is not None:
                if pos["status"] != "open" or pos["opened_at"] >= desk.now():
                    continue  # orders resting, or it filled on this bar: decided from the next one (as the backtest does)
                if p.playbook == "convergence" and (b <= p.exit_basis_pct or (z is not None and z <= p.exit_zscore)):
                    why = "convergence" if b <= p.exit_basis_pct else "zscore_reversion"
                    await desk.exit(pos["id"], f"x{pos['id']}", reason=why)
            elif not last_bar and sym not in closed_this_bar:
                if p.playbook == "convergence" and not (z is not None and b >= p.min_basis_pct and z >= p.min_zscore):
                    continue
                n += 1
                hold = p.carry_expected_hold_days if p.playbook == "carry" else p.expected_hold_days
                try:
                    await desk.enter(sym, p.notional_usd, p.leverage, f"e{n}", p.strategy, hold, playbook=p.playbook)
                except Rejected:
                    pass  # the desk's guardrails said no (the backtest applies the same rules)
        if last_bar:
            break
        await desk.advance(1)
    desk.settings = desk.settings.model_copy(update={"fill_delay_seconds": 0.0})  # the range's end closes at its last bar
    for r in desk.store.q("SELECT id FROM positions WHERE status = 'open'"):
        await desk.exit(r["id"], f"end{r['id']}", reason="end_of_range")
    rows = [dict(r) for r in desk.store.q("SELECT * FROM positions WHERE status != 'failed' ORDER BY id")]
    topups = [json.loads(r["args_json"]) for r in desk.store.q(
        "SELECT args_json FROM audit WHERE kind = 'alert' AND name IN ('liquidation_distance', 'margin_ratio_below_150')")]
    desk.close()
    desk_replay.topups = topups  # type: ignore[attr-defined]  # the watchdog's margin top-ups, for the tests that read them
    return rows


@pytest.mark.parametrize(("playbook", "start", "end", "delay", "notional"), [
    ("convergence", "2021-01-01T00:00:00Z", "2021-04-01T00:00:00Z", 0, 5_000),
    ("carry", "2022-10-15T00:00:00Z", "2023-01-15T00:00:00Z", 0, 5_000),  # out when funding turned in November, back in December
    ("convergence", "2021-01-01T00:00:00Z", "2021-02-15T00:00:00Z", 3600, 5_000),  # orders rest an hour, as in the backtest
    # $25k shorts through the 2020-21 rally: margin top-ups until the $100k book cannot pay one, then forced closes
    ("carry", "2020-11-20T00:00:00Z", "2021-01-10T00:00:00Z", 0, 25_000),
])
async def test_desk_replay_agrees_with_the_backtest(tmp_path: Path, histories, playbook: str, start: str, end: str,
                                                    delay: int, notional: float) -> None:
    p = BacktestParams(playbook=playbook, fill_delay_seconds=delay, notional_usd=notional)
    rows = await desk_replay(tmp_path / "parity.db", ["BTC", "ETH"], start, end, p)
    markets = load_markets(histories, ["BTC", "ETH"], start, end, p)
    bt = run(markets, p, extras=False)
    assert len(bt.trades) >= (10 if playbook == "convergence" else 3), "the period must trade"
    if notional > 5_000:
        assert bt.summary["margin"]["forced_closes"] >= 1 and bt.summary["margin"]["margin_topups"] >= 5
    desk_trades = sorted((r["symbol"], r["opened_at"], r["closed_at"]) for r in rows)
    bt_trades = sorted((t.symbol, parse_time(t.entry_time), parse_time(t.exit_time)) for t in bt.trades)
    assert desk_trades == bt_trades
    reasons = {(r["symbol"], r["opened_at"]): r["close_reason"].replace("watchdog: ", "") for r in rows}
    for t in bt.trades:
        assert reasons[(t.symbol, parse_time(t.entry_time))] == t.reason
    assert {r["playbook"] for r in rows} == {playbook}
    desk_pnl = sum(r["realized_pnl_usd"] for r in rows)
    bt_pnl = sum(t.pnl_usd for t in bt.trades)
    assert desk_pnl == pytest.approx(bt_pnl, rel=0.005)  # the bar: within 0.5 %
    assert desk_pnl == pytest.approx(bt_pnl, abs=0.01)  # in fact to the cent


@pytest.mark.parametrize(("playbook", "symbols", "start", "end", "leverage", "notional"), [
    ("carry", ["BTC", "ETH"], "2022-08-20T00:00:00Z", "2022-10-05T00:00:00Z", 2, 5_000),  # ETH around the Merge: exits, stops
    ("convergence", ["SOL"], "2025-10-05T00:00:00Z", "2025-10-20T00:00:00Z", 2, 5_000),  # the 2025-10-10 dislocation
    # $25k at 3x through ETH's +20 % of June-July 2022: the borrowed spot's collateral is topped up
    ("carry", ["ETH"], "2022-06-10T00:00:00Z", "2022-07-15T00:00:00Z", 3, 25_000),
])
async def test_desk_replay_agrees_with_the_backtest_for_the_reverse_trade(tmp_path: Path, playbook: str, symbols: list[str],
                                                                          start: str, end: str, leverage: float,
                                                                          notional: float) -> None:
    """The desk's borrowed-spot leg, hourly modelled borrow, margin top-ups and mirrored rules against
    the backtest's: the same trades, closed for the same reasons, P&L to the cent."""
    p = BacktestParams(strategy="reverse_cash_and_carry", playbook=playbook, fill_delay_seconds=0, leverage=leverage,
                       notional_usd=notional)
    rows = await desk_replay(tmp_path / "parity.db", symbols, start, end, p)
    markets = load_markets(load_extract(symbols=symbols), symbols, start, end, p)
    bt = run(markets, p, extras=False)
    assert bt.trades and all(t.borrow_usd < 0 for t in bt.trades), "the period must trade"
    assert sorted((r["symbol"], r["opened_at"], r["closed_at"]) for r in rows) == \
        sorted((t.symbol, parse_time(t.entry_time), parse_time(t.exit_time)) for t in bt.trades)
    reasons = {(r["symbol"], r["opened_at"]): r["close_reason"].replace("watchdog: ", "") for r in rows}
    assert all(reasons[(t.symbol, parse_time(t.entry_time))] == t.reason for t in bt.trades)
    assert sum(r["realized_pnl_usd"] for r in rows) == pytest.approx(sum(t.pnl_usd for t in bt.trades), abs=0.01)
    desk_topups = desk_replay.topups  # type: ignore[attr-defined]
    assert len(desk_topups) == bt.summary["margin"]["margin_topups"]
    assert sum(t["added_usd"] for t in desk_topups) == pytest.approx(bt.summary["margin"]["margin_added_usd"], rel=0.01)
    if notional > 5_000:
        assert len(desk_topups) >= 2


async def test_replay_orders_rest_until_the_fill_delay_has_passed(tmp_path: Path) -> None:
    """With fill_delay_seconds set, orders rest until the clock reaches the first fresh bar that much
    later; no call sees a price before the clock does."""
    settings = Settings(fill_delay_seconds=3600)
    desk = Desk.open_replay(settings, tmp_path / "d.db", start="2024-03-01T00:00:00Z")
    await desk.start()
    out = await desk.enter("BTC", 4000, None, "d1", "cash_and_carry")
    assert out.position.status == "opening" and out.position.fills == [] and out.fills_at == "2024-03-01T01:00:00Z"
    assert desk.now() == parse_time("2024-03-01T00:00:00Z")
    await desk.advance(1)
    later = desk.feed.snapshot("BTC")
    row = desk.book.position_for_symbol("BTC")
    assert row["status"] == "open" and row["opened_at"] == parse_time("2024-03-01T01:00:00Z")
    fills = {f["market"]: f for f in desk.book.fills(row["id"])}
    assert fills["spot"]["mid_price"] == later.spot and fills["perp"]["mid_price"] == later.perp
    assert any(a.rule == "entry_filled" for a in desk.pop_alerts())
    out = await desk.exit(row["id"], "d1-x")
    assert out.position.status == "closing" and out.fills_at == "2024-03-01T02:00:00Z"
    await desk.advance(1)
    assert desk.store.one("SELECT status FROM positions WHERE id = ?", (row["id"],))["status"] == "closed"
    desk.close()


# ----------------------------------------------------------------------------- data, results, bad input


def test_results_are_complete_and_consistent(histories) -> None:
    p = BacktestParams()
    res = run(load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p), p)
    s = res.summary
    assert s["trades"] == len(res.trades)
    assert s["total_pnl_usd"] == pytest.approx(s["basis_pnl_usd"] + s["funding_usd"] - s["fees_usd"] - s["slippage_usd"], abs=0.05)
    assert res.equity[-1] == pytest.approx(p.capital_usd + s["total_pnl_usd"], abs=0.05)
    assert 0 <= s["exposure_pct"] <= 100 and s["max_drawdown_pct"] >= 0 and s["sharpe"] is not None
    assert sum(y["trades_closed"] for y in res.by_year) == s["trades"]
    assert sum(y["pnl_usd"] for y in res.by_year) == pytest.approx(s["total_pnl_usd"], abs=0.05)  # marked to market
    assert sum(y["pnl_closed_usd"] for y in res.by_year) == pytest.approx(s["total_pnl_usd"], abs=0.05)
    assert sum(y["always_on_pnl_usd"] for y in res.by_year) == pytest.approx(res.always_on["total_pnl_usd"], abs=0.05)
    assert sum(s["exit_reasons"].values()) == s["trades"]
    sens = res.sensitivity
    assert sens["pnl_fill_one_bar_later_usd"] == s["total_pnl_usd"]  # the default fills one bar after the signal
    p0 = BacktestParams(fill_delay_seconds=0)
    assert sens["pnl_fill_at_signal_usd"] == run(load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p0), p0,
                                                 extras=False).summary["total_pnl_usd"]
    assert set(res.by_symbol) == {"BTC", "ETH"}
    assert res.gaps["BTC"] and all(n >= 1 for _, n in res.gaps["BTC"])  # the 2020-2023 outages are reported
    out = res.to_json()
    json.dumps(out)
    assert out["trades"][0]["entry_time"].endswith("Z")


def test_sweep_covers_every_valid_combination(histories) -> None:
    p = BacktestParams()
    markets = load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p)
    rows = sweep(markets, p, {"min_zscore": [1.0, 1.5, 2.0], "exit_zscore": [0.0, 1.2]})
    assert len(rows) == 5  # (1.0, 1.2) is not a strategy: exit above entry
    for r in rows:
        single = run(markets, p.model_copy(update={"min_zscore": r["min_zscore"], "exit_zscore": r["exit_zscore"]}))
        assert r["trades"] == single.summary["trades"] and r["total_pnl_usd"] == single.summary["total_pnl_usd"]


def test_a_sweep_over_what_the_features_read_equals_single_runs() -> None:
    """Found in review: the sweep shared features per z-score window only, so a grid over the smoothing
    window, the vol breaker or the carry lookback reused the first set's arrays for every other set."""
    p = BacktestParams(playbook="carry")
    markets = load_markets(load_extract(), ["BTC", "ETH"], "2022-06-01", "2022-12-01", p)
    grid = {"basis_smoothing_hours": [2.0, 8.0], "vol_limit_pct": [1.0, 5.0], "carry_lookback_days": [3.0, 14.0]}
    rows = sweep(markets, p, grid)
    assert len(rows) == 8
    seen = set()
    for r in rows:
        single = run(markets, p.model_copy(update={k: r[k] for k in grid}), extras=False)
        assert (r["trades"], r["total_pnl_usd"]) == (single.summary["trades"], single.summary["total_pnl_usd"]), r
        seen.add((r["trades"], r["total_pnl_usd"]))
    assert len(seen) > 2  # the parameters do change the outcome on this span (else the test proves nothing)


def test_a_sweep_over_longer_windows_holds_their_warm_up_or_says_so(histories) -> None:
    """Found in review: markets hold the warm-up of the parameters they were built with; a sweep over a longer
    z-score window ran on too short a past and disagreed with a single run of the same settings."""
    from basis_mcp.backtest.runner import warm_up_params

    p, grid = BacktestParams(), {"zscore_window": [1080, 4320]}
    markets = load_markets(histories, ["BTC"], "2021-02-01", "2021-06-01", warm_up_params(p, grid))
    for r in sweep(markets, p, grid):
        q = p.model_copy(update={"zscore_window": r["zscore_window"]})
        single = run(load_markets(histories, ["BTC"], "2021-02-01", "2021-06-01", q), q, extras=False)
        assert (r["trades"], r["total_pnl_usd"]) == (single.summary["trades"], single.summary["total_pnl_usd"]), r
    with pytest.raises(DataError, match="zscore_window.*4320.*warm-up"):
        sweep(load_markets(histories, ["BTC"], "2021-02-01", "2021-06-01", p), p, grid)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exit_basis_pct": 0.1, "min_basis_pct": 0.05}, "exit_basis_pct"),
        ({"exit_zscore": 2.0}, "exit_zscore"),
        ({"spot_fee": -0.001}, "spot_fee"),
        ({"zscore_window": 0}, "zscore_window"),
        ({"min_zscore": float("nan")}, "min_zscore"),
        ({"notional_usd": float("inf")}, "notional_usd"),
        ({"leverage": 20}, "leverage"),
    ],
)
def test_nonsensical_parameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BacktestParams(**kwargs)


@pytest.mark.parametrize(
    ("symbols", "start", "end", "match"),
    [
        (["DOGE"], "2021-01-01", "2022-01-01", "unknown symbol"),
        (["BTC"], "2022-01-01", "2021-01-01", "inverted"),
        (["BTC"], "2022-01-01", "2022-01-01", "inverted"),
        (["BTC"], "2030-01-01", "2031-01-01", "outside the data"),
        (["BTC"], "2014-01-01", "2015-01-01", "outside the data"),
        (["BTC"], "not-a-date", "2022-01-01", "bad date"),
        ([], "2021-01-01", "2022-01-01", "no symbols"),
        (["BTC/EUR"], "2021-01-01", "2022-01-01", "USDT-quoted"),
    ],
)
def test_bad_ranges_and_symbols_are_clear_errors(histories, symbols, start, end, match) -> None:
    with pytest.raises(DataError, match=match):
        load_markets(histories, symbols, start, end, BacktestParams())


def test_symbols_are_accepted_the_way_traders_write_them(histories) -> None:
    markets = load_markets(histories, ["btcusdt", "ETH/USDT", "BTC-USDT", "ETH/USDT:USDT"], "2021-01-01", "2021-02-01", BacktestParams())
    assert [m.symbol for m in markets] == ["BTC", "ETH"]


def test_freqtrade_and_csv_layouts_load_and_bad_directories_are_named(tmp_path: Path) -> None:
    src = REPO.parent / "shared" / "data" / "binance-1h"
    if src.is_dir():
        ft = load_freqtrade_dir(src, ["BTC"])
        assert ft["BTC"].n == load_extract(symbols=["BTC"])["BTC"].n
    # a plain CSV layout, written from the shipped data, round-trips
    h = load_extract(symbols=["ETH"])["ETH"]
    sl = slice(20_000, 22_000)
    rows = ["time,spot,perp,mark"] + [
        f"{int(t)},{'' if math.isnan(s) else s},{pp},{mk}" for t, s, pp, mk in zip(h.times[sl], h.spot[sl], h.perp[sl], h.mark[sl], strict=True)
    ]
    (tmp_path / "ETH.csv").write_text("\n".join(rows) + "\n")
    keep = (h.funding_time >= h.times[sl][0]) & (h.funding_time <= h.times[sl][-1])
    (tmp_path / "ETH_funding.csv").write_text(
        "time,rate\n" + "\n".join(f"{int(t)},{r}" for t, r in zip(h.funding_time[keep], h.funding_rate[keep], strict=True)) + "\n")
    from basis_mcp.loaders import load_any

    csv = load_any(tmp_path)["ETH"]
    assert np.array_equal(np.isnan(csv.spot), np.isnan(h.spot[sl]))
    assert np.allclose(csv.perp, h.perp[sl]) and np.allclose(csv.funding_rate, h.funding_rate[keep])
    (tmp_path / "ETH_funding.csv").unlink()
    with pytest.raises(DataError, match="missing ETH_funding.csv"):
        load_any(tmp_path, ["ETH"])
    with pytest.raises(DataError, match="with a '<SYM>_funding.csv' beside it"):
        load_any(tmp_path)
    (tmp_path / "ETH_funding.csv").write_text("time,rate\n0,0.0001\n")
    (tmp_path / "ETH.csv").write_text("time,spot,perp\n1700000001,1,1\n")
    with pytest.raises(DataError, match="not on the 1h grid"):
        load_any(tmp_path)
    (tmp_path / "ETH.csv").write_text("time,spot\n1700000000,1\n")
    with pytest.raises(DataError, match="missing column"):
        load_any(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_any(tmp_path / "nope")


def test_cli_backtest_writes_json_and_png(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "basis_mcp", "backtest", "--symbols", "BTC,ETH", "--start", "2021-01-01", "--end", "2021-07-01",
         "--out", str(tmp_path), "--min-zscore", "1.5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "trades" in out.stdout and "APY" in out.stdout
    js = list(tmp_path.glob("*.json"))
    png = list(tmp_path.glob("*.png"))
    assert js and png and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js[0].read_text())["summary"]["trades"] > 0
    bad = subprocess.run([sys.executable, "-m", "basis_mcp", "backtest", "--symbols", "BTC", "--start", "2022-01-01",
                          "--end", "2021-01-01"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "inverted" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "basis_mcp", "backtest", "--symbols", "BTC", "--exit-zscore", "3"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "exit_zscore" in bad.stderr


# ----------------------------------------------------------------------------- the MCP tools


async def test_backtest_tool_reports_progress_and_returns_the_chart(make_server) -> None:
    import base64

    from mcp import Client

    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    async with Client(make_server(start="2024-03-01")) as client:
        r = await client.call_tool("backtest", {"symbols": ["BTC", "ETH"], "start": "2021-01-01", "end": "2022-01-01"},
                                   progress_callback=on_progress)
        assert not r.is_error, r.content[0].text
        s = r.structured_content
        assert s["summary"]["trades"] == s["trades_total"] > 0
        assert {y["year"] for y in s["by_year"] if y["trades_closed"]} == {2021}
        png = next(c for c in r.content if c.type == "image")
        assert png.mime_type == "image/png" and base64.b64decode(png.data)[:4] == b"\x89PNG"
        assert [(d, t) for d, t, _ in seen] == [(1, 2), (2, 2)] and "trades" in (seen[-1][2] or "")
        # the same numbers as the engine run directly
        p = BacktestParams()
        direct = run(load_markets(load_extract(symbols=["BTC", "ETH"]), ["BTC", "ETH"], "2021-01-01", "2022-01-01", p), p)
        assert s["summary"] == json.loads(json.dumps(direct.summary))
        # a replay agent may not backtest into its own future
        r = await client.call_tool("backtest", {"symbols": ["BTC"], "start": "2024-01-01", "end": "2025-01-01"})
        assert r.is_error and "end" in r.content[0].text and "replay clock" in r.content[0].text
        r = await client.call_tool("backtest", {"symbols": ["BTC"], "start": "2021-01-01", "end": "2021-06-01",
                                                "min_zscore": 1.0, "exit_zscore": 2.0})
        assert r.is_error and "exit_zscore" in r.content[0].text
        r = await client.call_tool("backtest", {"symbols": ["BTCUSDT"], "start": "2021-01-01", "end": "2021-03-01"})
        assert not r.is_error and r.structured_content["symbols"] == ["BTC"]
        r = await client.call_tool("backtest", {"symbols": ["XRP"], "start": "2021-01-01", "end": "2021-06-01"})
        assert r.is_error and "symbols" in r.content[0].text and "XRP" in r.content[0].text
        r = await client.call_tool("plot_basis", {"symbol": "ETH", "days": 14})
        assert not r.is_error and r.structured_content["samples"] == 14 * 24
        assert any(c.type == "image" for c in r.content)
