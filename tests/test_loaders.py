"""Loaders that check what they read: any timeframe detected and checked against the file name, freqtrade's exchange
directories, a coarser mark aligned and reported, only the requested symbols read, and a clear error naming the file
for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.runner import load_markets
from basis_mcp.clock import parse_time
from basis_mcp.history import DataError, load_extract, save_extract
from basis_mcp.loaders import check_rows, load_any, load_freqtrade_dir

T0 = int(parse_time("2024-01-01T00:00:00Z"))


def _candles(path: Path, start: int, bar: int, n: int, price: float = 100.0, *, times: np.ndarray | None = None) -> None:
    t = np.arange(start, start + n * bar, bar, dtype=np.int64) if times is None else times
    rng = np.random.default_rng(len(str(path)))
    close = price * np.exp(np.cumsum(rng.normal(0, 1e-3, t.size)))
    table = pa.table({"date": pa.array(t * 1000, pa.timestamp("ms", tz="UTC")), "open": close, "high": close * 1.001,
                      "low": close * 0.999, "close": close, "volume": np.full(t.size, 5.0)})
    path.parent.mkdir(parents=True, exist_ok=True)
    feather.write_feather(table, path)


def _funding(path: Path, start: int, every: int, n: int, rate: float = 1e-4) -> None:
    t = np.arange(start, start + n * every, every, dtype=np.int64)
    table = pa.table({"date": pa.array(t * 1000, pa.timestamp("ms", tz="UTC")), "open": np.full(t.size, rate),
                      "high": np.full(t.size, rate), "low": np.full(t.size, rate), "close": np.full(t.size, rate)})
    path.parent.mkdir(parents=True, exist_ok=True)
    feather.write_feather(table, path)


def bybit_dir(root: Path, days: int = 3, symbols: tuple[str, ...] = ("BTC",)) -> Path:
    """What freqtrade writes for Bybit: 5 m spot in bybit/, 5 m perp, 8 h funding and 4 h mark in bybit/futures/."""
    d = root / "bybit"
    n = days * 288
    for sym in symbols:
        _candles(d / f"{sym}_USDT-5m.feather", T0, 300, n)
        _candles(d / "futures" / f"{sym}_USDT_USDT-5m-futures.feather", T0, 300, n, 100.05)
        _candles(d / "futures" / f"{sym}_USDT_USDT-4h-mark.feather", T0, 4 * 3600, days * 6, 100.04)
        _funding(d / "futures" / f"{sym}_USDT_USDT-8h-funding_rate.feather", T0, 8 * 3600, days * 3)
    return d


def test_a_freqtrade_bybit_directory_with_5m_candles_8h_funding_and_a_4h_mark_loads_as_it_is(tmp_path: Path) -> None:
    d = bybit_dir(tmp_path)
    h = load_any(d)["BTC"]
    assert h.bar_s == 300 and h.n == 3 * 288  # every 5-minute close, none dropped or relabelled
    assert h.t0 == T0 + 300  # the first candle's close
    assert h.funding_time.size == 9 - 1 and np.all(np.diff(h.funding_time) == 8 * 3600)  # inside the tradable span
    assert h.mark_is_proxy.all() and np.allclose(h.mark, h.perp)  # the perp stands in between the 4 h mark's closes
    assert any("4h beside 5m" in note for note in h.notes)
    # each 4 h mark candle's range is applied at its close
    mark = feather.read_table(d / "futures" / "BTC_USDT_USDT-4h-mark.feather")
    close_bar = (4 * 3600 - 300) // 300  # the first 4 h candle closes at T0 + 4 h: index 47
    assert h.mark_high[close_bar] >= mark.column("high").to_numpy()[0]
    # the same directory round-trips through an extract with its bar size
    save_extract({"BTC": h}, tmp_path / "x.npz")
    again = load_extract(tmp_path / "x.npz")["BTC"]
    assert again.bar_s == 300 and again.n == h.n


def test_a_5m_file_named_1h_is_an_error_naming_the_file_never_a_silent_resample(tmp_path: Path) -> None:
    d = tmp_path / "flat"
    _candles(d / "BTC_USDT-1h.feather", T0, 300, 2000)
    _candles(d / "BTC_USDT_USDT-1h-futures.feather", T0, 300, 2000)
    _funding(d / "BTC_USDT_USDT-8h-funding_rate.feather", T0, 8 * 3600, 3)
    with pytest.raises(DataError, match=r"BTC_USDT_USDT-1h-futures.feather: the name says 1h but the rows are 5m apart"):
        load_any(d)


def test_mixed_timeframes_ask_which_and_a_symbol_reads_only_its_own_files(tmp_path: Path) -> None:
    d = bybit_dir(tmp_path)
    _candles(d / "BTC_USDT-1h.feather", T0, 3600, 72)
    _candles(d / "futures" / "BTC_USDT_USDT-1h-futures.feather", T0, 3600, 72)
    with pytest.raises(DataError, match=r"several timeframes \(5m, 1h\): say which"):
        load_any(d)
    assert load_any(d, timeframe="1h")["BTC"].bar_s == 3600
    assert load_any(d, timeframe="5m")["BTC"].bar_s == 300
    # an unrelated broken pair and a stray file do not matter when BTC is asked for
    (d / "futures" / "XRP_USDT_USDT-5m-futures.feather").write_bytes(b"not feather")
    (d / "notes.csv").write_text("hello\n")
    assert list(load_any(d, ["BTC"], "5m")) == ["BTC"]
    with pytest.raises(DataError, match=r"XRP: no spot candles in .*bybit \(looked for XRP_USDT-<tf>.feather\)"):
        load_any(d, timeframe="5m")  # asked for everything: the incomplete pair is named
    with pytest.raises(DataError, match=r"ETH: no perp candles in .*bybit \(looked for ETH_USDT_USDT-<tf>-futures.feather\)"):
        load_any(d, ["ETH"], "5m")
    with pytest.raises(DataError, match=r"BTC: no 15m perp candles in .* \(has 5m, 1h\)"):
        load_any(d, ["BTC"], "15m")
    with pytest.raises(DataError, match="timeframe '7m' is not one of"):
        load_any(d, ["BTC"], "7m")


def test_backtest_symbols_x_reads_only_x(tmp_path: Path) -> None:
    """`backtest --symbols BTC --data DIR` with another pair's files broken in DIR."""
    from basis_mcp.cli import main

    src = tmp_path / "ft"
    h = load_extract(symbols=["BTC"])["BTC"]
    sl = slice(40_000, 40_000 + 24 * 60)
    t = h.times[sl] - 3600  # candle open times
    for name, vals in (("BTC_USDT-1h.feather", h.spot[sl]), ("BTC_USDT_USDT-1h-futures.feather", h.perp[sl])):
        table = pa.table({"date": pa.array(t * 1000, pa.timestamp("ms", tz="UTC")), "open": vals, "high": vals, "low": vals,
                          "close": vals, "volume": np.full(t.size, 1.0)})
        src.mkdir(exist_ok=True)
        feather.write_feather(table, src / name)
    keep = (h.funding_time >= h.times[sl][0]) & (h.funding_time <= h.times[sl][-1])
    ft = h.funding_time[keep]
    feather.write_feather(pa.table({"date": pa.array(ft * 1000, pa.timestamp("ms", tz="UTC")), "open": h.funding_rate[keep]}),
                          src / "BTC_USDT_USDT-8h-funding_rate.feather")
    (src / "ETH_USDT_USDT-1h-futures.feather").write_bytes(b"broken")  # another pair, incomplete and unreadable
    out = tmp_path / "out"
    from basis_mcp.clock import iso

    rc = main(["backtest", "--symbols", "BTC", "--data", str(src), "--start", iso(float(h.times[sl][0])),
               "--end", iso(float(h.times[sl][-1])),
               "--out", str(out), "--no-chart"])
    assert rc == 0 and len(list(out.glob("backtest_BTC_*.json"))) == 1


