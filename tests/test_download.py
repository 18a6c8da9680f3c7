"""`basis-mcp data download` against the local Bybit and Binance simulators (offline, real HTTP, real ccxt).

The simulators serve the shipped hourly history; their 5 m candles are SIMULATED from it
(`basis_mcp.sim.instruments.path_candles`), so expected prices come from `load_extract`, not from the
simulator.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from basis_mcp import cli
from basis_mcp.backtest.params import BacktestParams
from basis_mcp.backtest.runner import run_from_data
from basis_mcp.download import DownloadError, DownloadRequest, download, read_series
from basis_mcp.history import load_extract
from basis_mcp.loaders import load_any
from basis_mcp.sim import binance as binance_sim
from basis_mcp.sim.bybit import running_bybit_sim
from basis_mcp.sim.instruments import parse_time

START, NOW = "2024-03-01", "2024-03-15T00:00:00Z"
T_START, T_NOW = parse_time(START), parse_time(NOW)
HOUR = 3600
DATA = load_extract(None, ["BTC"])
DATA_PATHS = ("/v5/market/kline", "/v5/market/mark-price-kline", "/v5/market/funding/history")
FILES = ("BTC_USDT-5m.feather", "futures/BTC_USDT_USDT-5m-futures.feather", "futures/BTC_USDT_USDT-4h-mark.feather",
         "futures/BTC_USDT_USDT-8h-funding_rate.feather")


def _data_at(arr: str, t: int) -> float:
    h = DATA["BTC"]
    return float(getattr(h, arr)[h.index_at(t)])


def _fetch(sim, root: Path, retries: int = 2, **kw) -> object:
    req = DownloadRequest(venue="bybit", symbols=["BTC"], timeframe="5m", start=START, directory=root, base_url=sim.url,
                          retries=retries, retry_delay_s=0.01)
    return asyncio.run(download(req, **kw))


def _data_requests(sim) -> int:
    return sum(n for k, n in sim.state.requests.items() if k.split(" ", 1)[1] in DATA_PATHS)


@pytest.fixture(scope="module")
def bybit():
    with running_bybit_sim(start=NOW) as sim:
        yield sim


@pytest.fixture(scope="module")
def full(bybit, tmp_path_factory) -> Path:
    """One uninterrupted download, through the command line."""
    root = tmp_path_factory.mktemp("full")
    rc = cli.main(["data", "download", "--venue", "bybit", "--symbols", "BTC", "--timeframe", "5m", "--start", START,
                   "--dir", str(root), "--mark-timeframe", "4h", "--funding", "--venue-url", bybit.url])
    assert rc == 0
    return root


def test_bybit_download_loads_and_backtests(full, capsys):
    ex = full / "bybit"
    t, c = read_series(ex / FILES[1])
    assert t[0] == T_START * 1000 and t[-1] == (T_NOW - 300) * 1000 and t.size == 14 * 288  # closed candles only
    assert np.all(np.diff(t) == 300_000)
    for k in range(0, t.size, 997):  # a whole hour's candle opens and closes at the data's hourly prices
        s = int(t[k]) // 1000
        if s % HOUR == 0:
            assert c[k, 0] == pytest.approx(_data_at("perp", s))
        if (s + 300) % HOUR == 0:
            assert c[k, 3] == pytest.approx(_data_at("perp", s + 300))
    hour = c[:12]  # twelve 5 m candles make the hour's candle (the path between the two closes)
    assert hour[0, 0] == pytest.approx(_data_at("perp", T_START)) and hour[-1, 3] == pytest.approx(_data_at("perp", T_START + HOUR))
    assert np.allclose(hour[1:, 0], hour[:-1, 3]) and np.all(hour[:, 1] >= hour[:, 2])
    mt, _ = read_series(ex / FILES[2])
    assert mt.size == 14 * 6 and np.all(mt % (4 * HOUR * 1000) == 0)
    ft, fc = read_series(ex / FILES[3])
    assert ft.size == 43 and ft[-1] == T_NOW * 1000 and np.all(np.diff(ft) == 8 * HOUR * 1000) and np.all(fc[:, 1:] == 0)
    h = DATA["BTC"]
    j = np.searchsorted(h.funding_time, ft // 1000)
    assert fc[:, 0] == pytest.approx(h.funding_rate[j], abs=1e-12)  # the rate is in `open`
    hist = load_any(ex, ["BTC"])["BTC"]
    assert hist.bar_s == 300 and any("4h" in n and "5m" in n for n in hist.notes)
    result = run_from_data(ex, ["BTC"], START, NOW, BacktestParams(playbook="carry"))
    assert result.times.size == 14 * 288 and result.summary["trades"] >= 1
    facts = json.loads((ex / "basis-mcp-markets.json").read_text())
    perp, spot = facts["symbols"]["BTC"]["perp"], facts["symbols"]["BTC"]["spot"]
    assert facts["venue"] == "bybit" and perp["funding_interval_hours"] == 8
    assert (perp["taker"], perp["maker"], perp["lot_step"], spot["lot_step"]) == (0.0006, 0.0001, 0.001, 1e-06)
    assert perp["min_notional"] > 0 and spot["min_amount"] == 1e-06


def test_interrupted_download_resumes_to_the_same_files(bybit, full, tmp_path):
    pages = []

    def fail_after_three(what, done, total):
        pages.append(what)
        if len(pages) == 8:  # spot done, perp part way: the venue goes down for good
            bybit.state.faults.http_5xx_next = 10**6

    try:
        with pytest.raises(DownloadError, match="still failing after 3 attempts.*run the same command again"):
            _fetch(bybit, tmp_path, progress=fail_after_three)
    finally:
        bybit.state.faults.http_5xx_next = 0
    t, _ = read_series(tmp_path / "bybit" / FILES[1])
    assert 0 < t.size < 14 * 288 and np.all(np.diff(t) == 300_000)  # a valid, shorter perp file
    assert not (tmp_path / "bybit" / FILES[2]).exists()

    def cancel(what, done, total):  # then an interruption (Ctrl-C) in the middle of the perp again
        if what.startswith("BTC perp") and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fetch(bybit, tmp_path, progress=cancel)
    bybit.state.faults.rate_limit_next = 2  # and the run that completes it is throttled twice on the way
    summary = _fetch(bybit, tmp_path)
    assert bybit.state.faults.rate_limit_next == 0
    for name in FILES:
        a, b = full / "bybit" / name, tmp_path / "bybit" / name
        (ta, ca), (tb, cb) = read_series(a), read_series(b)
        assert ta.size == tb.size and np.array_equal(ta, tb) and np.array_equal(ca, cb), name
        assert a.read_bytes() == b.read_bytes(), name
    assert not list((tmp_path / "bybit").rglob("*.tmp"))
    assert all(not f.gaps for f in summary.files)


def test_second_run_asks_for_nothing_and_a_later_one_for_one_page(tmp_path):
    with running_bybit_sim(start=NOW) as sim:
        _fetch(sim, tmp_path)
        sim.state.reset_counts()
        again = _fetch(sim, tmp_path)
        assert _data_requests(sim) == 0 and all(f.rows_added == 0 for f in again.files)
        sim.state.advance(9 * HOUR)  # 9 h later: 108 new 5 m candles, two 4 h marks, one settlement
        sim.state.reset_counts()
        later = _fetch(sim, tmp_path)
        assert [f.rows_added for f in later.files] == [108, 108, 2, 1]
        assert [f.requests for f in later.files] == [1, 1, 1, 1] and _data_requests(sim) == 4


def test_binance_1h_download_loads_and_backtests(monkeypatch, tmp_path):
    with binance_sim.running_sim(start=NOW) as sim:
        rc = cli.main(["data", "download", "--venue", "binance", "--symbols", "BTC", "--timeframe", "1h",
                       "--start", "2024-01-01", "--dir", str(tmp_path), "--venue-url", sim.url])
        assert rc == 0
        got = {k.split(" ", 1)[1]: n for k, n in sim.state.requests.items()}
        assert got["/api/v3/klines"] == 2 and got["/fapi/v1/klines"] == 2  # 1776 hours: 1000 a page through ccxt
        assert got["/fapi/v1/markPriceKlines"] == 1 and got["/fapi/v1/fundingRate"] == 1
        base = sim.url
        spot = httpx.get(f"{base}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "5m", "limit": 5000}).json()
        perp = httpx.get(f"{base}/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "5m", "limit": 5000}).json()
        assert (len(spot), len(perp)) == (1000, 1500)  # Binance's page limits, spot and USD-M
        assert perp[-1][0] == (T_NOW - 300) * 1000 and float(perp[-1][4]) == pytest.approx(_data_at("perp", T_NOW))
        for interval, n in (("1m", 60), ("15m", 4)):  # sub-hour candles: the hour's path, served once it closed
            rows = httpx.get(f"{base}/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": interval,
                                                               "endTime": (T_NOW - 1) * 1000, "limit": n}).json()
            assert len(rows) == n and rows[0][0] == (T_NOW - HOUR) * 1000
            assert float(rows[0][1]) == pytest.approx(_data_at("perp", T_NOW - HOUR))
            assert float(rows[-1][4]) == pytest.approx(_data_at("perp", T_NOW))
        sim.state.reset_counts()
        assert cli.main(["data", "download", "--venue", "binance", "--symbols", "BTC", "--timeframe", "1h",
                         "--start", "2024-01-01", "--dir", str(tmp_path), "--venue-url", sim.url]) == 0
        assert not any(p in k for k in sim.state.requests for p in ("klines", "Klines", "fundingRate"))
    ex = tmp_path / "binance"
    mt, mc = read_series(ex / "futures" / "BTC_USDT_USDT-8h-mark.feather")  # freqtrade's Binance default
    for k in (0, mt.size // 2, mt.size - 1):  # an 8 h mark candle aggregates the nine hourly marks it spans
        s = int(mt[k]) // 1000
        hourly = [_data_at("mark", s + i * HOUR) for i in range(9)]
        assert mc[k, :4] == pytest.approx([hourly[0], max(hourly), min(hourly), hourly[-1]])
    t, c = read_series(ex / "futures" / "BTC_USDT_USDT-1h-futures.feather")
    assert t.size == (T_NOW - parse_time("2024-01-01")) // HOUR
    assert c[-1, 3] == pytest.approx(_data_at("perp", T_NOW)) and c[-1, 0] == pytest.approx(_data_at("perp", T_NOW - HOUR))
    hist = load_any(ex, ["BTC"])["BTC"]
    assert hist.bar_s == HOUR and any("8h" in n for n in hist.notes)
    result = run_from_data(ex, ["BTC"], "2024-01-01", NOW, BacktestParams())
    assert result.times.size == t.size
    facts = json.loads((ex / "basis-mcp-markets.json").read_text())["symbols"]["BTC"]
    assert facts["perp"]["funding_interval_hours"] == 8 and facts["spot"]["lot_step"] == 1e-05


@pytest.mark.parametrize("args, needle", [
    (["--venue", "nosuchvenue"], "unknown venue 'nosuchvenue': ccxt does not know it"),
    (["--venue", "kraken"], "venue 'kraken' is not supported by data download"),
    (["--symbols", "NOPE"], "symbol 'NOPE' is not listed on bybit"),
    (["--symbols", "BTC-USD"], "symbol 'BTC-USD' is not a coin name"),
    (["--timeframe", "7m"], "--timeframe '7m' cannot be loaded"),
    (["--timeframe", "8h"], "--timeframe '8h' is not offered by bybit"),
    (["--mark-timeframe", "8h"], "--mark-timeframe '8h' is not offered by bybit"),
    (["--start", "2024-03-10", "--end", "2024-03-01"], "--start 2024-03-10 is not before --end 2024-03-01"),
    (["--start", "2030-01-01"], "--start 2030-01-01 is in the future (bybit's clock says 2024-03-15T00:00:00Z)"),
    (["--start", "yesterday"], "--start 'yesterday' is not a date"),
    (["--start", "2015-01-01", "--end", "2015-02-01"], "bybit returned no spot 5m candles for BTC/USDT between 2015-01-01"),
])
def test_bad_input_is_refused_naming_the_value(bybit, tmp_path, capsys, args, needle):
    base = {"--venue": "bybit", "--symbols": "BTC", "--timeframe": "5m", "--start": START}
    flags = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["data", "download", "--dir", str(tmp_path), "--venue-url", bybit.url]
    for k, v in (base | flags).items():
        argv += [k, v]
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.feather"))


def test_verify_lists_gaps_and_refuses_rows_off_the_grid(tmp_path):
    from basis_mcp.download import verify, write_series

    f = tmp_path / "BTC_USDT-5m.feather"
    t = np.array([0, 300, 600, 1800, 2100], dtype=np.int64) * 1000 + 1_700_000_100_000 // 300_000 * 300_000
    write_series(f, t, np.ones((5, 5)))
    rows, gaps = verify(f, 300_000)
    assert rows == 5 and len(gaps) == 1 and "(3 missing)" in gaps[0]
    write_series(f, t + 60_000, np.ones((5, 5)))
    with pytest.raises(DownloadError, match="not on the 5m grid"):
        verify(f, 300_000)
