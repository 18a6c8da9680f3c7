"""Historical market data: `SymbolHistory`, the shipped extract, the funding schedule.

No trading logic. A `SymbolHistory` holds one symbol on a grid of *observation times*: index
``i`` is the instant ``t0 + i * bar_s`` (UTC epoch seconds; hourly unless loaded from finer or
coarser candles, see `basis_mcp.loaders`), and the prices at that instant are the closes of the
candles that opened one bar earlier (freqtrade's ``date`` is the candle's open time). Funding
settlements are kept as their own (time, rate) series.

Gaps are data, not errors: a missing spot hour is NaN on the grid and the feed reports
how old the last good price is. Missing mark prices (Binance mark candles start
2019-12-23, SOL's 1 h mark only in 2026-04) fall back to the perp close, and the
``mark_is_proxy`` mask says where.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOUR = 3600
EXTRACT_NAME = "binance_1h.npz"
ATTRIBUTION = (
    "Market data: Binance spot, USD-M perpetual, mark-price and funding-rate history "
    "(1 h candles, funding at settlement), as stored in the public freqtrade user-data "
    "directory github.com/Roshan7869/algotrading @ 4e790feaa2e391502df5557388dc398e85284cbb "
    "(user_data/data/binance). Data (c) Binance; redistributed as a compact extract for "
    "paper trading and backtests."
)


class DataError(ValueError):
    """Data that cannot be used: missing files, misaligned series, empty ranges."""


@dataclass(frozen=True)
class SymbolHistory:
    symbol: str
    t0: int
    spot: np.ndarray
    perp: np.ndarray
    mark: np.ndarray
    mark_high: np.ndarray
    mark_low: np.ndarray
    funding_time: np.ndarray
    funding_rate: np.ndarray
    mark_is_proxy: np.ndarray = field(repr=False)
    stale: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # bars removed as stale (see `stale_candles`)
    bar_s: int = HOUR  # the bar size: index i is the instant t0 + i * bar_s
    notes: tuple[str, ...] = ()  # how the loader aligned what it read (a coarser mark, say), for the result to report

    def __post_init__(self) -> None:
        if self.stale is None:
            object.__setattr__(self, "stale", np.zeros(int(self.perp.shape[0]), dtype=bool))

    @property
    def n(self) -> int:
        return int(self.perp.shape[0])

    @property
    def t_end(self) -> int:
        """Last observation time on the grid (inclusive)."""
        return self.t0 + (self.n - 1) * self.bar_s

    @property
    def times(self) -> np.ndarray:
        return self.t0 + self.bar_s * np.arange(self.n, dtype=np.int64)

    def index_at(self, t: float) -> int:
        """Index of the last observation at or before ``t`` (-1 if before the data)."""
        return int(min((t - self.t0) // self.bar_s, self.n - 1)) if t >= self.t0 else -1

    def stale_times(self) -> list[int]:
        """Observation times of the candles removed as stale (zero volume, flat)."""
        return [self.t0 + int(i) * self.bar_s for i in np.flatnonzero(self.stale)] if self.stale is not None else []

    def spot_gaps(self) -> list[tuple[int, int]]:
        """(first_missing_time, bars_missing) for every run of missing spot bars."""
        missing = np.isnan(self.spot)
        if not missing.any():
            return []
        edges = np.diff(np.concatenate(([0], missing.view(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        return [(self.t0 + int(s) * self.bar_s, int(e - s)) for s, e in zip(starts, ends, strict=True)]


def stale_candles(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Candles an exchange outage left behind: nothing traded and open = high = low = close.
    They are the last price carried forward, not a market: no signal, fill or sample may use them."""
    with np.errstate(invalid="ignore"):
        return (volume == 0) & (o == h) & (h == lo) & (lo == c)


def _ffill(a: np.ndarray) -> np.ndarray:
    idx = np.where(np.isnan(a), 0, np.arange(a.size))
    np.maximum.accumulate(idx, out=idx)
    return a[idx]