@pytest.mark.parametrize("times, match", [
    (np.array([0, 300, 300, 600]), "duplicated rows at"),
    (np.array([0, 600, 300, 900]), "rows out of order"),
    (np.array([0, 300, 600, 930, 1200]), "is not on the 5m grid"),
])
def test_bad_rows_are_named(times: np.ndarray, match: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=match):
        check_rows(tmp_path / "f.feather", T0 + times.astype(np.int64), None)
    d = tmp_path / "d"
    _candles(d / "BTC_USDT-5m.feather", T0, 300, 0, times=T0 + times.astype(np.int64))
    _candles(d / "BTC_USDT_USDT-5m-futures.feather", T0, 300, 4)
    _funding(d / "BTC_USDT_USDT-8h-funding_rate.feather", T0, 8 * 3600, 1)
    with pytest.raises(DataError, match=r"BTC_USDT-5m.feather: .*" + match):
        load_freqtrade_dir(d)


def test_daily_csv_loads_with_its_bar_and_the_backtest_says_which_rule_it_is_too_coarse_for(tmp_path: Path) -> None:
    from basis_mcp.backtest.runner import run

    t = T0 + 86400 * np.arange(1, 61)
    (tmp_path / "ABC.csv").write_text("time,spot,perp\n" + "".join(f"{x},{100 + i},{100.1 + i}\n" for i, x in enumerate(t)))
    (tmp_path / "ABC_funding.csv").write_text("time,rate\n" + "".join(f"{x},0.0001\n" for x in t))
    h = load_any(tmp_path)["ABC"]
    assert h.bar_s == 86400 and h.n == 60
    params = BacktestParams(zscore_window=24 * 35, playbook="carry")
    res = run(load_markets({"ABC": h}, ["ABC"], "2024-01-05", "2024-02-20", params), params)
    assert res.bar == "1d" and any("volatility breaker" in n and "was not run" in n for n in res.data_notes)
    assert res.to_json()["bar"] == "1d"
    with pytest.raises(DataError, match=r"ABC.csv: the name says 1h but the rows are 1d apart"):
        load_any(tmp_path, timeframe="1h")


