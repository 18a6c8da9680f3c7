"""A local Deribit (market data only: the BTC and ETH inverse perpetuals and quarterly futures), driven by the
shipped hourly data, that ccxt's ``deribit`` client talks to unmodified.

Deribit's JSON-RPC over HTTP: ``GET /api/v2/public/<method>?<params>`` answers ``{"jsonrpc": "2.0", "result": ...,
"usIn": µs, "usOut": µs, "usDiff": µs, "testnet": false}`` (``usIn`` / ``usOut`` on the simulated clock: the feed's
clock syncs to them), numbers as JSON numbers. Errors answer HTTP 400 with ``{"jsonrpc": "2.0", "error": {"code",
"message", "data"}, ...}``: an unknown instrument -32602 "Invalid params" (``data`` ``{"reason": "instrument not
found", "param": "instrument_name"}``; ccxt: BadRequest), an unknown currency -32602 (reason "invalid currency"),
an unknown method -32601 "Method not found", as Deribit answers them.

Methods, as ccxt's ``deribit`` calls them: ``get_time``; ``get_currencies`` (BTC, ETH, USDC); ``get_instruments``
(``currency`` BTC / ETH / ``any`` or none: ccxt's ``load_markets`` sends none; ``kind``; ``expired=true``: empty);
``get_book_summary_by_currency`` (``currency`` required, ``kind``: ccxt's ``fetch_tickers`` with ``code``);
``ticker`` (``instrument_name``: ``fetch_ticker``); ``get_index_price`` (``index_name`` ``btc_usd``);
``get_order_book`` (``instrument_name``, ``depth``).

Instruments, per coin of ``coins`` (default BTC and ETH, Deribit's coin-margined families):

- ``BTC-PERPETUAL``: kind ``future``, ``settlement_period`` ``perpetual``, expiration 32503708800000 (year 3000);
- the current and the next quarterly (``BTC-29MAR24``, ``BTC-28JUN24``: Deribit's names, the day without a
  leading zero), ``settlement_period`` ``month``: the very contracts the Binance simulator lists with
  ``quarterlies=`` (`basis_mcp.sim.instruments.Quarterly`: the last Friday of March / June / September / December
  at 08:00 UTC, as Deribit's quarterlies expire), so the paper desk and this venue agree.

Every one is INVERSE (``instrument_type`` and ``future_type`` ``reversed``): quoted in USD, settled in the coin,
``contract_size`` 10 USD a BTC contract and 1 USD an ETH one (``min_trade_amount`` the same; book amounts in USD).
ccxt names them ``BTC/USD:BTC`` and ``BTC/USD:BTC-240329`` (``inverse`` True).

Prices: the index (``index_price``, ``estimated_delivery_price``) is the data's spot; the perpetual's
``mark_price`` the data's mark and its ``last`` the data's perp; a quarterly's mark and last its SIMULATED
price, the paper desk's model (`basis_mcp.feed.ReplayFeed.dated_snapshot`, through `Quarterly`); best bid /
ask the Binance simulator's touch around last (its cent grid, not Deribit's 0.5 / 0.05 tick: no order is ever
placed here); 24 h high / low from the hourly data; volumes and open interest 0. The perpetual's funding:
``current_funding`` is the shipped 8-hour rate settling next, ``funding_8h`` the one settled last (Deribit's
accrues every millisecond from its premium; the data's 8-hourly rates stand in). ``get_order_book``: the
Binance simulator's impact-curve book, amounts in USD (whole contracts).

Not simulated: options, spot, the linear USDC perpetuals and futures, weeklies, monthlies and Deribit's further
quarterlies, candles, funding history, settlement and delivery, and the whole private API (trading and
accounts: ``/api/v2/private/*`` answers -32601, "not simulated"). Admin endpoints as the other simulators':
``/_sim/state``, ``/_sim/time`` (GET; POST ``{"t": ...}`` or ``{"advance_s": ...}``), ``/_sim/faults``
(``http_5xx_next``: 503 with an HTML body; ``rate_limit_next``: HTTP 429 with Deribit's 10028
``too_many_requests``; ``latency_ms``), ``/_sim/requests`` (GET, DELETE; counts per ``"GET <path>"``).

Run in-process: ``with running_deribit_sim(start="2024-03-15") as sim: ... sim.url, sim.state``.
Run as a process: ``python -m basis_mcp.sim.deribit --port 0`` prints ``{"url": ..., "t": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.sim.admin import admin_routes
from basis_mcp.sim.binance import HTML_503, SimServer, _bind, _config, serve_app
from basis_mcp.sim.instruments import BinanceError, Instrument, Quarterly
from basis_mcp.sim.market_data import MarketDataApi
from basis_mcp.sim.state import SimState

__all__ = ["DeribitError", "DeribitMarket", "build_deribit_app", "instrument_name", "make_state",
           "running_deribit_sim", "start_deribit_sim"]

PREFIX = "/api/v2/public/"
COINS = ("BTC", "ETH")
CONTRACT_USD = {"BTC": 10.0, "ETH": 1.0}  # Deribit's contract_size (USD) of its inverse BTC / ETH futures
TICK = {"BTC": 0.5, "ETH": 0.05}  # the listed tick_size
PERPETUAL_EXPIRY_MS = 32_503_708_800_000
PERPETUAL_CREATED_MS = 1_534_242_287_000
TAKER_FEE, MAKER_FEE = 0.0005, 0.0
PRICE_BAND = 0.015  # min_price / max_price: the mark ± 1.5 %
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
CURRENCIES = {"BTC": ("Bitcoin", "BITCOIN", 0.0001), "ETH": ("Ethereum", "ETHER", 0.0006), "USDC": ("USD Coin", "USDC", 1.0)}
HOUR_MS = 3_600_000


class DeribitError(Exception):
    """A JSON-RPC error Deribit would answer (HTTP ``status``)."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None, status: int = 400):
        super().__init__(f"{code} {message}")
        self.code, self.message, self.data, self.status = code, message, data, status


