"""The shipped multi-venue funding extract: read back exactly, cross-checked against the Binance
hourly extract, and compared per unit of time whatever each venue's interval."""

from __future__ import annotations

import numpy as np
import pytest

from basis_mcp.clock import parse_time
from basis_mcp.history import load_extract, load_funding_venues
from basis_mcp.signals import funding_apr_pct_between, funding_differential_apr_pct

YEAR_S = 365 * 86400


@pytest.fixture(scope="module")
def venues():
    return load_funding_venues()


def test_every_venue_and_symbol_is_there_with_its_own_interval(venues) -> None:
    assert set(venues) == {(v, s) for v in ("binance", "bybit", "gate", "dydx") for s in ("BTC", "ETH")}
    assert {v: venues[(v, "BTC")].interval_hours for v in ("binance", "bybit", "gate", "dydx")} == {
        "binance": 8.0, "bybit": 8.0, "gate": 8.0, "dydx": 1.0}
    assert venues[("gate", "BTC")].time.size == 4290 and venues[("binance", "BTC")].time.size == 4383  # Gate has gaps
    for s in venues.values():
        assert np.all(np.diff(s.time) > 0) and np.all(np.abs(s.rate) < 0.01)


def test_binance_equals_the_hourly_extract_bit_for_bit(venues) -> None:
    h = load_extract(symbols=["BTC", "ETH"])
    for sym in ("BTC", "ETH"):
        v = venues[("binance", sym)]
        sel = (h[sym].funding_time >= v.time[0]) & (h[sym].funding_time <= v.time[-1])
        assert np.array_equal(h[sym].funding_time[sel].astype(np.int64), v.time)
        assert np.array_equal(h[sym].funding_rate[sel], v.rate)


@pytest.mark.parametrize(("venue", "sym", "apr"), [("binance", "BTC", 14.96), ("binance", "ETH", 18.51), ("bybit", "BTC", 16.71),
                                                   ("bybit", "ETH", 17.85), ("gate", "BTC", 14.03), ("gate", "ETH", 15.49),
                                                   ("dydx", "BTC", 4.62), ("dydx", "ETH", 3.76)])
def test_the_annualised_means_of_the_data_readme(venues, venue: str, sym: str, apr: float) -> None:
    s = venues[(venue, sym)]
    assert s.rate.mean() * 8760 / s.interval_hours * 100 == pytest.approx(apr, abs=0.01)


def test_hourly_and_8_hourly_venues_compare_per_unit_of_time(venues) -> None:
    t0, t1 = parse_time("2022-01-01T00:00:00Z") - 1, parse_time("2023-12-31T23:00:00Z")
    b, d = venues[("binance", "BTC")], venues[("dydx", "BTC")]
    b_apr = funding_apr_pct_between(b.time, b.rate, t0, t1)
    d_apr = funding_apr_pct_between(d.time, d.rate, t0, t1)
    assert b_apr == pytest.approx(b.rate[b.time > t0].sum() / ((t1 - t0) / YEAR_S) * 100)
    assert funding_differential_apr_pct((b.time, b.rate), (d.time, d.rate), t0, t1) == pytest.approx(b_apr - d_apr)
    # a constant 0.01 %/8h and a constant 0.01/8 %/h are the same carry: zero differential
    hours = np.arange(t0 + 1, t1 + 1, 3600, dtype=np.int64)
    eights = hours[(hours % (8 * 3600)) == 0]
    assert funding_differential_apr_pct((eights, np.full(eights.size, 1e-4)), (hours, np.full(hours.size, 1e-4 / 8)),
                                        t0, t1) == pytest.approx(0.0, abs=0.01)
    with pytest.raises(ValueError):
        funding_apr_pct_between(b.time, b.rate, t1, t0)
