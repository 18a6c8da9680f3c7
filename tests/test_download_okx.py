"""`basis-mcp data download --venue okx` against the local OKX simulator (offline, real HTTP, real ccxt), and the
simulator's wire format (`basis_mcp.sim.okx`).

The simulator serves the shipped hourly history; its 5 m candles are SIMULATED from it
(`basis_mcp.sim.instruments.path_candles`), so expected prices come from `load_extract`. ccxt's okx client
keeps its own rate limiter on (110 ms a candle page), so the spans here are short.
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
from basis_mcp.sim.instruments import parse_time
from basis_mcp.sim.okx import running_okx_sim

START, NOW = "2024-03-08", "2024-03-15T00:00:00Z"
T_START, T_NOW = parse_time(START), parse_time(NOW)
HOUR = 3600
DATA = load_extract(None, ["BTC"])
DATA_PATHS = ("/api/v5/market/history-candles", "/api/v5/market/candles", "/api/v5/market/history-mark-price-candles",
              "/api/v5/market/mark-price-candles", "/api/v5/public/funding-rate-history")
FILES = ("BTC_USDT-5m.feather", "futures/BTC_USDT_USDT-5m-futures.feather", "futures/BTC_USDT_USDT-4h-mark.feather",
         "futures/BTC_USDT_USDT-8h-funding_rate.feather")


def _data_at(arr: str, t: int) -> float:
    h = DATA["BTC"]
    return float(getattr(h, arr)[h.index_at(t)])


def _requests(sim) -> dict[str, int]:
    return {k.split(" ", 1)[1]: n for k, n in sim.state.requests.items()}


def _fetch(sim, root: Path, **kw) -> object:
    req = DownloadRequest(venue="okx", symbols=["BTC"], timeframe="5m", start=START, directory=root, base_url=sim.url,
                          retries=2, retry_delay_s=0.01)
    return asyncio.run(download(req, **kw))


def _get(sim, path: str, **params) -> httpx.Response:
    return httpx.get(f"{sim.url}/api/v5/{path}", params=params)


@pytest.fixture(scope="module")
def okx():
    with running_okx_sim(start=NOW, extra_symbols=1) as sim:  # S001: a coin with 4 h funding
        yield sim


@pytest.fixture
def fast(monkeypatch):
    """ccxt's okx client without its rate limiter (110 ms a page), for the runs after the first."""
    from basis_mcp.live import exchanges

    make = exchanges.make_exchange

    def unthrottled(*args, **kw):
        ex = make(*args, **kw)
        ex.enableRateLimit = False
        return ex

    monkeypatch.setattr(exchanges, "make_exchange", unthrottled)


@pytest.fixture(scope="module")
def full(okx, tmp_path_factory) -> Path:
    """One uninterrupted download, through the command line."""
    root = tmp_path_factory.mktemp("full")
    okx.state.reset_counts()
    rc = cli.main(["data", "download", "--venue", "okx", "--symbols", "BTC", "--timeframe", "5m", "--start", START,
                   "--dir", str(root), "--venue-url", okx.url])
    assert rc == 0
    got = _requests(okx)
    # a week of 5 m candles is 2016: 21 pages of 100 each for spot and perp, one 4 h mark page, one funding page
    assert got["/api/v5/market/history-candles"] == 42 and got["/api/v5/market/history-mark-price-candles"] == 1
    assert got["/api/v5/public/funding-rate-history"] == 1 and got["/api/v5/public/funding-rate"] == 1
    assert not okx.state.unknown_paths
    return root


