"""The shipped extract: faithful to the source, sane against the published figures, gaps handled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from basis_mcp.clock import SimClock, parse_time
from basis_mcp.feed import MarketDataUnavailable, ReplayFeed
from basis_mcp.history import ATTRIBUTION, load_extract, shipped_extract_path
from basis_mcp.loaders import load_freqtrade_dir

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-1h"


@pytest.fixture(scope="module")
def shipped():
    return load_extract()


def test_extract_is_small_and_attributed(shipped) -> None:
    p = shipped_extract_path()
    assert p.stat().st_size < 4_000_000
    with np.load(p) as z:
        assert "Binance" in str(z["attribution"]) and str(z["attribution"]) == ATTRIBUTION
    assert (p.parent / "README.md").read_text().count("Roshan7869/algotrading") == 1
    assert set(shipped) == {"BTC", "ETH", "SOL"}
    btc = shipped["BTC"]
    assert btc.t0 == parse_time("2019-09-08T18:00:00Z") and btc.t_end == parse_time("2026-05-17T08:00:00Z")


@pytest.mark.skipif(not SOURCE.is_dir(), reason="../shared/data not present")
def test_extract_equals_the_source_to_the_tick(shipped) -> None:
    src = load_freqtrade_dir(SOURCE, ["BTC", "ETH", "SOL"])
    for sym, h in src.items():
        got = shipped[sym]
        assert got.t0 == h.t0 and got.n == h.n
        for k in ("spot", "perp", "mark", "mark_high", "mark_low"):
            a, b = getattr(h, k), getattr(got, k)
            assert np.array_equal(np.isnan(a), np.isnan(b)), (sym, k)
            assert np.nanmax(np.abs(a - b)) < 1e-9, (sym, k)
        assert np.array_equal(h.funding_time, got.funding_time)
        assert np.allclose(h.funding_rate, got.funding_rate, atol=1e-12)


def test_sanity_figures_from_the_data_readme(shipped) -> None:
    """../shared/data/README.md: BTC basis mean −0.012 %, std 0.063 %, p1/p99 −0.084/+0.170 %;
    mean funding 0.0108 %/8 h (median 0.0100 %); ETH basis std 0.071 %, mean funding 0.0131 %.

    The basis figures hold from 2019-12 on; the perp-launch weeks of 2019-09/11 (±2-3 %
    outliers) lift the full-span std to 0.067 % (BTC) and 0.085 % (ETH)."""
    btc, eth = shipped["BTC"], shipped["ETH"]
    since = parse_time("2019-12-01")
    b = (btc.perp - btc.spot) / btc.spot * 100
    b = b[~np.isnan(b) & (btc.times >= since)]
    assert b.mean() == pytest.approx(-0.012, abs=0.002)
    assert b.std() == pytest.approx(0.063, abs=0.003)
    assert np.percentile(b, 1) == pytest.approx(-0.084, abs=0.005)
    assert np.percentile(b, 99) == pytest.approx(0.170, abs=0.01)
    assert btc.funding_rate.mean() * 100 == pytest.approx(0.0108, abs=0.0003)
    assert np.median(btc.funding_rate) * 100 == pytest.approx(0.0100, abs=0.00005)
    e = (eth.perp - eth.spot) / eth.spot * 100
    assert np.nanstd(e[eth.times >= since]) == pytest.approx(0.071, abs=0.002)
    assert eth.funding_rate.mean() * 100 == pytest.approx(0.0131, abs=0.0003)
    assert set(((btc.funding_time % 86400) // 3600).tolist()) == {0, 8, 16}


def test_spot_gaps_are_reported_and_carried(shipped) -> None:
    btc = shipped["BTC"]
    gaps = btc.spot_gaps()
    # 49 missing hours, plus the 2 outage candles (zero volume, flat) that are gaps now, not prices
    assert sum(n for _, n in gaps) == int(np.isnan(btc.spot).sum()) == 51
    from basis_mcp.clock import iso

    assert [iso(t) for t in btc.stale_times()] == ["2019-09-08T19:00:00Z", "2019-09-09T01:00:00Z", "2019-09-09T02:00:00Z",
                                                    "2021-02-11T04:00:00Z", "2023-03-24T13:00:00Z"]
    assert int(np.isnan(btc.perp).sum()) == 3  # the perp's own outage candles in its first days
    t_gap, hours = max(gaps, key=lambda g: g[1])
    clock = SimClock(t_gap)
    feed = ReplayFeed(shipped, clock)
    snap = feed.snapshot("BTC")
    assert snap.spot_time == t_gap - 3600  # last good spot, one bar before the gap
    assert snap.data_age_seconds == 3600 and snap.perp_time == t_gap
    # samples are never taken from a carried-over price
    times, _ = feed.basis_series("BTC", t_gap - 3 * 3600, t_gap + (hours + 2) * 3600)
    assert not any(t_gap <= t < t_gap + hours * 3600 for t in times.tolist())


def test_feed_refuses_times_outside_a_symbols_data(shipped) -> None:
    feed = ReplayFeed(shipped, SimClock(parse_time("2024-01-01")))
    with pytest.raises(MarketDataUnavailable):
        feed.snapshot("SOL")  # SOL perp data starts 2025-02
    assert feed.snapshot("BTC").funding_interval_hours == 8.0
