"""Regime-aware sizing: the realised-volatility regime of the last 7 days and the basis's
stability scale the recommended size, and `size_position` says which scale applied and why."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client

from basis_mcp.sizing import MIN_REGIME_RETURNS, basis_stability_scale, vol_regime
from tests import scripted
from tests.conftest import call

pytestmark = pytest.mark.anyio


def returns_with_vol(annual_pct: float, n: int = 168) -> np.ndarray:
    """Hourly log returns whose sample std annualises to exactly ``annual_pct``."""
    r = np.random.default_rng(7).standard_normal(n)
    r = (r - r.mean()) / r.std(ddof=1)
    return r * annual_pct / 100.0 / math.sqrt(8760.0)


@pytest.mark.parametrize(("vol", "name", "scale"), [(20, "low", 1.0), (39.9, "low", 1.0), (40.1, "medium", 0.8),
                                                   (69.9, "medium", 0.8), (70.1, "high", 0.5), (119, "high", 0.5),
                                                   (121, "extreme", 0.2), (400, "extreme", 0.2)])
def test_the_regime_table(vol: float, name: str, scale: float) -> None:
    reg = vol_regime(returns_with_vol(vol))
    assert (reg.name, reg.scale) == (name, scale) and reg.realised_vol_pct == pytest.approx(vol)


def test_too_few_returns_is_an_unknown_regime() -> None:
    reg = vol_regime(returns_with_vol(20, MIN_REGIME_RETURNS - 1))
    assert (reg.name, reg.scale, reg.realised_vol_pct) == ("unknown", 0.3, None)
    assert vol_regime(np.array([np.nan] * 200)).name == "unknown"


@given(st.floats(min_value=0, max_value=5))
def test_an_erratic_basis_gets_less_never_below_half(std: float) -> None:
    s = basis_stability_scale(std)
    assert 0.5 <= s <= 1.0
    assert basis_stability_scale(std + 0.01) <= s
    assert basis_stability_scale(None) == 1.0 and basis_stability_scale(0.05) == 1.0 and basis_stability_scale(0.25) == 0.5


async def test_size_position_scales_a_volatile_market_down_and_says_why(make_server, tmp_path: Path) -> None:
    calm = scripted.Market(hours=24 * 30)
    wild = scripted.Market(hours=24 * 30, spot=2_000.0)
    swing = np.where(np.arange(wild.n) % 2 == 0, 1.0, 1.02)  # ±2 % every hour: ~190 %/yr
    wild.spot *= swing
    wild.perp *= swing
    wild.mark = wild.perp.copy()
    wild.mark_high = wild.perp.copy()
    wild.mark_low = wild.perp.copy()
    data = scripted.write(tmp_path, BTC=calm, ETH=wild)
    async with Client(make_server(start="2024-01-15T00:00:00Z", data_path=data)) as client:
        btc = await call(client, "size_position", {"symbol": "BTC"})
        eth = await call(client, "size_position", {"symbol": "ETH"})
    assert btc["regime"] == "low" and btc["regime_scale"] == 1.0 and "full size" in btc["sizing_note"]
    assert btc["binding_cap"] != "volatility_regime"
    assert eth["regime"] == "extreme" and eth["realised_vol_7d_pct"] > 120 and eth["regime_scale"] == 0.2
    assert eth["binding_cap"] != "volatility_regime" and "extreme regime ×0.2" in eth["sizing_note"]
    scale = 0.2 * eth["basis_stability_scale"]
    assert eth["max_notional_usd"] * scale - 2_040 * 0.0001 <= eth["recommended_notional_usd"] <= eth["max_notional_usd"] * scale
    assert btc["recommended_notional_usd"] == btc["max_notional_usd"]


def test_returns_of_any_length_are_annualised_by_their_own_length() -> None:
    two_hourly = returns_with_vol(90.0, 84) * math.sqrt(2.0)  # the same 90 %/yr market seen every 2 h
    reg = vol_regime(two_hourly, period_s=7200.0)
    assert reg.name == "high" and reg.realised_vol_pct == pytest.approx(90.0)
    assert vol_regime(two_hourly[:40], period_s=7200.0).name == "unknown"  # 80 h: less than four days


@pytest.mark.parametrize("sample_seconds", [300, 3600, 7200])
async def test_the_regime_does_not_depend_on_the_sampling_interval(tmp_path: Path, sample_seconds: int) -> None:
    """Five-minute samples (live) are read at the last sample of each hour; two-hour samples as
    two-hour returns: a 100 %/yr market is 'high' either way (never 'low', never 'unknown')."""
    from basis_mcp.config import Settings
    from basis_mcp.desk import Desk

    data = scripted.write(tmp_path, BTC=scripted.Market(hours=24 * 30))
    desk = Desk.open_replay(Settings(zscore_sample_seconds=sample_seconds), tmp_path / "b.db", data_path=data,
                            start="2024-01-15T00:00:00Z")
    try:
        now = desk.now()
        n = int(7 * 86400 / sample_seconds)
        sigma = 100.0 / 100.0 / math.sqrt(365 * 86400 / sample_seconds)  # a random walk at 100 %/yr
        path = 100_000.0 * np.exp(np.cumsum(np.random.default_rng(3).standard_normal(n) * sigma))
        ts = now - sample_seconds * np.arange(n)[::-1]
        with desk.store.tx():
            desk.store.x("DELETE FROM basis_samples")
            desk.store.conn.executemany("INSERT INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES ('BTC',?,?,?,0.1)",
                                        [(int(t), float(p), float(p) * 1.001) for t, p in zip(ts, path, strict=True)])
        returns, period = desk.market.spot_returns("BTC", 7 * 86400.0)
        reg = vol_regime(returns, period)
        assert period == max(sample_seconds, 3600) and reg.name == "high", (reg, returns.size)
    finally:
        desk.close()
