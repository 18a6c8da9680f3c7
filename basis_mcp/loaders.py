"""Loading market data from disk, checking what is read: freqtrade directories and plain CSV.

Every loader reads only the symbols asked for, detects each file's timeframe from its rows and
checks it against the name, and refuses (a `DataError` naming the file and the problem) rather
than guessing: duplicated or out-of-order rows, times off the timeframe's grid, spot and perp
candles of different timeframes, a symbol the directory lacks. A coarser series beside the
candles (a 4 h mark beside 5 m candles) is aligned explicitly and the alignment is reported in
the history's ``notes``.

Layouts:
- freqtrade, flat (``user_data/data/binance`` written by older freqtrade, or this project's
  shipped source): ``BTC_USDT-1h.feather`` (spot), ``BTC_USDT_USDT-1h-futures.feather`` (perp),
  ``BTC_USDT_USDT-1h-mark.feather``, ``BTC_USDT_USDT-8h-funding_rate.feather``;
- freqtrade, exchange directory (what freqtrade writes today): spot files in ``<exchange>/``,
  futures files (perp, mark, funding) in ``<exchange>/futures/``;
- CSV: ``{SYM}.csv`` rows ``time,spot,perp[,mark,mark_high,mark_low]`` on any one timeframe and
  ``{SYM}_funding.csv`` rows ``time,rate``.
Candle files carry the candle's OPEN time; the history holds observation times (the close).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from basis_mcp.clock import iso, parse_time
from basis_mcp.history import HOUR, DataError, SymbolHistory, _finish, load_extract, stale_candles

TIMEFRAMES: dict[str, int] = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": HOUR, "2h": 2 * HOUR,
                              "4h": 4 * HOUR, "6h": 6 * HOUR, "8h": 8 * HOUR, "12h": 12 * HOUR, "1d": 86400}
_CANDLE = re.compile(r"^(?P<base>[A-Z0-9]+)_(?P<quote>[A-Z0-9]+)(?:_(?P<settle>[A-Z0-9]+))?-(?P<tf>\d+[mhdw])"
                     r"(?:-(?P<kind>futures|mark|funding_rate|index|premiumIndex))?\.feather$")


def timeframe_seconds(tf: str) -> int:
    if tf not in TIMEFRAMES:
        raise DataError(f"timeframe {tf!r} is not one of {', '.join(TIMEFRAMES)}")
    return TIMEFRAMES[tf]


def timeframe_name(seconds: int) -> str:
    return next((k for k, v in TIMEFRAMES.items() if v == seconds), f"{seconds}s")


# --------------------------------------------------------------------------- reading and checking one file


def _read_feather(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import pyarrow as pa
    import pyarrow.feather as feather

    try:
        table = feather.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: not a readable feather file ({e})") from None
    if "date" not in table.column_names:
        raise DataError(f"{path}: no 'date' column (has {', '.join(table.column_names)})")
    unit = table.schema.field("date").type
    raw = table.column("date").cast(pa.int64()).to_numpy()
    per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[getattr(unit, "unit", "ms")]
    # settlement stamps can carry a few ms of jitter: round to the nearest second
    t = (raw + per_s // 2) // per_s
    cols = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in table.column_names if c != "date"}
    return t.astype(np.int64), cols


def check_rows(path: Path, t: np.ndarray, named_s: int | None, *, on_grid: bool = True) -> int:
    """The bar size of a series: its most common spacing, which must be the name's (``named_s``); rows in
    strictly increasing time, every time on that grid. Returns the bar size in seconds."""
    if t.size == 0:
        raise DataError(f"{path}: no rows")
    d = np.diff(t)
    if (d == 0).any():
        k = int(np.flatnonzero(d == 0)[0])
        raise DataError(f"{path}: duplicated rows at {iso(float(t[k]))} (row {k + 2})")
    if (d < 0).any():
        k = int(np.flatnonzero(d < 0)[0])
        raise DataError(f"{path}: rows out of order: {iso(float(t[k + 1]))} comes after {iso(float(t[k]))} (row {k + 2})")
    if d.size:
        gaps, counts = np.unique(d, return_counts=True)
        bar = int(gaps[np.argmax(counts)])
    else:
        bar = named_s or HOUR
    if named_s is not None and bar != named_s:
        raise DataError(f"{path}: the name says {timeframe_name(named_s)} but the rows are {timeframe_name(bar)} apart "
                        "(a file is never resampled silently: fix the name or the file)")
    if on_grid:
        off = t % bar
        if off.any():
            k = int(np.flatnonzero(off)[0])
            raise DataError(f"{path}: {iso(float(t[k]))} (row {k + 1}) is not on the {timeframe_name(bar)} grid")
    return bar


def _on_grid(t0: int, n: int, bar: int, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, np.nan)
    idx = (times - t0) // bar
    ok = (idx >= 0) & (idx < n) & ((times - t0) % bar == 0)
    out[idx[ok]] = values[ok]
    return out


# --------------------------------------------------------------------------- freqtrade


def _candle_files(dirs: list[Path]) -> list[tuple[Path, re.Match]]:
    out = []
    for d in dirs:
        for p in sorted(d.glob("*.feather")):
            m = _CANDLE.match(p.name)
            if m:
                out.append((p, m))
    return out


def _pick(files: list[tuple[Path, re.Match]], sym: str, kind: str | None, perp: bool) -> dict[int, Path]:
    """A symbol's files of one kind, by timeframe (seconds)."""
    out: dict[int, Path] = {}
    for p, m in files:
        if m["base"] != sym or m["kind"] != kind or (m["settle"] is not None) != perp:
            continue
        out[timeframe_seconds(m["tf"])] = p
    return out


