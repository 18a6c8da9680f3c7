"""A full backtest costs O(bars + trades): booking, margin top-ups and the equity curve read each
trade's own bars and settlements, never the whole history once per trade. Each fast path is held
to the straightforward method it replaced, on the shipped BTC + ETH history."""

from __future__ import annotations

import numpy as np
import pytest

from basis_mcp.backtest import BacktestParams, prepare, run_vectorized
from basis_mcp.backtest.engine import _carried, book_trades, features
from basis_mcp.backtest.portfolio import margin_topups, wallet_for_liquidation_prices
from basis_mcp.backtest.results import equity_curve, yearly
from basis_mcp.backtest.runner import load_markets, run
from basis_mcp.clock import parse_time
from basis_mcp.config import Settings
from basis_mcp.history import load_extract

CASES = [BacktestParams(), BacktestParams(playbook="carry"), BacktestParams(playbook="carry", notional_usd=25_000),
         BacktestParams(strategy="reverse_cash_and_carry", playbook="carry")]


@pytest.fixture(scope="module")
def histories():
    return load_extract(symbols=["BTC", "ETH"])


def markets(histories, p: BacktestParams):
    return [prepare(histories[s], parse_time("2020-01-01"), parse_time("2026-05-16"), p) for s in ("BTC", "ETH")]


def _topups(fresh, price, credited, qty, ep, w0, table, add_pct, target_pct, short):
    """The method before: the wallet needed at every bar as arrays, searched again after each top-up."""
    sign = 1.0 if short else -1.0
    need = wallet_for_liquidation_prices(price * (1.0 + sign * add_pct / 100.0), qty, ep, table, short) - w0 - credited
    goal = wallet_for_liquidation_prices(price * (1.0 + sign * target_pct / 100.0), qty, ep, table, short) - w0 - credited
    out, added, start = [], 0.0, 0
    while start < fresh.size:
        hit = np.flatnonzero(need[start:] > added)
        if hit.size == 0:
            break
        k = start + int(hit[0])
        amount = float(goal[k] - added)
        if amount > 0:
            out.append((int(fresh[k]), amount))
            added += amount
        start = k + 1
    return out


