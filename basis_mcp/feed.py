"""Market feeds: what the desk sees of the market right now.

`ReplayFeed` walks the shipped (or any loaded) history under a simulated clock. A live
ccxt feed implements the same surface.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from basis_mcp.clock import Clock, iso
from basis_mcp.dated import (
    funding_carry_apr,
    is_contract,
    iso_day,
    parse_contract,
    simulated_price,
    underlying,
)
from basis_mcp.history import HOUR, DataError, FundingTable, SymbolHistory, funding_schedule, mean_rate
from basis_mcp.signals import basis_pct


def base_asset(raw: str) -> str:
    """The base coin of a symbol written any common way: ``BTC``, ``btc``, ``BTCUSDT``,
    ``BTC/USDT``, ``BTC-USDT``, ``BTC_USDT``, ``BTC/USDT:USDT``. Raises ``ValueError`` for a
    pair not quoted in USDT."""
    s = raw.strip().upper().split(":")[0].replace("-", "/").replace("_", "/")
    if "/" in s:
        base, quote = s.split("/", 1)
        if quote != "USDT":
            raise ValueError("only USDT-quoted pairs are traded")
        return base
    return s[:-4] if s.endswith("USDT") and len(s) > 4 else s


class MarketDataUnavailable(LookupError):
    """No usable price for a symbol at this time (before its data starts, or a gap)."""


@dataclass(frozen=True)
class Snapshot:
    symbol: str
    venue: str
    now: float
    spot: float
    perp: float
    mark: float
    mark_high: float
    mark_low: float
    spot_time: float
    perp_time: float
    funding_rate: float
    funding_rate_source: str
    last_settled_rate: float | None
    funding_interval_hours: float
    next_funding_time: float
    mark_is_proxy: bool = False
    prev_perp: float | None = None
    spot_bid: float | None = None  # live feeds: the touch, used for paper fills
    spot_ask: float | None = None
    perp_bid: float | None = None
    perp_ask: float | None = None

    @property
    def basis_usd(self) -> float:
        return self.perp - self.spot

    @property
    def basis_pct(self) -> float:
        return basis_pct(self.spot, self.perp)

    @property
    def data_age_seconds(self) -> float:
        """Age of the older of the two legs' prices."""
        return max(self.now - min(self.spot_time, self.perp_time), 0.0)

    @property
    def seconds_to_funding(self) -> float:
        return max(self.next_funding_time - self.now, 0.0)


@dataclass(frozen=True)
class Settlement:
    symbol: str
    time: float
    rate: float
    mark: float


class MarketFeed(Protocol):
    """What the desk and the paper venue read: `ReplayFeed` or `live.feed.LiveFeed`."""

    venue: str
    frozen_at: float | None

    @property
    def symbols(self) -> list[str]: ...

    def snapshot(self, symbol: str, at: float | None = None) -> Snapshot: ...

    def settlements_between(self, t_from: float, t_to: float) -> list[Settlement]: ...

    def mean_funding_rate(self, symbol: str, since: float, until: float) -> float | None: ...

    def healthy(self) -> bool: ...


