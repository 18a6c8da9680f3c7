"""Carry that pays: the two playbooks, fills after a delay, stale candles as gaps, costs for any
symbol, and capital at work — measured on the shipped real data and through the MCP tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from mcp import Client

from basis_mcp.backtest import BacktestParams
from basis_mcp.backtest.runner import load_markets, run
from basis_mcp.clock import parse_time
from basis_mcp.config import DEFAULT_SPECS, Settings, lot_step_for_price
from basis_mcp.history import DataError, load_extract
from basis_mcp.loaders import load_freqtrade_dir
from tests import scripted
from tests.conftest import REPO, call, call_error

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def histories():
    return load_extract(symbols=["BTC", "ETH"])


@pytest.fixture(scope="module")
def carry(histories):
    p = BacktestParams(playbook="carry")
    return run(load_markets(histories, ["BTC", "ETH"], "2019-09-01", "2026-05-16", p), p)


# ----------------------------------------------------------------------------- what the issue measures


def test_carry_earns_what_always_on_carry_earns_and_steps_aside_in_bad_years(carry) -> None:
    for sym in ("BTC", "ETH"):
        b = carry.by_symbol[sym]
        # per dollar of exposure (the fair comparison: fixed quantities drift with the price)
        assert b["vs_always_on_pct"] >= 80.0, (sym, b)
        assert b["always_on_pnl_usd"] > 0
    y2022 = next(y for y in carry.by_year if y["year"] == 2022)
    assert y2022["pnl_usd"] >= y2022["always_on_pnl_usd"], y2022  # the year funding turned, it did no worse
    # long-run carry is ~10-15 %/yr on notional: always-on here must be in that range (a bug would show)
    for sym in ("BTC", "ETH"):
        years = carry.summary["days"] / 365
        apy = carry.by_symbol[sym]["always_on_pnl_at_constant_notional_usd"] / 5_000 / years * 100
        assert 8 <= apy <= 18, (sym, apy)


def test_carry_survives_a_one_bar_fill_delay_and_rarely_needs_an_emergency_exit(carry) -> None:
    sens = carry.sensitivity
    assert sens["one_bar_kept_pct"] >= 90.0, sens
    s = carry.summary
    assert s["emergency_exit_pct"] < 5.0 and sum(s["exit_reasons"].values()) == s["trades"]
    assert set(s["exit_reasons"]) <= {"carry_funding_exit", "max_hold", "basis_blowout", "end_of_range"}


def test_the_default_convergence_rules_no_longer_stop_out_on_noise(histories) -> None:
    p = BacktestParams()
    res = run(load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p), p, extras=False)
    reasons = res.summary["exit_reasons"]
    assert reasons.get("basis_inverted", 0) + reasons.get("basis_blowout", 0) <= 0.05 * res.summary["trades"], reasons


# ----------------------------------------------------------------------------- stale candles


def _write_freqtrade(tmp: Path, sym: str, n: int = 24 * 60, stale_at: int = 24 * 50) -> Path:
    """A freqtrade directory for one symbol, with one exchange-outage candle (volume 0, flat) on spot."""
    t0 = int(parse_time("2024-01-01T00:00:00Z")) * 1000
    dates = pa.array([t0 + i * 3_600_000 for i in range(n)], type=pa.timestamp("ms", tz="UTC"))
    spot = 100.0 + np.sin(np.arange(n) / 10.0)
    perp = spot * 1.001

    def table(close: np.ndarray, stale: int | None) -> pa.Table:
        o, h, lo, c, v = close.copy(), close * 1.001, close * 0.999, close.copy(), np.full(n, 10.0)
        if stale is not None:
            o[stale] = h[stale] = lo[stale] = c[stale] = c[stale - 1]
            v[stale] = 0.0
        return pa.table({"date": dates, "open": o, "high": h, "low": lo, "close": c, "volume": v})

    feather.write_feather(table(spot, stale_at), tmp / f"{sym}_USDT-1h.feather")
    feather.write_feather(table(perp, None), tmp / f"{sym}_USDT_USDT-1h-futures.feather")
    f_dates = pa.array([t0 + i * 8 * 3_600_000 for i in range(n // 8)], type=pa.timestamp("ms", tz="UTC"))
    rates = np.full(n // 8, 0.0001)
    feather.write_feather(pa.table({"date": f_dates, "open": rates, "high": rates * 0, "low": rates * 0, "close": rates * 0,
                                    "volume": rates * 0}), tmp / f"{sym}_USDT_USDT-1h-funding_rate.feather")
    return tmp


def test_zero_volume_flat_candles_are_gaps_everywhere(tmp_path: Path) -> None:
    _write_freqtrade(tmp_path, "ABC")
    h = load_freqtrade_dir(tmp_path)["ABC"]
    stale_time = parse_time("2024-01-01T00:00:00Z") + (24 * 50 + 1) * 3600  # the candle's close is observed an hour later
    i = h.index_at(stale_time)
    assert np.isnan(h.spot[i]) and h.stale[i] and h.stale_times() == [stale_time]
    p = BacktestParams(playbook="carry", fill_delay_seconds=0)
    res = run(load_markets({"ABC": h}, ["ABC"], "2024-01-02", "2024-02-28", p), p)
    assert res.stale["ABC"] == ["2024-02-20T01:00:00Z"]
    assert all(t.entry_time != "2024-02-20T01:00:00Z" and t.exit_time != "2024-02-20T01:00:00Z" for t in res.trades)
    from basis_mcp.backtest.engine import features

    f = features(res.markets[0], p)
    assert not f["valid"][i] and np.isnan(f["basis"][i]) and np.isnan(f["smooth"][i])


async def test_the_replay_desk_takes_no_sample_and_no_entry_from_a_stale_candle(tmp_path: Path) -> None:
    from basis_mcp.desk import Desk
    from basis_mcp.errors import Rejected

    data = _write_freqtrade(tmp_path / "data", "ABC") if (tmp_path / "data").mkdir() is None else None
    desk = Desk.open_replay(Settings(), tmp_path / "d.db", data_path=data, start="2024-02-20T00:00:00Z")
    await desk.start()
    await desk.advance(1)  # now at the stale bar
    with pytest.raises(Rejected, match="market_data_age_seconds"):
        await desk.enter("ABC", 2000, None, "s1", "cash_and_carry")
    t = parse_time("2024-02-20T01:00:00Z")
    assert desk.store.one("SELECT 1 FROM basis_samples WHERE symbol = 'ABC' AND ts = ?", (t,)) is None
    await desk.advance(1)
    assert desk.store.one("SELECT 1 FROM basis_samples WHERE symbol = 'ABC' AND ts = ?", (t + 3600,)) is not None
    desk.close()


# ----------------------------------------------------------------------------- costs for every symbol


def test_a_symbol_nobody_described_gets_conservative_costs_and_a_real_lot_step(tmp_path: Path) -> None:
    _write_freqtrade(tmp_path, "ABC")
    h = load_freqtrade_dir(tmp_path)["ABC"]
    p = BacktestParams()
    m = load_markets({"ABC": h}, ["ABC"], "2024-01-10", "2024-02-28", p)[0]
    btc = DEFAULT_SPECS["BTC"].costs
    assert m.costs.spot.half_spread_bps > 2 * btc.spot.half_spread_bps
    assert m.costs.perp.impact_bps_per_sqrt_musd > 2 * btc.perp.impact_bps_per_sqrt_musd
    first = float(m.spot[m.i0 + np.flatnonzero(~np.isnan(m.spot[m.i0:]))[0]])
    assert m.qty_step == lot_step_for_price(first) and m.qty_step in (0.01, 0.1)  # a ~$100 coin: $1-10 steps
    assert lot_step_for_price(60_000) == 0.0001 and lot_step_for_price(0.5) == 10.0
    s = Settings().with_unknown_symbols({"XYZ": (0.01, 3.0), "BTC": (1.0, 60_000.0)})
    assert s.spec("XYZ").qty_step == 0.01  # the venue's own step wins
    assert s.spec("BTC") == DEFAULT_SPECS["BTC"]  # described symbols keep their spec


# ----------------------------------------------------------------------------- capital at work


def test_desk_sizing_puts_capital_to_work_within_every_cap(histories) -> None:
    settings = Settings(max_position_notional_usd=40_000)
    p = BacktestParams(playbook="carry", sizing="desk", notional_usd=1e9)
    res = run(load_markets(histories, ["BTC", "ETH"], "2021-01-01", "2023-01-01", p, settings), p, settings=settings)
    fixed = run(load_markets(histories, ["BTC", "ETH"], "2021-01-01", "2023-01-01", p, settings),
                p.model_copy(update={"sizing": "fixed", "notional_usd": 5_000}), settings=settings)
    single = settings.tier_single_position["anchor"] * p.capital_usd  # 25 % of capital
    # sized at the signal; the fill an hour later may be a little richer
    assert res.trades and all(t.notional_usd <= single * 1.05 for t in res.trades)
    assert max(t.notional_usd for t in res.trades) > 20_000
    # both anchor symbols together never exceed the anchor tier's 50 %
    for t in res.trades:  # at every entry, what is open then (this one included)
        at = parse_time(t.entry_time)
        open_then = [u for u in res.trades if parse_time(u.entry_time) <= at < parse_time(u.exit_time)]
        assert sum(u.notional_usd for u in open_then) <= settings.tier_allocation["anchor"] * p.capital_usd * 1.05
    assert res.summary["apy_pct"] > 3 * fixed.summary["apy_pct"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"playbook": "momentum"}, "playbook"),
    ({"fill_delay_seconds": -60}, "fill_delay"),
    ({"fill_delay_seconds": "-1h"}, "fill_delay"),
    ({"fill_delay_seconds": "soon"}, "fill_delay"),
    ({"carry_entry_8h_pct": 0.0, "carry_exit_8h_pct": 0.001}, "carry_exit_8h_pct"),
    ({"sizing": "all-in"}, "sizing"),
])
def test_nonsensical_playbook_parameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BacktestParams(**kwargs)


def test_a_fill_delay_longer_than_the_data_and_a_range_of_stale_bars_are_clear_errors(histories, tmp_path: Path) -> None:
    p = BacktestParams(fill_delay_seconds=40 * 86400 / 2)
    with pytest.raises(DataError, match="fill_delay=480h is longer than the data range of BTC"):
        load_markets(histories, ["BTC"], "2021-01-01", "2021-01-10", BacktestParams(fill_delay_seconds=20 * 86400))
    del p
    _write_freqtrade(tmp_path, "ABC", stale_at=24 * 50)
    h = load_freqtrade_dir(tmp_path)["ABC"]
    with pytest.raises(DataError, match="no usable bar"):
        load_markets({"ABC": h}, ["ABC"], "2024-02-20T01:00:00Z", "2024-02-20T01:30:00Z", BacktestParams(fill_delay_seconds=0))


def test_the_cli_runs_both_playbooks_and_prints_the_comparison(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "basis_mcp", "backtest", "--playbook", "carry", "--fill-delay", "0",
                          "--start", "2022-01-01", "--end", "2023-01-01", "--out", str(tmp_path), "--no-chart"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "playbook carry" in out.stdout and "fills at the signal bar" in out.stdout
    assert "always-on carry (same run)" in out.stdout and "fill-delay sensitivity" in out.stdout and "exits:" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "basis_mcp", "backtest", "--playbook", "carry", "--fill-delay", "-1h"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "--fill-delay" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "basis_mcp", "backtest", "--carry-exit-8h-pct", "0.01"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "carry_exit_8h_pct" in bad.stderr


# ----------------------------------------------------------------------------- the tools know both playbooks


async def test_the_tools_know_both_playbooks(make_server, tmp_path: Path) -> None:
    m = scripted.Market(rate=0.0)  # no funding at all: nothing to carry
    data = scripted.write(tmp_path, BTC=m)
    async with Client(make_server(start="2024-01-05T01:00:00Z", data_path=data)) as client:
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 4000, "hold_days": 90,
                                                      "playbook": "carry"})
        assert est["playbook"] == "carry" and not est["playbook_entry_ok"] and "below the carry entry level" in est["playbook_note"]
        size = await call(client, "size_position", {"symbol": "BTC", "playbook": "carry"})
        assert size["playbook"] == "carry" and size["max_hold_days"] == 365
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "c1",
                                                        "playbook": "carry"})
        assert "playbook" in text and "carry entry rule" in text
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "c2",
                                                        "playbook": "convergence", "expected_hold_days": 90})
        assert "expected_hold_days" in text and "max hold of 30 days" in text
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "c3",
                                                        "playbook": "yolo"})
        assert "playbook" in text and "yolo" in text
        r = await client.call_tool("backtest", {"symbols": ["BTC"], "start": "2024-01-01", "end": "2024-01-05",
                                                "playbook": "carry", "fill_delay": "-1h", "chart": False})
        assert r.is_error and "fill_delay" in r.content[0].text


# ----------------------------------------------------------------------------- the book's capital


def test_with_ample_capital_the_book_trades_exactly_the_rules(histories) -> None:
    from basis_mcp.backtest import prepare, run_vectorized

    for playbook in ("convergence", "carry"):
        p = BacktestParams(playbook=playbook)
        res = run(load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p), p, extras=False)
        for m in res.markets:
            alone = run_vectorized(prepare(histories[m.symbol], parse_time("2020-01-01"), parse_time("2026-05-16"), p), p)
            mine = [t for t in res.trades if t.symbol == m.symbol]
            assert [(t.entry_index, t.exit_index, t.reason) for t in mine] == [(t.entry_index, t.exit_index, t.reason) for t in alone]
        assert res.summary["margin"]["forced_closes"] == 0


def test_long_holds_through_a_rally_tie_up_margin_and_a_short_book_is_closed_for_it(histories) -> None:
    """ETH 2020-03 → 2021-04 went up 14x: a short perp needs its margin topped up again and again."""
    p = BacktestParams(playbook="carry", notional_usd=25_000)
    rich = run(load_markets(histories, ["BTC", "ETH"], "2020-03-15", "2021-04-15", p), p.model_copy(update={"capital_usd": 1e7}),
               extras=False)
    poor = run(load_markets(histories, ["BTC", "ETH"], "2020-03-15", "2021-04-15", p), p, extras=False)
    assert rich.summary["margin"]["margin_topups"] > 10 and rich.summary["margin"]["forced_closes"] == 0
    assert rich.summary["margin"]["peak_capital_in_use_usd"] > 100_000  # more than the default book could ever pay
    m = poor.summary["margin"]
    assert m["forced_closes"] > 0 and poor.summary["exit_reasons"].get("liquidation_distance", 0) == m["forced_closes"]
    assert poor.summary["emergency_exit_pct"] > 0  # a forced close is an emergency exit
    assert poor.summary["total_pnl_usd"] < rich.summary["total_pnl_usd"]


def test_the_margin_schedule_keeps_the_liquidation_price_away(histories) -> None:
    from basis_mcp import margin as mm
    from basis_mcp.backtest.engine import features
    from basis_mcp.backtest.portfolio import margin_topups

    p = BacktestParams(playbook="carry")
    m = load_markets(histories, ["ETH"], "2020-03-20", "2021-03-20", p)[0]
    f = features(m, p)
    e, x, q = m.i0 + 1, m.i1, 30.0
    table = DEFAULT_SPECS["ETH"].brackets
    ups = margin_topups(m, f, e, x, q, 2.0, table, 15.0, 25.0)
    assert len(ups) > 10 and all(amount > 0 for _, amount in ups)
    ep = float(m.costs.perp.fill_price(m.perp[e], "sell", q * m.perp[e]))
    wallet = q * ep / 2.0
    for bar, amount in ups:  # funding credited up to that bar, then the top-up: 25 % away again
        ft = m.f_time
        wallet_now = wallet + amount + sum(q * m.mark[int((T - m.t[0]) // 3600)] * r for T, r in zip(ft, m.f_rate, strict=True)
                                           if m.t[e] < T <= m.t[bar])
        lp = mm.liquidation_price(wallet_now, -q, ep, table)
        assert (lp - m.mark[bar]) / m.mark[bar] == pytest.approx(0.25, abs=1e-6)
        wallet += amount