def old_margin_topups(m, f, e, x, qty, leverage, table, add_pct, target_pct, direction=1):
    """The method before: funding and borrow prefix sums over the whole history, once per trade."""
    if x <= e + 1:
        return []
    bars = np.arange(e + 1, x)
    fresh = bars[f["valid"][e + 1 : x]]
    if fresh.size == 0:
        return []
    ft = m.f_time.astype(np.float64)
    f_bar = ((ft - m.t[0]) // m.bar_s).astype(np.int64)
    inside = (f_bar >= 0) & (f_bar < m.t.size)  # the market's arrays cover its range and warm-up only
    ft, f_bar = ft[inside], f_bar[inside]
    paid = qty * m.mark[f_bar] * m.f_rate[inside]
    sel = (ft > m.t[e]) & (ft <= m.t[x])
    cum = np.zeros(m.t.size + 1)
    np.add.at(cum, f_bar[sel] + 1, paid[sel])
    funded = np.cumsum(cum)[1:][fresh]
    perp_side = "sell" if direction == 1 else "buy"
    ep = float(m.costs.perp.fill_price(m.perp[e], perp_side, qty * m.perp[e]))
    out = _topups(fresh, m.mark[fresh], direction * funded, qty, ep, qty * ep / leverage, table, add_pct, target_pct,
                  short=direction == 1)
    if direction == -1:
        spot = _carried(m.spot)
        sp = float(m.costs.spot.fill_price(m.spot[e], "sell", qty * m.spot[e]))
        paid_h = np.concatenate(([0.0], np.cumsum(qty * spot * f["borrow_bar"])))
        borrowed = paid_h[fresh + 1] - paid_h[e + 1]
        out += _topups(fresh, spot[fresh], -borrowed, qty, sp, qty * sp / leverage, table, add_pct, target_pct, short=True)
        out.sort()
    return out


@pytest.mark.parametrize("p", CASES, ids=lambda p: f"{p.strategy}-{p.playbook}-{p.notional_usd:g}")
def test_booking_and_topups_per_trade_match_the_whole_history_method(histories, p: BacktestParams) -> None:
    s = Settings()
    n_topups = 0
    for m in markets(histories, p):
        f = features(m, p)
        trades = run_vectorized(m, p, f)
        assert trades
        e = np.array([t.entry_index for t in trades])
        x = np.array([t.exit_index for t in trades])
        q = np.array([t.quantity for t in trades])
        batch = book_trades(m, p, f, e, x, q, [t.reason for t in trades])
        for k, t in enumerate(batch):  # one at a time (the book's pass) = all at once, to the bit
            assert book_trades(m, p, f, e[k : k + 1], x[k : k + 1], q[k : k + 1], [t.reason])[0] == t
            table = s.spec(m.symbol).brackets
            args = (m, f, int(e[k]), int(x[k]), float(q[k]), p.leverage, table, s.liquidation_distance_add_pct,
                    s.liquidation_distance_target_pct, p.direction)
            new, old = margin_topups(*args), old_margin_topups(*args)
            assert [b for b, _ in new] == [b for b, _ in old]
            assert [a for _, a in new] == pytest.approx([a for _, a in old], abs=1e-6)
            n_topups += len(new)
    if p.notional_usd > 5_000 or p.direction == -1:
        assert n_topups > 0  # the $25k shorts through the rallies (and the reverse legs) do get topped up


def per_trade_equity(m, trades, capital: float) -> np.ndarray:
    """The straightforward curve: every trade marked bar by bar over its hold (basis change since entry, less
    its entry costs, plus each settlement it received), then its P&L added to the whole rest of the array."""
    lo, n = m.i0, m.i1 - m.i0 + 1
    spot, perp = m.spot[lo : m.i1 + 1], m.perp[lo : m.i1 + 1]
    idx = np.where(np.isnan(spot) | np.isnan(perp), 0, np.arange(n))
    np.maximum.accumulate(idx, out=idx)
    bu = perp[idx] - spot[idx]
    f_bar = ((m.f_time.astype(np.float64) - m.t[lo]) // m.bar_s).astype(np.int64)
    ok = (f_bar >= 0) & (f_bar < n)
    settled = {}  # bar -> [mark × rate of each settlement on it]
    for k, r in zip(f_bar[ok].tolist(), m.f_rate[ok].tolist(), strict=True):
        settled.setdefault(k, []).append(float(m.mark[k + lo]) * r)
    eq = np.full(n, capital)
    for t in trades:
        d = -1 if t.strategy == "reverse_cash_and_carry" else 1
        fd = 1 if t.strategy == "cash_and_carry" else -1
        i, j, q = t.entry_index - lo, t.exit_index - lo, t.quantity
        cost = 0.0
        for mid, leg, side in ((spot[i], m.costs.spot, "buy" if d == 1 else "sell"),
                               (perp[i], m.costs.perp, "sell" if d == 1 else "buy")):
            price = leg.fill_price(mid, side, q * mid)
            cost += q * price * leg.taker_fee + abs(price - mid) * q
        got = 0.0
        for b in range(i, j):
            if b > i:
                got += sum(q * u for u in settled.get(b, ()))
            eq[b] += d * q * (bu[i] - bu[b]) - cost + fd * got
        eq[j:] += t.pnl_usd
    return eq


@pytest.mark.parametrize("p", CASES[:2] + CASES[3:], ids=lambda p: f"{p.strategy}-{p.playbook}")
def test_equity_curve_equals_marking_every_trade_over_the_rest_of_the_array(histories, p: BacktestParams) -> None:
    for m in markets(histories, p):
        m = prepare(load_extract(symbols=[m.symbol])[m.symbol], parse_time("2021-01-01"), parse_time("2022-07-01"), p)
        trades = run_vectorized(m, p)
        assert trades
        times, eq = equity_curve([m], trades, p.capital_usd)
        assert eq == pytest.approx(per_trade_equity(m, trades, p.capital_usd), abs=0.005)  # to the cent
        assert eq[-1] == pytest.approx(p.capital_usd + sum(t.pnl_usd for t in trades), abs=1e-6)


def test_yearly_marks_each_years_last_bar(histories) -> None:
    p = BacktestParams(playbook="carry")
    res = run(load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p), p, extras=False)
    ys = res.times.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    prev, want = p.capital_usd, {}
    for y in np.unique(ys):
        last = float(res.equity[np.flatnonzero(ys == y)[-1]])
        want[int(y)], prev = last - prev, last
    assert yearly(res.times, res.equity, p.capital_usd) == want


def test_the_book_reuses_each_symbols_curve(histories) -> None:
    """The book's curve is built from the per-symbol curves: the same numbers as building it afresh."""
    p = BacktestParams()
    ms = load_markets(histories, ["BTC", "ETH"], "2020-01-01", "2026-05-16", p)
    res = run(ms, p)
    times, eq = equity_curve(ms, res.trades, p.capital_usd)
    assert np.array_equal(times, res.times)
    assert res.equity == pytest.approx(eq, abs=1e-6)


# ----------------------------------------------------------------------------- the compiled core


@pytest.mark.parametrize("p", [
    BacktestParams(), BacktestParams(playbook="carry"), BacktestParams(fill_delay_seconds=0),
    BacktestParams(min_zscore=1.2, fill_delay_seconds=2 * 3600, basis_stop_sigmas=0.5, flip_sigmas=0.2,
                   funding_exit_8h_pct=0.005, funding_exit_hours=8, basis_smoothing_hours=3),
    BacktestParams(playbook="carry", fill_delay_seconds=3 * 3600, basis_stop_sigmas=0.5, basis_smoothing_hours=2),
    BacktestParams(strategy="reverse_cash_and_carry"), BacktestParams(strategy="reverse_cash_and_carry", playbook="carry",
                                                                        borrow_scenario="spike"),
], ids=lambda p: f"{p.strategy}-{p.playbook}-d{p.fill_delay_seconds:g}-s{p.basis_stop_sigmas:g}-{p.borrow_scenario}")
def test_the_books_pass_and_the_compiled_walk_make_the_same_trades(histories, p: BacktestParams) -> None:
    """`run_vectorized` walks the bars in one compiled call; the book's pass steps through `TradeFinder` one
    trade at a time. With capital to spare they are the same rules and make the same trades."""
    from basis_mcp.backtest.portfolio import simulate

    ms = markets(histories, p)
    feats = {m.symbol: features(m, p) for m in ms}
    book, _ = simulate(ms, p, feats, Settings())
    for m in ms:
        walk = run_vectorized(m, p, feats[m.symbol])
        assert walk and [(t.entry_index, t.exit_index, t.quantity, t.reason) for t in walk] == [
            (t.entry_index, t.exit_index, t.quantity, t.reason) for t in book[m.symbol]]
        assert [t.pnl_usd for t in walk] == [t.pnl_usd for t in book[m.symbol]]


def test_the_compiled_rolling_z_score_is_the_windows_own(histories) -> None:
    from basis_mcp.backtest.core import rolling_z_std
    from basis_mcp.signals import ZSCORE_MIN_SAMPLES, ZSCORE_STD_FLOOR

    h = histories["BTC"]
    b = (h.perp - h.spot) / h.spot * 100.0
    x = b[~np.isnan(b)][:20_000]
    flat = np.concatenate((x[:500], np.full(300, 0.0123456789), x[500:900]))  # a flat stretch: std 0, z 0
    for series, w in ((x, 1080), (x, 97), (flat, 200)):
        z, sd = rolling_z_std(series, w, ZSCORE_MIN_SAMPLES, ZSCORE_STD_FLOOR)
        assert np.isnan(z[: ZSCORE_MIN_SAMPLES - 1]).all() and np.isnan(sd[: ZSCORE_MIN_SAMPLES - 1]).all()
        for i in range(ZSCORE_MIN_SAMPLES - 1, series.size, 7):
            win = series[max(0, i + 1 - w) : i + 1]
            s = win.std()
            assert sd[i] == pytest.approx(s, rel=1e-9, abs=1e-15)
            assert z[i] == (0.0 if s < ZSCORE_STD_FLOOR else pytest.approx((series[i] - win.mean()) / s, rel=1e-8, abs=1e-9))