def _finish(symbol: str, t0: int, spot, perp, mark, mark_high, mark_low, f_time, f_rate, stale=None, bar_s: int = HOUR,
            ) -> SymbolHistory:
    perp = np.asarray(perp, dtype=np.float64)
    if perp.size == 0 or np.isnan(perp).all():
        raise DataError(f"{symbol}: no perpetual prices")
    mark = np.asarray(mark, dtype=np.float64)
    proxy = np.isnan(mark)
    mark = np.where(proxy, perp, mark)
    if np.isnan(mark).any():  # a stale or missing perp bar where no mark exists: margin uses the last mark
        mark = _ffill(mark)
        first = int(np.flatnonzero(~np.isnan(mark))[0])
        mark[:first] = mark[first]
    mark_high = np.where(np.isnan(mark_high), mark, mark_high)
    mark_low = np.where(np.isnan(mark_low), mark, mark_low)
    order = np.argsort(f_time, kind="stable")
    f_time = np.asarray(f_time, dtype=np.int64)[order]
    f_rate = np.asarray(f_rate, dtype=np.float64)[order]
    return SymbolHistory(
        symbol=symbol,
        t0=int(t0),
        spot=np.asarray(spot, dtype=np.float64),
        perp=perp,
        mark=mark,
        mark_high=np.asarray(mark_high, dtype=np.float64),
        mark_low=np.asarray(mark_low, dtype=np.float64),
        funding_time=f_time,
        funding_rate=f_rate,
        mark_is_proxy=proxy,
        stale=np.zeros(perp.size, dtype=bool) if stale is None else np.asarray(stale, dtype=bool),
        bar_s=int(bar_s),
    )


# --------------------------------------------------------------------------- funding schedule


