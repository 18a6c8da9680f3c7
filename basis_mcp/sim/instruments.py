"""The simulator's vocabulary: constants, `BinanceError`, request-parameter parsing and wire
number formatting, the instruments priced from the shipped data (`Instrument`: spot + perpetual;
`Quarterly`: a USD-M quarterly future on an instrument's coin, SIMULATED price) and the records
the state keeps (`Faults`, `Position`, `Order`). Imports nothing else from `basis_mcp.sim`."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from basis_mcp.config import SymbolSpec
from basis_mcp.costs import LegCosts
from basis_mcp.dated import funding_carry_apr, quarterly_expiries, simulated_price
from basis_mcp.history import HOUR, SymbolHistory, load_extract
from basis_mcp.margin import Bracket

SPOT_STEPS = {"BTC": 0.00001, "ETH": 0.0001, "SOL": 0.001}  # Binance spot LOT_SIZE steps
QUOTE = "USDT"
TICK = 0.01
ISOLATED, CROSSED = "ISOLATED", "CROSSED"
MSG_INSUFFICIENT_SPOT = "Account has insufficient balance for requested action."
MSG_MARGIN = "Margin is insufficient."
NUMBER_RE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"


class BinanceError(Exception):
    """An error Binance would answer: ``{"code": code, "msg": msg}`` with HTTP ``status``."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status = code, msg, status


# --------------------------------------------------------------------------- helpers


def parse_time(v: str | int | float) -> int:
    """Epoch seconds from an ISO-8601 string (``Z`` allowed) or a number."""
    if isinstance(v, int | float):
        return int(v)
    s = str(v).strip()
    with contextlib.suppress(ValueError):
        return int(float(s))
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def _s8(x: float) -> str:
    return f"{x + 0.0:.8f}" if abs(x) >= 5e-9 else "0.00000000"


def _r8(x: float) -> float:
    return round(x, 8) + 0.0


def _dec(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _need(p: dict[str, str], name: str) -> str:
    v = p.get(name)
    if v is None or v == "":
        raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return v


def _num(p: dict[str, str], name: str) -> float:
    raw = _need(p, name)
    try:
        v = float(raw)
    except ValueError:
        raise BinanceError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '{NUMBER_RE}'.",
        ) from None
    if not math.isfinite(v):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.")
    return v


def _bool(v: str | None) -> bool:
    return str(v).lower() == "true"


def _ffill(a: np.ndarray) -> np.ndarray:
    idx = np.where(~np.isnan(a), np.arange(a.size), 0)
    np.maximum.accumulate(idx, out=idx)
    return a[idx]


@functools.lru_cache(maxsize=1)
def _shipped() -> dict[str, SymbolHistory]:
    return load_extract()




@dataclass(frozen=True)
class _Series:
    """One data source on the hourly grid, gaps carried forward."""

    t0: int
    spot: np.ndarray
    perp: np.ndarray
    mark: np.ndarray
    f_time: np.ndarray
    f_rate: np.ndarray

    @classmethod
    def of(cls, h: SymbolHistory) -> _Series:
        return cls(h.t0, _ffill(h.spot), _ffill(h.perp), _ffill(h.mark), h.funding_time, h.funding_rate)