def load_freqtrade_dir(path: Path | str, symbols: list[str] | None = None, quote: str = "USDT",
                       timeframe: str | None = None) -> dict[str, SymbolHistory]:
    """A freqtrade data directory, flat or an exchange directory with ``futures/`` (module docstring).

    Per symbol: spot and perp candles of one timeframe (``timeframe``, or the only one present),
    funding (any ``-<tf>-funding_rate`` files, merged; settlements at their own times) and, if
    present, mark candles: of the same timeframe they are used as they are; coarser ones are
    aligned (the perp's candles stand in for the mark between them: see ``notes``)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data directory not found: {path}")
    dirs = [path] + ([path / "futures"] if (path / "futures").is_dir() else [])
    files = _candle_files(dirs)
    want_bar = timeframe_seconds(timeframe) if timeframe is not None else None
    if symbols is None:
        symbols = sorted({m["base"] for _, m in files if m["kind"] == "futures" and m["quote"] == quote})
        if not symbols:
            raise DataError(f"{path}: no perp candle files ('<SYM>_{quote}_{quote}-<timeframe>-futures.feather', "
                            f"here or in {path / 'futures'})")
    out: dict[str, SymbolHistory] = {}
    for sym in symbols:
        out[sym] = _load_ft_symbol(path, files, sym, want_bar)
    return out


def _one_timeframe(path: Path, sym: str, what: str, by_tf: dict[int, Path], want: int | None, hint: str) -> tuple[int, Path]:
    if not by_tf:
        raise DataError(f"{sym}: no {what} candles in {path} (looked for {hint})")
    if want is not None:
        if want not in by_tf:
            raise DataError(f"{sym}: no {timeframe_name(want)} {what} candles in {path} (has "
                            f"{', '.join(timeframe_name(b) for b in sorted(by_tf))})")
        return want, by_tf[want]
    if len(by_tf) > 1:
        raise DataError(f"{sym}: {what} candles in {path} come in several timeframes "
                        f"({', '.join(timeframe_name(b) for b in sorted(by_tf))}): say which (timeframe / --timeframe)")
    return next(iter(by_tf.items()))


def _load_ft_symbol(path: Path, files: list[tuple[Path, re.Match]], sym: str, want: int | None) -> SymbolHistory:
    perp_tf, perp_file = _one_timeframe(path, sym, "perp", _pick(files, sym, "futures", True), want,
                                        f"{sym}_USDT_USDT-<tf>-futures.feather")
    spot_tf, spot_file = _one_timeframe(path, sym, "spot", _pick(files, sym, None, False), perp_tf,
                                        f"{sym}_USDT-<tf>.feather")
    pt, pc = _read_feather(perp_file)
    st, sc = _read_feather(spot_file)
    bar = check_rows(perp_file, pt, perp_tf)
    check_rows(spot_file, st, spot_tf)
    for f, c in ((perp_file, pc), (spot_file, sc)):
        missing = [k for k in ("open", "high", "low", "close") if k not in c]
        if missing:
            raise DataError(f"{f}: missing column(s) {', '.join(missing)}")
    obs_p = pt + bar  # the close of a candle opened at t is observed at t + bar
    t0, t1 = int(obs_p.min()), int(obs_p.max())
    n = (t1 - t0) // bar + 1
    stale = np.zeros(n, dtype=bool)
    legs = []
    for times_, c_ in ((obs_p, pc), (st + bar, sc)):
        close = c_["close"]
        if "volume" in c_:  # outage candles are gaps, not prices
            dead = stale_candles(c_["open"], c_["high"], c_["low"], close, c_["volume"])
            close = np.where(dead, np.nan, close)
            stale |= _on_grid(t0, n, bar, times_, dead.astype(np.float64)) == 1.0
        legs.append(_on_grid(t0, n, bar, times_, close))
    perp, spot = legs
    notes: list[str] = []
    mark, mark_high, mark_low = _mark(path, files, sym, bar, t0, n, obs_p, pc, notes)
    f_times: dict[int, float] = {}
    funding = _pick(files, sym, "funding_rate", True)
    for tf in sorted(funding, reverse=True):  # the finest file wins where two have a settlement
        ff = funding[tf]
        ft, fc = _read_feather(ff)
        check_rows(ff, ft, None, on_grid=False)
        col = "open" if "open" in fc else "close"
        if col not in fc:
            raise DataError(f"{ff}: no 'open' column with the rate")
        for tt, rr in zip(ft.tolist(), fc[col].tolist(), strict=True):
            f_times[int(round(tt / 60) * 60)] = rr
    if not f_times:
        raise DataError(f"{sym}: no funding-rate file in {path} (looked for {sym}_USDT_USDT-<tf>-funding_rate.feather)")
    ft_arr = np.array(sorted(f_times), dtype=np.int64)
    fr_arr = np.array([f_times[k] for k in ft_arr.tolist()], dtype=np.float64)
    keep = (ft_arr >= t0) & (ft_arr <= t1)  # settlements inside the tradable span
    h = _finish(sym, t0, spot, perp, mark, mark_high, mark_low, ft_arr[keep], fr_arr[keep], stale, bar)
    return h if not notes else SymbolHistory(**{**h.__dict__, "notes": tuple(notes)})


def _mark(path: Path, files: list[tuple[Path, re.Match]], sym: str, bar: int, t0: int, n: int, obs_p: np.ndarray,
          pc: dict[str, np.ndarray], notes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mark close/high/low on the bar grid (NaN where none: the perp stands in, flagged as a proxy)."""
    nan = np.full(n, np.nan)
    marks = _pick(files, sym, "mark", True)
    if bar in marks:
        mt, mc = _read_feather(marks[bar])
        check_rows(marks[bar], mt, bar)
        return (_on_grid(t0, n, bar, mt + bar, mc["close"]), _on_grid(t0, n, bar, mt + bar, mc["high"]),
                _on_grid(t0, n, bar, mt + bar, mc["low"]))
    finer = [b for b in marks if b < bar]
    coarser = sorted(b for b in marks if b > bar)
    if finer and not coarser:
        notes.append(f"{sym}: mark candles are finer ({timeframe_name(max(finer))}) than the {timeframe_name(bar)} bars "
                     "and are not used (aggregate them, or download the bar timeframe); the perp stands in for the mark")
        return nan, nan, nan
    if not coarser:
        return nan, nan, nan
    mb = coarser[0]
    mt, mc = _read_feather(marks[mb])
    check_rows(marks[mb], mt, mb)
    if mb % bar:
        raise DataError(f"{marks[mb]}: {timeframe_name(mb)} mark candles do not line up with {timeframe_name(bar)} bars")
    # between the coarse mark's closes the perp's own candles stand in (close, and its high/low for the intra-bar
    # range); at each mark candle's close its whole high/low range is applied too, so an extreme of the official mark
    # is never missed, only seen at the close of its candle
    high = _on_grid(t0, n, bar, obs_p, pc["high"])
    low = _on_grid(t0, n, bar, obs_p, pc["low"])
    mh = _on_grid(t0, n, bar, mt + mb, mc["high"])
    ml = _on_grid(t0, n, bar, mt + mb, mc["low"])
    high = np.fmax(high, mh)
    low = np.fmin(low, ml)
    notes.append(f"{sym}: mark candles are {timeframe_name(mb)} beside {timeframe_name(bar)} bars: the perp close stands in "
                 f"for the mark on every bar (flagged mark_is_proxy), the perp's {timeframe_name(bar)} high/low give the "
                 f"intra-bar range, and each {timeframe_name(mb)} mark candle's high/low is applied at its close")
    return nan, high, low