def funding_schedule(
    f_time: np.ndarray, f_rate: np.ndarray, t: np.ndarray | float, k: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At time(s) ``t``: (next settlement time, interval in hours, last settled rate or NaN).

    The interval is the spacing around the next settlement (1, 2, 4 or 8 h; anything else, a
    gap in the series, counts as 8 h); past the last settlement the schedule is extrapolated.
    Vectorised: the replay feed and the backtest read the schedule through this one function.
    ``k`` (optional) is ``searchsorted(f_time, t, 'right')`` when the caller already has it.
    """
    tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
    ft = np.asarray(f_time, dtype=np.float64)
    n = ft.size
    if n == 0:
        nxt = (np.floor(tt / (8 * HOUR)) + 1) * 8 * HOUR
        return nxt, np.full(tt.size, 8.0), np.full(tt.size, np.nan)
    if k is None:
        k = np.searchsorted(ft, tt, side="right")
    # one row per settlement (its time and the spacing before it), then a gather per query
    prev = np.empty(n)
    prev[0] = ft[0] - 8 * HOUR
    prev[1:] = ft[:-1]
    iv_tab = _normal_interval((ft - prev) / HOUR)
    j = np.minimum(k, n - 1)
    nxt = ft[j]
    iv = iv_tab[j]
    past = np.flatnonzero(k >= n)
    if past.size:  # past the data the schedule goes on at the last spacing
        tail = float(ft[-1] - ft[-2]) if n > 1 else 8.0 * HOUR
        nxt[past] = ft[-1] + tail * (np.floor((tt[past] - ft[-1]) / tail) + 1)
        iv[past] = _normal_interval(np.array([tail / HOUR]))[0]
    last = np.concatenate(([np.nan], f_rate))[k]
    return nxt, iv, last


def _normal_interval(hours: np.ndarray) -> np.ndarray:
    """1, 2, 4 or 8 h; anything else (a gap in the series) counts as 8 h."""
    return np.where((hours == 1.0) | (hours == 2.0) | (hours == 4.0) | (hours == 8.0), hours, 8.0)


class FundingTable:
    """One symbol's settlements prepared for one instant at a time (the replay feed asks every hour): the
    same numbers as `funding_schedule` and `mean_rate`, bit for bit, in plain float arithmetic instead of a
    dozen NumPy calls on one-element arrays."""

    __slots__ = ("times", "rates", "intervals", "cumsum", "tail", "tail_interval")

    def __init__(self, f_time: np.ndarray, f_rate: np.ndarray):
        ft = np.asarray(f_time, dtype=np.float64)
        self.times: list[float] = ft.tolist()
        self.rates: list[float] = np.asarray(f_rate, dtype=np.float64).tolist()
        n = ft.size
        prev = np.empty(n)
        if n:
            prev[0] = ft[0] - 8 * HOUR
            prev[1:] = ft[:-1]
        self.intervals: list[float] = _normal_interval((ft - prev) / HOUR).tolist()
        self.cumsum: list[float] = np.concatenate(([0.0], np.cumsum(f_rate))).tolist()
        self.tail = float(ft[-1] - ft[-2]) if n > 1 else 8.0 * HOUR
        self.tail_interval = float(_normal_interval(np.array([self.tail / HOUR]))[0])

    def schedule(self, t: float) -> tuple[float, float, float | None]:
        """At ``t``: (next settlement time, interval in hours, last settled rate or None), as `funding_schedule`."""
        ft = self.times
        n = len(ft)
        if n == 0:
            return (math.floor(t / (8 * HOUR)) + 1.0) * 8 * HOUR, 8.0, None
        k = bisect.bisect_right(ft, t)
        if k >= n:  # past the data the schedule goes on at the last spacing
            nxt, iv = ft[-1] + self.tail * (math.floor((t - ft[-1]) / self.tail) + 1.0), self.tail_interval
        else:
            nxt, iv = ft[k], self.intervals[k]
        last = self.rates[k - 1] if k else math.nan
        return nxt, iv, None if math.isnan(last) else last

    def mean(self, since: float, until: float) -> float | None:
        """Mean settled rate over (since, until], as `mean_rate` (None where there is none)."""
        lo = bisect.bisect_right(self.times, since)
        hi = bisect.bisect_right(self.times, until)
        if hi <= lo:
            return None
        m = (self.cumsum[hi] - self.cumsum[lo]) / (hi - lo)
        return None if math.isnan(m) else m


def mean_rate(
    f_time: np.ndarray,
    f_rate: np.ndarray,
    since: np.ndarray | float,
    until: np.ndarray | float,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> np.ndarray:
    """Mean settled rate over (since, until] (NaN where there is none). Vectorised; ``lo``/``hi``
    are the settlement counts at ``since``/``until`` when the caller already has them."""
    cs = np.concatenate(([0.0], np.cumsum(f_rate)))
    ft = np.asarray(f_time, dtype=np.float64)  # search floats in floats: no per-call conversion of the queries
    if lo is None:
        lo = np.searchsorted(ft, np.atleast_1d(since).astype(np.float64), side="right")
    if hi is None:
        hi = np.searchsorted(ft, np.atleast_1d(until).astype(np.float64), side="right")
    cnt = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (cs[hi] - cs[lo]) / np.maximum(cnt, 1), np.nan)


# --------------------------------------------------------------------------- extract


def shipped_extract_path() -> Path:
    return Path(str(importlib.resources.files("basis_mcp.data").joinpath(EXTRACT_NAME)))


def load_extract(path: Path | str | None = None, symbols: list[str] | None = None) -> dict[str, SymbolHistory]:
    """Load the compact ``.npz`` extract (the shipped one by default)."""
    path = Path(path) if path is not None else shipped_extract_path()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    out: dict[str, SymbolHistory] = {}
    with np.load(path) as z:
        available = [str(s) for s in z["symbols"]]
        for sym in symbols or available:
            if sym not in available:
                raise DataError(f"symbol {sym!r} not in {path.name} (has {', '.join(available)})")
            p = f"{sym}/"
            scale = z[p + "scale"]
            series = {}
            for k in ("spot", "perp", "mark", "mark_high", "mark_low"):
                ticks = np.cumsum(z[p + k].astype(np.int64))
                vals = ticks / scale[["spot", "perp", "mark", "mark_high", "mark_low"].index(k)]
                vals[z[p + k + "_nan"]] = np.nan
                series[k] = vals
            out[sym] = _finish(
                sym,
                int(z[p + "t0"]),
                series["spot"],
                series["perp"],
                series["mark"],
                series["mark_high"],
                series["mark_low"],
                z[p + "funding_time"],
                z[p + "funding_rate_e8"].astype(np.float64) / 1e8,
                _mask(int(series["perp"].size), z[p + "stale"]) if p + "stale" in z.files else None,
                int(z[p + "bar_s"]) if p + "bar_s" in z.files else HOUR,
            )
    return out


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.asarray(idx, dtype=np.int64)] = True
    return out


def _encode(values: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    nan = np.isnan(values)
    filled = values.copy()
    # carry the last good value through gaps so deltas stay small
    idx = np.where(~nan, np.arange(values.size), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = filled[idx]
    filled[np.isnan(filled)] = 0.0
    ticks = np.rint(filled * scale).astype(np.int64)
    deltas = np.diff(ticks, prepend=0)
    dtype = np.int32 if np.abs(deltas).max(initial=0) < 2**31 else np.int64
    return deltas.astype(dtype), nan


def save_extract(histories: dict[str, SymbolHistory], path: Path | str) -> None:
    """Write histories as a compact, lossless-to-the-tick ``.npz``.

    Spot and perp closes are stored as integer ticks of 1e-2 (Binance's price tick for
    these pairs), mark prices as 1e-8 ticks, funding rates as 1e-8 fractions, all
    delta-encoded, then deflated.
    """
    arrays: dict[str, np.ndarray] = {"symbols": np.array(sorted(histories)), "attribution": np.array(ATTRIBUTION)}
    for sym, h in histories.items():
        p = f"{sym}/"
        scales = np.array([1e2, 1e2, 1e8, 1e8, 1e8])
        arrays[p + "scale"] = scales
        arrays[p + "t0"] = np.array(h.t0, dtype=np.int64)
        mark = np.where(h.mark_is_proxy, np.nan, h.mark)
        mh = np.where(h.mark_is_proxy, np.nan, h.mark_high)
        ml = np.where(h.mark_is_proxy, np.nan, h.mark_low)
        for k, v, s in (("spot", h.spot, 1e2), ("perp", h.perp, 1e2), ("mark", mark, 1e8), ("mark_high", mh, 1e8), ("mark_low", ml, 1e8)):
            arrays[p + k], arrays[p + k + "_nan"] = _encode(v, s)
        arrays[p + "stale"] = np.flatnonzero(h.stale).astype(np.int32)
        arrays[p + "funding_time"] = h.funding_time.astype(np.int64)
        arrays[p + "funding_rate_e8"] = np.rint(h.funding_rate * 1e8).astype(np.int32)
        if h.bar_s != HOUR:
            arrays[p + "bar_s"] = np.array(h.bar_s, dtype=np.int64)
    np.savez_compressed(path, **arrays)


def fingerprint(histories: dict[str, SymbolHistory]) -> str:
    """Short content hash, stored in the database so a replay never mixes data sets."""
    h = hashlib.sha256()
    for sym in sorted(histories):
        s = histories[sym]
        h.update(sym.encode())
        h.update(np.int64(s.t0).tobytes())
        if s.bar_s != HOUR:  # (hourly books keep the fingerprint they always had)
            h.update(np.int64(s.bar_s).tobytes())
        for arr in (s.spot, s.perp, s.mark, s.funding_time, s.funding_rate):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- funding on several venues

FUNDING_VENUES_FILE = "funding_venues.npz"


@dataclass(frozen=True)
class FundingSeries:
    """One venue's settled funding for one perpetual: settlement times (epoch s) and rates (fractions)."""

    venue: str
    symbol: str
    time: np.ndarray  # int64
    rate: np.ndarray  # float64

    @property
    def interval_hours(self) -> float:
        """The venue's usual settlement interval (the most common gap between settlements)."""
        gaps, counts = np.unique(np.diff(self.time), return_counts=True)
        return float(gaps[np.argmax(counts)]) / HOUR if gaps.size else 8.0


def load_funding_venues(path: Path | str | None = None) -> dict[tuple[str, str], FundingSeries]:
    """Real funding history of Binance, Bybit, Gate and dYdX (BTC, ETH, 2020/21–2023), shipped with the
    package (see `basis_mcp/data/README.md` for the source and its licence), keyed (venue, symbol)."""
    path = Path(path) if path is not None else Path(__file__).parent / "data" / FUNDING_VENUES_FILE
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    out: dict[tuple[str, str], FundingSeries] = {}
    with np.load(path) as z:
        scale = float(z["scale"][0])
        for key in (str(k) for k in z["series"]):
            venue, sym = key.split("/")
            t = np.concatenate((z[key + "/time0"], z[key + "/time0"][0] + np.cumsum(z[key + "/dtime"].astype(np.int64))))
            out[(venue, sym)] = FundingSeries(venue, sym, t, z[key + "/rate"].astype(np.int64) / scale)
    return out