def _invalid(param: str, reason: str) -> DeribitError:
    return DeribitError(-32602, "Invalid params", {"reason": reason, "param": param})


def instrument_name(base: str, expiry: float | None = None) -> str:
    """Deribit's name: ``BTC-PERPETUAL``, or ``BTC-29MAR24`` for a future delivering at ``expiry`` (epoch s)."""
    if expiry is None:
        return f"{base}-PERPETUAL"
    d = datetime.fromtimestamp(expiry, UTC)
    return f"{base}-{d.day}{MONTHS[d.month - 1]}{d:%y}"


@dataclass(frozen=True)
class Listed:
    """One instrument as Deribit lists it: the perpetual (an `Instrument`) or a quarterly (a `Quarterly`)."""

    name: str
    contract: Instrument | Quarterly

    @property
    def base(self) -> str:
        return self.contract.base

    @property
    def perpetual(self) -> bool:
        return isinstance(self.contract, Instrument)

    @property
    def coin(self) -> Instrument:
        return self.contract if isinstance(self.contract, Instrument) else self.contract.coin


def make_state(*, coins: Collection[str] = COINS, **state_kwargs: Any) -> SimState:
    """A `SimState` whose quarterlies are ``coins``' (the Binance simulator's ``quarterlies=``)."""
    state_kwargs.setdefault("quarterlies", [c.upper() for c in coins])
    return SimState(**state_kwargs)


