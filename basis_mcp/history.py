"""Historical market data: the shipped extract and freqtrade data directories.

Everything here is loading and alignment; no trading logic. A `SymbolHistory` holds one
symbol on an hourly grid of *observation times*: index ``i`` is the instant
``t0 + i * 3600`` (UTC epoch seconds), and the prices at that instant are the closes of
the 1 h candles that opened one hour earlier (freqtrade's ``date`` is the candle's open
time). Funding settlements are kept as their own (time, rate) series.

Gaps are data, not errors: a missing spot hour is NaN on the grid and the feed reports
how old the last good price is. Missing mark prices (Binance mark candles start
2019-12-23, SOL's 1 h mark only in 2026-04) fall back to the perp close, and the
``mark_is_proxy`` mask says where.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from basis_mcp.clock import parse_time

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

    def __post_init__(self) -> None:
        if self.stale is None:
            object.__setattr__(self, "stale", np.zeros(int(self.perp.shape[0]), dtype=bool))

    @property
    def n(self) -> int:
        return int(self.perp.shape[0])

    @property
    def t_end(self) -> int:
        """Last observation time on the grid (inclusive)."""
        return self.t0 + (self.n - 1) * HOUR

    @property
    def times(self) -> np.ndarray:
        return self.t0 + HOUR * np.arange(self.n, dtype=np.int64)

    def index_at(self, t: float) -> int:
        """Index of the last observation at or before ``t`` (-1 if before the data)."""
        return int(min((t - self.t0) // HOUR, self.n - 1)) if t >= self.t0 else -1

    def stale_times(self) -> list[int]:
        """Observation times of the candles removed as stale (zero volume, flat)."""
        return [self.t0 + int(i) * HOUR for i in np.flatnonzero(self.stale)] if self.stale is not None else []

    def spot_gaps(self) -> list[tuple[int, int]]:
        """(first_missing_time, hours_missing) for every run of missing spot hours."""
        missing = np.isnan(self.spot)
        if not missing.any():
            return []
        edges = np.diff(np.concatenate(([0], missing.view(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        return [(self.t0 + int(s) * HOUR, int(e - s)) for s, e in zip(starts, ends, strict=True)]


def stale_candles(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Candles an exchange outage left behind: nothing traded and open = high = low = close.
    They are the last price carried forward, not a market: no signal, fill or sample may use them."""
    with np.errstate(invalid="ignore"):
        return (volume == 0) & (o == h) & (h == lo) & (lo == c)


def _ffill(a: np.ndarray) -> np.ndarray:
    idx = np.where(np.isnan(a), 0, np.arange(a.size))
    np.maximum.accumulate(idx, out=idx)
    return a[idx]


def _finish(symbol: str, t0: int, spot, perp, mark, mark_high, mark_low, f_time, f_rate, stale=None) -> SymbolHistory:
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
    np.savez_compressed(path, **arrays)


def fingerprint(histories: dict[str, SymbolHistory]) -> str:
    """Short content hash, stored in the database so a replay never mixes data sets."""
    h = hashlib.sha256()
    for sym in sorted(histories):
        s = histories[sym]
        h.update(sym.encode())
        h.update(np.int64(s.t0).tobytes())
        for arr in (s.spot, s.perp, s.mark, s.funding_time, s.funding_rate):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- freqtrade