# --------------------------------------------------------------------------- plain CSV


def _csv_columns(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    import csv

    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{path}: empty")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(rows[0])})")
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        vals = []
        for n, r in enumerate(rows, 2):
            v = (r.get(col) or "").strip()
            if col == "time":
                try:
                    vals.append(float(v) if v.replace(".", "", 1).isdigit() else parse_time(v))
                except ValueError:
                    raise DataError(f"{path} line {n}: bad time {v!r}") from None
            else:
                try:
                    vals.append(float(v) if v else np.nan)
                except ValueError:
                    raise DataError(f"{path} line {n}: {col} is not a number: {v!r}") from None
        out[col] = np.array(vals)
    return out


def load_csv_dir(path: Path | str, symbols: list[str] | None = None, timeframe: str | None = None) -> dict[str, SymbolHistory]:
    """``{SYM}.csv`` (``time,spot,perp[,mark,mark_high,mark_low]``: observation times, ISO or epoch seconds,
    on one timeframe detected from the rows; an empty spot is a gap) and ``{SYM}_funding.csv`` (``time,rate``,
    the rate per settlement as a fraction). Only ``symbols`` are read; without them, every ``{SYM}.csv``
    that has its ``{SYM}_funding.csv`` (other CSV files are left alone)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data directory not found: {path}")
    if symbols is None:
        symbols = sorted(p.stem for p in path.glob("*.csv")
                         if not p.stem.endswith("_funding") and (path / f"{p.stem}_funding.csv").is_file())
        if not symbols:
            raise DataError(f"{path}: no '<SYM>.csv' with a '<SYM>_funding.csv' beside it")
    want = timeframe_seconds(timeframe) if timeframe is not None else None
    out: dict[str, SymbolHistory] = {}
    for sym in symbols:
        prices, funding = path / f"{sym}.csv", path / f"{sym}_funding.csv"
        for f in (prices, funding):
            if not f.is_file():
                raise DataError(f"{sym}: missing {f.name} in {path}")
        c = _csv_columns(prices, ("time", "spot", "perp"))
        t = c["time"].astype(np.int64)
        bar = check_rows(prices, t, want)
        t0, n = int(t[0]), int((t[-1] - t[0]) // bar) + 1
        cols = {k: _on_grid(t0, n, bar, t, c[k]) if k in c else np.full(n, np.nan)
                for k in ("spot", "perp", "mark", "mark_high", "mark_low")}
        if np.isnan(cols["perp"]).any():
            raise DataError(f"{prices}: perp prices are missing for {int(np.isnan(cols['perp']).sum())} bars")
        fc = _csv_columns(funding, ("time", "rate"))
        ft = fc["time"].astype(np.int64)
        check_rows(funding, ft, None, on_grid=False)
        out[sym] = _finish(sym, t0, cols["spot"], cols["perp"], cols["mark"], cols["mark_high"], cols["mark_low"], ft, fc["rate"],
                           None, bar)
    return out


def load_any(path: Path | str | None, symbols: list[str] | None = None, timeframe: str | None = None) -> dict[str, SymbolHistory]:
    """The shipped extract (``None``), an ``.npz`` extract, a freqtrade directory or a CSV directory; only ``symbols``."""
    if path is None:
        return load_extract(None, symbols)
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*.feather")) or any((p / "futures").glob("*.feather")):
            return load_freqtrade_dir(p, symbols, timeframe=timeframe)
        if any(p.glob("*.csv")):
            return load_csv_dir(p, symbols, timeframe)
        raise DataError(f"{p}: neither freqtrade .feather files (here or in futures/) nor .csv files")
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    return load_extract(p, symbols)


# --------------------------------------------------------------------------- the venue's own contract facts

MARKETS_FILE = "basis-mcp-markets.json"  # written by `basis-mcp data download` beside the candles (`basis_mcp.download`)


def market_facts(path: Path | str | None) -> dict[str, dict[str, float]]:
    """Per symbol, the `SymbolSpec` fields the venue states for its markets (``<exchange dir>/basis-mcp-markets.json``):
    spot and perp taker fees, the lot step both legs can trade (the coarser of the two, in coins) and the larger
    minimum notional. Empty when the directory has no such file; a malformed file is an error naming it."""
    import json

    if path is None or not Path(path).is_dir():
        return {}
    f = Path(path) / MARKETS_FILE
    if not f.is_file():
        return {}
    try:
        doc = json.loads(f.read_text())
        symbols = doc["symbols"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{f}: not a basis-mcp markets file ({e})") from None
    out: dict[str, dict[str, float]] = {}
    for sym, legs in symbols.items():
        spot, perp = legs.get("spot") or {}, legs.get("perp") or {}
        spec: dict[str, float] = {}
        if isinstance(spot.get("taker"), int | float):
            spec["spot_taker_fee"] = float(spot["taker"])
        if isinstance(perp.get("taker"), int | float):
            spec["perp_taker_fee"] = float(perp["taker"])
        steps = [float(x) for x in (spot.get("lot_step_base"), perp.get("lot_step_base")) if isinstance(x, int | float) and x > 0]
        if steps:
            spec["qty_step"] = max(steps)
        mins = [float(x) for x in (spot.get("min_notional"), perp.get("min_notional")) if isinstance(x, int | float) and x >= 0]
        if mins:
            spec["min_notional_usd"] = max(mins)
        if spec:
            out[str(sym).upper()] = spec
    return out


def with_market_facts(settings, path: Path | str | None, symbols: list[str] | None = None):
    """``settings`` with the venue's own fees, lot steps and minimums from ``path`` (see `market_facts`) for the symbols
    the operator has not configured himself, and a note per symbol saying what was taken."""
    facts = market_facts(path)
    if not facts:
        return settings, []
    from basis_mcp.config import DEFAULT_SPECS, SymbolSpec

    updates: dict[str, SymbolSpec] = {}
    notes = []
    for sym, spec in facts.items():
        if symbols is not None and sym not in symbols or sym in settings.symbols:
            continue
        base = DEFAULT_SPECS.get(sym, SymbolSpec())
        updates[sym] = base.model_copy(update=spec)
        notes.append(f"{sym}: the venue's own costs from {Path(path) / MARKETS_FILE}: "
                     + ", ".join(f"{k}={v:g}" for k, v in spec.items()))
    return (settings.model_copy(update={"symbols": {**settings.symbols, **updates}}) if updates else settings), notes
