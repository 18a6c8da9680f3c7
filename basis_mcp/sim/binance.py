"""A local Binance (spot + USD-M perpetual + USD-M quarterly) server, driven by the shipped hourly data.

ccxt's ``binance`` client, pointed here with ``make_exchange("binance", creds, base_url=sim.url)``,
loads markets, reads prices, funding and order books, trades market orders, reads balances
and positions, changes leverage / margin type / isolated margin and reads funding income,
all in Binance's own wire format (paths, fields, string numbers, error codes).

Quarterlies (opt in: ``SimState(quarterlies=True)`` for every perp's coin, or a list of bases;
``--quarterlies`` on the command line): the current and the next quarter of each coin are listed
as Binance lists them (``BTCUSDT_260327``, ``contractType`` CURRENT_QUARTER / NEXT_QUARTER,
``deliveryDate``, ``onboardDate``; ccxt names them ``BTC/USDT:USDT-260327``, type future). Their
prices are SIMULATED with the paper desk's model (`basis_mcp.dated.simulated_price` of the perp and
the shipped funding's `funding_carry_apr`), so the paper desk and this venue agree on every
quarterly's price. They trade like perps (isolated or cross position, leverage per symbol, no
funding) and deliver at ``deliveryDate``: positions close at the index (the coin's spot), margin and
P&L return to the cross wallet, ``/fapi/v1/income`` shows a ``DELIVERED_SETTELMENT`` row (Binance's
spelling), ``/futures/data/delivery-price`` the price, and the next quarter is listed.

Modules (each imports only those above it; none imports this one):

- `basis_mcp.sim.instruments`: constants, `BinanceError`, parameter parsing and number
  formatting, `Instrument` (prices at ``t``: the last hourly closes at or before ``t``, spot gaps
  carried forward; bid/ask = mid ± the half-spread of `DEFAULT_SPECS`) and the records
  `Faults`, `Position`, `Order`.
- `basis_mcp.sim.state`: `SimState`, the exchange's books, pure Python, no I/O. Simulated time
  ``t`` (epoch seconds) moves only when told to (`set_time` / `advance`); crossing a funding
  settlement pays or charges every open perp position. It also holds the lookups and margin
  arithmetic the API families share.
- The API families, each a class holding a reference to one `SimState` (composition; they keep
  no state of their own, so any number of them may share one state):
  `basis_mcp.sim.market_data.MarketDataApi` (exchange info, tickers, depth, premium index,
  funding, klines), `basis_mcp.sim.trading.TradingApi` (market orders fill at
  `LegCosts.fill_price`, half-spread + square-root impact, with taker fees; order queries,
  trades, order JSON) and `basis_mcp.sim.accounts.AccountsApi` (balances, positions, leverage,
  margin type, isolated margin, income). `basis_mcp.sim.instruments.Quarterly` prices the quarterlies;
  `SimState` lists and delivers them.
- This module: `BinanceSim`, the state plus one of each API family (and the admin snapshot
  that needs all of them), and `build_app(state)`, a thin Starlette layer: routing, Binance
  auth (``X-MBX-APIKEY`` + HMAC-SHA256 ``signature``), fault injection, request counting, and
  ``/_sim/*`` admin endpoints (JSON) so another process can move time, set faults and read the
  books; and the uvicorn server (`start_sim`, `running_sim`, `main`).

Accounting (all USDT amounts booked rounded to 1e-8): the spot account holds per-asset
balances; the futures account holds a cross wallet plus, per isolated position, an isolated
wallet. Opening a perp moves ``qty × price / leverage`` from the cross wallet into the
isolated wallet; the taker fee is charged to the cross wallet; realised P&L and funding go
to the isolated wallet (cross wallet for a cross position); reducing releases the isolated
wallet pro rata, closing (or a quarterly's delivery, at the index, no fee) releases all of it. Spot taker fees are taken from the received
asset, as Binance does without BNB (buy → base asset, sell → USDT), unless
``spot_fee_in_quote=True``. So ``spot USDT + cross wallet + Σ isolated wallets`` changes by
exactly −buy cost + sell proceeds − USDT fees + realised P&L + funding + delivery P&L.

Not simulated: limit/stop orders (the markets list only MARKET), hedge mode, liquidations,
a quarterly's own supply and demand, its delivery fee and the 30-minute index average it delivers at,
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
import hmac
import inspect
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.sim.accounts import AccountsApi
from basis_mcp.sim.admin import admin_routes
from basis_mcp.sim.instruments import (
    CROSSED,
    ISOLATED,
    MSG_INSUFFICIENT_SPOT,
    MSG_MARGIN,
    QUOTE,
    BinanceError,
    Faults,
    Instrument,
    Order,
    Position,
    _need,
    _num,
    parse_time,
)
from basis_mcp.sim.market_data import MarketDataApi
from basis_mcp.sim.state import SimState
from basis_mcp.sim.trading import TradingApi

__all__ = [
    "CROSSED",
    "ISOLATED",
    "QUOTE",
    "AccountsApi",
    "BinanceError",
    "BinanceSim",
    "Faults",
    "Instrument",
    "MarketDataApi",
    "Order",
    "Position",
    "SimServer",
    "SimState",
    "TradingApi",
    "build_app",
    "main",
    "parse_time",
    "running_sim",
    "start_sim",
]

MSG_RATE_LIMIT = (
    "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. "
    "Please use the websocket for live updates to avoid polling the API."
)
HTML_503 = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>503</body></html>"


# --------------------------------------------------------------------------- composition


class BinanceSim:
    """One simulated venue: a `SimState` and the three API families over it."""

    def __init__(self, state: SimState):
        self.state = state
        self.market = MarketDataApi(state)
        self.trading = TradingApi(state)
        self.accounts = AccountsApi(state)

    def snapshot(self) -> dict[str, Any]:
        """Everything on the books, as ``GET /_sim/state`` answers it."""
        st = self.state
        with st.lock:
            return {
                "t": st.t,
                "time": datetime.fromtimestamp(st.t, UTC).isoformat().replace("+00:00", "Z"),
                "spot": {a: v for a, v in st.spot_bal.items() if v},
                "futures": {
                    "cross_wallet": st.cross_wallet,
                    "positions": {s: asdict(p) for s, p in st.positions.items() if p.amt or p.iso_wallet},
                    "leverage": dict(st.leverage),
                    "margin_type": dict(st.margin_type),
                    "account": self.accounts.futures_account(3),
                },
                "total_usdt": st.total_usdt(),
                "orders": [self.trading.order_wire(o, "QUERY") | {"market": o.market} for o in st.orders],
                "income": list(st.income),
                "faults": asdict(st.faults),
                "requests": {
                    "total": sum(st.requests.values()),
                    "by_path": dict(st.requests),
                    "unknown": list(st.unknown_paths),
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
    sim = BinanceSim(state)

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
            out = sim.trading.place_order(market, p, partial)
            if delay:
                await asyncio.sleep(delay)
            return out

        return handler

    def api(method: str, path: str, handler: Callable[[dict[str, str]], Any], signed: bool = False) -> Route:
        return Route(path, exchange(handler, signed), methods=[method])

    def leverage(p: dict[str, str]) -> Any:
        return sim.accounts.change_leverage(_need(p, "symbol"), int(_num(p, "leverage")))

    def margin_type(p: dict[str, str]) -> Any:
        return sim.accounts.change_margin_type(_need(p, "symbol"), _need(p, "marginType"))

    def position_margin(p: dict[str, str]) -> Any:
        return sim.accounts.position_margin(_need(p, "symbol"), _num(p, "amount"), int(_num(p, "type")))

    routes = [
        # spot, public
        api("GET", "/api/v3/ping", lambda p: {}),
        api("GET", "/api/v3/time", lambda p: {"serverTime": state.ms}),
        api("GET", "/api/v3/exchangeInfo", lambda p: sim.market.exchange_info("spot")),
        api("GET", "/api/v3/depth", lambda p: sim.market.depth("spot", _need(p, "symbol"), p.get("limit"))),
        api(
            "GET",
            "/api/v3/ticker/bookTicker",
            lambda p: sim.market.book_ticker("spot", p.get("symbol"), p.get("symbols")),
        ),
        api(
            "GET",
            "/api/v3/ticker/24hr",
            lambda p: sim.market.ticker_24h("spot", p.get("symbol"), p.get("symbols")),
        ),
        api("GET", "/api/v3/klines", lambda p: sim.market.klines("spot", p)),
        # spot, signed
        api("POST", "/api/v3/order", place("spot"), True),
        api("GET", "/api/v3/order", lambda p: sim.trading.get_order("spot", p), True),
        api("GET", "/api/v3/openOrders", lambda p: [], True),
        api("GET", "/api/v3/account", lambda p: sim.accounts.spot_account(), True),
        api("GET", "/api/v3/myTrades", lambda p: sim.trading.my_trades("spot", p), True),
        # margin pair lists: ccxt's load_markets asks for them when it has credentials; no margin here
        api("GET", "/sapi/v1/margin/allPairs", lambda p: [], True),
        api("GET", "/sapi/v1/margin/isolated/allPairs", lambda p: [], True),
        # cross-margin borrow rates (signed on Binance): the latest daily rate of an asset
        api("GET", "/sapi/v1/margin/interestRateHistory", lambda p: sim.accounts.interest_rate_history(p), True),
        # USD-M futures, public
        api("GET", "/fapi/v1/ping", lambda p: {}),
        api("GET", "/fapi/v1/time", lambda p: {"serverTime": state.ms}),
        api("GET", "/fapi/v1/exchangeInfo", lambda p: sim.market.exchange_info("perp")),
        api("GET", "/fapi/v1/depth", lambda p: sim.market.depth("perp", _need(p, "symbol"), p.get("limit"))),
        api("GET", "/fapi/v1/ticker/bookTicker", lambda p: sim.market.book_ticker("perp", p.get("symbol"))),
        api("GET", "/fapi/v1/ticker/24hr", lambda p: sim.market.ticker_24h("perp", p.get("symbol"))),
        api("GET", "/fapi/v1/premiumIndex", lambda p: sim.market.premium_index(p.get("symbol"))),
        api("GET", "/fapi/v1/fundingInfo", lambda p: sim.market.funding_info()),
        api("GET", "/fapi/v1/fundingRate", sim.market.funding_rate_history),
        api("GET", "/fapi/v1/klines", lambda p: sim.market.klines("perp", p)),
        api("GET", "/fapi/v1/markPriceKlines", lambda p: sim.market.mark_klines(p)),
        api("GET", "/futures/data/delivery-price", lambda p: sim.market.delivery_prices(_need(p, "pair"))),
        api("GET", "/fapi/v1/forceOrders", lambda p: [], True),  # the simulator never liquidates
        api("GET", "/fapi/v1/userTrades", lambda p: sim.trading.my_trades("perp", p), True),
        # USD-M futures, signed
        api("POST", "/fapi/v1/order", place("perp"), True),
        api("GET", "/fapi/v1/order", lambda p: sim.trading.get_order("perp", p), True),
        api("GET", "/fapi/v1/openOrders", lambda p: [], True),
        api("GET", "/fapi/v2/account", lambda p: sim.accounts.futures_account(2), True),
        api("GET", "/fapi/v3/account", lambda p: sim.accounts.futures_account(3), True),
        api("GET", "/fapi/v2/balance", lambda p: sim.accounts.futures_balance(), True),
        api("GET", "/fapi/v3/balance", lambda p: sim.accounts.futures_balance(), True),
        api("GET", "/fapi/v2/positionRisk", lambda p: sim.accounts.position_risk(2, p.get("symbol")), True),
        api("GET", "/fapi/v3/positionRisk", lambda p: sim.accounts.position_risk(3, p.get("symbol")), True),
        api("GET", "/fapi/v1/leverageBracket", lambda p: sim.accounts.leverage_brackets(p.get("symbol")), True),
        api("POST", "/fapi/v1/leverage", leverage, True),
        api("POST", "/fapi/v1/marginType", margin_type, True),
        api("POST", "/fapi/v1/positionMargin", position_margin, True),
        api("GET", "/fapi/v1/income", sim.accounts.income_history, True),
        api("GET", "/fapi/v1/positionSide/dual", lambda p: {"dualSidePosition": False}, True),
    ]

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
        *admin_routes(state, sim.snapshot),
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


def serve_app(app: Starlette, state: SimState, host: str, port: int, name: str) -> SimServer:
    """Serve ``app`` (any local venue's) on a background thread once its port is bound; the server every
    local venue runs on (Binance here, Bybit, OKX, Hyperliquid)."""
    sock = _bind(host, port)
    server = _ThreadServer(_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} failed to start")
        time.sleep(0.01)
    return SimServer(f"http://{host}:{sock.getsockname()[1]}", state, server, thread)


def start_sim(host: str = "127.0.0.1", port: int = 0, **state_kwargs: Any) -> SimServer:
    """Start a simulator on a background thread; ``state_kwargs`` go to `SimState`."""
    state = SimState(**state_kwargs)
    return serve_app(build_app(state), state, host, port, "binance-sim")


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
    ap.add_argument("--quarterlies", action="store_true", help="list USD-M quarterlies (SIMULATED prices)")
    args = ap.parse_args(argv)
    state = SimState(
        start=args.start,
        api_key=args.api_key,
        secret=args.secret,
        spot_usdt=args.spot_usdt,
        futures_usdt=args.futures_usdt,
        extra_symbols=args.extra_symbols,
        default_margin_type=args.default_margin_type,
        quarterlies=args.quarterlies,
    )
    sock = _bind(args.host, args.port)
    print(json.dumps({"url": f"http://{args.host}:{sock.getsockname()[1]}", "t": state.t}), flush=True)
    uvicorn.Server(_config(build_app(state))).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
