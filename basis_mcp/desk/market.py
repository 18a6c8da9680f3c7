"""Market data: the feeds, each symbol's snapshot, and the basis history the rules read.

Owns the feeds (one per watched venue; the first trades), the basis samples (one per symbol
per bucket, in ``basis_samples``) and the rolling z-score trackers, and turns them into the
`Signals` the playbooks read. Calls only the store and `Events`/`VenueHealth`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from basis_mcp.borrow import BorrowModel, borrow_8h_pct
from basis_mcp.clock import Clock, iso
from basis_mcp.config import Settings
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable, Snapshot, base_asset
from basis_mcp.playbooks import Signals
from basis_mcp.signals import ZSCORE_MIN_SAMPLES, RollingZScore, realised_vol_1h_pct
from basis_mcp.store import Store
from basis_mcp.strategies.base import SPOT_LIKE, StrategySpec
from basis_mcp.venue.base import VenueError, VenueTimeout
from basis_mcp.venues import split

FUND_DIGITS = 12  # funding means are rounded like the backtest's (basis_mcp.backtest.engine.FUND_DIGITS)
_FUND_SCALE = float(10**FUND_DIGITS)  # exact (as NumPy's round computes it) for up to 22 digits


def round_fund(x: float) -> float:
    """``float(np.round(x, FUND_DIGITS))`` bit for bit (× 10^12, rounded half to even, ÷ 10^12, the sign of a
    zero kept) without NumPy's cost on one float; the reference replay keeps NumPy's."""
    if not math.isfinite(x):
        return float(np.round(x, FUND_DIGITS))
    y = x * _FUND_SCALE
    return math.copysign(round(y) / _FUND_SCALE, y)


class MarketData:
    def __init__(self, settings: Settings, store: Store, feed: Any, clock: Clock, events: Events, health: VenueHealth):
        self.settings = settings
        self.store = store
        self.feed = feed  # the trading venue's feed
        self.feeds: dict[str, Any] = {feed.venue: feed}
        self.clock = clock
        self.events = events
        self.health = health
        self.z: dict[str, RollingZScore] = {}
        self._pending_samples: list[tuple[str, int, float, float, float]] = []
        self._last_sample_ts: dict[str, int | None] = {}
        self._premia: dict[str, deque[tuple[float, float]]] = {}  # live quarterlies: the premium as observed

    # ------------------------------------------------------------------ time and freshness

    def now(self) -> float:
        return self.clock.now()

    @property
    def live(self) -> bool:
        return not self.clock.simulated

    async def ensure_fresh(self, max_age_s: float = 1.0) -> None:
        """Live: refresh the feeds if the last refresh is older than ``max_age_s``."""
        if not self.live:
            return
        for f in self.feeds.values():
            if f.last_refresh is None or self.now() - f.last_refresh > max_age_s:
                try:
                    await f.refresh()
                except (VenueError, VenueTimeout) as e:
                    self.health.down(str(e))
                    if f is self.feed:
                        return
        self.health.up()

    def stale_limit(self) -> float:
        return self.settings.max_stale_seconds_replay if self.clock.simulated else self.settings.max_stale_seconds_live

    def fill_time(self, *symbols: str) -> float | None:
        """Replay with a fill delay: the market time orders on ``symbols`` placed now fill at (the first
        bar at or after now + delay fresh on every one of them), so no agent sees a price before the
        clock reaches it. None: at once."""
        delay = self.settings.fill_delay_seconds
        if delay <= 0 or not self.clock.simulated:
            return None
        t = self.now() + delay
        for _ in range(len(symbols) + 1):  # the latest first-fresh bar over the symbols, checked again on each
            times = [self.feed.first_fresh_at_or_after(sym, t) for sym in symbols]
            missing = [sym for sym, x in zip(symbols, times, strict=True) if x is None]
            if missing:
                raise Rejected("fill_delay_seconds", delay, f"no fresh {missing[0]} price {delay:g} s after {iso(self.now())} "
                               "to fill at: the replay data ends first")
            if max(times) == t:  # type: ignore[type-var]
                return t
            t = max(times)  # type: ignore[type-var]
        return t

    # ------------------------------------------------------------------ symbols and prices

    @property
    def symbols(self) -> list[str]:
        return self.feed.symbols

    def known_symbols(self) -> list[str]:
        return sorted(set(self.feed.symbols) | set(getattr(self.feed, "listed", [])))

    def resolve(self, raw: str, field: str = "symbol") -> str:
        """The base asset ``raw`` names on the trading venue, or a refusal naming ``field``."""
        if "@" in raw:
            raise Rejected(field, raw, "name the coin (BTC); the venues are chosen by the strategy (cross_exchange: short_venue "
                           "and long_venue)")
        try:
            base = base_asset(raw)
        except ValueError as e:
            raise Rejected(field, raw, str(e)) from None
        if base not in self.known_symbols():
            raise Rejected(field, raw, f"unknown symbol on {self.feed.venue}; this desk trades {', '.join(self.feed.symbols)}")
        return base

    def feed_of(self, instrument: str) -> tuple[Any, str]:
        """(the feed of the venue an instrument trades on, its name there): ``BTC@bybit`` → bybit's feed, ``BTC``."""
        sym, venue = split(instrument)
        if venue is None or venue == self.feed.venue:
            return self.feed, sym
        f = self.feeds.get(venue)
        if f is None:
            raise MarketDataUnavailable(f"no market data from {venue} on this desk")
        return f, sym

    def snapshot(self, symbol: str, field: str = "symbol") -> Snapshot:
        try:
            feed, sym = self.feed_of(symbol)
            return feed.snapshot(sym)
        except MarketDataUnavailable as e:
            raise Rejected(field, symbol, f"no market data at {iso(self.now())}: {e}") from None

    def mid(self, market: str, symbol: str) -> float:
        """Mid price of an instrument now (MarketDataUnavailable if none)."""
        feed, sym = self.feed_of(symbol)
        snap = feed.snapshot(sym)
        return snap.spot if market in SPOT_LIKE else snap.perp

    def mark(self, market: str, symbol: str) -> float:
        """What an open holding of an instrument is valued at: spot mid, or the derivative's mark price."""
        feed, sym = self.feed_of(symbol)
        snap = feed.snapshot(sym)
        return snap.spot if market in SPOT_LIKE else snap.mark

    def venue_symbol(self, market: str, symbol: str) -> str:
        feed, sym = self.feed_of(symbol)
        if market == "future" and hasattr(feed, "future_symbol"):  # a live venue's quarterly: BTC/USDT:USDT-240628
            return feed.future_symbol(sym)
        return feed.spot_symbol(sym) if market in SPOT_LIKE else feed.perp_symbol(sym)

    def realised_vol_1h_pct(self, snap: Snapshot) -> float | None:
        if snap.prev_perp is None:
            return None
        return realised_vol_1h_pct(snap.mark_high, snap.mark_low, snap.prev_perp, snap.perp)

    # ------------------------------------------------------------------ basis history

    def sample_bucket(self, t: float) -> int:
        step = self.settings.zscore_sample_seconds
        return int(t // step * step)

    def warm_history(self) -> None:
        """First start in replay: backfill one window of samples (the last ``window`` fresh bars) before now."""
        if not self.clock.simulated:
            return
        now = self.now()
        w = self.settings.zscore_window
        rows = []
        for sym in self.feed.symbols:
            have = self.store.one("SELECT COUNT(*) AS n FROM basis_samples WHERE symbol = ? AND ts <= ?", (sym, now))["n"]
            if have >= w:
                continue
            # the window is the last `w` fresh samples, not the last `w` hours: reach back past any gaps
            h = self.feed.h[sym]
            times, basis = self.feed.basis_series(sym, h.t0, now)
            times, basis = times[-w:], basis[-w:]
            for t, b in zip(times.tolist(), basis.tolist(), strict=True):
                i = h.index_at(t)
                rows.append((sym, int(t), float(h.spot[i]), float(h.perp[i]), float(b)))
        if rows:
            with self.store.tx():
                self.store.conn.executemany(
                    "INSERT OR IGNORE INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES (?,?,?,?,?)", rows)

    async def warm_history_live(self) -> None:
        """Live: backfill one window of hourly samples from the venue's klines (best effort)."""
        w = min(self.settings.zscore_window, 1000)
        for sym in self.feed.symbols:
            have = self.store.one("SELECT COUNT(*) AS n FROM basis_samples WHERE symbol = ?", (sym,))["n"]
            if have >= w:
                continue
            try:
                rows = await self.feed.basis_history(sym, w)
            except (VenueError, VenueTimeout) as e:
                self.events.audit("system", "zscore_warmup_skipped", {"symbol": sym}, "warning", str(e))
                continue
            with self.store.tx():
                self.store.conn.executemany(
                    "INSERT OR IGNORE INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES (?,?,?,?,?)",
                    [(sym, t, sp, pp, (pp - sp) / sp * 100.0) for t, sp, pp in rows])

    def load_tracker(self, symbol: str) -> None:
        tr = RollingZScore(self.settings.zscore_window)
        rows = self.store.q("SELECT basis_pct FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
                            (symbol, self.now(), self.settings.zscore_window))
        for r in reversed(rows):
            tr.add(r["basis_pct"])
        self.z[symbol] = tr
        last = self.store.one("SELECT MAX(ts) AS t FROM basis_samples WHERE symbol = ?", (symbol,))
        self._last_sample_ts[symbol] = last["t"] if last and last["t"] is not None else None

    def queue_sample(self, snap: Snapshot) -> None:
        """Queue a basis sample if both legs were observed in the current bucket."""
        bucket = self.sample_bucket(snap.now)
        if self.sample_bucket(snap.spot_time) != bucket or self.sample_bucket(snap.perp_time) != bucket:
            return
        if self._last_sample_ts.get(snap.symbol) is not None and bucket <= self._last_sample_ts[snap.symbol]:
            return
        self._last_sample_ts[snap.symbol] = bucket
        self._pending_samples.append((snap.symbol, bucket, snap.spot, snap.perp, snap.basis_pct))

    def sample_all(self) -> None:
        """Queue a sample of every symbol the trading feed has a price for now."""
        for sym in self.feed.symbols:
            try:
                self.queue_sample(self.feed.snapshot(sym))
            except MarketDataUnavailable:
                continue

    def queue_samples_at(self, times: list[float]) -> None:
        """Queue at once the samples `sample_all` would queue at each of ``times`` (hourly, in order; a replay
        skipping hours with nothing open): the same rows (symbol by symbol: the table keeps no order)."""
        step = self.settings.zscore_sample_seconds
        tt = np.asarray(times, dtype=np.int64)
        bucket = tt // step * step
        for sym in self.feed.symbols:
            ok, spot, perp, spot_t, perp_t = self.feed.observed(sym, tt)
            ok &= (spot_t // step * step == bucket) & (perp_t // step * step == bucket)  # both legs seen this bucket
            idx = np.flatnonzero(ok)
            b = bucket[idx]
            last = self._last_sample_ts.get(sym)
            after = np.iinfo(np.int64).min if last is None else int(last)
            if idx.size:  # one per bucket (buckets only grow), and only after the last one sampled
                idx = idx[b > np.maximum(np.concatenate(([after], b[:-1])), after)]
            if idx.size:
                self._last_sample_ts[sym] = int(bucket[idx[-1]])
                s, p = spot[idx], perp[idx]
                self._pending_samples += zip([sym] * idx.size, bucket[idx].tolist(), s.tolist(), p.tolist(),
                                             ((p - s) / s * 100.0).tolist(), strict=True)

    def flush_samples(self, extra_meta: dict[str, str] | None = None) -> int:
        rows = self._pending_samples
        if not rows and not extra_meta:
            return 0
        self._pending_samples = []
        with self.store.tx():
            self.store.xmany("INSERT OR IGNORE INTO basis_samples(symbol, ts, spot, perp, basis_pct) VALUES (?,?,?,?,?)", rows)
            for k, v in (extra_meta or {}).items():
                self.store.set_meta(k, v)
        added: dict[str, list[float]] = {}
        for sym, _, _, _, b in rows:
            added.setdefault(sym, []).append(b)
        for sym, values in added.items():
            self.z[sym].extend(values)
        return len(rows)

    def recent_basis(self, symbol: str, window: int) -> tuple[np.ndarray, list[Any]]:
        """The last ``window`` recorded basis samples up to now (oldest first) and their rows newest first."""
        rows = self.store.q("SELECT ts, basis_pct FROM basis_samples WHERE symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?",
                            (symbol, self.now(), window))
        return np.array([r["basis_pct"] for r in reversed(rows)], dtype=np.float64), rows

    def spot_returns(self, symbol: str, span_s: float) -> tuple[np.ndarray, float]:
        """(log returns of the spot price over the last ``span_s``, seconds each return spans). Samples
        finer than an hour are taken at the last one of each hour, so the returns are hourly whatever
        the sampling interval; a coarser interval gives returns of that length. A gap breaks the
        chain: no return spans it."""
        rows = self.store.q("SELECT ts, spot FROM basis_samples WHERE symbol = ? AND ts > ? AND ts <= ? ORDER BY ts",
                            (symbol, self.now() - span_s, self.now()))
        period = float(max(self.settings.zscore_sample_seconds, 3600))
        if len(rows) < 2:
            return np.zeros(0), period
        t = np.array([r["ts"] for r in rows], dtype=np.float64)
        p = np.array([r["spot"] for r in rows], dtype=np.float64)
        bucket = np.floor(t / period)
        last = np.flatnonzero(np.append(np.diff(bucket) != 0, True))  # the last sample of each period
        bucket, p = bucket[last], p[last]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.diff(np.log(p))
        return r[np.diff(bucket) == 1], period

    # ------------------------------------------------------------------ what the rules read

    def signals(self, sym: str, snap: Snapshot) -> Signals:
        """The basis averaged over the funding window (fresh samples only), its std over the
        z-score window, and the funding means (per 8 h, percent)."""
        r = self.settings.exit_rules
        now = self.now()
        row = self.store.one("SELECT AVG(basis_pct) AS a, COUNT(*) AS n FROM basis_samples WHERE symbol = ? AND ts > ? AND ts <= ?",
                             (sym, now - r.basis_smoothing_hours * 3600.0, now))
        tr = self.z.get(sym)
        std = tr.std if tr is not None and tr.n >= ZSCORE_MIN_SAMPLES else None
        iv = snap.funding_interval_hours

        exact = round_fund if not getattr(self.feed, "reference", False) else lambda x: float(np.round(x, FUND_DIGITS))

        def mean_8h(span_s: float) -> float | None:
            m = self.feed.mean_funding_rate(sym, now - span_s, now)
            return None if m is None else exact(m * 8.0 / iv * 100.0)

        return Signals(basis_pct=snap.basis_pct, basis_smooth_pct=row["a"] if row and row["n"] else None, basis_std_pct=std,
                       funding_recent_8h_pct=mean_8h(r.funding_exit_hours * 3600.0),
                       funding_carry_8h_pct=mean_8h(r.carry_lookback_days * 86400.0))

    BORROW_FRESH_S = 2 * 3600.0

    def borrow_apr_pct(self, asset: str) -> tuple[float, str]:
        """The borrow rate of ``asset`` now, percent a year, and where it comes from: the venue's own
        rate when a live feed read one in the last two hours (`observe_borrow_rates`), else the
        MODELLED series (`basis_mcp.borrow`; replay always)."""
        seen = getattr(self.feed, "borrow", {}).get(asset) if self.live else None
        if seen is not None and self.now() - seen[1] / 1000.0 <= self.BORROW_FRESH_S:
            return seen[0], f"{self.feed.venue}:cross_margin"
        model = BorrowModel(self.settings.borrow_scenario)
        return float(model.apr_pct_at(asset, self.now())), model.label

    async def observe_borrow_rates(self) -> int:
        """Live: read the venue's borrow rates (hourly at most, with credentials) and keep every rate read
        in ``borrow_rates`` with its source, so a real history accumulates in the book. Returns rows added."""
        read = getattr(self.feed, "refresh_borrow_rates", None)
        if read is None or not self.live:
            return 0
        try:
            got = await read()
        except (VenueError, VenueTimeout) as e:
            self.events.audit("system", "borrow_rates_skipped", {}, "warning", str(e))
            return 0
        if not got:
            return 0
        with self.store.tx():
            for asset, (apr, ms) in got.items():
                self.store.x("INSERT OR IGNORE INTO borrow_rates(asset, ts, rate, source) VALUES (?,?,?,?)",
                             (asset, ms / 1000.0, apr / 100.0 / 8760.0, f"{self.feed.venue}:cross_margin"))
        return len(got)

    def borrows(self, strategy: StrategySpec) -> bool:
        return any(leg.market == "margin_spot" for leg in strategy.legs)

    def signals_for(self, strategy: StrategySpec, sym: str, snap: Snapshot, contract: str | None = None) -> Signals:
        """The signals as a position of ``strategy`` reads them: mirrored for a reverse trade, its carry
        net of the borrow interest on a borrowed-spot leg; a calendar spread's basis is the dated
        ``contract``'s premium over the perp (`calendar_signals`), its funding what a long perp receives."""
        borrow = borrow_8h_pct(self.borrow_apr_pct(sym)[0]) if self.borrows(strategy) else 0.0
        base = self.signals(sym, snap)
        if strategy.dated:
            if contract is None:
                raise ValueError(f"{strategy.name}: which dated contract?")
            base = self.calendar_signals(contract, snap, base)
        return base.seen_by(strategy.direction, borrow, strategy.funding_direction)

    def calendar_basis_pct(self, contract: str, perp_snap: Snapshot) -> float:
        """(dated future − perp) / perp × 100 now (the future's price is SIMULATED: `basis_mcp.dated`)."""
        fut = self.feed.snapshot(contract).perp
        return (fut - perp_snap.perp) / perp_snap.perp * 100.0

    def _live_calendar_signals(self, contract: str, perp_snap: Snapshot, base: Signals) -> Signals:
        """A live venue's quarterly: its premium now, and its history as this desk has observed it (one sample a minute
        at most, kept a z-score window long): the smoothed premium once the samples span the smoothing window, the std
        once there are ZSCORE_MIN_SAMPLES of them; until then the basis stop and the z-score rules wait, and expiry,
        margin and the max hold apply."""
        now = self.now()
        premium = self.calendar_basis_pct(contract, perp_snap)
        hist = self._premia.setdefault(contract, deque(maxlen=max(self.settings.zscore_window * 60, 1000)))
        if not hist or now - hist[-1][0] >= 60.0:
            hist.append((now, premium))
        span = self.settings.exit_rules.basis_smoothing_hours * 3600.0
        recent = [b for t, b in hist if t > now - span]
        covered = hist[0][0] <= now - span + 60.0
        values = np.array([b for _, b in hist])
        return Signals(basis_pct=premium, basis_smooth_pct=float(np.mean(recent)) if covered and recent else None,
                       basis_std_pct=float(values.std()) if values.size >= ZSCORE_MIN_SAMPLES else None,
                       funding_recent_8h_pct=base.funding_recent_8h_pct, funding_carry_8h_pct=base.funding_carry_8h_pct)

    def calendar_signals(self, contract: str, perp_snap: Snapshot, base: Signals) -> Signals:
        """A calendar spread's basis signals: the contract's premium over the perp now, averaged over
        the smoothing window, and its std over the z-score window (hourly samples where spot and perp
        both traded, from the replay data: dated futures are simulated on paper only)."""
        series = getattr(self.feed, "calendar_basis_series", None)
        if series is None and self.live and hasattr(self.feed, "dated_contracts"):
            return self._live_calendar_signals(contract, perp_snap, base)
        if series is None:
            raise Rejected("strategy", "calendar_spread", f"{self.feed.venue}: this venue lists no dated futures")
        now = self.now()
        r = self.settings.exit_rules
        w = self.settings.zscore_window
        times, basis = series(contract, now - 2.0 * w * 3600.0, now)
        basis = basis[-w:]
        times = times[-w:]
        recent = basis[times > now - r.basis_smoothing_hours * 3600.0]
        return Signals(basis_pct=self.calendar_basis_pct(contract, perp_snap),
                       basis_smooth_pct=float(recent.mean()) if recent.size else None,
                       basis_std_pct=float(basis.std()) if basis.size >= ZSCORE_MIN_SAMPLES else None,
                       funding_recent_8h_pct=base.funding_recent_8h_pct, funding_carry_8h_pct=base.funding_carry_8h_pct)

    def funding_assumption(self, sym: str, snap: Snapshot, override_8h_pct: float | None,
                           playbook: str = "convergence") -> tuple[float, str]:
        """(rate per interval as a fraction, source). carry: the carry lookback mean the entry rule reads."""
        if override_8h_pct is not None:
            return override_8h_pct / 100.0 * snap.funding_interval_hours / 8.0, "given"
        if playbook == "carry":
            fc = self.signals(sym, snap).funding_carry_8h_pct
            days = self.settings.carry_lookback_days
            if fc is not None:
                return fc / 100.0 / 8.0 * snap.funding_interval_hours, f"mean_settled_{days:g}d"
        mean = self.feed.mean_funding_rate(sym, self.now() - 30 * 86400, self.now())
        if mean is not None:
            return mean, "mean_settled_30d"
        return snap.funding_rate, snap.funding_rate_source