class ReplayFeed:
    """Historical data under a `SimClock`: the market as it was at ``clock.now()``.

    The funding rate shown for the upcoming settlement is the last *settled* rate (no
    look-ahead: a live venue's predicted rate is not in the data). Settlements are applied
    with the real settled rate at the real settlement time.
    """

    venue = "binance"
    reference = False  # the hour-by-hour reference replay on: the funding schedule read with NumPy (`funding_schedule`)

    def __init__(self, histories: dict[str, SymbolHistory], clock: Clock):
        if not histories:
            raise ValueError("no market data")
        coarse = [f"{s} ({h.bar_s} s bars)" for s, h in histories.items() if h.bar_s != HOUR]
        if coarse:
            raise DataError(f"the paper desk replays hourly bars; {', '.join(coarse)} are not hourly: load the 1h files")
        self.h = histories
        self.clock = clock
        self.frozen_at: float | None = None  # fault injection: prices stop updating at this time
        self._memo: dict[tuple[str, float, float | None], Snapshot] = {}
        self._spot_ffill: dict[str, np.ndarray] = {}
        self._perp_ffill: dict[str, np.ndarray] = {}
        self.funding = {sym: FundingTable(h.funding_time, h.funding_rate) for sym, h in histories.items()}
        for sym, hist in histories.items():  # a missing or stale bar shows the last fresh price, with its age
            for arr, into in ((hist.spot, self._spot_ffill), (hist.perp, self._perp_ffill)):
                idx = np.where(np.isnan(arr), -1, np.arange(hist.n))
                np.maximum.accumulate(idx, out=idx)
                into[sym] = idx

    @property
    def symbols(self) -> list[str]:
        return sorted(self.h)

    @property
    def start(self) -> int:
        """Earliest time at which at least one symbol has data."""
        return min(h.t0 for h in self.h.values())

    @property
    def end(self) -> int:
        """Last observation time at which every symbol still has perp data."""
        return min(h.t_end for h in self.h.values())

    def covers(self, symbol: str, t: float) -> bool:
        h = self.h[symbol]
        return h.t0 <= t <= h.t_end + HOUR - 1

    SNAPSHOT_MEMO = 64  # the market at one instant does not change: the last few snapshots are kept

    def snapshot(self, symbol: str, at: float | None = None) -> Snapshot:
        now = self.clock.now() if at is None else at
        key = (symbol, now, self.frozen_at)
        memo = self._memo
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= self.SNAPSHOT_MEMO:
                memo.clear()
            hit = memo[key] = self._snapshot(symbol, now)
        return hit

    def _snapshot(self, symbol: str, now: float) -> Snapshot:
        if is_contract(symbol):
            return self.dated_snapshot(symbol, now)
        h = self.h.get(symbol)
        if h is None:
            raise MarketDataUnavailable(f"no data for {symbol}")
        i = h.index_at(now if self.frozen_at is None else min(now, self.frozen_at))
        if i < 0:
            raise MarketDataUnavailable(f"{symbol} data starts {iso(h.t0)}; replay time {iso(now)} is before it")
        if now > h.t_end + HOUR:
            raise MarketDataUnavailable(f"{symbol} data ends at {iso(h.t_end)}")
        j = int(self._spot_ffill[symbol][i]) if i >= 0 else -1
        if j < 0:
            raise MarketDataUnavailable(f"{symbol} has no spot price yet at {iso(now)}")
        jp = int(self._perp_ffill[symbol][i])
        if jp < 0:
            raise MarketDataUnavailable(f"{symbol} has no perp price yet at {iso(now)}")
        if self.reference:  # the reference replay reads the schedule through the vectorised function, as it always has
            nxt_a, iv_a, last_a = funding_schedule(h.funding_time, h.funding_rate, now)
            nxt, interval_h = float(nxt_a[0]), float(iv_a[0])
            last_rate = None if np.isnan(last_a[0]) else float(last_a[0])
        else:
            nxt, interval_h, last_rate = self.funding[symbol].schedule(now)
        return Snapshot(
            symbol=symbol,
            venue=self.venue,
            now=now,
            spot=float(h.spot[j]),
            perp=float(h.perp[jp]),
            mark=float(h.mark[i]),
            mark_high=float(h.mark_high[i]),
            mark_low=float(h.mark_low[i]),
            spot_time=float(h.t0 + j * HOUR),
            perp_time=float(h.t0 + jp * HOUR),
            funding_rate=last_rate if last_rate is not None else 0.0,
            funding_rate_source="last_settled" if last_rate is not None else "none_yet",
            last_settled_rate=last_rate,
            funding_interval_hours=interval_h,
            next_funding_time=nxt,
            mark_is_proxy=bool(h.mark_is_proxy[i]),
            prev_perp=float(h.perp[i - 1]) if i > 0 else None,  # NaN after a missing bar: only the range counts then
        )

    def observed(self, symbol: str, times: np.ndarray) -> tuple[np.ndarray, ...]:
        """`snapshot`'s two legs at each of ``times`` at once (a replay skipping hours with nothing open):
        (available, spot, perp, spot_time, perp_time), where `snapshot` would raise MarketDataUnavailable
        wherever ``available`` is False."""
        h = self.h[symbol]
        t = np.asarray(times, dtype=np.float64)
        at = t if self.frozen_at is None else np.minimum(t, self.frozen_at)
        i = np.where(at >= h.t0, np.minimum((at - h.t0) // h.bar_s, h.n - 1), -1).astype(np.int64)
        ok = (i >= 0) & (t <= h.t_end + HOUR)
        i = np.maximum(i, 0)
        j, jp = self._spot_ffill[symbol][i], self._perp_ffill[symbol][i]
        ok &= (j >= 0) & (jp >= 0)
        j, jp = np.maximum(j, 0), np.maximum(jp, 0)
        return ok, h.spot[j], h.perp[jp], h.t0 + j * HOUR, h.t0 + jp * HOUR

    def dated_snapshot(self, code: str, at: float | None = None) -> Snapshot:
        """A dated contract as a snapshot: ``perp`` and ``mark`` are its SIMULATED price (`basis_mcp.dated`),
        ``spot`` its coin's; no funding (rate 0; the schedule fields are its coin's perp's). Unavailable
        from its expiry on: it no longer trades."""
        base, expiry = parse_contract(code)
        snap = self.snapshot(base, at)
        if snap.now >= expiry:
            raise MarketDataUnavailable(f"{code} expired at {iso_day(expiry)}")
        h = self.h[base]
        carry = funding_carry_apr(h.funding_time, h.funding_rate, snap.now)
        price = float(simulated_price(snap.perp, carry, expiry - snap.now)[0])
        ratio = price / snap.perp  # the hour's range of the perp's mark, carried over: a wick hits both derivatives
        return replace(snap, symbol=code, perp=price, mark=price, mark_high=max(snap.mark_high * ratio, price),
                       mark_low=min(snap.mark_low * ratio, price),
                       funding_rate=0.0, funding_rate_source="none (dated future)", last_settled_rate=None,
                       mark_is_proxy=True, prev_perp=None,
                       perp_bid=None, perp_ask=None)

    def calendar_basis_series(self, code: str, t_from: float, t_to: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, calendar basis %) at every hour in [t_from, t_to] before expiry where spot and perp
        both traded: (simulated future − perp) / perp × 100."""
        base, expiry = parse_contract(code)
        times, _ = self.basis_series(base, t_from, min(t_to, expiry - 1.0))
        if times.size == 0:
            return times, np.empty(0)
        h = self.h[base]
        idx = ((times - h.t0) // HOUR).astype(np.int64)
        perp = h.perp[idx]
        fut = simulated_price(perp, funding_carry_apr(h.funding_time, h.funding_rate, times.astype(np.float64)), expiry - times)
        return times, (fut - perp) / perp * 100.0

    def first_fresh_at_or_after(self, symbol: str, t: float) -> float | None:
        """The first observation time ≥ ``t`` where both legs traded (None: past the data)."""
        symbol = underlying(symbol)
        h = self.h[symbol]
        i = max(int(np.ceil((t - h.t0) / HOUR)), 0)
        ok = np.flatnonzero(~(np.isnan(h.spot[i:]) | np.isnan(h.perp[i:])))
        return float(h.t0 + (i + int(ok[0])) * HOUR) if ok.size else None

    def settlements_between(self, t_from: float, t_to: float) -> list[Settlement]:
        """Settlements with t_from < time ≤ t_to, across symbols, in time order."""
        out: list[Settlement] = []
        for sym, h in self.h.items():
            if self.reference:
                lo = int(np.searchsorted(h.funding_time, t_from, side="right"))
                hi = int(np.searchsorted(h.funding_time, t_to, side="right"))
            else:  # the same counts by bisection of the settlement times (floats: exact for epoch seconds)
                times = self.funding[sym].times
                lo, hi = bisect.bisect_right(times, t_from), bisect.bisect_right(times, t_to)
            for k in range(lo, hi):
                t = float(h.funding_time[k])
                i = h.index_at(t)
                if i < 0:
                    continue
                out.append(Settlement(sym, t, float(h.funding_rate[k]), float(h.mark[i])))
        out.sort(key=lambda s: (s.time, s.symbol))
        return out

    def healthy(self) -> bool:
        return True

    def mean_funding_rate(self, symbol: str, since: float, until: float) -> float | None:
        """Mean settled rate over (since, until], fraction per interval."""
        if self.reference:
            h = self.h[symbol]
            m = float(mean_rate(h.funding_time, h.funding_rate, since, until)[0])
            return None if np.isnan(m) else m
        return self.funding[symbol].mean(since, until)

    def basis_series(self, symbol: str, t_from: float, t_to: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, basis_pct) at every hour in [t_from, t_to] where both legs have a fresh price."""
        h = self.h[symbol]
        i0 = max(h.index_at(t_from), 0)
        if t_from > h.t0 + i0 * HOUR:
            i0 += 1
        i1 = h.index_at(t_to)
        if i1 < i0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        spot = h.spot[i0 : i1 + 1]
        perp = h.perp[i0 : i1 + 1]
        ok = ~(np.isnan(spot) | np.isnan(perp))
        times = h.t0 + HOUR * np.arange(i0, i1 + 1, dtype=np.int64)
        return times[ok], ((perp[ok] - spot[ok]) / spot[ok] * 100.0)


class VenueReplayFeed(ReplayFeed):
    """Another venue's perps in a replay: the primary data's prices (the shipped data has no other
    venue's prices: said wherever this is shown) with that venue's own REAL settled funding, at its own
    interval. Only inside the venue's funding history: before its first settlement or after its last
    interval ended there is no market (a stale rate would be shown as current)."""

    def __init__(self, histories: dict[str, SymbolHistory], clock: Clock, venue: str,
                 funding: dict[str, tuple[np.ndarray, np.ndarray]]):
        own = {sym: replace(h, funding_time=np.asarray(funding[sym][0], dtype=np.int64),
                            funding_rate=np.asarray(funding[sym][1], dtype=np.float64))
               for sym, h in histories.items() if sym in funding and len(funding[sym][0]) >= 2}
        super().__init__(own, clock)
        self.venue = venue
        self.span: dict[str, tuple[float, float]] = {}
        for sym, h in own.items():
            gaps = np.diff(h.funding_time)
            self.span[sym] = (float(h.funding_time[0]), float(h.funding_time[-1] + np.median(gaps)))

    def snapshot(self, symbol: str, at: float | None = None) -> Snapshot:
        if symbol not in self.h:
            raise MarketDataUnavailable(f"no {self.venue} perp for {symbol} in the shipped data")
        now = self.clock.now() if at is None else at
        lo, hi = self.span[symbol]
        if not lo <= now <= hi:
            raise MarketDataUnavailable(f"{self.venue} {symbol} funding history covers {iso_day(lo)} to {iso_day(hi)}; "
                                        f"replay time {iso_day(now)} is outside it")
        return replace(super().snapshot(symbol, at), venue=self.venue)
