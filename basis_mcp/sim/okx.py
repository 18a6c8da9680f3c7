"""A local OKX V5 venue (spot, USDT-margined swaps and quarterly futures, one unified trading account), driven
by the shipped hourly data, that ccxt's ``okx`` client talks to unmodified.

``make_exchange("okx", Credentials(key, secret, passphrase), base_url=sim.url)`` loads markets
(``/api/v5/public/instruments`` for SPOT, SWAP, FUTURES, and the empty OPTION list ccxt also asks for;
``fetchCurrencies`` stays off), reads the clock (``/api/v5/public/time``), candles (``/api/v5/market/candles``,
``history-candles``), mark-price candles (``mark-price-candles``, ``history-mark-price-candles``), settled funding
(``/api/v5/public/funding-rate-history``) and the next funding (``/api/v5/public/funding-rate``, one swap or
``instId=ANY``), tickers, mark and index prices and books, all in OKX's wire format: the ``{"code": "0", "msg": "",
"data": [...]}`` envelope, string numbers, instIds ``BTC-USDT`` / ``BTC-USDT-SWAP`` / ``BTC-USDT-240329``, OKX's
``after`` / ``before`` millisecond cursors with rows newest first and its page caps (candles 300, history and
mark candles 100, funding 100). The instruments carry OKX's contract facts (``ctVal`` 0.01 BTC per BTC swap or
futures contract, ``lotSz``, ``minSz``, ``tickSz``): see `basis_mcp.sim.okx_api` for them and for how candles are
built (sub-hour candles are SIMULATED from the hourly data: `basis_mcp.sim.instruments.path_candles`).

Quarterly futures (``quarterlies=["BTC"]`` or True, as the Binance simulator's): the current and the next quarter,
the same contracts and SIMULATED prices as the Binance simulator (the paper desk's model), delivered at the index
at expiry: `basis_mcp.sim.okx_market`. Trading (signed with OKX's HMAC-SHA256 + passphrase): balances, leverage
and margin mode, market orders sized in contracts (coins on spot), order and fill lookups, positions, isolated
margin, bills (trades, funding, deliveries): `basis_mcp.sim.okx_trading`. The account is one unified USDT balance
(``usdt``, default ``spot_usdt + futures_usdt``; ``state.total_usdt()`` is it) plus spot coins.

Errors as OKX answers them: an unknown instId ``51001``, a bad parameter ``51000`` (ccxt: BadSymbol,
BadRequest); faults from ``/_sim/faults``: ``http_5xx_next`` answers 503 with an HTML body (ccxt:
ExchangeNotAvailable), ``rate_limit_next`` answers HTTP 429 ``{"code": "50011", "msg": "Too Many
Requests"}`` (RateLimitExceeded), ``latency_ms`` delays every request; order faults as `basis_mcp.sim.okx_trading`
lists. Unknown paths answer 404 and are listed in ``/_sim/requests``. Admin endpoints as the other simulators':
``/_sim/state``, ``/_sim/time`` (GET; POST ``{"t": ...}`` or ``{"advance_s": ...}``: funding and deliveries
crossed on the way are settled), ``/_sim/faults``, ``/_sim/requests`` (GET, DELETE).

Not simulated: the in-progress candle, index candles, weekly futures, options, inverse contracts, OKX's
three-month horizon on funding history, and what `basis_mcp.sim.okx_trading` lists (limit orders, hedge mode,
liquidations, borrowing, the delivery fee...).

Run in-process: ``with running_okx_sim(start="2024-03-15", quarterlies=["BTC"]) as sim: ... sim.url, sim.state``.
Run as a process: ``python -m basis_mcp.sim.okx --port 0`` prints ``{"url": ..., "t": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.sim.admin import admin_routes
from basis_mcp.sim.binance import HTML_503, SimServer, _bind, _config, serve_app
from basis_mcp.sim.bybit import FundingOverrides, apply_funding
from basis_mcp.sim.okx_api import OkxApi, OkxError
from basis_mcp.sim.okx_market import OkxMarket
from basis_mcp.sim.okx_trading import OkxTrading, private_routes
from basis_mcp.sim.state import SimState

__all__ = ["OkxApi", "OkxError", "build_app", "main", "make_state", "running_okx_sim", "start_okx_sim"]

PREFIX = "/api/v5"
PASSPHRASE = "sim-passphrase"


def make_state(*, funding_overrides: FundingOverrides | None = None, usdt: float | None = None,
               spot_usdt: float = 100_000.0, futures_usdt: float = 100_000.0, default_leverage: int = 10,
               **state_kwargs: Any) -> SimState:
    """A `SimState` set up as one OKX unified account (``usdt`` in it; default ``spot_usdt + futures_usdt``);
    ``funding_overrides`` as `basis_mcp.sim.bybit.apply_funding`'s ({coin: (times_s, rates per settlement)},
    replacing the default data inside their span)."""
    wallet = float(usdt) if usdt is not None else float(spot_usdt) + float(futures_usdt)
    state = SimState(spot_usdt=0.0, futures_usdt=wallet, default_leverage=default_leverage, **state_kwargs)
    if funding_overrides:
        apply_funding(state, "default", funding_overrides)
    return state


def _envelope(data: Any, code: str = "0", msg: str = "") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


def build_app(state: SimState, passphrase: str = PASSPHRASE, check_timestamp: bool = True) -> Starlette:
    """The HTTP face of ``state``: OKX V5 public and private paths plus ``/_sim/*`` admin endpoints."""
    api = OkxMarket(state)
    trading = OkxTrading(state, api)

    def exchange(handler: Callable[[dict[str, str]], Any]) -> Callable[[Request], Any]:
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
                return JSONResponse({"msg": "Too Many Requests", "code": "50011"}, 429)
            params = dict(parse_qsl(request.scope.get("query_string", b"").decode(), keep_blank_values=True))
            try:
                data = handler(params)
            except OkxError as e:
                return JSONResponse(_envelope([], e.code, e.msg), e.status)
            except (ValueError, KeyError, TypeError) as e:
                return JSONResponse(_envelope([], "51000", f"Parameter error: {e}"))
            return JSONResponse(_envelope(data))

        return endpoint

    def get(path: str, handler: Callable[[dict[str, str]], Any]) -> Route:
        return Route(PREFIX + path, exchange(handler), methods=["GET"])

    routes = [
        get("/public/time", api.time),
        get("/public/instruments", api.instruments),
        get("/public/funding-rate-history", api.funding_history),
        get("/public/funding-rate", api.funding_rate),
        get("/system/status", lambda p: []),
        get("/public/mark-price", api.mark_price),
        get("/market/tickers", api.tickers),
        get("/market/ticker", api.ticker),
        get("/market/index-tickers", api.index_tickers),
        get("/market/books", api.books),
    ]
    routes += [get(f"/market/{name}", lambda p, n=name: api.candles(p, n))
               for name in ("candles", "history-candles", "mark-price-candles", "history-mark-price-candles")]

    async def not_found(request: Request) -> Response:
        with state.lock:
            state.unknown_paths.append(f"{request.method} {request.url.path}")
        return JSONResponse(_envelope([], "50000", f"route not found: {request.method} {request.url.path}"), 404)

    routes += private_routes(state, trading, passphrase, check_timestamp)
    routes += [
        *admin_routes(state),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- running it


def start_okx_sim(host: str = "127.0.0.1", port: int = 0, *, passphrase: str = PASSPHRASE,
                  check_timestamp: bool = True, **state_kwargs: Any) -> SimServer:
    """Start an OKX simulator on a background thread; ``state_kwargs`` go to `make_state` (``api_key``,
    ``secret``, ``usdt``, ``quarterlies``...); ``passphrase`` is the API key's passphrase."""
    state = make_state(**state_kwargs)
    return serve_app(build_app(state, passphrase, check_timestamp), state, host, port, "okx-sim")


@contextlib.contextmanager
def running_okx_sim(**kwargs: Any) -> Iterator[SimServer]:
    """``with running_okx_sim(start="2024-03-15") as sim:`` → ``sim.url``, ``sim.state``, ``sim.stop()``."""
    sim = start_okx_sim(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m basis_mcp.sim.okx", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port (printed)")
    ap.add_argument("--start", default="2024-03-15T00:00:00Z", help="simulated start time (ISO-8601 or epoch s)")
    ap.add_argument("--extra-symbols", type=int, default=0)
    ap.add_argument("--api-key", default=os.environ.get("BASIS_SIM_API_KEY", "sim-api-key"))
    ap.add_argument("--secret", default=os.environ.get("BASIS_SIM_SECRET", "sim-secret"))
    ap.add_argument("--passphrase", default=os.environ.get("BASIS_SIM_PASSPHRASE", PASSPHRASE))
    ap.add_argument("--usdt", type=float, default=200_000.0, help="the unified account's USDT")
    ap.add_argument("--quarterlies", default="", help="coins with quarterly futures, comma separated (e.g. BTC,ETH)")
    args = ap.parse_args(argv)
    state = make_state(start=args.start, extra_symbols=args.extra_symbols, api_key=args.api_key, secret=args.secret,
                       usdt=args.usdt, quarterlies=[c for c in args.quarterlies.upper().split(",") if c])
    sock = _bind(args.host, args.port)
    print(json.dumps({"url": f"http://{args.host}:{sock.getsockname()[1]}", "t": state.t}), flush=True)
    uvicorn.Server(_config(build_app(state, args.passphrase))).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
