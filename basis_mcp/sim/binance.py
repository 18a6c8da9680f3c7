"""A local Binance (spot + USD-M perpetual) server, driven by the shipped hourly data.

ccxt's ``binance`` client, pointed here with ``make_exchange("binance", creds, base_url=sim.url)``,
loads markets, reads prices, funding and order books, trades market orders, reads balances
and positions, changes leverage / margin type / isolated margin and reads funding income,
all in Binance's own wire format (paths, fields, string numbers, error codes).

Two layers:

- `SimState`: the exchange, pure Python, no I/O. Simulated time ``t`` (epoch seconds) moves
  only when told to (`set_time` / `advance`); crossing a funding settlement pays or charges
  every open perp position. Prices at ``t`` are the last hourly closes at or before ``t``
  (spot gaps carried forward); bid/ask = mid ± the half-spread of `DEFAULT_SPECS`; market
  orders fill at `LegCosts.fill_price` (half-spread + square-root impact) with taker fees.
- `build_app(state)`: a thin Starlette layer: routing, Binance auth (``X-MBX-APIKEY`` +
  HMAC-SHA256 ``signature``), fault injection, request counting, and ``/_sim/*`` admin
  endpoints (JSON) so another process can move time, set faults and read the books.

Accounting (all USDT amounts booked rounded to 1e-8): the spot account holds per-asset
balances; the futures account holds a cross wallet plus, per isolated position, an isolated
wallet. Opening a perp moves ``qty × price / leverage`` from the cross wallet into the
isolated wallet; the taker fee is charged to the cross wallet; realised P&L and funding go
to the isolated wallet (cross wallet for a cross position); reducing releases the isolated
wallet pro rata, closing releases all of it. Spot taker fees are taken from the received
asset, as Binance does without BNB (buy → base asset, sell → USDT), unless
``spot_fee_in_quote=True``. So ``spot USDT + cross wallet + Σ isolated wallets`` changes by
exactly −buy cost + sell proceeds − USDT fees + realised P&L + funding.

Not simulated: limit/stop orders (the markets list only MARKET), hedge mode, liquidations,
cross-margin liquidation prices (approximated with the cross wallet), price moves inside an
hour, recvWindow checks (signed requests carry wall-clock timestamps; simulated time is
elsewhere).

Run in-process: ``with running_sim(extra_symbols=3) as sim: ... sim.url, sim.state``.
Run as a process: ``python -m basis_mcp.sim.binance --port 0 --api-key K --secret S``
(or ``BASIS_SIM_API_KEY`` / ``BASIS_SIM_SECRET``); it prints ``{"url": ..., "t": ...}`` on one
line once the port is bound (poll ``GET /_sim/time`` until it answers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import hmac
import inspect
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.config import DEFAULT_SPECS, SymbolSpec
from basis_mcp.costs import LegCosts
from basis_mcp.history import HOUR, SymbolHistory, load_extract
from basis_mcp.margin import Bracket, liquidation_price, maintenance_margin

SPOT_STEPS = {"BTC": 0.00001, "ETH": 0.0001, "SOL": 0.001}  # Binance spot LOT_SIZE steps
QUOTE = "USDT"
TICK = 0.01
PERPETUAL_DELIVERY_MS = 4133404800000
ISOLATED, CROSSED = "ISOLATED", "CROSSED"
MSG_INSUFFICIENT_SPOT = "Account has insufficient balance for requested action."
MSG_MARGIN = "Margin is insufficient."
MSG_RATE_LIMIT = (
    "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. "
    "Please use the websocket for live updates to avoid polling the API."
)
NUMBER_RE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
HTML_503 = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>503</body></html>"

# wire fields that never change in this simulator (Binance sends them on every row)
SPOT_SYMBOL_STATIC: dict[str, Any] = {
    "baseAssetPrecision": 8,
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "baseCommissionPrecision": 8,
    "quoteCommissionPrecision": 8,
    "orderTypes": ["MARKET"],  # the only type simulated; ccxt refuses others client-side
    "icebergAllowed": False,
    "ocoAllowed": False,
    "quoteOrderQtyMarketAllowed": True,
    "allowTrailingStop": False,
    "cancelReplaceAllowed": False,
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": False,
    "permissions": [],
    "permissionSets": [["SPOT"]],
    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
}
PERP_SYMBOL_STATIC: dict[str, Any] = {
    "contractType": "PERPETUAL",
    "deliveryDate": PERPETUAL_DELIVERY_MS,
    "maintMarginPercent": "2.5000",
    "requiredMarginPercent": "5.0000",
    "quoteAsset": QUOTE,
    "marginAsset": QUOTE,
    "pricePrecision": 2,
    "baseAssetPrecision": 8,
    "quotePrecision": 8,
    "underlyingType": "COIN",
    "underlyingSubType": [],
    "triggerProtect": "0.0500",
    "liquidationFee": "0.012500",
    "marketTakeBound": "0.05",
    "maxMoveOrderLimit": 10000,
    "orderTypes": ["MARKET"],
    "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
}
SPOT_ORDER_STATIC: dict[str, Any] = {
    "price": "0.00000000",
    "origQuoteOrderQty": "0.00000000",
    "timeInForce": "GTC",
    "type": "MARKET",
    "selfTradePreventionMode": "EXPIRE_MAKER",
}
PERP_ORDER_STATIC: dict[str, Any] = {
    "price": "0.00",
    "timeInForce": "GTC",
    "type": "MARKET",
    "closePosition": False,
    "positionSide": "BOTH",
    "stopPrice": "0.00",
    "workingType": "CONTRACT_PRICE",
    "priceProtect": False,
    "origType": "MARKET",
    "priceMatch": "NONE",
    "selfTradePreventionMode": "EXPIRE_MAKER",
    "goodTillDate": 0,
}


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


# --------------------------------------------------------------------------- instruments


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
        hs = (self.spec.spot_half_spread_bps if market == "spot" else self.spec.perp_half_spread_bps) / 1e4
        bid, ask = round(mid * (1 - hs), 2), round(mid * (1 + hs), 2)
        return bid, mid, max(ask, bid + TICK)

    def leg(self, market: str) -> LegCosts:
        return self.spec.costs.leg(market)


# --------------------------------------------------------------------------- state


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


class SimState:
    """The simulated exchange. Every public method is thread-safe (one lock)."""

    def __init__(
        self,
        *,
        start: str | int = "2024-03-15T00:00:00Z",
        api_key: str = "sim-api-key",
        secret: str = "sim-secret",
        spot_usdt: float = 100_000.0,
        futures_usdt: float = 100_000.0,
        extra_symbols: int = 0,
        funding_intervals: dict[str, int] | None = None,
        default_leverage: int = 20,
        default_margin_type: str = CROSSED,
        spot_fee_in_quote: bool = False,
        reject_duplicate_client_ids: bool = True,
        histories: dict[str, SymbolHistory] | None = None,
    ):
        self.lock = threading.RLock()
        self.api_key, self._secret = api_key, secret.encode()
        self.t = parse_time(start)
        self._funding_cursor = self.t
        self.faults = Faults()
        self.default_leverage = default_leverage
        self.default_margin_type = default_margin_type
        self.spot_fee_in_quote = spot_fee_in_quote
        self.reject_duplicate_client_ids = reject_duplicate_client_ids
        intervals = {"S001": 4} if funding_intervals is None else dict(funding_intervals)
        hist = histories if histories is not None else _shipped()
        series = {s: _Series.of(h) for s, h in hist.items()}
        self.instruments: dict[str, Instrument] = {}
        for base, s in sorted(series.items()):
            self.instruments[base + QUOTE] = Instrument(
                base, s, DEFAULT_SPECS.get(base) or SymbolSpec(), 1.0, intervals.get(base, 8)
            )
        src = series.get("BTC") or next(iter(series.values()))
        for k in range(1, extra_symbols + 1):
            base = f"S{k:03d}"
            self.instruments[base + QUOTE] = Instrument(
                base, src, SymbolSpec(), 1.0 / (k + 1), intervals.get(base, 8)
            )
        for inst in self.instruments.values():
            if inst.interval_h not in (1, 2, 4, 8):
                raise ValueError(f"{inst.base}: funding interval must be 1, 2, 4 or 8 h")
        self.spot_bal: dict[str, float] = {QUOTE: float(spot_usdt)} | {
            i.base: 0.0 for i in self.instruments.values()
        }
        self.cross_wallet = float(futures_usdt)
        self.positions: dict[str, Position] = {}
        self.leverage: dict[str, int] = {}
        self.margin_type: dict[str, str] = {}
        self.orders: list[Order] = []
        self._by_id: dict[tuple[str, int], Order] = {}
        self._by_coid: dict[tuple[str, str, str], Order] = {}
        self.income: list[dict[str, Any]] = []
        self._next = {"spot": 1_000_001, "perp": 5_000_001, "trade": 1, "tran": 9_000_000_001}
        self.requests: Counter[str] = Counter()
        self.unknown_paths: list[str] = []

    # ------------------------------------------------------------ time and funding

    @property
    def ms(self) -> int:
        return self.t * 1000

    def set_time(self, t: str | int | float) -> list[dict[str, Any]]:
        """Move simulated time; settle funding crossed on the way forward. Returns new income."""
        with self.lock:
            t = parse_time(t)
            settled = self._settle_funding(max(self._funding_cursor, self.t), t) if t > self.t else []
            self._funding_cursor = max(self._funding_cursor, t)
            self.t = t
            return settled

    def advance(self, seconds: float) -> list[dict[str, Any]]:
        with self.lock:
            return self.set_time(self.t + int(seconds))

    def _settle_funding(self, a: int, b: int) -> list[dict[str, Any]]:
        events = []
        for sym, pos in self.positions.items():
            if pos.amt == 0:
                continue
            inst = self.instruments[sym]
            for T in inst.settlements(a, b):
                rate = inst.funding_rate(T)
                events.append((T, sym, _r8(-pos.amt * inst.mark(T) * rate)))
        out = []
        for T, sym, amount in sorted(events):
            pos = self.positions[sym]
            if self._mt(sym) == ISOLATED:
                pos.iso_wallet = _r8(pos.iso_wallet + amount)
            else:
                self.cross_wallet = _r8(self.cross_wallet + amount)
            pos.update_ms = T * 1000
            out.append(self._add_income(sym, "FUNDING_FEE", amount, T * 1000))
        return out

    def _add_income(
        self, sym: str, kind: str, amount: float, ms: int, trade_id: int | None = None
    ) -> dict[str, Any]:
        rec = {
            "symbol": sym,
            "incomeType": kind,
            "income": _s8(amount),
            "asset": QUOTE,
            "info": kind,
            "time": ms,
            "tranId": self._take_id("tran"),
            "tradeId": str(trade_id) if trade_id else "",
        }
        self.income.append(rec)
        return rec

    def _take_id(self, kind: str) -> int:
        n = self._next[kind]
        self._next[kind] = n + 1
        return n

    # ------------------------------------------------------------ lookups

    def inst(self, symbol: str | None) -> Instrument:
        inst = self.instruments.get(symbol or "")
        if inst is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return inst

    def _live(self, symbol: str | None = None, symbols: str | None = None) -> list[Instrument]:
        if symbol:
            return [self.inst(symbol)]
        if symbols:
            try:
                ids = json.loads(symbols)
            except ValueError:
                raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'.") from None
            return [self.inst(s) for s in ids]
        return [i for i in self.instruments.values() if i.has_data(self.t)]

    def _lev(self, sym: str) -> int:
        return self.leverage.get(sym, self.default_leverage)

    def _mt(self, sym: str) -> str:
        return self.margin_type.get(sym, self.default_margin_type)

    @staticmethod
    def _max_leverage(inst: Instrument) -> int:
        return max(1, int(1 / (2 * inst.brackets[0].mmr)))

    def _max_notional(self, inst: Instrument, lev: int) -> float:
        caps = [b.notional_cap_usd for b in inst.brackets if max(1, int(1 / (2 * b.mmr))) >= lev]
        return min(max(caps, default=0.0), 5e9)

    # ------------------------------------------------------------ market data

    def exchange_info(self, market: str) -> dict[str, Any]:
        with self.lock:
            syms = []
            for inst in self.instruments.values():
                step, mn = inst.step(market), inst.spec.min_notional_usd
                status = "TRADING" if inst.has_data(self.t) else "BREAK"
                q = inst.dec(market)
                if market == "spot":
                    row = {"symbol": inst.id, "status": status, "baseAsset": inst.base, "quoteAsset": QUOTE}
                    row |= SPOT_SYMBOL_STATIC
                    row["filters"] = [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": _s8(TICK),
                            "maxPrice": "1000000.00000000",
                            "tickSize": _s8(TICK),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": _s8(step),
                            "maxQty": "9000.00000000",
                            "stepSize": _s8(step),
                        },
                        {
                            "filterType": "MARKET_LOT_SIZE",
                            "minQty": "0.00000000",
                            "maxQty": "100.00000000",
                            "stepSize": "0.00000000",
                        },
                        {
                            "filterType": "NOTIONAL",
                            "minNotional": _s8(mn),
                            "applyMinToMarket": True,
                            "maxNotional": "9000000.00000000",
                            "applyMaxToMarket": False,
                            "avgPriceMins": 5,
                        },
                    ]
                else:
                    row = {"symbol": inst.id, "pair": inst.id, "status": status, "baseAsset": inst.base}
                    row |= PERP_SYMBOL_STATIC | {"onboardDate": inst.series.t0 * 1000, "quantityPrecision": q}
                    lot = {"minQty": f"{step:.{q}f}", "stepSize": f"{step:.{q}f}"}
                    row["filters"] = [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": "0.01",
                            "maxPrice": "1000000",
                            "tickSize": "0.01",
                        },
                        {"filterType": "LOT_SIZE", "maxQty": "1000"} | lot,
                        {"filterType": "MARKET_LOT_SIZE", "maxQty": "120"} | lot,
                        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                        {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                        {"filterType": "MIN_NOTIONAL", "notional": f"{mn:g}"},
                        {
                            "filterType": "PERCENT_PRICE",
                            "multiplierUp": "1.0500",
                            "multiplierDown": "0.9500",
                            "multiplierDecimal": "4",
                        },
                    ]
                syms.append(row)
            out: dict[str, Any] = {
                "timezone": "UTC",
                "serverTime": self.ms,
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 2400,
                    },
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                ],
                "exchangeFilters": [],
                "symbols": syms,
            }
            if market == "perp":
                out["futuresType"] = "U_MARGINED"
                out["assets"] = [{"asset": QUOTE, "marginAvailable": True, "autoAssetExchange": "-10000"}]
            return out

    def book_ticker(self, market: str, symbol: str | None = None, symbols: str | None = None) -> Any:
        with self.lock:
            rows = []
            for inst in self._live(symbol, symbols):
                bid, mid, ask = inst.quote(market, self.t)
                depth = 250_000 / mid
                row = {
                    "symbol": inst.id,
                    "bidPrice": _s8(bid),
                    "bidQty": f"{depth:.{inst.qdec}f}",
                    "askPrice": _s8(ask),
                    "askQty": f"{depth:.{inst.qdec}f}",
                }
                if market == "perp":
                    row |= {"time": self.ms, "lastUpdateId": self.t}
                rows.append(row)
            return rows[0] if symbol else rows

    def ticker_24h(self, market: str, symbol: str | None = None, symbols: str | None = None) -> Any:
        with self.lock:
            rows = []
            for inst in self._live(symbol, symbols):
                bid, last, ask = inst.quote(market, self.t)
                w = inst.window("spot" if market == "spot" else "perp", self.t)
                opn = float(w[0])
                row = {
                    "symbol": inst.id,
                    "priceChange": _s8(last - opn),
                    "priceChangePercent": f"{(last / opn - 1) * 100:.3f}",
                    "weightedAvgPrice": _s8(float(np.mean(w))),
                    "lastPrice": _s8(last),
                    "lastQty": "0.00000000",
                    "openPrice": _s8(opn),
                    "highPrice": _s8(float(np.max(w))),
                    "lowPrice": _s8(float(np.min(w))),
                    "volume": "0.00000000",
                    "quoteVolume": "0.00000000",
                    "openTime": self.ms - 86_400_000,
                    "closeTime": self.ms,
                    "firstId": 0,
                    "lastId": 0,
                    "count": 0,
                }
                if market == "spot":
                    row |= {
                        "prevClosePrice": _s8(opn),
                        "bidPrice": _s8(bid),
                        "bidQty": "1.00000000",
                        "askPrice": _s8(ask),
                        "askQty": "1.00000000",
                    }
                rows.append(row)
            return rows[0] if symbol else rows

    def depth(self, market: str, symbol: str, limit: int | None = None) -> dict[str, Any]:
        """A book whose walk reproduces the cost model: level k's price is the marginal
        price of the square-root impact curve at the notional ahead of it."""
        with self.lock:
            inst = self.inst(symbol)
            limit = min(int(limit or (100 if market == "spot" else 500)), 1000)
            bid, mid, ask = inst.quote(market, self.t)
            leg, step, q = inst.leg(market), inst.step(market), inst.dec(market)
            bids, asks, prev = [], [], 0.0
            for k in range(limit):
                cum = 5_000.0 * (k + 1) ** 2
                slip = 1.5 * leg.impact_bps_per_sqrt_musd * math.sqrt(prev / 1e6) / 1e4
                pa = max(ask + TICK * k, round(ask + mid * slip, 2))
                pb = min(bid - TICK * k, round(bid - mid * slip, 2))
                size = max(step, math.floor((cum - prev) / mid / step) * step)
                asks.append([f"{pa:.2f}", f"{size:.{q}f}"])
                if pb > 0:
                    bids.append([f"{pb:.2f}", f"{size:.{q}f}"])
                prev = cum
            out: dict[str, Any] = {"lastUpdateId": self.t, "bids": bids, "asks": asks}
            if market == "perp":
                out |= {"E": self.ms, "T": self.ms}
            return out

    def premium_index(self, symbol: str | None = None) -> Any:
        with self.lock:
            rows = []
            for inst in self._live(symbol):
                nxt = inst.next_funding(self.t)
                rate = inst.funding_rate(nxt)
                rows.append(
                    {
                        "symbol": inst.id,
                        "markPrice": _s8(inst.mark(self.t)),
                        "indexPrice": _s8(inst.spot(self.t)),
                        "estimatedSettlePrice": _s8(inst.mark(self.t)),
                        "lastFundingRate": _s8(rate or 0.0),
                        "interestRate": "0.00010000",
                        "nextFundingTime": nxt * 1000,
                        "time": self.ms,
                    }
                )
            return rows[0] if symbol else rows

    def funding_info(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "symbol": i.id,
                    "adjustedFundingRateCap": "0.02000000",
                    "adjustedFundingRateFloor": "-0.02000000",
                    "fundingIntervalHours": i.interval_h,
                    "disclaimer": False,
                }
                for i in self.instruments.values()
                if i.interval_h != 8
            ]

    def klines(self, market: str, p: dict[str, str]) -> list[list[Any]]:
        """Hourly candles (only ``1h``) from the data: open = high = low = close = the hour's close.

        A candle opened at T closes at T + 1 h, whose close is the price observed at T + 1 h.
        """
        with self.lock:
            if p.get("interval", "1h") != "1h":
                raise BinanceError(-1120, "Invalid interval.")
            inst = self.inst(_need(p, "symbol"))
            limit = min(int(p.get("limit") or 500), 1500)
            arr = inst.series.spot if market == "spot" else inst.series.perp
            now_open = (self.t // HOUR) * HOUR - HOUR  # the last candle that has closed
            start = int(p["startTime"]) // 1000 if p.get("startTime") else now_open - (limit - 1) * HOUR
            start = (start + HOUR - 1) // HOUR * HOUR
            rows = []
            t = start
            while t <= now_open and len(rows) < limit:
                i = inst._i(t + HOUR)
                if i >= 0 and not math.isnan(arr[i]):
                    c = _s8(float(arr[i]) * inst.scale)
                    rows.append([t * 1000, c, c, c, c, "0", (t + HOUR) * 1000 - 1, "0", 0, "0", "0", "0"])
                t += HOUR
            return rows

    def funding_rate_history(self, p: dict[str, str]) -> list[dict[str, Any]]:
        with self.lock:
            limit = min(int(p.get("limit") or 100), 1000)
            end = int(p.get("endTime") or self.ms) // 1000
            start = int(p["startTime"]) // 1000 - 1 if p.get("startTime") else None
            rows = []
            for inst in self._live(p.get("symbol")):
                lo = start if start is not None else end - limit * inst.interval_h * HOUR
                for T in inst.settlements(lo, min(end, self.t)):
                    rows.append(
                        {
                            "symbol": inst.id,
                            "fundingTime": T * 1000,
                            "fundingRate": _s8(inst.funding_rate(T) or 0.0),
                            "markPrice": _s8(inst.mark(T)),
                        }
                    )
            rows.sort(key=lambda r: r["fundingTime"])
            return rows[:limit] if start is not None else rows[-limit:]

    # ------------------------------------------------------------ orders

    def place_order(self, market: str, p: dict[str, str], partial: float | None = None) -> dict[str, Any]:
        """Execute a MARKET order now. ``partial``: fill only this fraction (status EXPIRED)."""
        with self.lock:
            inst = self.inst(_need(p, "symbol"))
            side = _need(p, "side").upper()
            if side not in ("BUY", "SELL"):
                raise BinanceError(-1117, "Invalid side.")
            if _need(p, "type").upper() != "MARKET":
                raise BinanceError(-1116, "Invalid orderType.")  # this simulator trades MARKET orders only
            coid = p.get("newClientOrderId") or uuid.uuid4().hex[:22]  # Binance makes one up too
            if self.reject_duplicate_client_ids and (market, inst.id, coid) in self._by_coid:
                if market == "spot":
                    raise BinanceError(-2010, "Duplicate order sent.")
                raise BinanceError(-4116, "ClientOrderId is duplicated.")
            if not inst.has_data(self.t):
                raise BinanceError(-1013, "Market is closed.")
            step = inst.step(market)
            _, mid, _ = inst.quote(market, self.t)
            leg = inst.leg(market)
            if p.get("quantity"):
                qty = _num(p, "quantity")
            elif market == "spot" and p.get("quoteOrderQty"):
                quote_qty = _num(p, "quoteOrderQty")
                qty = (
                    math.floor(quote_qty / leg.fill_price(mid, side.lower(), quote_qty) / step + 1e-9) * step
                )
            else:
                raise BinanceError(
                    -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
                )
            steps = qty / step
            if qty <= 0 or abs(steps - round(steps)) > 1e-6:
                if market == "spot":
                    raise BinanceError(-1013, "Filter failure: LOT_SIZE")
                raise BinanceError(
                    -4003 if qty <= 0 else -1111,
                    "Quantity less than or equal to zero."
                    if qty <= 0
                    else "Precision is over the maximum defined for this asset.",
                )
            qty = round(round(steps) * step, inst.dec(market))
            reduce_only = market == "perp" and _bool(p.get("reduceOnly"))
            if qty * mid < inst.spec.min_notional_usd and not reduce_only:
                if market == "spot":
                    raise BinanceError(-1013, "Filter failure: NOTIONAL")
                raise BinanceError(
                    -4164,
                    f"Order's notional must be no smaller than {inst.spec.min_notional_usd:g}"
                    " (unless you choose reduce only).",
                )
            exe = qty if partial is None else round(math.floor(qty * partial / step + 1e-9) * step, inst.dec(market))
            price = _r8(leg.fill_price(mid, side.lower(), exe * mid))
            o = Order(
                market=market,
                symbol=inst.id,
                order_id=self._take_id(market),
                client_order_id=coid,
                side=side,
                orig_qty=qty,
                executed_qty=exe,
                cum_quote=_r8(exe * price),
                status="FILLED" if exe == qty else "EXPIRED",
                time_ms=self.ms,
                qdec=inst.dec(market),
                reduce_only=reduce_only,
            )
            if exe > 0:
                o.trade_id = self._take_id("trade")
                if market == "spot":
                    self._fill_spot(inst, o, leg)
                else:
                    self._fill_perp(inst, o, leg)
            elif reduce_only:
                self._check_reduce_only(inst.id, side, qty)
            self.orders.append(o)
            self._by_id[(market, o.order_id)] = o
            self._by_coid[(market, inst.id, coid)] = o
            return self.order_wire(o, p.get("newOrderRespType") or ("FULL" if market == "spot" else "ACK"))

    def _fill_spot(self, inst: Instrument, o: Order, leg: LegCosts) -> None:
        cost, base = o.cum_quote, inst.base
        if o.side == "BUY":
            fee_q = _r8(cost * leg.taker_fee) if self.spot_fee_in_quote else 0.0
            if self.spot_bal[QUOTE] + 1e-9 < cost + fee_q:
                raise BinanceError(-2010, MSG_INSUFFICIENT_SPOT)
            fee_b = 0.0 if self.spot_fee_in_quote else _r8(o.executed_qty * leg.taker_fee)
            self.spot_bal[QUOTE] = _r8(self.spot_bal[QUOTE] - cost - fee_q)
            self.spot_bal[base] = _r8(self.spot_bal[base] + o.executed_qty - fee_b)
            o.commission, o.commission_asset = (fee_q, QUOTE) if self.spot_fee_in_quote else (fee_b, base)
        else:
            if self.spot_bal[base] + 1e-12 < o.executed_qty:
                raise BinanceError(-2010, MSG_INSUFFICIENT_SPOT)
            fee = _r8(cost * leg.taker_fee)
            self.spot_bal[base] = _r8(self.spot_bal[base] - o.executed_qty)
            self.spot_bal[QUOTE] = _r8(self.spot_bal[QUOTE] + cost - fee)
            o.commission, o.commission_asset = fee, QUOTE

    def _check_reduce_only(self, sym: str, side: str, qty: float) -> None:
        pos = self.positions.get(sym) or Position(sym)
        s = 1 if side == "BUY" else -1
        if pos.amt == 0 or (pos.amt > 0) == (s > 0) or qty > abs(pos.amt) + 1e-12:
            raise BinanceError(-2022, "ReduceOnly Order is rejected.")

    def _fill_perp(self, inst: Instrument, o: Order, leg: LegCosts) -> None:
        sym, x, p = inst.id, o.executed_qty, o.avg_price
        if o.reduce_only:
            self._check_reduce_only(sym, o.side, o.orig_qty)
        pos = self.positions.get(sym) or Position(sym)
        s = 1 if o.side == "BUY" else -1
        held = abs(pos.amt)
        close = min(x, held) if pos.amt and (pos.amt > 0) != (s > 0) else 0.0
        opening = round(x - close, inst.qdec)
        fee = _r8(o.cum_quote * leg.taker_fee)
        lev, isolated = self._lev(sym), self._mt(sym) == ISOLATED
        need = _r8(opening * p / lev)
        if opening > 0:
            if self._available() + 1e-9 < need + fee:
                raise BinanceError(-2019, MSG_MARGIN)
            if (held - close + opening) * p > self._max_notional(inst, lev):
                raise BinanceError(-2027, "Exceeded the maximum allowable position at current leverage.")
        self.positions[sym] = pos
        realized = _r8(close * (p - pos.entry) * (1 if pos.amt > 0 else -1)) if close else 0.0
        if close:
            if isolated:
                pos.iso_wallet = _r8(pos.iso_wallet + realized)
                release = pos.iso_wallet if close >= held else _r8(pos.iso_wallet * close / held)
                pos.iso_wallet = _r8(pos.iso_wallet - release)
                self.cross_wallet = _r8(self.cross_wallet + release)
            else:
                self.cross_wallet = _r8(self.cross_wallet + realized)
            pos.amt = round(pos.amt - math.copysign(close, pos.amt), 9)
            if pos.amt == 0:
                pos.entry, pos.amt = 0.0, 0.0
        if opening:
            a = abs(pos.amt)
            pos.entry = (a * pos.entry + opening * p) / (a + opening) if a else p
            pos.amt = round(pos.amt + s * opening, 9)
            if isolated:
                self.cross_wallet = _r8(self.cross_wallet - need)
                pos.iso_wallet = _r8(pos.iso_wallet + need)
        self.cross_wallet = _r8(self.cross_wallet - fee)
        pos.update_ms = self.ms
        if close:
            self._add_income(sym, "REALIZED_PNL", realized, self.ms, o.trade_id)
        self._add_income(sym, "COMMISSION", -fee, self.ms, o.trade_id)
        o.commission = fee

    def get_order(self, market: str, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            inst = self.inst(_need(p, "symbol"))
            if p.get("orderId"):
                o = self._by_id.get((market, int(p["orderId"])))
            elif p.get("origClientOrderId"):
                o = self._by_coid.get((market, inst.id, p["origClientOrderId"]))
            else:
                raise BinanceError(
                    -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
                )
            if o is None or o.symbol != inst.id:
                raise BinanceError(-2013, "Order does not exist.")
            return self.order_wire(o, "QUERY")

    def my_trades(self, market: str, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/api/v3/myTrades`` and ``/fapi/v1/userTrades``: one trade per executed order, with its
        commission (futures order responses carry none: this is where a client finds its fees)."""
        with self.lock:
            sym = _need(p, "symbol")
            oid = int(p["orderId"]) if p.get("orderId") else None
            out = []
            for o in self.orders:
                if o.market != market or o.symbol != sym or not o.executed_qty or (oid is not None and o.order_id != oid):
                    continue
                row = {
                    "symbol": o.symbol, "id": o.trade_id, "orderId": o.order_id, "price": _s8(o.avg_price),
                    "qty": _s8(o.executed_qty), "quoteQty": _s8(o.cum_quote), "commission": _s8(o.commission),
                    "commissionAsset": o.commission_asset, "time": o.time_ms,
                }
                if market == "spot":
                    row |= {"orderListId": -1, "isBuyer": o.side == "BUY", "isMaker": False, "isBestMatch": True}
                else:
                    row |= {"side": o.side, "buyer": o.side == "BUY", "maker": False, "positionSide": "BOTH",
                            "realizedPnl": "0"}
                out.append(row)
            return out

    def order_wire(self, o: Order, resp_type: str = "RESULT") -> dict[str, Any]:
        """Binance's JSON for an order: ``ACK`` / ``RESULT`` / ``FULL`` (spot) answer a POST,
        ``QUERY`` a GET."""
        q = (lambda v: _s8(v)) if o.market == "spot" else (lambda v: f"{v:.{o.qdec}f}")
        if o.market == "spot":
            d: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1}
            d["clientOrderId"] = o.client_order_id
            if resp_type == "ACK":
                return d | {"transactTime": o.time_ms}
            d |= SPOT_ORDER_STATIC | {
                "origQty": q(o.orig_qty),
                "executedQty": q(o.executed_qty),
                "cummulativeQuoteQty": _s8(o.cum_quote),
                "status": o.status,
                "side": o.side,
                "workingTime": o.time_ms,
            }
            if resp_type == "QUERY":
                return d | {
                    "stopPrice": "0.00000000",
                    "icebergQty": "0.00000000",
                    "time": o.time_ms,
                    "updateTime": o.time_ms,
                    "isWorking": True,
                }
            d["transactTime"] = o.time_ms
            if resp_type == "FULL":
                fill = {"price": _s8(o.avg_price), "qty": q(o.executed_qty), "commission": _s8(o.commission)}
                fill |= {"commissionAsset": o.commission_asset, "tradeId": o.trade_id}
                d["fills"] = [fill] if o.executed_qty else []
            return d
        ack = resp_type == "ACK"  # Binance's futures ACK: accepted, nothing reported as executed yet
        exe, cum = (0.0, 0.0) if ack else (o.executed_qty, o.cum_quote)
        d = {"orderId": o.order_id, "symbol": o.symbol, "status": "NEW" if ack else o.status}
        d |= PERP_ORDER_STATIC | {
            "clientOrderId": o.client_order_id,
            "avgPrice": _s8(cum / exe) if exe else "0.00",
            "origQty": q(o.orig_qty),
            "executedQty": q(exe),
            "cumQty": q(exe),
            "cumQuote": _s8(cum),
            "reduceOnly": o.reduce_only,
            "side": o.side,
            "updateTime": o.time_ms,
        }
        if resp_type == "QUERY":
            d["time"] = o.time_ms
        return d

    # ------------------------------------------------------------ accounts

    def spot_account(self) -> dict[str, Any]:
        with self.lock:
            return {
                "makerCommission": 10,
                "takerCommission": 10,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "commissionRates": {
                    "maker": "0.00100000",
                    "taker": "0.00100000",
                    "buyer": "0.00000000",
                    "seller": "0.00000000",
                },
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.ms,
                "accountType": "SPOT",
                "balances": [
                    {"asset": a, "free": _s8(v), "locked": "0.00000000"} for a, v in self.spot_bal.items()
                ],
                "permissions": ["SPOT"],
                "uid": 100000001,
            }

    def _pos_metrics(self, pos: Position) -> dict[str, float]:
        inst = self.instruments[pos.symbol]
        mark = inst.mark(self.t) if inst.has_data(self.t) else pos.entry
        notional = pos.amt * mark
        upnl = pos.amt * (mark - pos.entry)
        lev = self._lev(pos.symbol)
        iso = self._mt(pos.symbol) == ISOLATED
        mm = maintenance_margin(abs(notional), inst.brackets) if pos.amt else 0.0
        wallet = pos.iso_wallet if iso else self.cross_wallet
        liq = liquidation_price(wallet, pos.amt, pos.entry, inst.brackets) if pos.amt else 0.0
        return {
            "mark": mark,
            "notional": notional,
            "upnl": upnl,
            "im": abs(notional) / lev,
            "mm": mm,
            "liq": 0.0 if math.isnan(liq) else liq,
            "iso": iso,
        }

    def _available(self) -> float:
        avail = self.cross_wallet
        for pos in self.positions.values():
            if pos.amt and self._mt(pos.symbol) != ISOLATED:
                m = self._pos_metrics(pos)
                avail += m["upnl"] - m["im"]
        return avail

    def _futures_totals(self) -> dict[str, float]:
        tot = {"wallet": self.cross_wallet, "upnl": 0.0, "cross_upnl": 0.0, "im": 0.0, "mm": 0.0}
        for pos in self.positions.values():
            tot["wallet"] += pos.iso_wallet
            if pos.amt:
                m = self._pos_metrics(pos)
                tot["upnl"] += m["upnl"]
                tot["im"] += m["im"]
                tot["mm"] += m["mm"]
                if not m["iso"]:
                    tot["cross_upnl"] += m["upnl"]
        tot["available"] = self._available()
        return tot

    def futures_balance(self) -> list[dict[str, Any]]:
        with self.lock:
            t = self._futures_totals()
            return [
                {
                    "accountAlias": "SgsR",
                    "asset": QUOTE,
                    "balance": _s8(t["wallet"]),
                    "crossWalletBalance": _s8(self.cross_wallet),
                    "crossUnPnl": _s8(t["cross_upnl"]),
                    "availableBalance": _s8(t["available"]),
                    "maxWithdrawAmount": _s8(max(0.0, min(t["available"], self.cross_wallet))),
                    "marginAvailable": True,
                    "updateTime": self.ms,
                }
            ]

    def futures_account(self, version: int = 3) -> dict[str, Any]:
        with self.lock:
            t = self._futures_totals()
            asset = {
                "asset": QUOTE,
                "walletBalance": _s8(t["wallet"]),
                "unrealizedProfit": _s8(t["upnl"]),
                "marginBalance": _s8(t["wallet"] + t["upnl"]),
                "maintMargin": _s8(t["mm"]),
                "initialMargin": _s8(t["im"]),
                "positionInitialMargin": _s8(t["im"]),
                "openOrderInitialMargin": "0.00000000",
                "crossWalletBalance": _s8(self.cross_wallet),
                "crossUnPnl": _s8(t["cross_upnl"]),
                "availableBalance": _s8(t["available"]),
                "maxWithdrawAmount": _s8(max(0.0, min(t["available"], self.cross_wallet))),
                "updateTime": self.ms,
            }
            if version == 2:
                asset["marginAvailable"] = True
            positions = []
            for sym, inst in self.instruments.items():
                pos = self.positions.get(sym) or Position(sym)
                if version == 3 and not pos.amt:
                    continue
                m = self._pos_metrics(pos)
                row = {
                    "symbol": sym,
                    "positionSide": "BOTH",
                    "positionAmt": f"{pos.amt:.{inst.qdec}f}",
                    "unrealizedProfit": _s8(m["upnl"]),
                    "isolatedMargin": _s8(pos.iso_wallet + m["upnl"] if m["iso"] and pos.amt else 0.0),
                    "notional": _s8(m["notional"]),
                    "isolatedWallet": _s8(pos.iso_wallet),
                    "initialMargin": _s8(m["im"]),
                    "maintMargin": _s8(m["mm"]),
                    "updateTime": pos.update_ms,
                }
                if version == 2:
                    row |= {
                        "leverage": str(self._lev(sym)),
                        "isolated": m["iso"],
                        "entryPrice": _s8(pos.entry),
                        "breakEvenPrice": _s8(pos.entry),
                        "maxNotional": f"{self._max_notional(inst, self._lev(sym)):.0f}",
                        "positionInitialMargin": _s8(m["im"]),
                        "openOrderInitialMargin": "0",
                        "bidNotional": "0",
                        "askNotional": "0",
                    }
                positions.append(row)
            return {
                "feeTier": 0,
                "canTrade": True,
                "canDeposit": True,
                "canWithdraw": True,
                "feeBurn": False,
                "tradeGroupId": -1,
                "updateTime": 0,
                "multiAssetsMargin": False,
                "totalInitialMargin": _s8(t["im"]),
                "totalMaintMargin": _s8(t["mm"]),
                "totalWalletBalance": _s8(t["wallet"]),
                "totalUnrealizedProfit": _s8(t["upnl"]),
                "totalMarginBalance": _s8(t["wallet"] + t["upnl"]),
                "totalPositionInitialMargin": _s8(t["im"]),
                "totalOpenOrderInitialMargin": "0.00000000",
                "totalCrossWalletBalance": _s8(self.cross_wallet),
                "totalCrossUnPnl": _s8(t["cross_upnl"]),
                "availableBalance": _s8(t["available"]),
                "maxWithdrawAmount": _s8(max(0.0, min(t["available"], self.cross_wallet))),
                "assets": [asset],
                "positions": positions,
            }

    def position_risk(self, version: int = 3, symbol: str | None = None) -> list[dict[str, Any]]:
        """v3 lists open positions only and has no leverage/marginType (as on Binance);
        v2 lists every symbol."""
        with self.lock:
            syms = [self.inst(symbol).id] if symbol else list(self.instruments)
            rows = []
            for sym in syms:
                inst, pos = self.instruments[sym], self.positions.get(sym) or Position(sym)
                if version == 3 and not pos.amt:
                    continue
                m = self._pos_metrics(pos)
                row = {
                    "symbol": sym,
                    "positionSide": "BOTH",
                    "positionAmt": f"{pos.amt:.{inst.qdec}f}",
                    "entryPrice": _s8(pos.entry),
                    "breakEvenPrice": _s8(pos.entry),
                    "markPrice": _s8(m["mark"]),
                    "unRealizedProfit": _s8(m["upnl"]),
                    "liquidationPrice": _s8(m["liq"]),
                    "isolatedMargin": _s8(pos.iso_wallet + m["upnl"] if m["iso"] and pos.amt else 0.0),
                    "notional": _s8(m["notional"]),
                    "marginAsset": QUOTE,
                    "isolatedWallet": _s8(pos.iso_wallet),
                    "updateTime": pos.update_ms,
                }
                if version == 3:
                    row |= {
                        "initialMargin": _s8(m["im"]),
                        "maintMargin": _s8(m["mm"]),
                        "positionInitialMargin": _s8(m["im"]),
                        "openOrderInitialMargin": "0",
                        "adl": 0,
                        "bidNotional": "0",
                        "askNotional": "0",
                    }
                else:
                    row |= {
                        "leverage": str(self._lev(sym)),
                        "maxNotionalValue": f"{self._max_notional(inst, self._lev(sym)):.0f}",
                        "marginType": "isolated" if m["iso"] else "cross",
                        "isAutoAddMargin": "false",
                    }
                rows.append(row)
            return rows

    def leverage_brackets(self, symbol: str | None = None) -> Any:
        with self.lock:
            out = []
            for inst in [self.inst(symbol)] if symbol else self.instruments.values():
                rows, floor = [], 0.0
                for n, b in enumerate(inst.brackets, 1):
                    cap = min(b.notional_cap_usd, 5e9)
                    rows.append(
                        {
                            "bracket": n,
                            "initialLeverage": max(1, int(1 / (2 * b.mmr))),
                            "notionalCap": int(cap),
                            "notionalFloor": int(floor),
                            "maintMarginRatio": b.mmr,
                            "cum": b.cum_usd,
                        }
                    )
                    floor = cap
                out.append({"symbol": inst.id, "notionalCoef": 1.0, "brackets": rows})
            return out[0] if symbol else out

    def change_leverage(self, symbol: str, leverage: int) -> dict[str, Any]:
        with self.lock:
            inst = self.inst(symbol)
            if not 1 <= leverage <= self._max_leverage(inst):
                raise BinanceError(-4028, f"Leverage {leverage} is not valid")
            pos = self.positions.get(inst.id)
            if pos and pos.amt and abs(pos.amt) * inst.mark(self.t) > self._max_notional(inst, leverage):
                raise BinanceError(-2027, "Exceeded the maximum allowable position at current leverage.")
            self.leverage[inst.id] = leverage
            return {
                "leverage": leverage,
                "maxNotionalValue": f"{self._max_notional(inst, leverage):.0f}",
                "symbol": inst.id,
            }

    def change_margin_type(self, symbol: str, margin_type: str) -> dict[str, Any]:
        with self.lock:
            inst = self.inst(symbol)
            mt = margin_type.upper()
            if mt not in (ISOLATED, CROSSED):
                raise BinanceError(-1116, "Invalid marginType.")
            if self._mt(inst.id) == mt:
                raise BinanceError(-4046, "No need to change margin type.")
            pos = self.positions.get(inst.id)
            if pos and pos.amt:
                raise BinanceError(-4048, "Margin type cannot be changed if there exists position.")
            self.margin_type[inst.id] = mt
            return {"code": 200, "msg": "success"}

    def position_margin(self, symbol: str, amount: float, kind: int) -> dict[str, Any]:
        """Add (type 1) or remove (type 2) isolated margin."""
        with self.lock:
            inst = self.inst(symbol)
            pos = self.positions.get(inst.id)
            if self._mt(inst.id) != ISOLATED:
                raise BinanceError(-4049, "Add margin only support for isolated position.")
            if not pos or not pos.amt:
                raise BinanceError(-4054, "Cannot add position margin: position is 0.")
            amount = _r8(amount)
            if amount <= 0 or kind not in (1, 2):
                raise BinanceError(
                    -1102, "Mandatory parameter 'amount' was not sent, was empty/null, or malformed."
                )
            if kind == 1:
                if self._available() + 1e-9 < amount:
                    raise BinanceError(-4050, "Cross balance insufficient.")
                self.cross_wallet, pos.iso_wallet = (
                    _r8(self.cross_wallet - amount),
                    _r8(pos.iso_wallet + amount),
                )
            else:
                m = self._pos_metrics(pos)
                if pos.iso_wallet + min(m["upnl"], 0.0) - m["im"] + 1e-9 < amount:
                    raise BinanceError(-4051, "Isolated balance insufficient.")
                self.cross_wallet, pos.iso_wallet = (
                    _r8(self.cross_wallet + amount),
                    _r8(pos.iso_wallet - amount),
                )
            pos.update_ms = self.ms
            return {
                "amount": amount,
                "code": 200,
                "msg": "Successfully modify position margin.",
                "type": kind,
            }

    def income_history(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/fapi/v1/income``: oldest first; without a time range, the last 7 days."""
        with self.lock:
            limit = min(int(p.get("limit") or 100), 1000)
            start, end = p.get("startTime"), p.get("endTime")
            lo = int(start) if start else (self.ms - 7 * 86_400_000 if not end else 0)
            hi = int(end) if end else 2**62
            rows = [
                r
                for r in self.income
                if lo <= r["time"] <= hi
                and (not p.get("symbol") or r["symbol"] == p["symbol"])
                and (not p.get("incomeType") or r["incomeType"] == p["incomeType"])
            ]
            return rows[:limit]

    # ------------------------------------------------------------ test helpers (no Binance equivalent)

    def deposit(self, account: str, asset: str, amount: float) -> None:
        with self.lock:
            if account == "spot":
                self.spot_bal[asset] = _r8(self.spot_bal.get(asset, 0.0) + amount)
            elif account == "futures" and asset == QUOTE:
                self.cross_wallet = _r8(self.cross_wallet + amount)
            else:
                raise ValueError("account must be 'spot', or 'futures' with asset USDT")

    def total_usdt(self) -> float:
        """Spot USDT + futures cross wallet + every isolated wallet."""
        with self.lock:
            return _r8(
                self.spot_bal[QUOTE] + self.cross_wallet + sum(p.iso_wallet for p in self.positions.values())
            )

    def count(self, method: str, path: str) -> None:
        with self.lock:
            self.requests[f"{method} {path}"] += 1

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.unknown_paths.clear()

    def check_signature(self, payload: str, signature: str) -> bool:
        want = hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, signature)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "t": self.t,
                "time": datetime.fromtimestamp(self.t, UTC).isoformat().replace("+00:00", "Z"),
                "spot": {a: v for a, v in self.spot_bal.items() if v},
                "futures": {
                    "cross_wallet": self.cross_wallet,
                    "positions": {s: asdict(p) for s, p in self.positions.items() if p.amt or p.iso_wallet},
                    "leverage": dict(self.leverage),
                    "margin_type": dict(self.margin_type),
                    "account": self.futures_account(3),
                },
                "total_usdt": self.total_usdt(),
                "orders": [self.order_wire(o, "QUERY") | {"market": o.market} for o in self.orders],
                "income": list(self.income),
                "faults": asdict(self.faults),
                "requests": {
                    "total": sum(self.requests.values()),
                    "by_path": dict(self.requests),
                    "unknown": list(self.unknown_paths),
                },
            }


# --------------------------------------------------------------------------- HTTP layer


async def _read_params(request: Request) -> tuple[dict[str, str], str, str]:
    query = request.url.query
    body = (await request.body()).decode() if request.method in ("POST", "PUT", "DELETE") else ""
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.update(parse_qsl(body, keep_blank_values=True))
    return params, query, body


def _check_auth(state: SimState, request: Request, params: dict[str, str], query: str, body: str) -> None:
    key = request.headers.get("X-MBX-APIKEY", "")
    if not key or not hmac.compare_digest(key.encode(), state.api_key.encode()):
        raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
    sig = params.get("signature", "")
    # Binance signs "query string + body" with the signature parameter itself left out
    parts = [part for piece in (query, body) for part in ([piece] if piece else [])]
    payload = "".join(
        "&".join(kv for kv in piece.split("&") if not kv.startswith("signature=")) for piece in parts
    )
    if not sig or not state.check_signature(payload, sig):
        raise BinanceError(-1022, "Signature for this request is not valid.")
    if not params.get("timestamp"):
        raise BinanceError(
            -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
        )


def build_app(state: SimState) -> Starlette:
    """The HTTP face of ``state``: Binance paths plus ``/_sim/*`` admin endpoints."""

    def exchange(handler: Callable[[dict[str, str]], Any], signed: bool = False) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            state.count(request.method, request.url.path)
            f = state.faults
            if f.latency_ms:
                await asyncio.sleep(f.latency_ms / 1000)
            with state.lock:
                unavailable = f.take("http_5xx_next")
                limited = not unavailable and f.take("rate_limit_next")
            if unavailable:
                return Response(HTML_503, 503, media_type="text/html")
            if limited:
                return JSONResponse({"code": -1003, "msg": MSG_RATE_LIMIT}, 429, headers={"Retry-After": "1"})
            try:
                params, query, body = await _read_params(request)
                if signed:
                    _check_auth(state, request, params, query, body)
                result = handler(params)
                if inspect.isawaitable(result):
                    result = await result
            except BinanceError as e:
                return JSONResponse({"code": e.code, "msg": e.msg}, e.status)
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
            return JSONResponse(result)

        return endpoint

    def place(market: str) -> Callable[[dict[str, str]], Any]:
        async def handler(p: dict[str, str]) -> Any:
            f = state.faults
            with state.lock:
                reject = f.take("reject_next")
                partial = f.partial_fraction if not reject and f.take("partial_fill_next") else None
                delay = f.timeout_delay_s if not reject and f.take("timeout_after_execute_next") else 0.0
            if reject:
                code = f.reject_code or (-2010 if market == "spot" else -2019)
                msg = f.reject_msg or (MSG_INSUFFICIENT_SPOT if code == -2010 else MSG_MARGIN)
                raise BinanceError(code, msg)
            out = state.place_order(market, p, partial)
            if delay:
                await asyncio.sleep(delay)
            return out

        return handler

    def api(method: str, path: str, handler: Callable[[dict[str, str]], Any], signed: bool = False) -> Route:
        return Route(path, exchange(handler, signed), methods=[method])

    def leverage(p: dict[str, str]) -> Any:
        return state.change_leverage(_need(p, "symbol"), int(_num(p, "leverage")))

    def margin_type(p: dict[str, str]) -> Any:
        return state.change_margin_type(_need(p, "symbol"), _need(p, "marginType"))

    def position_margin(p: dict[str, str]) -> Any:
        return state.position_margin(_need(p, "symbol"), _num(p, "amount"), int(_num(p, "type")))

    routes = [
        # spot, public
        api("GET", "/api/v3/ping", lambda p: {}),
        api("GET", "/api/v3/time", lambda p: {"serverTime": state.ms}),
        api("GET", "/api/v3/exchangeInfo", lambda p: state.exchange_info("spot")),
        api("GET", "/api/v3/depth", lambda p: state.depth("spot", _need(p, "symbol"), p.get("limit"))),
        api(
            "GET",
            "/api/v3/ticker/bookTicker",
            lambda p: state.book_ticker("spot", p.get("symbol"), p.get("symbols")),
        ),
        api(
            "GET",
            "/api/v3/ticker/24hr",
            lambda p: state.ticker_24h("spot", p.get("symbol"), p.get("symbols")),
        ),
        api("GET", "/api/v3/klines", lambda p: state.klines("spot", p)),
        # spot, signed
        api("POST", "/api/v3/order", place("spot"), True),
        api("GET", "/api/v3/order", lambda p: state.get_order("spot", p), True),
        api("GET", "/api/v3/openOrders", lambda p: [], True),
        api("GET", "/api/v3/account", lambda p: state.spot_account(), True),
        api("GET", "/api/v3/myTrades", lambda p: state.my_trades("spot", p), True),
        # margin pair lists: ccxt's load_markets asks for them when it has credentials; no margin here
        api("GET", "/sapi/v1/margin/allPairs", lambda p: [], True),
        api("GET", "/sapi/v1/margin/isolated/allPairs", lambda p: [], True),
        # USD-M futures, public
        api("GET", "/fapi/v1/ping", lambda p: {}),
        api("GET", "/fapi/v1/time", lambda p: {"serverTime": state.ms}),
        api("GET", "/fapi/v1/exchangeInfo", lambda p: state.exchange_info("perp")),
        api("GET", "/fapi/v1/depth", lambda p: state.depth("perp", _need(p, "symbol"), p.get("limit"))),
        api("GET", "/fapi/v1/ticker/bookTicker", lambda p: state.book_ticker("perp", p.get("symbol"))),
        api("GET", "/fapi/v1/ticker/24hr", lambda p: state.ticker_24h("perp", p.get("symbol"))),
        api("GET", "/fapi/v1/premiumIndex", lambda p: state.premium_index(p.get("symbol"))),
        api("GET", "/fapi/v1/fundingInfo", lambda p: state.funding_info()),
        api("GET", "/fapi/v1/fundingRate", state.funding_rate_history),
        api("GET", "/fapi/v1/klines", lambda p: state.klines("perp", p)),
        api("GET", "/fapi/v1/forceOrders", lambda p: [], True),  # the simulator never liquidates
        api("GET", "/fapi/v1/userTrades", lambda p: state.my_trades("perp", p), True),
        # USD-M futures, signed
        api("POST", "/fapi/v1/order", place("perp"), True),
        api("GET", "/fapi/v1/order", lambda p: state.get_order("perp", p), True),
        api("GET", "/fapi/v1/openOrders", lambda p: [], True),
        api("GET", "/fapi/v2/account", lambda p: state.futures_account(2), True),
        api("GET", "/fapi/v3/account", lambda p: state.futures_account(3), True),
        api("GET", "/fapi/v2/balance", lambda p: state.futures_balance(), True),
        api("GET", "/fapi/v3/balance", lambda p: state.futures_balance(), True),
        api("GET", "/fapi/v2/positionRisk", lambda p: state.position_risk(2, p.get("symbol")), True),
        api("GET", "/fapi/v3/positionRisk", lambda p: state.position_risk(3, p.get("symbol")), True),
        api("GET", "/fapi/v1/leverageBracket", lambda p: state.leverage_brackets(p.get("symbol")), True),
        api("POST", "/fapi/v1/leverage", leverage, True),
        api("POST", "/fapi/v1/marginType", margin_type, True),
        api("POST", "/fapi/v1/positionMargin", position_margin, True),
        api("GET", "/fapi/v1/income", state.income_history, True),
        api("GET", "/fapi/v1/positionSide/dual", lambda p: {"dualSidePosition": False}, True),
    ]

    async def admin_state(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def admin_time(request: Request) -> Response:
        if request.method == "POST":
            d = await request.json()
            try:
                settled = state.advance(d["advance_s"]) if "advance_s" in d else state.set_time(d["t"])
            except (KeyError, ValueError, TypeError) as e:
                return JSONResponse({"error": f"give 't' (epoch s or ISO) or 'advance_s': {e}"}, 400)
            return JSONResponse({"t": state.t, "funding": settled})
        return JSONResponse({"t": state.t})

    async def admin_faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                with state.lock:
                    state.faults.update(await request.json())
            except (ValueError, TypeError) as e:
                return JSONResponse({"error": str(e)}, 400)
        return JSONResponse(asdict(state.faults))

    async def admin_requests(request: Request) -> Response:
        if request.method == "DELETE":
            state.reset_counts()
        snap = {
            "total": sum(state.requests.values()),
            "by_path": dict(state.requests),
            "unknown": list(state.unknown_paths),
        }
        return JSONResponse(snap)

    async def admin_deposit(request: Request) -> Response:
        d = await request.json()
        try:
            state.deposit(d["account"], d.get("asset", QUOTE), float(d["amount"]))
        except (KeyError, ValueError, TypeError) as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"total_usdt": state.total_usdt()})

    async def not_found(request: Request) -> Response:
        with state.lock:
            state.unknown_paths.append(f"{request.method} {request.url.path}")
        return JSONResponse(
            {"code": -1000, "msg": f"simulator: no route {request.method} {request.url.path}"}, 404
        )

    routes += [
        Route("/_sim/state", admin_state),
        Route("/_sim/time", admin_time, methods=["GET", "POST"]),
        Route("/_sim/faults", admin_faults, methods=["GET", "POST"]),
        Route("/_sim/requests", admin_requests, methods=["GET", "DELETE"]),
        Route("/_sim/deposit", admin_deposit, methods=["POST"]),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- running it


class _ThreadServer(uvicorn.Server):
    """uvicorn without signal handlers (it runs in a background thread)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


def _config(app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@dataclass
class SimServer:
    url: str
    state: SimState
    _server: _ThreadServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)


def start_sim(host: str = "127.0.0.1", port: int = 0, **state_kwargs: Any) -> SimServer:
    """Start a simulator on a background thread; ``state_kwargs`` go to `SimState`."""
    state = SimState(**state_kwargs)
    sock = _bind(host, port)
    server = _ThreadServer(_config(build_app(state)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="binance-sim", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("simulator failed to start")
        time.sleep(0.01)
    return SimServer(f"http://{host}:{sock.getsockname()[1]}", state, server, thread)


@contextlib.contextmanager
def running_sim(**kwargs: Any) -> Iterator[SimServer]:
    """``with running_sim(extra_symbols=3) as sim:`` → ``sim.url``, ``sim.state``, ``sim.stop()``."""
    sim = start_sim(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m basis_mcp.sim.binance", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port (printed)")
    ap.add_argument("--api-key", default=os.environ.get("BASIS_SIM_API_KEY", "sim-api-key"))
    ap.add_argument("--secret", default=os.environ.get("BASIS_SIM_SECRET", "sim-secret"))
    ap.add_argument(
        "--start", default="2024-03-15T00:00:00Z", help="simulated start time (ISO-8601 or epoch s)"
    )
    ap.add_argument("--spot-usdt", type=float, default=100_000.0)
    ap.add_argument("--futures-usdt", type=float, default=100_000.0)
    ap.add_argument("--extra-symbols", type=int, default=0)
    ap.add_argument("--default-margin-type", choices=[CROSSED, ISOLATED], default=CROSSED)
    args = ap.parse_args(argv)
    state = SimState(
        start=args.start,
        api_key=args.api_key,
        secret=args.secret,
        spot_usdt=args.spot_usdt,
        futures_usdt=args.futures_usdt,
        extra_symbols=args.extra_symbols,
        default_margin_type=args.default_margin_type,
    )
    sock = _bind(args.host, args.port)
    print(json.dumps({"url": f"http://{args.host}:{sock.getsockname()[1]}", "t": state.t}), flush=True)
    uvicorn.Server(_config(build_app(state))).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