def test_okx_5m_download_loads_and_backtests(full):
    ex = full / "okx"
    for name, arr in ((FILES[0], "spot"), (FILES[1], "perp")):
        t, c = read_series(ex / name)
        assert t[0] == T_START * 1000 and t[-1] == (T_NOW - 300) * 1000 and t.size == 7 * 288  # closed candles only
        assert np.all(np.diff(t) == 300_000)
        for k in range(0, t.size, 12 * 7):  # a whole hour's candle opens at the data's hourly price...
            s = int(t[k]) // 1000
            assert c[k, 0] == pytest.approx(_data_at(arr, s))
            assert c[k + 11, 3] == pytest.approx(_data_at(arr, s + HOUR))  # ...and its twelfth closes at the next
        assert np.allclose(c[1:12, 0], c[:11, 3]) and np.all(c[:, 1] >= c[:, 2])
    mt, mc = read_series(ex / FILES[2])
    assert mt.size == 7 * 6 and np.all(mt % (4 * HOUR * 1000) == 0) and mt[-1] == (T_NOW - 4 * HOUR) * 1000
    for k in (0, mt.size - 1):  # a 4 h mark candle spans the five hourly marks from its open to its close
        s = int(mt[k]) // 1000
        hourly = [_data_at("mark", s + i * HOUR) for i in range(5)]
        assert mc[k, :4] == pytest.approx([hourly[0], max(hourly), min(hourly), hourly[-1]])
    ft, fc = read_series(ex / FILES[3])
    assert ft.size == 22 and ft[0] == T_START * 1000 and ft[-1] == T_NOW * 1000
    assert np.all(np.diff(ft) == 8 * HOUR * 1000) and np.all(fc[:, 1:] == 0)
    h = DATA["BTC"]
    assert fc[:, 0] == pytest.approx(h.funding_rate[np.searchsorted(h.funding_time, ft // 1000)], abs=1e-12)
    hist = load_any(ex, ["BTC"])["BTC"]
    assert hist.bar_s == 300 and any("4h" in n and "5m" in n for n in hist.notes)  # the 4 h mark beside 5 m bars
    result = run_from_data(ex, ["BTC"], START, NOW, BacktestParams(playbook="carry"))
    assert result.times.size == 7 * 288


def test_contract_facts_count_the_perp_in_coins(full):
    facts = json.loads((full / "okx" / "basis-mcp-markets.json").read_text())
    spot, perp = facts["symbols"]["BTC"]["spot"], facts["symbols"]["BTC"]["perp"]
    assert facts["venue"] == "okx" and facts["updated"] == "2024-03-15T00:00:00Z"
    assert (perp["id"], perp["symbol"], spot["id"]) == ("BTC-USDT-SWAP", "BTC/USDT:USDT", "BTC-USDT")
    # OKX's BTC swap: lotSz 0.01 contracts of ctVal 0.01 BTC, so a step of 0.0001 BTC
    assert (perp["lot_step"], perp["contract_size"], perp["min_amount"]) == (0.01, 0.01, 0.01)
    assert perp["lot_step_base"] == pytest.approx(1e-4) and perp["min_amount_base"] == pytest.approx(1e-4)
    assert (spot["lot_step"], spot["contract_size"], spot["min_amount_base"]) == (1e-08, 1.0, 1e-05)
    assert (perp["price_step"], perp["taker"], perp["maker"], spot["taker"]) == (0.1, 0.0005, 0.0002, 0.0015)
    assert (perp["funding_interval_hours"], perp["funding_interval_source"]) == (8, "fetch_funding_interval")


def test_interrupted_download_resumes_to_the_same_files(okx, full, fast, tmp_path):
    def fail_mid_perp(what, done, total):
        if what.startswith("BTC perp") and done == 5:  # spot done, perp part way: the venue goes down for good
            okx.state.faults.http_5xx_next = 10**6

    try:
        with pytest.raises(DownloadError, match="still failing after 3 attempts.*run the same command again"):
            _fetch(okx, tmp_path, progress=fail_mid_perp)
    finally:
        okx.state.faults.http_5xx_next = 0
    t, _ = read_series(tmp_path / "okx" / FILES[1])
    assert t.size == 500 and np.all(np.diff(t) == 300_000)  # a valid, shorter perp file: five pages
    assert not (tmp_path / "okx" / FILES[2]).exists()

    def cancel(what, done, total):  # then an interruption (Ctrl-C) in the middle of the perp again
        if what.startswith("BTC perp") and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fetch(okx, tmp_path, progress=cancel)
    assert read_series(tmp_path / "okx" / FILES[1])[0].size == 700
    okx.state.faults.rate_limit_next = 2  # and the run that completes it is throttled twice (HTTP 429, 50011)
    summary = _fetch(okx, tmp_path)
    assert okx.state.faults.rate_limit_next == 0
    for name in FILES:
        a, b = full / "okx" / name, tmp_path / "okx" / name
        assert a.read_bytes() == b.read_bytes(), name
    assert not list((tmp_path / "okx").rglob("*.tmp"))
    assert all(not f.gaps for f in summary.files)
    okx.state.reset_counts()
    again = _fetch(okx, tmp_path)  # complete: nothing more is asked for
    assert all(f.rows_added == 0 for f in again.files) and not set(_requests(okx)) & set(DATA_PATHS)


def test_okx_1h_download_with_a_4h_funding_coin(okx, fast, tmp_path):
    argv = ["data", "download", "--venue", "okx", "--symbols", "BTC,S001", "--timeframe", "1h", "--start", "2024-03-01",
            "--dir", str(tmp_path), "--mark-timeframe", "1h", "--venue-url", okx.url]
    okx.state.reset_counts()
    assert cli.main(argv) == 0
    assert _requests(okx)["/api/v5/market/history-candles"] == 4 * 4  # 336 hours: 4 pages, spot and perp, two coins
    ex = tmp_path / "okx" / "futures"
    t, c = read_series(ex / "BTC_USDT_USDT-1h-futures.feather")
    assert t.size == 14 * 24 and c[-1, 3] == pytest.approx(_data_at("perp", T_NOW))
    mt, mc = read_series(ex / "BTC_USDT_USDT-1h-mark.feather")
    assert np.array_equal(mt, t)
    hist = load_any(tmp_path / "okx", ["BTC"])["BTC"]
    # the mark lines up with the bars: the bar observed at T (a candle's close) carries the mark candle closing at T
    assert hist.bar_s == HOUR and np.array_equal(hist.times, t // 1000 + HOUR)
    assert np.array_equal(hist.mark, mc[:, 3]) and hist.mark[-1] == pytest.approx(_data_at("mark", T_NOW))
    st, _ = read_series(ex / "S001_USDT_USDT-4h-funding_rate.feather")  # named with the interval OKX reports
    assert st.size == 14 * 6 + 1 and np.all(np.diff(st) == 4 * HOUR * 1000)
    facts = json.loads((tmp_path / "okx" / "basis-mcp-markets.json").read_text())["symbols"]
    assert facts["S001"]["perp"]["funding_interval_hours"] == 4 and facts["S001"]["perp"]["contract_size"] == 1.0
    okx.state.reset_counts()
    assert cli.main(argv) == 0
    assert not set(_requests(okx)) & set(DATA_PATHS)


@pytest.mark.parametrize("args, needle", [
    (["--symbols", "NOPE"], "symbol 'NOPE' is not listed on okx (no spot market NOPE/USDT)"),
    (["--timeframe", "8h"], "--timeframe '8h' is not offered by okx"),
    (["--mark-timeframe", "8h"], "--mark-timeframe '8h' is not offered by okx"),
    (["--start", "2030-01-01"], "--start 2030-01-01 is in the future (okx's clock says 2024-03-15T00:00:00Z)"),
])
def test_bad_input_is_refused_naming_the_value(okx, fast, tmp_path, capsys, args, needle):
    base = {"--venue": "okx", "--symbols": "BTC", "--timeframe": "5m", "--start": START}
    argv = ["data", "download", "--dir", str(tmp_path), "--venue-url", okx.url]
    for k, v in (base | dict(zip(args[::2], args[1::2], strict=True))).items():
        argv += [k, v]
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.feather"))


def test_the_wire_format_cursors_and_page_caps(okx):
    ms, bar5 = T_NOW * 1000, 300_000
    r = _get(okx, "market/history-candles", instId="BTC-USDT-SWAP", bar="5m", limit=500).json()
    assert (r["code"], r["msg"]) == ("0", "") and len(r["data"]) == 100  # history: 100 a page at most
    rows = r["data"]
    assert int(rows[0][0]) == ms - bar5 and all(int(a[0]) - int(b[0]) == bar5 for a, b in zip(rows, rows[1:], strict=False))
    assert all(isinstance(x, str) for x in rows[0]) and len(rows[0]) == 9 and rows[0][8] == "1"
    assert len(_get(okx, "market/candles", instId="BTC-USDT", bar="5m", limit=500).json()["data"]) == 300
    mark = _get(okx, "market/history-mark-price-candles", instId="BTC-USDT-SWAP", bar="1H", limit=500).json()["data"]
    assert len(mark) == 100 and len(mark[0]) == 6 and float(mark[0][4]) == pytest.approx(_data_at("mark", T_NOW))
    # after / before are exclusive; with both, the newest `limit` between them; `before` alone: the latest
    a, b = ms - 10 * bar5, ms - 20 * bar5
    got = _get(okx, "market/history-candles", instId="BTC-USDT", bar="5m", after=a, before=b).json()["data"]
    assert [int(x[0]) for x in got] == list(range(a - bar5, b, -bar5))
    got = _get(okx, "market/history-candles", instId="BTC-USDT", bar="5m", after=a, before=b, limit=3).json()["data"]
    assert [int(x[0]) for x in got] == [a - bar5, a - 2 * bar5, a - 3 * bar5]
    got = _get(okx, "market/history-candles", instId="BTC-USDT", bar="5m", before=b, limit=2).json()["data"]
    assert [int(x[0]) for x in got] == [ms - bar5, ms - 2 * bar5]
    # /market/candles reaches back 1440 bars only; the history endpoint to the data's start
    old = ms - 2000 * bar5
    assert _get(okx, "market/candles", instId="BTC-USDT", bar="5m", after=old).json()["data"] == []
    assert len(_get(okx, "market/history-candles", instId="BTC-USDT", bar="5m", after=old).json()["data"]) == 100
    # bar names: 1H, 4H; 1D opens at 16:00 UTC (Hong Kong midnight), 1Dutc at 00:00 UTC
    day = 86_400_000
    assert int(_get(okx, "market/history-candles", instId="BTC-USDT", bar="1Dutc").json()["data"][0][0]) == ms - day
    assert int(_get(okx, "market/history-candles", instId="BTC-USDT", bar="1D").json()["data"][0][0]) == ms - day - 8 * HOUR * 1000
    assert _get(okx, "market/history-candles", instId="BTC-USDT", bar="1h").json()["code"] == "51000"
    assert _get(okx, "market/history-candles", instId="NOPE-USDT", bar="1H").json()["code"] == "51001"
    fr = _get(okx, "public/funding-rate-history", instId="BTC-USDT-SWAP", limit=400).json()["data"]
    assert len(fr) == 100 and int(fr[0]["fundingTime"]) == ms and fr[0]["realizedRate"] == fr[0]["fundingRate"]
    fr = _get(okx, "public/funding-rate-history", instId="BTC-USDT-SWAP", after=ms, before=ms - 3 * 8 * HOUR * 1000).json()
    assert [int(x["fundingTime"]) for x in fr["data"]] == [ms - k * 8 * HOUR * 1000 for k in (1, 2)]
    inst = _get(okx, "public/instruments", instType="SWAP", instId="BTC-USDT-SWAP").json()["data"]
    assert [(i["ctVal"], i["lotSz"], i["minSz"], i["tickSz"], i["settleCcy"]) for i in inst] == [("0.01", "0.01", "0.01", "0.1", "USDT")]
    assert _get(okx, "public/time").json()["data"] == [{"ts": str(ms)}]


def test_faults_admin_and_unknown_paths(okx):
    okx.state.faults.http_5xx_next, okx.state.faults.rate_limit_next = 1, 1
    r = _get(okx, "public/time")
    assert r.status_code == 503 and "text/html" in r.headers["content-type"]
    r = _get(okx, "public/time")
    assert r.status_code == 429 and r.json()["code"] == "50011"
    assert httpx.post(f"{okx.url}/_sim/faults", json={"rate_limit_next": 1}).json()["rate_limit_next"] == 1
    assert _get(okx, "public/time").status_code == 429 and _get(okx, "public/time").status_code == 200
    assert httpx.get(f"{okx.url}/api/v5/asset/balances").status_code == 404  # the funding account: not simulated
    assert "GET /api/v5/asset/balances" in httpx.get(f"{okx.url}/_sim/requests").json()["unknown"]
    assert httpx.get(f"{okx.url}/_sim/time").json() == {"t": T_NOW}