class DeribitMarket:
    """Deribit's public methods over a `SimState` (module docstring). Each method takes the query parameters
    and returns the ``result``; the caller holds no lock."""

    def __init__(self, state: SimState, coins: Collection[str] = COINS):
        self.state = state
        self.coins = tuple(c.upper() for c in coins if f"{c.upper()}USDT" in state.instruments)
        self.depth = MarketDataApi(state).depth

    # ------------------------------------------------------------ instruments

    def listed(self, currency: str | None = None) -> list[Listed]:
        """The instruments of ``currency`` (None: every coin) trading now, the perpetual first, then by expiry."""
        st, out = self.state, []
        for base in self.coins:
            if currency not in (None, base):
                continue
            coin = st.instruments[f"{base}USDT"]
            if coin.has_data(st.t):
                out.append(Listed(instrument_name(base), coin))
            quarterlies = [q for q in st.listed_quarterlies().values() if q.base == base and q.has_data(st.t)]
            out += [Listed(instrument_name(base, q.expiry), q) for q in quarterlies]
        return out

    def lookup(self, name: str | None) -> Listed:
        if not name:
            raise _invalid("instrument_name", "value is required")
        for inst in self.listed():
            if inst.name == name:
                return inst
        raise _invalid("instrument_name", "instrument not found")

    @staticmethod
    def _currency(p: dict[str, str], allow_any: bool) -> str | None:
        """The ``currency`` asked for; None for every one (``any`` or none, where ``allow_any``)."""
        cur = p.get("currency")
        if allow_any and cur in (None, "any"):
            return None
        if not cur:
            raise _invalid("currency", "value is required")
        if cur not in CURRENCIES:
            raise _invalid("currency", "invalid currency")
        return cur

    def _row(self, inst: Listed) -> dict[str, Any]:
        st, base, c = self.state, inst.base, inst.contract
        expiry = PERPETUAL_EXPIRY_MS if inst.perpetual else int(c.expiry) * 1000  # type: ignore[union-attr]
        created = PERPETUAL_CREATED_MS if inst.perpetual else int(c.onboard) * 1000  # type: ignore[union-attr]
        return {
            "tick_size": TICK.get(base, 0.01), "tick_size_steps": [], "taker_commission": TAKER_FEE,
            "maker_commission": MAKER_FEE, "settlement_period": "perpetual" if inst.perpetual else "month",
            "settlement_currency": base, "quote_currency": "USD", "counter_currency": "USD", "base_currency": base,
            "price_index": f"{base.lower()}_usd", "min_trade_amount": CONTRACT_USD.get(base, 1.0),
            "contract_size": CONTRACT_USD.get(base, 1.0), "max_leverage": 50, "max_liquidation_commission": 0.0075,
            "block_trade_commission": 0.00025, "block_trade_min_trade_amount": 200_000,
            "block_trade_tick_size": TICK.get(base, 0.01), "kind": "future", "instrument_name": inst.name,
            "instrument_id": zlib.crc32(inst.name.encode()) % 1_000_000,
            "instrument_type": "reversed", "future_type": "reversed", "is_active": c.has_data(st.t),
            "state": "open" if c.has_data(st.t) else "closed", "expiration_timestamp": expiry,
            "creation_timestamp": created, "rfq": False}

    # ------------------------------------------------------------ prices

    def _prices(self, inst: Listed) -> dict[str, Any]:
        """Index, mark, last, touch, 24 h range and (perpetual) funding of ``inst`` now."""
        c, t = inst.contract, self.state.t
        bid, last, ask = c.quote("perp", t)
        mark = c.mark(t)
        w = c.window("perp", t)
        out = {"index": inst.coin.spot(t), "mark": mark, "last": last, "bid": bid, "ask": ask,
               "high": float(max(w)), "low": float(min(w)), "change": (last / float(w[0]) - 1.0) * 100.0 if w[0] else 0.0}
        if inst.perpetual:
            coin = inst.coin
            nxt = coin.next_funding(t)
            out["current_funding"] = coin.funding_rate(nxt) or 0.0
            out["funding_8h"] = coin.funding_rate(nxt - coin.interval_h * 3600) or 0.0
        size = CONTRACT_USD.get(inst.base, 1.0)
        out["amount"] = max(size, math.floor(250_000 / size) * size)  # the touch's depth, USD
        return out

    def _summary(self, inst: Listed) -> dict[str, Any]:
        px = self._prices(inst)
        row = {"volume": 0.0, "volume_usd": 0.0, "volume_notional": 0.0, "quote_currency": "USD",
               "price_change": px["change"], "open_interest": 0.0, "mid_price": (px["bid"] + px["ask"]) / 2.0,
               "mark_price": px["mark"], "low": px["low"], "high": px["high"], "last": px["last"],
               "instrument_name": inst.name, "estimated_delivery_price": px["index"],
               "creation_timestamp": self.state.ms, "bid_price": px["bid"], "ask_price": px["ask"],
               "base_currency": inst.base}
        if inst.perpetual:
            row |= {"current_funding": px["current_funding"], "funding_8h": px["funding_8h"]}
        return row

    def _ticker(self, inst: Listed) -> dict[str, Any]:
        px = self._prices(inst)
        row = {"timestamp": self.state.ms, "state": "open", "instrument_name": inst.name,
               "stats": {"volume": 0.0, "volume_usd": 0.0, "price_change": px["change"], "low": px["low"], "high": px["high"]},
               "open_interest": 0.0, "min_price": px["mark"] * (1 - PRICE_BAND), "max_price": px["mark"] * (1 + PRICE_BAND),
               "mark_price": px["mark"], "last_price": px["last"], "index_price": px["index"],
               "estimated_delivery_price": px["index"], "best_bid_price": px["bid"], "best_bid_amount": px["amount"],
               "best_ask_price": px["ask"], "best_ask_amount": px["amount"]}
        if inst.perpetual:
            row |= {"current_funding": px["current_funding"], "funding_8h": px["funding_8h"], "interest_value": 0.0}
        return row

    # ------------------------------------------------------------ methods

    def get_time(self, p: dict[str, str]) -> int:
        return self.state.ms

    def get_currencies(self, p: dict[str, str]) -> list[dict[str, Any]]:
        return [{"currency": cur, "currency_long": name, "coin_type": kind, "fee_precision": 4, "min_confirmations": 1,
                 "withdrawal_fee": fee, "min_withdrawal_fee": fee, "withdrawal_priorities": [], "apr": 0.0,
                 "in_cross_collateral_pool": True, "network_currency": cur, "network_fee": fee}
                for cur, (name, kind, fee) in CURRENCIES.items()]

    def get_instruments(self, p: dict[str, str]) -> list[dict[str, Any]]:
        cur = self._currency(p, allow_any=True)
        if p.get("kind") not in (None, "future"):
            if p["kind"] not in ("option", "spot", "future_combo", "option_combo"):
                raise _invalid("kind", "wrong format")
            return []
        with self.state.lock:
            if str(p.get("expired", "")).lower() == "true":
                return []  # recently expired instruments: not simulated
            return [self._row(i) for i in self.listed(cur)]

    def get_book_summary_by_currency(self, p: dict[str, str]) -> list[dict[str, Any]]:
        cur = self._currency(p, allow_any=False)
        if p.get("kind") not in (None, "future"):
            return []
        with self.state.lock:
            return [self._summary(i) for i in self.listed(cur)]

    def ticker(self, p: dict[str, str]) -> dict[str, Any]:
        with self.state.lock:
            return self._ticker(self.lookup(p.get("instrument_name")))

    def get_index_price(self, p: dict[str, str]) -> dict[str, float]:
        name = p.get("index_name")
        if not name:
            raise _invalid("index_name", "value is required")
        with self.state.lock:
            for base in self.coins:
                if name == f"{base.lower()}_usd":
                    spot = self.state.instruments[f"{base}USDT"].spot(self.state.t)
                    return {"index_price": spot, "estimated_delivery_price": spot}
        raise _invalid("index_name", "wrong format")

    def get_order_book(self, p: dict[str, str]) -> dict[str, Any]:
        with self.state.lock:
            inst = self.lookup(p.get("instrument_name"))
            d = self.depth("perp", inst.contract.id, max(1, min(int(p.get("depth") or 20), 1000)))
            size = CONTRACT_USD.get(inst.base, 1.0)

            def usd(levels: list[list[str]]) -> list[list[float]]:
                return [[float(px), max(size, round(float(q) * float(px) / size) * size)] for px, q in levels]

            return self._ticker(inst) | {"bids": usd(d["bids"]), "asks": usd(d["asks"]), "change_id": self.state.t}


