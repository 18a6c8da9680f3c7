"""Download market history through ccxt into freqtrade's data layout: ``basis-mcp data download``.

    basis-mcp data download --venue binance|bybit|okx --symbols BTC,ETH --timeframe 5m --start 2024-01-01
        [--end 2024-06-01] [--dir ./user_data/data] [--mark-timeframe 8h] [--funding | --no-funding]

Per symbol (``BTC`` means ``BTC/USDT`` spot and ``BTC/USDT:USDT`` perpetual) it writes, in freqtrade's
exchange-directory layout (what `basis_mcp.loaders.load_any` reads, ``<dir>/<venue>``):

- ``<dir>/<venue>/BTC_USDT-5m.feather``                       spot candles;
- ``<dir>/<venue>/futures/BTC_USDT_USDT-5m-futures.feather``  perp candles;
- ``<dir>/<venue>/futures/BTC_USDT_USDT-8h-mark.feather``     mark candles (ccxt ``params={"price": "mark"}``);
- ``<dir>/<venue>/futures/BTC_USDT_USDT-8h-funding_rate.feather``  settled funding
  (``fetch_funding_rate_history``), named with the venue's funding interval; the rate is in ``open``
  (high = low = close = volume = 0), as freqtrade writes it, at the settlement time rounded to the minute.

Each feather holds ``date`` (timestamp[ms, UTC], the candle's OPEN time), open, high, low, close, volume,
in one chunk, lz4-compressed. Only CLOSED candles are written, and settlements up to ``--end`` (exclusive;
default: the venue's clock, read with ``fetch_time``, a settlement at that instant included): no request
reaches past ``--end`` or the venue's now.

Defaults follow freqtrade's exchange classes (``_ft_has`` / ``_ft_has_futures``) up to 2025.11: the
base ``Exchange`` has ``mark_ohlcv_timeframe`` 8h and ``funding_fee_timeframe`` 8h, which Binance keeps;
Bybit and OKX override ``mark_ohlcv_timeframe`` to 4h (funding 8h). freqtrade 2025.12 (PR #12599,
dynamic funding intervals) moved most exchanges to 1h mark candles and 1h funding files: pass
``--mark-timeframe 1h`` for that; the funding file is named with the interval the venue reports for the
symbol (Bybit ``fundingInterval``, Binance ``fetch_funding_intervals``, OKX ``fetch_funding_interval``; 8h
where it reports none).

How it fetches: sequentially, through one ccxt client with ``enableRateLimit``; each request asks for one
window of at most a page (Binance 1000 candles / 1000 settlements, Bybit 1000 / 200, OKX 100 / 100) with
``since`` and ``until`` both set, so it never asks past ``--end`` or now; a page that comes back full is
split and the rest asked for, so a venue that truncates (either end) loses nothing. RateLimitExceeded,
ExchangeNotAvailable, RequestTimeout (any ccxt NetworkError) are retried with exponential back-off
(``retries`` times). Incremental: an existing file is resumed after its last row (never duplicated; a
file starting after ``--start`` is not prepended: delete it to re-download). Files are written to a temp
file and renamed (every couple of seconds while a file grows, and on any error or interruption), so an
interrupted run leaves valid files and running the same command again completes them. After writing,
each file is read back and checked as the loader checks it (strictly increasing, no duplicates, on the
timeframe's grid); gaps are listed in the summary.

Contract facts (``<dir>/<venue>/basis-mcp-markets.json``, rewritten atomically; symbols not in this run
are kept), from ccxt's markets (the venue's public fee schedule, default tier, not your account's)::

    {"schema": "basis-mcp-markets/1", "venue": "bybit", "updated": "<the venue's now, ISO>", "ccxt": "4.5.90",
     "symbols": {"BTC": {
        "spot": {"symbol": "BTC/USDT", "id": "BTCUSDT", "taker": 0.001, "maker": 0.001,
                 "lot_step": 1e-06, "contract_size": 1.0, "lot_step_base": 1e-06,
                 "min_amount": 1e-06, "min_amount_base": 1e-06, "min_notional": 5.0, "price_step": 0.01},
        "perp": {"symbol": "BTC/USDT:USDT", "id": "BTCUSDT", "taker": 0.00055, "maker": 0.0002,
                 "lot_step": 0.001, "contract_size": 1.0, "lot_step_base": 0.001,
                 "min_amount": 0.001, "min_amount_base": 0.001, "min_notional": 5.0, "price_step": 0.1,
                 "funding_interval_hours": 8, "funding_interval_source": "market info"}}}}

- ``taker`` / ``maker``: fees as fractions of notional (0.00055 = 5.5 bps), ccxt's ``markets[s]['taker'|'maker']``;
- ``lot_step``: the amount precision as a step (ccxt's ``precision.amount``, converted from decimal places
  where the venue counts those; null for significant-digit venues), in the market's amount unit:
  contracts for a perp (``contract_size`` coins each; OKX's BTC swap is 0.01), so ``lot_step_base`` =
  ``lot_step`` x ``contract_size`` is the step in coins; ``min_amount`` / ``min_amount_base`` likewise
  (``limits.amount.min``);
- ``min_notional``: ``limits.cost.min`` in USDT (null where the venue states none); ``price_step`` the tick;
- ``funding_interval_hours`` (perp only): from ``fetch_funding_intervals`` (Binance lists only symbols off
  8 h) or ``fetch_funding_interval`` (OKX, per symbol), the market's ``info.fundingInterval`` (Bybit, minutes),
  else the venue's default 8 h;
  ``funding_interval_source`` says which.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from basis_mcp.clock import iso, parse_time
from basis_mcp.history import DataError
from basis_mcp.loaders import TIMEFRAMES, check_rows, timeframe_name

QUOTE = "USDT"
MARKETS_FILE = "basis-mcp-markets.json"
COLUMNS = ("open", "high", "low", "close", "volume")
CHECKPOINT_S = 2.0
Progress = Callable[[str, int, int], None]  # (what, pages done, pages expected)


@dataclass(frozen=True)
class VenueRules:
    page: int  # candles per request (ccxt's cap for fetch_ohlcv on the venue)
    funding_page: int  # settlements per fetch_funding_rate_history request
    mark_timeframe: str  # freqtrade's mark_ohlcv_timeframe
    funding_hours: int  # freqtrade's funding_fee_timeframe, used where the venue reports no interval


VENUES: dict[str, VenueRules] = {
    "binance": VenueRules(1000, 1000, "8h", 8),
    "bybit": VenueRules(1000, 200, "4h", 8),
    "okx": VenueRules(100, 100, "4h", 8),
}


class DownloadError(DataError):
    """A download that cannot go on: bad input, a venue that refuses, or one that keeps failing."""


@dataclass
class DownloadRequest:
    venue: str
    symbols: list[str]
    timeframe: str
    start: str
    end: str | None = None
    directory: Path = Path("user_data/data")
    mark_timeframe: str | None = None  # None: the venue's default (VenueRules.mark_timeframe)
    funding: bool = True
    base_url: str | None = None  # a local simulator (tests)
    retries: int = 4
    retry_delay_s: float = 1.0


@dataclass
class FileReport:
    path: Path
    label: str
    rows_before: int
    rows_added: int
    first_ms: int | None
    last_ms: int | None
    requests: int
    gaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.rows_before + self.rows_added


@dataclass
class Summary:
    venue: str
    directory: Path
    files: list[FileReport]
    markets_file: Path
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"{self.venue}: {self.directory}"]
        for f in self.files:
            span = f"{iso(f.first_ms / 1000)} → {iso(f.last_ms / 1000)}" if f.first_ms is not None else "empty"
            lines.append(f"  {f.label:<28} {f.rows:>8} rows (+{f.rows_added}, {f.requests} requests)  {span}  "
                         f"{f.path.relative_to(self.directory)}")
            if f.gaps:
                shown = "; ".join(f.gaps[:5]) + (f"; ... {len(f.gaps) - 5} more" if len(f.gaps) > 5 else "")
                lines.append(f"    {len(f.gaps)} gap(s): {shown}")
            lines += [f"    note: {n}" for n in f.notes]
        lines.append(f"  contract facts: {self.markets_file.relative_to(self.directory)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    label: str  # "BTC perp 5m"
    kind: str  # spot | perp | mark | funding
    market: str  # ccxt symbol
    step_ms: int  # candle length, or the funding interval
    path: Path


# --------------------------------------------------------------------------- inputs


def _check_venue(venue: str) -> str:
    import ccxt

    v = venue.strip().lower()
    if v not in ccxt.exchanges:
        raise DownloadError(f"unknown venue {venue!r}: ccxt does not know it (supported here: {', '.join(VENUES)})")
    if v not in VENUES:
        raise DownloadError(f"venue {venue!r} is not supported by data download (supported: {', '.join(VENUES)})")
    return v


def _check_timeframe(tf: str, what: str, ex: Any, venue: str) -> int:
    if tf not in TIMEFRAMES:
        raise DownloadError(f"{what} {tf!r} cannot be loaded by basis-mcp (one of {', '.join(TIMEFRAMES)})")
    if tf not in (ex.timeframes or {}):
        raise DownloadError(f"{what} {tf!r} is not offered by {venue} (it offers {', '.join(ex.timeframes or {})})")
    return TIMEFRAMES[tf] * 1000


def _parse_date(raw: str, flag: str) -> int:
    try:
        return int(parse_time(raw.strip()) * 1000)
    except (ValueError, AttributeError):
        raise DownloadError(f"{flag} {raw!r} is not a date (use e.g. 2024-01-01 or 2024-01-01T08:00Z)") from None


def _symbols(raw: list[str]) -> list[str]:
    out = []
    for s in raw:
        sym = s.strip().upper()
        if not sym:
            continue
        if not re.fullmatch(r"[A-Z0-9]+", sym):
            raise DownloadError(f"symbol {s!r} is not a coin name like BTC (USDT spot and USDT perp are implied)")
        if sym not in out:
            out.append(sym)
    if not out:
        raise DownloadError("no symbols given (--symbols BTC,ETH)")
    return out


def file_path(root: Path, venue: str, sym: str, kind: str, tf: str) -> Path:
    """Where freqtrade keeps a symbol's series of ``kind`` (spot | perp | mark | funding) under ``root``."""
    if kind == "spot":
        return root / venue / f"{sym}_{QUOTE}-{tf}.feather"
    suffix = {"perp": "futures", "mark": "mark", "funding": "funding_rate"}[kind]
    return root / venue / "futures" / f"{sym}_{QUOTE}_{QUOTE}-{tf}-{suffix}.feather"