@dataclass
class Instrument:
    """A base asset traded as ``{base}USDT`` spot and ``{base}USDT`` perpetual."""

    base: str
    series: _Series
    spec: SymbolSpec
    scale: float = 1.0  # synthetic symbols: the source's prices × scale
    interval_h: int = 8  # funding interval

    @property
    def id(self) -> str:
        return self.base + QUOTE

    @functools.cached_property
    def brackets(self) -> list[Bracket]:
        return self.spec.brackets

    @property
    def qdec(self) -> int:
        return _dec(self.spec.qty_step)

    def step(self, market: str) -> float:
        """Lot step: Binance's spot steps are much finer than the perps' (BTC 0.00001 vs 0.001)."""
        if market == "spot":
            return SPOT_STEPS.get(self.base, 0.00001)
        return self.spec.qty_step

    def dec(self, market: str) -> int:
        return _dec(self.step(market))

    def _i(self, t: float) -> int:
        s = self.series
        if t < s.t0:
            return -1
        return int(min((t - s.t0) // HOUR, s.perp.size - 1))

    def has_data(self, t: float) -> bool:
        i = self._i(t)
        return i >= 0 and not (math.isnan(self.series.spot[i]) or math.isnan(self.series.perp[i]))

    def _at(self, arr: np.ndarray, t: float) -> float:
        i = self._i(t)
        if i < 0 or math.isnan(arr[i]):
            raise BinanceError(-1013, "Market is closed.")
        return float(arr[i]) * self.scale

    def spot(self, t: float) -> float:
        return self._at(self.series.spot, t)

    def perp(self, t: float) -> float:
        return self._at(self.series.perp, t)

    def mark(self, t: float) -> float:
        return self._at(self.series.mark, t)

    def window(self, arr_name: str, t: float, hours: int = 24) -> np.ndarray:
        arr, i = getattr(self.series, arr_name), self._i(t)
        return arr[max(0, i - hours) : i + 1] * self.scale

    def funding_rate(self, T: int) -> float | None:
        """Rate settling at ``T``: the data's rate of the first settlement at or after ``T``, scaled
        to the interval (a 4 h symbol settles half the 8 h rate twice)."""
        j = int(np.searchsorted(self.series.f_time, T, side="left"))
        if j >= self.series.f_time.size:
            return None
        return float(self.series.f_rate[j]) * self.interval_h / 8.0

    def next_funding(self, t: float) -> int:
        step = self.interval_h * HOUR
        return (int(t) // step + 1) * step

    def settlements(self, a: float, b: float) -> list[int]:
        """Settlement times T with a < T <= b that have data."""
        out, T = [], self.next_funding(a)
        while T <= b:
            if self.has_data(T) and self.funding_rate(T) is not None:
                out.append(T)
            T += self.interval_h * HOUR
        return out

    def quote(self, market: str, t: float) -> tuple[float, float, float]:
        """(bid, mid, ask) for "spot" or "perp", rounded to the tick."""
        mid = self.spot(t) if market == "spot" else self.perp(t)
        hs = self.spec.spot_half_spread_bps if market == "spot" else self.spec.perp_half_spread_bps
        return _touch(mid, hs)

    def leg(self, market: str) -> LegCosts:
        return self.spec.costs.leg(market)


def _touch(mid: float, half_spread_bps: float) -> tuple[float, float, float]:
    hs = half_spread_bps / 1e4
    bid, ask = round(mid * (1 - hs), 2), round(mid * (1 + hs), 2)
    return bid, mid, max(ask, bid + TICK)


@dataclass
class Quarterly:
    """A USD-M quarterly future on ``coin``'s base (``BTCUSDT_260327``), delivering at ``expiry``
    (epoch s, the last Friday of the quarter's month 08:00 UTC), listed from ``onboard`` (the
    delivery two quarters before: Binance lists the current and the next quarter).

    Its price is SIMULATED, exactly as the paper desk prices it (`basis_mcp.dated.simulated_price`
    of the coin's perp and `funding_carry_apr` of the shipped funding, the same inputs
    `basis_mcp.feed.ReplayFeed.dated_snapshot` uses): there is no real quarterly history in the
    data. Last price = mark = that price; index = the coin's spot; book = the perp's half-spread
    around it; same lot step, brackets and fees as the perp; no funding. It delivers in cash at the
    index (the coin's spot at ``expiry``)."""

    coin: Instrument
    expiry: int

    @property
    def base(self) -> str:
        return self.coin.base

    @property
    def pair(self) -> str:
        return self.coin.id

    @property
    def id(self) -> str:
        return f"{self.coin.id}_{datetime.fromtimestamp(self.expiry, UTC):%y%m%d}"

    @property
    def onboard(self) -> int:
        before = quarterly_expiries(self.expiry - 400 * 86_400, self.expiry - 1)
        return int(before[-2])

    @property
    def spec(self) -> SymbolSpec:
        return self.coin.spec

    @property
    def brackets(self) -> list[Bracket]:
        return self.coin.brackets

    @property
    def qdec(self) -> int:
        return self.coin.qdec

    @property
    def interval_h(self) -> int:
        return self.coin.interval_h

    def step(self, market: str = "perp") -> float:
        return self.coin.step("perp")

    def dec(self, market: str = "perp") -> int:
        return self.coin.dec("perp")

    def leg(self, market: str = "perp") -> LegCosts:
        return self.coin.leg("perp")

    def has_data(self, t: float) -> bool:
        return t < self.expiry and self.coin.has_data(t)

    def price_at(self, perp: float | np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """The SIMULATED price at ``t`` given the perp's price then (vectorised)."""
        s = self.coin.series
        return simulated_price(perp, funding_carry_apr(s.f_time, s.f_rate, t), self.expiry - np.asarray(t, dtype=np.float64))

    def perp(self, t: float) -> float:
        """Last price at ``t``: the simulated price (there is no trade tape)."""
        return float(self.price_at(self.coin.perp(t), t)[0])

    def mark(self, t: float) -> float:
        return self.perp(t)

    def spot(self, t: float) -> float:
        """The index: the coin's spot."""
        return self.coin.spot(t)

    def quote(self, market: str, t: float) -> tuple[float, float, float]:
        return _touch(self.perp(t), self.spec.perp_half_spread_bps)

    def close_at(self, t: float) -> float | None:
        """The price observed at ``t`` (a candle's close), None without data or from expiry on."""
        i = self.coin._i(t)
        if i < 0 or t >= self.expiry or math.isnan(self.coin.series.perp[i]):
            return None
        return float(self.price_at(float(self.coin.series.perp[i]) * self.coin.scale, t)[0])

    def window(self, arr_name: str, t: float, hours: int = 24) -> np.ndarray:
        """The simulated price at each hourly close of the last ``hours`` hours up to ``t``."""
        perp = self.coin.window("perp", t, hours)
        i = self.coin._i(t)
        times = self.coin.series.t0 + HOUR * np.arange(i - perp.size + 1, i + 1, dtype=np.float64)
        return self.price_at(perp, times)

    def settlements(self, a: float, b: float) -> list[int]:
        return []  # a delivery contract pays no funding

    def delivery_price(self) -> float:
        """The index at expiry: the coin's spot then."""
        return self.coin.spot(self.expiry)




# --------------------------------------------------------------------------- records


@dataclass
class Faults:
    """Fault switches. Counters (``*_next``) are consumed one per matching request."""

    latency_ms: float = 0.0  # added to every exchange request
    http_5xx_next: int = 0  # next N exchange requests answer 503 (HTML body, like the edge)
    rate_limit_next: int = 0  # next N answer 429 {"code":-1003}
    timeout_after_execute_next: int = 0  # next N order requests execute, then answer after timeout_delay_s
    timeout_delay_s: float = 3.0
    partial_fill_next: int = 0  # next N orders fill partial_fraction (status EXPIRED, like a market order)
    partial_fraction: float = 0.5
    reject_next: int = 0  # next N orders rejected with reject_code / reject_msg
    reject_code: int | None = None  # None: -2010 insufficient balance (spot) / -2019 margin (perp)
    reject_msg: str | None = None

    def update(self, d: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(bad))}")
        for k, v in d.items():
            cur = getattr(self, k)
            setattr(self, k, v if cur is None or v is None else type(cur)(v))

    def take(self, name: str) -> bool:
        n = getattr(self, name)
        if n > 0:
            setattr(self, name, n - 1)
            return True
        return False


@dataclass
class Position:
    symbol: str
    amt: float = 0.0  # signed base quantity, negative = short
    entry: float = 0.0
    iso_wallet: float = 0.0
    update_ms: int = 0


@dataclass
class Order:
    market: str  # "spot" | "perp"
    symbol: str
    order_id: int
    client_order_id: str
    side: str
    orig_qty: float
    executed_qty: float
    cum_quote: float
    status: str
    time_ms: int
    qdec: int
    reduce_only: bool = False
    commission: float = 0.0
    commission_asset: str = QUOTE
    trade_id: int = 0

    @property
    def avg_price(self) -> float:
        return self.cum_quote / self.executed_qty if self.executed_qty else 0.0


# --------------------------------------------------------------------------- klines (both simulators)

KLINE_SECONDS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": HOUR, "2h": 2 * HOUR, "4h": 4 * HOUR,
                 "6h": 6 * HOUR, "8h": 8 * HOUR, "12h": 12 * HOUR, "1d": 24 * HOUR}  # Binance's names
PriceAt = Callable[[np.ndarray], np.ndarray]


def hourly_price(arr: np.ndarray, t0: int, scale: float = 1.0) -> PriceAt:
    """The price observed at whole hours ``t`` (epoch s, vectorised) from an hourly series starting at
    ``t0``: NaN before ``t0``; past the series' end the last value (as `Instrument` prices it)."""

    def price(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.int64)
        i = np.clip((t - t0) // HOUR, 0, arr.size - 1)
        return np.where(t >= t0, arr[i] * scale, np.nan)

    return price


def path_candles(price: PriceAt, opens: np.ndarray, length: int) -> np.ndarray:
    """Open, high, low, close (``(n, 4)``) of the candles opening at ``opens`` (epoch s) lasting ``length`` s,
    from prices known only at whole hours (``price``, NaN where none):

    - an hour or longer (a whole number of hours): open = the price at the open, close = the price at the
      close, high / low = the extremes of the hourly prices from open to close (inclusive);
    - shorter (a divisor of the hour, 1m ... 30m): SIMULATED, there is nothing inside an hour in the data:
      the price walks the straight line between the two hourly prices around the candle, so open and close
      are read off that line and high / low are the larger / smaller of them. Twelve 5m candles make
      exactly the hourly candle; a flat hour (a data gap carried forward) gives open = high = low = close.

    A row is NaN where a price it needs is missing."""
    opens = np.asarray(opens, dtype=np.int64)
    if length < HOUR:
        a = opens // HOUR * HOUR
        pa, pb = price(a), price(a + HOUR)
        o = pa + (pb - pa) * ((opens - a) / HOUR)
        c = pa + (pb - pa) * ((opens + length - a) / HOUR)
        return np.column_stack([o, np.maximum(o, c), np.minimum(o, c), c])
    ks = np.arange(length // HOUR + 1, dtype=np.int64) * HOUR
    grid = price((opens[:, None] + ks[None, :]).ravel()).reshape(opens.size, ks.size)
    return np.column_stack([grid[:, 0], grid.max(axis=1), grid.min(axis=1), grid[:, -1]])


def last_closed_open(t: int, length: int) -> int:
    """The open of the last candle of ``length`` s closed at ``t``. A sub-hour candle is served once its hour
    has closed (its simulated path needs the hour's closing price: no look-ahead)."""
    horizon = t if length >= HOUR else t // HOUR * HOUR
    return (horizon - length) // length * length


def select_candles(price: PriceAt, length: int, first: int, hi: int, start: int | None,
                   limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(opens, ohlc) of complete candles on the ``length`` grid, oldest first, opening no later than ``hi``
    and no earlier than ``first`` (the data's start): with ``start``, the first ``limit`` opening at or
    after it; without, the last ``limit``. Missing candles (no price) are skipped, as venues skip them."""
    first = first // length * length
    chunk = 4 * limit
    got_t: list[np.ndarray] = []
    got_c: list[np.ndarray] = []
    n = 0
    if start is not None:
        T = max(-(-start // length) * length, first)
        while T <= hi and n < limit:
            opens = np.arange(T, min(hi, T + (chunk - 1) * length) + 1, length, dtype=np.int64)
            ohlc = path_candles(price, opens, length)
            ok = ~np.isnan(ohlc).any(axis=1)
            got_t.append(opens[ok])
            got_c.append(ohlc[ok])
            n += int(ok.sum())
            T = int(opens[-1]) + length
        t, c = (np.concatenate(got_t), np.concatenate(got_c)) if got_t else (np.zeros(0, np.int64), np.zeros((0, 4)))
        return t[:limit], c[:limit]
    T = hi
    while T >= first and n < limit:
        opens = np.arange(max(first, T - (chunk - 1) * length), T + 1, length, dtype=np.int64)
        ohlc = path_candles(price, opens, length)
        ok = ~np.isnan(ohlc).any(axis=1)
        got_t.insert(0, opens[ok])
        got_c.insert(0, ohlc[ok])
        n += int(ok.sum())
        T = int(opens[0]) - length
    t, c = (np.concatenate(got_t), np.concatenate(got_c)) if got_t else (np.zeros(0, np.int64), np.zeros((0, 4)))
    return t[t.size - min(limit, t.size):], c[t.size - min(limit, t.size):]