def _as_5m(h, i0: int, hours: int):
    """The same market on 5-minute bars: each hourly close observed at the hour and held for the next 55 minutes."""
    from basis_mcp.history import SymbolHistory

    sl = slice(i0, i0 + hours)
    t0 = h.t0 + i0 * 3600
    t_end = t0 + (hours * 12 - 1) * 300
    keep = (h.funding_time >= t0) & (h.funding_time <= t_end)

    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[sl], 12)

    return SymbolHistory(symbol=h.symbol, t0=t0, spot=rep(h.spot), perp=rep(h.perp), mark=rep(h.mark), mark_high=rep(h.mark_high),
                         mark_low=rep(h.mark_low), funding_time=h.funding_time[keep], funding_rate=h.funding_rate[keep],
                         mark_is_proxy=rep(h.mark_is_proxy), stale=rep(h.stale), bar_s=300)


@pytest.mark.parametrize("playbook", ["convergence", "carry"])
def test_the_same_rules_run_on_5_minute_bars_as_on_hourly_ones(playbook: str) -> None:
    """The rules are stated in time (z window, smoothing, 1 h vol, fill delay, holds, funding, borrow): the same market
    on 5-minute bars (hourly prices held for 55 minutes) trades exactly as on hourly bars, in both engines."""
    from basis_mcp.backtest.runner import run
    from basis_mcp.clock import iso

    h = load_extract(symbols=["BTC"])["BTC"]
    i0, hours = 13_000, 24 * 100
    h5 = _as_5m(h, i0, hours)
    start, end = iso(h5.t0 + 30 * 86400.0), iso(h5.t0 + (hours - 2) * 3600.0)
    p = BacktestParams(playbook=playbook, zscore_window=480, fill_delay_seconds=3600)
    runs = {}
    for name, hh in (("1h", h), ("5m", h5)):
        for engine in ("vectorized", "reference"):
            r = run(load_markets({"BTC": hh}, ["BTC"], start, end, p), p, engine=engine)
            runs[name, engine] = r
            assert r.bar == name
    def key(r):
        return [(t.entry_time, t.exit_time, t.reason, round(t.pnl_usd, 6)) for t in r.trades]

    hourly, five = key(runs["1h", "vectorized"]), key(runs["5m", "vectorized"])
    assert hourly, "the window should trade"
    for bar in ("1h", "5m"):  # both engines, trade for trade, on either bar size
        assert key(runs[bar, "reference"]) == key(runs[bar, "vectorized"]), bar
    assert runs["5m", "vectorized"].always_on["total_pnl_usd"] == runs["1h", "vectorized"].always_on["total_pnl_usd"]
    if playbook == "carry":  # funding means, holds, fill delay: all in time, so exactly the same trades
        assert five == hourly
    else:
        # the z-score window is 480 h of samples on both, but on 5-minute bars its oldest edge moves inside an hour, so
        # a z that sits on a threshold can cross it a bar (5 minutes) later: the entries and their prices are the same
        by_entry = {k[0]: k for k in five}
        matched = [k for k in hourly if k[0] in by_entry and abs(_t(by_entry[k[0]][1]) - _t(k[1])) <= 3600]
        assert len(matched) >= 0.8 * len(hourly), (hourly, five)