# --------------------------------------------------------------------------- files


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(dates in ms, (n, 5) open/high/low/close/volume) of a feather file (empty arrays if absent)."""
    import pyarrow as pa
    import pyarrow.feather as feather

    if not path.exists():
        return np.zeros(0, np.int64), np.zeros((0, 5))
    try:
        table = feather.read_table(path)
        unit = getattr(table.schema.field("date").type, "unit", "ms")
        raw = table.column("date").cast(pa.int64()).to_numpy()
        cols = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) if c in
                                table.column_names else np.zeros(len(raw)) for c in COLUMNS])
    except (OSError, KeyError, pa.ArrowInvalid) as e:
        raise DownloadError(f"{path}: not a readable freqtrade feather file ({e}); move it away to download afresh") from None
    t = raw * 1000 if unit == "s" else raw // {"ms": 1, "us": 1000, "ns": 1_000_000}[unit]
    return t.astype(np.int64), cols.reshape(len(t), 5)


def write_series(path: Path, t_ms: np.ndarray, cols: np.ndarray) -> None:
    """Write atomically: a temp file beside ``path``, flushed to disk, renamed over it."""
    import pyarrow as pa
    import pyarrow.feather as feather

    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"date": pa.array(np.asarray(t_ms, np.int64), pa.timestamp("ms", tz="UTC"))}
    for k, c in enumerate(COLUMNS):
        data[c] = pa.array(np.asarray(cols[:, k], np.float64))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    feather.write_feather(pa.table(data), tmp, compression="lz4")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def verify(path: Path, step_ms: int | None) -> tuple[int, list[str]]:
    """Read a written file back and check it as the loader does; returns (rows, gaps). ``step_ms`` None: funding
    (strictly increasing, no duplicates; gaps are spacings over 1.5 x the most common one)."""
    t_ms, _ = read_series(path)
    t = t_ms // 1000
    if step_ms is not None:
        if (t_ms % step_ms).any():
            k = int(np.flatnonzero(t_ms % step_ms)[0])
            raise DownloadError(f"{path}: {iso(t[k])} (row {k + 1}) is not on the {timeframe_name(step_ms // 1000)} grid")
        bar = step_ms // 1000
        check_rows(path, t, bar if t.size > 1 else None, on_grid=True)
    else:
        check_rows(path, t, None, on_grid=False)
        bar = int(np.median(np.diff(t))) if t.size > 1 else 0
    gaps = []
    if t.size > 1:
        d = np.diff(t)
        for k in np.flatnonzero(d > (bar if step_ms is not None else 1.5 * bar)).tolist():
            missing = f"{int(d[k] // bar) - 1} missing" if step_ms is not None else f"{d[k] / 3600:g} h apart"
            gaps.append(f"{iso(float(t[k]))} → {iso(float(t[k + 1]))} ({missing})")
    return int(t.size), gaps


# --------------------------------------------------------------------------- the venue


def _step(ex: Any, v: Any) -> float | None:
    """A precision as a step (ccxt's TICK_SIZE mode gives steps, DECIMAL_PLACES gives digits)."""
    from ccxt.base.decimal_to_precision import DECIMAL_PLACES, TICK_SIZE

    if v is None:
        return None
    if ex.precisionMode == TICK_SIZE:
        return float(v)
    if ex.precisionMode == DECIMAL_PLACES:
        return float(10.0 ** -float(v))
    return None


def _facts(ex: Any, m: dict[str, Any]) -> dict[str, Any]:
    lim = m.get("limits") or {}
    step = _step(ex, (m.get("precision") or {}).get("amount"))
    cs = float(m.get("contractSize") or 1.0)
    min_amount = (lim.get("amount") or {}).get("min")
    return {"symbol": m["symbol"], "id": m.get("id"), "taker": m.get("taker"), "maker": m.get("maker"),
            "lot_step": step, "contract_size": cs, "lot_step_base": None if step is None else step * cs,
            "min_amount": min_amount, "min_amount_base": None if min_amount is None else float(min_amount) * cs,
            "min_notional": (lim.get("cost") or {}).get("min"),
            "price_step": _step(ex, (m.get("precision") or {}).get("price"))}


class Downloader:
    """One run: a ccxt client, the request, and what was done (composition; see `download`)."""

    def __init__(self, req: DownloadRequest, ex: Any, progress: Progress | None = None):
        self.req, self.ex, self.progress = req, ex, progress
        self.venue = req.venue
        self.rules = VENUES[req.venue]
        self.requests = 0

    async def call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """One venue call, retried with exponential back-off while the venue is busy or unreachable."""
        import ccxt

        for attempt in range(self.req.retries + 1):
            try:
                return await fn(*args, **kw)
            except ccxt.NetworkError as e:  # RateLimitExceeded, DDoSProtection, ExchangeNotAvailable, RequestTimeout
                if attempt == self.req.retries:
                    raise DownloadError(f"{what}: {self.venue} still failing after {attempt + 1} attempts "
                                        f"({type(e).__name__}: {str(e)[:200]}); run the same command again to resume") from None
                await asyncio.sleep(self.req.retry_delay_s * 2**attempt)
            except ccxt.BadSymbol as e:
                raise DownloadError(f"{what}: {self.venue} does not know the symbol ({str(e)[:200]})") from None
            except ccxt.BaseError as e:
                raise DownloadError(f"{what}: {self.venue} refused ({type(e).__name__}: {str(e)[:300]})") from None
        raise AssertionError("unreachable")

    async def now_ms(self) -> int:
        if self.ex.has.get("fetchTime"):
            return int(await self.call("fetch_time", self.ex.fetch_time))
        return int(time.time() * 1000)

    async def funding_hours(self, perps: dict[str, str]) -> dict[str, tuple[int, str]]:
        """Per coin: (funding interval in hours, where it came from)."""
        out: dict[str, tuple[int, str]] = {}
        listed: dict[str, Any] = {}
        failed = ""
        if self.ex.has.get("fetchFundingIntervals"):
            try:
                listed = await self.call("fetch_funding_intervals", self.ex.fetch_funding_intervals, list(perps.values()))
            except DownloadError as e:
                failed = f" (fetch_funding_intervals failed: {e})"
        one_by_one = not self.ex.has.get("fetchFundingIntervals") and self.ex.has.get("fetchFundingInterval")
        for sym, perp in perps.items():
            info = self.ex.markets[perp].get("info") or {}
            row = listed.get(perp) or {}
            if one_by_one:  # OKX: per symbol, from its next two settlement times
                try:
                    row = await self.call("fetch_funding_interval", self.ex.fetch_funding_interval, perp) or {}
                except DownloadError as e:
                    failed = f" (fetch_funding_interval failed: {e})"
            if row.get("interval"):
                out[sym] = (TIMEFRAMES.get(row["interval"], 8 * 3600) // 3600,
                            "fetch_funding_interval" if one_by_one else "fetch_funding_intervals")
            elif str(info.get("fundingInterval") or "").isdigit():  # Bybit: minutes
                out[sym] = (max(1, int(info["fundingInterval"]) // 60), "market info")
            else:
                out[sym] = (self.rules.funding_hours, f"default: {self.venue} states none for it{failed}")
        return out

    # ------------------------------------------------------------ fetching

    async def _page(self, job: _Job, a: int, b: int) -> tuple[list[list[float]], int]:
        """Rows with a <= time <= b (ms) from one request, and how many the venue sent."""
        self.requests += 1
        if job.kind == "funding":
            limit = self.rules.funding_page
            # ccxt's okx reads no `until` here: OKX's own `after` bounds the page (records older than it)
            bound = {"after": b + 1} if self.venue == "okx" else {"until": b}
            got = await self.call(f"{job.label} from {iso(a / 1000)}", self.ex.fetch_funding_rate_history,
                                  job.market, a, limit, bound)
            rows = [[round(int(r["timestamp"]) / 60_000) * 60_000, float(r["fundingRate"]), 0.0, 0.0, 0.0, 0.0]
                    for r in got if r.get("timestamp") is not None and r.get("fundingRate") is not None]
        else:
            limit = self.rules.page
            # until one ms past the window's last open: OKX's `after` (what ccxt sends it) excludes its bound
            params: dict[str, Any] = {"until": b + 1} | ({"price": "mark"} if job.kind == "mark" else {})
            tf = timeframe_name(job.step_ms // 1000)
            got = await self.call(f"{job.label} from {iso(a / 1000)}", self.ex.fetch_ohlcv, job.market, tf, a, limit, params)
            rows = [[int(c[0]), *(float(x) if x is not None else 0.0 for x in c[1:6])] for c in got
                    if c[0] is not None and None not in c[1:5]]
        return [r for r in rows if a <= r[0] <= b], len(got)

    async def _window(self, job: _Job, a: int, b: int, limit: int) -> list[list[float]]:
        """Every row in [a, b]: a page that comes back full is split around what it held."""
        rows, sent = await self._page(job, a, b)
        if sent < limit:
            return rows
        if not rows:
            raise DownloadError(f"{job.label}: {self.venue} answered a full page outside the window asked for "
                                f"({iso(a / 1000)} → {iso(b / 1000)}): its pagination is not what this client expects")
        lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
        older = await self._window(job, a, int(lo) - 1, limit) if lo > a else []
        newer = await self._window(job, int(hi) + 1, b, limit) if hi < b else []
        return older + rows + newer

    async def run_job(self, job: _Job, start_ms: int, end_ms: int, now_ms: int) -> FileReport:
        """Resume or start one file and bring it up to ``end_ms`` (exclusive) or now."""
        for stale in job.path.parent.glob(f"{job.path.name}.*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)
        t_old, c_old = read_series(job.path)
        funding = job.kind == "funding"
        step, limit = job.step_ms, (self.rules.funding_page if funding else self.rules.page)
        if funding:
            first = int(t_old[-1]) + 1 if t_old.size else start_ms
            last = min(end_ms - 1, now_ms)
            if t_old.size and int(t_old[-1]) + step > last:  # the next settlement is not due yet
                first = last + 1
        else:
            first = int(t_old[-1]) + step if t_old.size else -(-start_ms // step) * step
            last = min((end_ms - 1) // step * step, (now_ms - step) // step * step)  # closed candles only
        report = FileReport(job.path, job.label, int(t_old.size), 0, int(t_old[0]) if t_old.size else None,
                            int(t_old[-1]) if t_old.size else None, 0)
        if t_old.size and int(t_old[0]) > start_ms + max(step, 86_400_000):
            report.notes.append(f"the file starts at {iso(t_old[0] / 1000)}, after --start; it is not prepended "
                                "(move it away to download from --start)")
        # a window holds at most `limit` candles (its first to its last open), or `limit` - 1 settlements on the
        # interval's grid, so a full page means more than expected (a shorter interval) and is split
        width = limit * step if not funding else (limit - 1) * step
        total = max(0, -(-(last - first + 1) // width))
        new: dict[int, list[float]] = {}
        written, at, done, off_grid = int(t_old.size), time.monotonic(), 0, 0
        requests0 = self.requests

        def flush() -> None:
            nonlocal written, at
            if len(new) + t_old.size == written:
                return
            keys = sorted(new)
            t_new = np.array(keys, dtype=np.int64)
            c_new = np.array([new[k][1:] for k in keys], dtype=np.float64).reshape(len(keys), 5)
            write_series(job.path, np.concatenate([t_old, t_new]), np.concatenate([c_old, c_new]))
            written, at = int(t_old.size) + len(keys), time.monotonic()

        if self.progress:
            self.progress(job.label, 0, total)
        try:
            a = first
            while a <= last:
                b = min(a + width - (1 if funding else step), last)
                for r in await self._window(job, a, b, limit):
                    k = int(r[0])
                    if (funding or k % step == 0) and (not t_old.size or k > t_old[-1]) and k not in new:
                        new[k] = r
                    elif not funding and k % step:
                        off_grid += 1
                a, done = b + (1 if funding else step), done + 1
                if self.progress:
                    self.progress(job.label, done, total)
                if time.monotonic() - at >= CHECKPOINT_S:
                    flush()
        finally:  # an error or an interruption keeps what was fetched, in a valid file
            flush()
            report.requests = self.requests - requests0
        if off_grid:
            report.notes.append(f"dropped {off_grid} row(s) the venue sent off the {timeframe_name(step // 1000)} grid")
        report.rows_added = len(new)
        if not t_old.size and not new:
            what = "settled funding" if funding else f"{job.kind} {timeframe_name(step // 1000)} candles"
            raise DownloadError(f"{self.venue} returned no {what} for {job.market} between {iso(start_ms / 1000)} and "
                                f"{iso(min(end_ms, now_ms) / 1000)}: it has none there (not listed yet, or older than it keeps)")
        if new:
            keys = sorted(new)
            report.first_ms = report.first_ms if report.first_ms is not None else keys[0]
            report.last_ms = keys[-1]
        _, report.gaps = verify(job.path, None if funding else step)
        return report


# --------------------------------------------------------------------------- the run


def _jobs(req: DownloadRequest, sym: str, mark_tf: str, fund_h: int) -> list[_Job]:
    tf, root, venue = req.timeframe, Path(req.directory), req.venue
    spot, perp = f"{sym}/{QUOTE}", f"{sym}/{QUOTE}:{QUOTE}"
    out = [_Job(f"{sym} spot {tf}", "spot", spot, TIMEFRAMES[tf] * 1000, file_path(root, venue, sym, "spot", tf)),
           _Job(f"{sym} perp {tf}", "perp", perp, TIMEFRAMES[tf] * 1000, file_path(root, venue, sym, "perp", tf)),
           _Job(f"{sym} mark {mark_tf}", "mark", perp, TIMEFRAMES[mark_tf] * 1000,
                file_path(root, venue, sym, "mark", mark_tf))]
    if req.funding:
        existing = sorted((root / venue / "futures").glob(f"{sym}_{QUOTE}_{QUOTE}-*-funding_rate.feather"))
        name = f"{fund_h}h" if f"{fund_h}h" in TIMEFRAMES else f"{VENUES[venue].funding_hours}h"
        path = existing[0] if len(existing) == 1 else file_path(root, venue, sym, "funding", name)
        out.append(_Job(f"{sym} funding", "funding", perp, fund_h * 3_600_000, path))
    return out


async def download(req: DownloadRequest, progress: Progress | None = None, exchange: Any = None) -> Summary:
    """Validate ``req``, then download every file it names (see the module docstring). ``exchange``: a ccxt
    async client to use (closed by the caller); default one from `make_exchange` (closed here)."""
    req.venue = _check_venue(req.venue)
    req.symbols = _symbols(req.symbols)
    for tf, what in ((req.timeframe, "--timeframe"), (req.mark_timeframe, "--mark-timeframe")):
        if tf is not None and tf not in TIMEFRAMES:
            raise DownloadError(f"{what} {tf!r} cannot be loaded by basis-mcp (one of {', '.join(TIMEFRAMES)})")
    start_ms = _parse_date(req.start, "--start")
    end_ms = _parse_date(req.end, "--end") if req.end else None
    if end_ms is not None and start_ms >= end_ms:
        raise DownloadError(f"--start {req.start} is not before --end {req.end}")
    if exchange is None:
        from basis_mcp.live.exchanges import make_exchange

        ex = make_exchange(req.venue, None, base_url=req.base_url, timeout_ms=30_000)
    else:
        ex = exchange
    try:
        return await _download(req, ex, progress, start_ms, end_ms)
    finally:
        if exchange is None:
            await ex.close()


async def _download(req: DownloadRequest, ex: Any, progress: Progress | None, start_ms: int,
                    end_ms: int | None) -> Summary:
    import ccxt

    d = Downloader(req, ex, progress)
    mark_tf = req.mark_timeframe or d.rules.mark_timeframe
    await d.call("load_markets", ex.load_markets)
    _check_timeframe(req.timeframe, "--timeframe", ex, req.venue)
    _check_timeframe(mark_tf, "--mark-timeframe", ex, req.venue)
    for sym in req.symbols:
        for market, what in ((f"{sym}/{QUOTE}", "spot"), (f"{sym}/{QUOTE}:{QUOTE}", "perpetual")):
            if market not in ex.markets:
                raise DownloadError(f"symbol {sym!r} is not listed on {req.venue} (no {what} market {market})")
    now_ms = await d.now_ms()
    if start_ms >= now_ms:
        raise DownloadError(f"--start {req.start} is in the future ({req.venue}'s clock says {iso(now_ms / 1000)})")
    notes = []
    if end_ms is None or end_ms > now_ms:
        if end_ms is not None:
            notes.append(f"--end {req.end} is after {req.venue}'s now ({iso(now_ms / 1000)}): downloaded up to now")
        end_ms = now_ms + 1  # up to now inclusive: a settlement at now has been paid, a candle closing at now is closed
    perps = {s: f"{s}/{QUOTE}:{QUOTE}" for s in req.symbols}
    hours = await d.funding_hours(perps)
    root = Path(req.directory)
    markets_file = root / req.venue / MARKETS_FILE
    old: dict[str, Any] = {}
    if markets_file.is_file():
        try:
            old = json.loads(markets_file.read_text()).get("symbols", {})
        except (ValueError, AttributeError):
            old = {}
    facts = {s: {"spot": _facts(ex, ex.markets[f"{s}/{QUOTE}"]),
                 "perp": _facts(ex, ex.markets[perps[s]]) | {"funding_interval_hours": hours[s][0],
                                                             "funding_interval_source": hours[s][1]}}
             for s in req.symbols}
    _write_json(markets_file, {"schema": "basis-mcp-markets/1", "venue": req.venue, "updated": iso(now_ms / 1000),
                               "ccxt": getattr(ccxt, "__version__", "?"), "symbols": old | facts})
    files = []
    for sym in req.symbols:
        for job in _jobs(req, sym, mark_tf, hours[sym][0]):
            files.append(await d.run_job(job, start_ms, end_ms, now_ms))
    return Summary(req.venue, root, files, markets_file, notes)
