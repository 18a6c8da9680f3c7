"""Pure math: z-score, expected return, costs, margin, sizing, ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basis_mcp import margin as mm
from basis_mcp.config import DEFAULT_SPECS, SymbolSpec
from basis_mcp.costs import LegCosts
from basis_mcp.ledger import held_by_leg, leg_key, pnl
from basis_mcp.signals import (
    RollingZScore,
    estimate_net_return,
    funding_apr_pct,
    rolling_zscore,
    settlements_in,
    zscore_stats,
)
from basis_mcp.sizing import Cap, floor_to_step, size_position

finite = st.floats(min_value=-5, max_value=5, allow_nan=False, allow_infinity=False)


def reference_z(values: list[float], window: int, min_samples: int = 30) -> list[float | None]:
    out: list[float | None] = []
    for i in range(len(values)):
        w = np.array(values[max(0, i + 1 - window) : i + 1])
        if w.size < min_samples:
            out.append(None)
            continue
        sd = w.std()
        out.append(0.0 if sd < 1e-8 else (values[i] - w.mean()) / sd)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.integers(min_value=2, max_value=80), st.integers(min_value=1, max_value=40))
def test_rolling_zscore_matches_reference(values: list[float], window: int, min_samples: int) -> None:
    tr = RollingZScore(window, min_samples=min_samples)
    got = [tr.add(v) for v in values]
    ref = reference_z(values, window, min_samples)
    vec = rolling_zscore(np.array(values), window, min_samples)
    for i, (g, r, v) in enumerate(zip(got, ref, vec, strict=True)):
        if r is None:
            assert g is None and np.isnan(v)
            continue
        assert g == pytest.approx(r, abs=1e-6)
        w = np.array(values[max(0, i + 1 - window) : i + 1])
        if w.std() > 1e-4 * max(1.0, float(np.abs(values).max())):  # conditioned like basis data
            assert v == pytest.approx(r, abs=1e-6)


def test_vectorised_zscore_matches_the_live_tracker_on_real_basis() -> None:
    from basis_mcp.history import load_extract

    h = load_extract(symbols=["BTC"])["BTC"]
    b = (h.perp - h.spot) / h.spot * 100
    b = b[~np.isnan(b)]
    vec = rolling_zscore(b, 1080)
    tr = RollingZScore(1080)
    live = np.array([np.nan if (z := tr.add(v)) is None else z for v in b.tolist()])
    assert np.array_equal(np.isnan(vec), np.isnan(live))
    assert np.nanmax(np.abs(vec - live)) < 1e-9


def test_zscore_rules() -> None:
    tr = RollingZScore(1080)
    assert all(tr.add(0.01 * i) is None for i in range(29))
    assert tr.add(1.0) is not None  # 30th sample
    flat = RollingZScore(100)
    for _ in range(50):
        z = flat.add(0.05)
    assert z == 0.0
    st_ = zscore_stats(np.array([0.0] * 10 + [1.0] * 20), 1080)
    assert st_.n == 30 and st_.zscore is not None and st_.minimum == 0.0 and st_.maximum == 1.0


def test_zscore_long_run_does_not_drift() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(50_000, 3, size=30_000)  # large mean, small spread: the hard case for running sums
    tr = RollingZScore(1080)
    for v in x:
        z = tr.add(float(v))
    w = x[-1080:]
    assert z == pytest.approx((x[-1] - w.mean()) / w.std(), rel=1e-6)


def test_net_return_is_honest_not_times_1095() -> None:
    # $10k, basis 0.10 %, funding 0.01 %/8h, 30 days: the basis is earned ONCE (~$10),
    # funding 90 settlements × ~$1 = ~$90. The x1095 error would claim ~$10,950 from the basis.
    est = estimate_net_return(
        notional_usd=10_000, spot_price=100.0, perp_price=100.1, hold_days=30, exit_basis_pct=0.0,
        funding_rate=0.0001, funding_interval_hours=8, seconds_to_next_funding=8 * 3600,
        leverage=2, entry_exit_cost_usd=(30.0, 2.0),
    )
    assert est.basis_capture_usd == pytest.approx(10.0)
    assert est.settlements == 90
    assert est.funding_usd == pytest.approx(100 * 100.1 * 0.0001 * 90)
    assert est.net_usd == pytest.approx(10.0 + est.funding_usd - 32.0)
    assert est.capital_employed_usd == pytest.approx(10_000 + 100 * 100.1 / 2)
    assert est.apy_pct == pytest.approx(est.net_usd / est.capital_employed_usd * 100 / 30 * 365)
    assert est.apy_pct < 15  # a carry trade, not a 1000 % APY
    assert est.break_even_hold_days == pytest.approx((32.0 - 10.0) / (100 * 100.1 * 0.0001 * 3))
    never = estimate_net_return(
        notional_usd=10_000, spot_price=100.0, perp_price=100.0, hold_days=30, exit_basis_pct=0.0,
        funding_rate=-0.0001, funding_interval_hours=8, seconds_to_next_funding=100,
        leverage=2, entry_exit_cost_usd=(30.0, 2.0),
    )
    assert never.break_even_hold_days is None


def test_funding_schedule_math() -> None:
    assert settlements_in(3600, 8, 3599) == 0
    assert settlements_in(3600, 8, 3600) == 1
    assert settlements_in(3600, 8, 3600 + 8 * 3600) == 2
    assert settlements_in(600, 1, 24 * 3600) == 24
    assert funding_apr_pct(0.0001, 8) == pytest.approx(10.95)
    assert funding_apr_pct(0.0001, 4) == pytest.approx(21.9)


def test_binance_brackets_and_liquidation_formula() -> None:
    table = DEFAULT_SPECS["BTC"].brackets
    assert [b.cum_usd for b in table[:3]] == [0.0, 50.0, 3050.0]
    assert mm.maintenance_margin(40_000, table) == pytest.approx(160.0)
    assert mm.maintenance_margin(100_000, table) == pytest.approx(100_000 * 0.005 - 50)
    # isolated short: LP = (WB + cum + Q·EP) / (Q·(1 + MMR))
    wb, q, ep = 2_500.0, 0.05, 100_000.0
    lp = mm.liquidation_price(wb, -q, ep, table)
    assert lp == pytest.approx((wb + 0 + q * ep) / (q * (1 + 0.004)))
    assert mm.margin_ratio(wb, -q, ep, lp, table) == pytest.approx(1.0)
    # a larger short lands in the second bracket and uses its cum
    q2 = 2.0
    lp2 = mm.liquidation_price(150_000.0, -q2, 60_000.0, table)
    assert lp2 == pytest.approx((150_000 + 50 + q2 * 60_000) / (q2 * 1.005))
    assert mm.margin_ratio(150_000.0, -q2, 60_000.0, lp2, table) == pytest.approx(1.0)
    # long side mirror
    lpl = mm.liquidation_price(2_500.0, q, ep, table)
    assert mm.margin_ratio(2_500.0, q, ep, lpl, table) == pytest.approx(1.0)
    assert mm.bankruptcy_price(wb, -q, ep) == pytest.approx(ep + wb / q)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=10, max_value=1e6),
    st.floats(min_value=0.001, max_value=20),
    st.floats(min_value=1, max_value=5),
)
def test_liquidation_price_is_where_margin_ratio_hits_one(ep: float, q: float, lev: float) -> None:
    table = SymbolSpec().brackets
    wb = q * ep / lev
    lp = mm.liquidation_price(wb, -q, ep, table)
    assert lp > ep
    assert mm.margin_ratio(wb, -q, ep, lp, table) == pytest.approx(1.0, rel=1e-9)


def test_costs_square_root_impact() -> None:
    leg = LegCosts(taker_fee=0.001, half_spread_bps=1.0, impact_bps_per_sqrt_musd=10.0)
    assert leg.slippage_fraction(1e6) == pytest.approx(11e-4)
    assert leg.slippage_fraction(1e4) == pytest.approx(2e-4)
    assert leg.fill_price(100.0, "buy", 1e6) == pytest.approx(100.11)
    assert leg.fill_price(100.0, "sell", 1e6) == pytest.approx(99.89)


def test_sizing_names_the_binding_cap() -> None:
    costs = SymbolSpec().costs
    caps = [Cap("max_position_notional", 5000, ""), Cap("tier_single_position", 25_000, "")]
    r = size_position(spot_price=100_000, leverage=2, costs=costs, free_capital_usd=1e6, caps=caps, qty_step=0.001, min_notional_usd=100)
    assert r.binding_cap == "max_position_notional" and r.quantity == 0.05 and r.notional_usd == pytest.approx(5000)
    r = size_position(spot_price=100_000, leverage=2, costs=costs, free_capital_usd=3000, caps=caps, qty_step=0.001, min_notional_usd=100)
    assert r.binding_cap == "free_capital" and r.capital_required_usd <= 3000
    r = size_position(spot_price=100_000, leverage=2, costs=costs, free_capital_usd=50, caps=caps, qty_step=0.001, min_notional_usd=100)
    assert r.notional_usd == 0 and r.binding_cap == "venue_min_notional"
    assert floor_to_step(0.3, 0.1) == 0.3 and floor_to_step(0.0499999, 0.001) == 0.049 and floor_to_step(7.9, 1.0) == 7.0


fill = st.fixed_dictionaries({
    "market": st.sampled_from(["spot", "perp"]),
    "leg_id": st.sampled_from([None, 1, 2, 3]),  # desk fills belong to a leg; backtest fills only name their market
    "side": st.sampled_from(["buy", "sell"]),
    "quantity": st.floats(min_value=0.001, max_value=10),
    "price": st.floats(min_value=1, max_value=200_000),
    "slip": st.floats(min_value=-0.01, max_value=0.01),
    "fee_usd": st.floats(min_value=0, max_value=100),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(fill, max_size=12), st.lists(st.floats(min_value=-50, max_value=50), max_size=10),
       st.lists(st.floats(min_value=-5, max_value=0), max_size=5))
def test_ledger_identity(fills: list[dict], funding: list[float], borrow: list[float]) -> None:
    rows = [{**f, "mid_price": f["price"] / (1 + f["slip"])} for f in fills]
    held = held_by_leg(rows)
    marks = {"spot": 1000.0, "perp": 1001.0, 1: 990.0, 2: 1010.0, 3: 5.0}
    p = pnl(rows, funding, marks, borrow)
    cash = sum((1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] for f in rows)
    open_value = sum(q * marks[k] for k, q in held.items())
    assert set(held) == {leg_key(f) for f in rows}
    assert p.total_usd == pytest.approx(cash + open_value - sum(f["fee_usd"] for f in rows) + sum(funding) + sum(borrow), abs=1e-6)
    assert p.total_usd == pytest.approx(p.basis_pnl_usd - p.slippage_usd - p.fees_usd + p.funding_usd + p.borrow_usd, abs=1e-6)
    assert math.isfinite(p.total_usd)