def _t(s: str) -> float:
    from basis_mcp.clock import parse_time as pt

    return pt(s)


def test_the_venues_own_contract_facts_beside_the_data_set_the_costs(tmp_path: Path) -> None:
    """`data download` writes basis-mcp-markets.json beside the candles: the backtest (and the paper desk) trade with that
    venue's fees, lot step and minimum, and the result says so."""
    import json

    from basis_mcp.backtest.runner import run_from_data
    from basis_mcp.config import Settings
    from basis_mcp.loaders import MARKETS_FILE, with_market_facts

    d = bybit_dir(tmp_path, days=20)
    (d / MARKETS_FILE).write_text(json.dumps({"schema": "basis-mcp-markets/1", "venue": "bybit", "symbols": {"BTC": {
        "spot": {"taker": 0.001, "lot_step_base": 1e-06, "min_notional": 5.0},
        "perp": {"taker": 0.00055, "lot_step_base": 0.001, "min_notional": 5.0, "funding_interval_hours": 8}}}}))
    settings, notes = with_market_facts(Settings(), d)
    spec = settings.spec("BTC")
    assert (spec.spot_taker_fee, spec.perp_taker_fee, spec.qty_step, spec.min_notional_usd) == (0.001, 0.00055, 0.001, 5.0)
    assert notes and "perp_taker_fee=0.00055" in notes[0]
    res = run_from_data(d, ["BTC"], "2024-01-02", "2024-01-20", BacktestParams(playbook="carry", zscore_window=48))
    assert res.markets[0].costs.perp.taker_fee == 0.00055 and res.markets[0].min_notional_usd == 5.0
    assert any("the venue's own costs" in n for n in res.data_notes)
    (d / MARKETS_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a basis-mcp markets file"):
        with_market_facts(Settings(), d)
    # an operator's own settings for a symbol win over the file
    mine = Settings(symbols={"BTC": Settings().spec("BTC").model_copy(update={"perp_taker_fee": 0.0004})})
    (d / MARKETS_FILE).write_text(json.dumps({"symbols": {"BTC": {"perp": {"taker": 0.00055}}}}))
    assert with_market_facts(mine, d)[0].spec("BTC").perp_taker_fee == 0.0004