# --------------------------------------------------------------------------- HTTP


def _envelope(state: SimState, **body: Any) -> dict[str, Any]:
    us = state.ms * 1000
    return {"jsonrpc": "2.0", **body, "usIn": us, "usOut": us, "usDiff": 0, "testnet": False}


def build_deribit_app(state: SimState, coins: Collection[str] = COINS) -> Starlette:
    """The HTTP face of ``state``: Deribit's public methods for ``coins`` plus ``/_sim/*`` admin endpoints."""
    api = DeribitMarket(state, coins)
    methods: dict[str, Callable[[dict[str, str]], Any]] = {
        name: getattr(api, name) for name in ("get_time", "get_currencies", "get_instruments",
                                              "get_book_summary_by_currency", "ticker", "get_index_price",
                                              "get_order_book")}

    def error(e: DeribitError) -> Response:
        err: dict[str, Any] = {"message": e.message, "code": e.code}
        if e.data:
            err["data"] = e.data
        return JSONResponse(_envelope(state, error=err), e.status)

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
            return error(DeribitError(10028, "too_many_requests", status=429))
        handler = methods.get(request.path_params["method"])
        if handler is None:
            with state.lock:
                state.unknown_paths.append(f"{request.method} {request.url.path}")
            return error(DeribitError(-32601, "Method not found"))
        params = dict(parse_qsl(request.scope.get("query_string", b"").decode(), keep_blank_values=True))
        try:
            return JSONResponse(_envelope(state, result=handler(params)))
        except DeribitError as e:
            return error(e)
        except (BinanceError, ValueError, KeyError, TypeError) as e:
            return error(_invalid("params", f"simulator: {e}"))

    async def private(request: Request) -> Response:
        state.count(request.method, request.url.path)
        with state.lock:
            state.unknown_paths.append(f"{request.method} {request.url.path}")
        return error(DeribitError(-32601, "Method not found",
                                  {"reason": "simulator: the private API (trading, accounts) is not simulated"}))

    async def not_found(request: Request) -> Response:
        with state.lock:
            state.unknown_paths.append(f"{request.method} {request.url.path}")
        return JSONResponse({"error": f"route not found: {request.method} {request.url.path}"}, 404)

    return Starlette(routes=[
        Route(PREFIX + "{method}", endpoint, methods=["GET"]),
        Route("/api/v2/private/{method}", private, methods=["GET", "POST"]),
        *admin_routes(state),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
    ])