def _read_feather(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import pyarrow as pa
    import pyarrow.feather as feather

    table = feather.read_table(path)
    if "date" not in table.column_names:
        raise DataError(f"{path.name}: no 'date' column")
    unit = table.schema.field("date").type
    raw = table.column("date").cast(pa.int64()).to_numpy()
    per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[getattr(unit, "unit", "ms")]
    # settlement stamps can carry a few ms of jitter: round to the nearest second
    t = (raw + per_s // 2) // per_s
    cols = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in table.column_names if c != "date"}
    return t.astype(np.int64), cols


def _on_grid(t0: int, n: int, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, np.nan)
    idx = (times - t0) // HOUR
    ok = (idx >= 0) & (idx < n) & ((times - t0) % HOUR == 0)
    out[idx[ok]] = values[ok]
    return out


def load_freqtrade_dir(path: Path | str, symbols: list[str] | None = None, quote: str = "USDT") -> dict[str, SymbolHistory]:
    """Load a freqtrade ``user_data/data/<exchange>`` directory (feather files).

    Needs, per symbol: ``{SYM}_{Q}-1h`` (spot), ``{SYM}_{Q}_{Q}-1h-futures`` (perp) and a
    funding series (``-1h-funding_rate`` and/or ``-8h-funding_rate``, merged). The mark
    series (``-1h-mark``) is optional; where it is missing the perp close stands in.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data directory not found: {path}")
    if symbols is None:
        symbols = sorted(p.name.split("_")[0] for p in path.glob(f"*_{quote}_{quote}-1h-futures.feather"))
        if not symbols:
            raise DataError(f"{path}: no '*_{quote}_{quote}-1h-futures.feather' files")
    out: dict[str, SymbolHistory] = {}
    for sym in symbols:
        perp_file = path / f"{sym}_{quote}_{quote}-1h-futures.feather"
        spot_file = path / f"{sym}_{quote}-1h.feather"
        for f in (perp_file, spot_file):
            if not f.is_file():
                raise DataError(f"{sym}: missing {f.name} in {path}")
        pt, pc = _read_feather(perp_file)
        st, sc = _read_feather(spot_file)
        obs_p = pt + HOUR  # close of candle opened at t is observed at t + 1h
        t0, t1 = int(obs_p.min()), int(obs_p.max())
        if (t0 % HOUR) or (t1 % HOUR):
            raise DataError(f"{sym}: perp candles are not on hour boundaries")
        n = (t1 - t0) // HOUR + 1
        stale = np.zeros(n, dtype=bool)
        legs = []
        for times_, c_ in ((obs_p, pc), (st + HOUR, sc)):
            close = c_["close"]
            if "volume" in c_:  # outage candles are gaps, not prices
                dead = stale_candles(c_["open"], c_["high"], c_["low"], close, c_["volume"])
                close = np.where(dead, np.nan, close)
                stale |= _on_grid(t0, n, times_, dead.astype(np.float64)) == 1.0
            legs.append(_on_grid(t0, n, times_, close))
        perp, spot = legs
        mark = mark_high = mark_low = np.full(n, np.nan)
        mark_file = path / f"{sym}_{quote}_{quote}-1h-mark.feather"
        if mark_file.is_file():
            mt, mc = _read_feather(mark_file)
            mark = _on_grid(t0, n, mt + HOUR, mc["close"])
            mark_high = _on_grid(t0, n, mt + HOUR, mc["high"])
            mark_low = _on_grid(t0, n, mt + HOUR, mc["low"])
        f_times: dict[int, float] = {}
        for suffix in ("8h", "1h"):  # 1 h file wins where both have a settlement
            ff = path / f"{sym}_{quote}_{quote}-{suffix}-funding_rate.feather"
            if ff.is_file():
                ft, fc = _read_feather(ff)
                for tt, rr in zip(ft.tolist(), fc["open"].tolist(), strict=True):
                    f_times[int(round(tt / 60) * 60)] = rr
        if not f_times:
            raise DataError(f"{sym}: no funding-rate file in {path}")
        ft_arr = np.array(sorted(f_times), dtype=np.int64)
        fr_arr = np.array([f_times[k] for k in ft_arr.tolist()], dtype=np.float64)
        # keep settlements inside the tradable span
        keep = (ft_arr >= t0) & (ft_arr <= t1)
        out[sym] = _finish(sym, t0, spot, perp, mark, mark_high, mark_low, ft_arr[keep], fr_arr[keep], stale)
    return out


# --------------------------------------------------------------------------- plain CSV


def _csv_columns(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    import csv

    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{path.name}: empty")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)} (has {', '.join(rows[0])})")
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        vals = []
        for n, r in enumerate(rows, 2):
            v = (r.get(col) or "").strip()
            if col == "time":
                try:
                    vals.append(float(v) if v.replace(".", "", 1).isdigit() else parse_time(v))
                except ValueError:
                    raise DataError(f"{path.name} line {n}: bad time {v!r}") from None
            else:
                try:
                    vals.append(float(v) if v else np.nan)
                except ValueError:
                    raise DataError(f"{path.name} line {n}: {col} is not a number: {v!r}") from None
        out[col] = np.array(vals)
    t = out["time"]
    if np.any(np.diff(t) <= 0):
        raise DataError(f"{path.name}: times are not strictly increasing")
    return out


def load_csv_dir(path: Path | str, symbols: list[str] | None = None) -> dict[str, SymbolHistory]:
    """A plain CSV layout: ``{SYM}.csv`` with hourly rows ``time,spot,perp[,mark,mark_high,mark_low]``
    (``time`` = observation time on the hour, ISO or epoch seconds; an empty spot is a gap) and
    ``{SYM}_funding.csv`` with ``time,rate`` (rate per settlement as a fraction)."""
    path = Path(path)
    if symbols is None:
        symbols = sorted(p.stem for p in path.glob("*.csv") if not p.stem.endswith("_funding"))
        if not symbols:
            raise DataError(f"{path}: no '<SYM>.csv' files")
    out: dict[str, SymbolHistory] = {}
    for sym in symbols:
        prices, funding = path / f"{sym}.csv", path / f"{sym}_funding.csv"
        for f in (prices, funding):
            if not f.is_file():
                raise DataError(f"{sym}: missing {f.name} in {path}")
        c = _csv_columns(prices, ("time", "spot", "perp"))
        t = c["time"].astype(np.int64)
        if np.any(t % HOUR):
            bad = int(t[np.flatnonzero(t % HOUR)[0]])
            raise DataError(f"{prices.name}: time {bad} is not on an hour boundary (rows must be hourly observations)")
        t0, n = int(t[0]), int((t[-1] - t[0]) // HOUR) + 1
        cols = {k: _on_grid(t0, n, t, c[k]) if k in c else np.full(n, np.nan) for k in ("spot", "perp", "mark", "mark_high", "mark_low")}
        if np.isnan(cols["perp"]).any():
            raise DataError(f"{prices.name}: perp prices are missing for {int(np.isnan(cols['perp']).sum())} hours")
        fc = _csv_columns(funding, ("time", "rate"))
        out[sym] = _finish(sym, t0, cols["spot"], cols["perp"], cols["mark"], cols["mark_high"], cols["mark_low"],
                           fc["time"].astype(np.int64), fc["rate"])
    return out


def load_any(path: Path | str | None, symbols: list[str] | None = None) -> dict[str, SymbolHistory]:
    """The shipped extract (``None``), an ``.npz`` extract, a freqtrade directory or a CSV directory."""
    if path is None:
        return load_extract(None, symbols)
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*.feather")):
            return load_freqtrade_dir(p, symbols)
        if any(p.glob("*.csv")):
            return load_csv_dir(p, symbols)
        raise DataError(f"{p}: neither freqtrade .feather files nor .csv files")
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    return load_extract(p, symbols)


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