# --------------------------------------------------------------------------- running it


def start_deribit_sim(host: str = "127.0.0.1", port: int = 0, *, coins: Collection[str] = COINS,
                      **state_kwargs: Any) -> SimServer:
    """Start a Deribit simulator of ``coins`` on a background thread; ``state_kwargs`` go to `SimState`
    (``start``...)."""
    state = make_state(coins=coins, **state_kwargs)
    return serve_app(build_deribit_app(state, coins), state, host, port, "deribit-sim")


@contextlib.contextmanager
def running_deribit_sim(**kwargs: Any) -> Iterator[SimServer]:
    """``with running_deribit_sim(start="2024-03-15") as sim:`` → ``sim.url``, ``sim.state``, ``sim.stop()``."""
    sim = start_deribit_sim(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m basis_mcp.sim.deribit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port (printed)")
    ap.add_argument("--start", default="2024-03-15T00:00:00Z", help="simulated start time (ISO-8601 or epoch s)")
    ap.add_argument("--coins", default=",".join(COINS), help="coins with an inverse perpetual and quarterlies (BTC,ETH)")
    args = ap.parse_args(argv)
    coins = [c for c in args.coins.upper().split(",") if c]
    state = make_state(start=args.start, coins=coins)
    sock = _bind(args.host, args.port)
    print(json.dumps({"url": f"http://{args.host}:{sock.getsockname()[1]}", "t": state.t}), flush=True)
    uvicorn.Server(_config(build_deribit_app(state, coins))).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
