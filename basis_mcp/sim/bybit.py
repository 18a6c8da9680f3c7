"""A local Bybit V5 venue (spot + USDT linear perpetuals, one unified trading account), driven by
the shipped hourly data, that ccxt's ``bybit`` client talks to unmodified.

``make_exchange("bybit", creds, base_url=sim.url)`` loads markets, reads tickers, funding rates
and history, klines (last, mark and index price), order books, trades market orders, reads orders,
executions, the wallet and positions, sets leverage and the account's margin mode, adds isolated
margin and reads funding payments, all in Bybit's V5 wire format: the ``{"retCode", "retMsg",
"result", "retExtInfo", "time"}`` envelope (``time`` is simulated time, in ms), string numbers,
``nextPageCursor`` paging, Bybit's page limits (kline 1000, funding history 200, executions 100),
klines of 1 minute to 1 day (an hour or longer built from the hourly data, e.g. 4 h mark candles
from the hourly marks; Bybit has no 8 h interval; sub-hour candles SIMULATED on the straight line between the hour's
two prices: `basis_mcp.sim.instruments.path_candles`),
and the retCodes ccxt maps to its exception classes (110007 → InsufficientFunds, 110017 →
InvalidOrder, 10004 → AuthenticationError...). Unknown paths answer 404 and are listed in
``/_sim/requests``.

Modules: `basis_mcp.sim.bybit_api.BybitApi` builds the ``result`` objects over a `SimState`
(reusing the Binance simulator's instruments, fills, margin arithmetic and funding settlement);
this module adds the funding overrides, the two bootstrap endpoints ccxt reads to learn the account
is unified, the HTTP layer (routing, V5 auth, fault injection, request counting, ``/_sim/*`` admin
endpoints, the same as the Binance simulator's) and the server.

The account is a unified trading account (UTA 2.0, ``uta=1``), chosen because it is what Bybit
opens today and what ccxt assumes: one USDT wallet pays spot buys, receives spot sells, margins
the perps and takes perp fees, realised P&L and funding; spot coins sit beside it. On the
`SimState` that wallet is ``cross_wallet + Σ isolated wallets`` (``spot_bal["USDT"]`` stays 0;
``spot_usdt + futures_usdt`` both land in it, or pass ``usdt``), so the Binance perp accounting
is reused unchanged and ``state.total_usdt()`` is the wallet balance. It changes by exactly
−spot buy cost + spot sell proceeds − USDT fees + realised P&L + funding. Spot buy fees come off
the coin received, sell fees off the USDT, as on Bybit (``spot_fee_in_quote=True``: all in USDT).
Spot coins are not margin collateral here. Margin mode is account-wide, as on a UTA
(``/v5/account/set-margin-mode``: REGULAR_MARGIN = cross, ISOLATED_MARGIN = isolated; refused
while positions are open). Default leverage 10x. Funding settles every ``fundingInterval``
(480 minutes for BTC and ETH; ``funding_intervals`` as in `SimState`).

Funding rates: by default the shipped data `SimState` uses. ``funding="bybit-shipped"`` uses
Bybit's own settled BTC / ETH funding (`basis_mcp.history.load_funding_venues`, 2021-01-01 to
2023-12-31) inside its span and the default data outside it. ``funding_overrides={"BTC": (times_s,
rates)}`` (key a base coin or a symbol; times on the symbol's settlement grid, rates per settlement
as the venue reports them) does the same with any series, and wins over ``bybit-shipped``.

Not simulated: limit / conditional orders (``orderType`` Limit → 110032), hedge mode, liquidations
(``execType`` BustTrade lists nothing), borrowing, spot collateral, the in-progress candle,
inverse and option markets (their lists are empty). ccxt's bybit has no ``add_margin`` and no
``fetch_funding_intervals``: call ``private_post_v5_position_add_margin`` for the former, read
``fundingInterval`` from the markets for the latter. Signed requests must carry a wall-clock
``X-BAPI-TIMESTAMP`` within the recv window (``check_recv_window=False`` turns that off).

Run in-process: ``with running_bybit_sim(start="2023-06-01") as sim: ... sim.url, sim.state``.
Run as a process: ``python -m basis_mcp.sim.bybit --port 0`` prints ``{"url": ..., "t": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.history import load_funding_venues
from basis_mcp.sim.admin import admin_routes
from basis_mcp.sim.binance import HTML_503, SimServer, _bind, _config, serve_app
from basis_mcp.sim.bybit_api import ORDER_CODES, BybitApi, BybitError, translate
from basis_mcp.sim.instruments import CROSSED, ISOLATED, QUOTE, BinanceError
from basis_mcp.sim.state import SimState

__all__ = ["BybitApi", "BybitError", "BybitSim", "apply_funding", "build_app", "main", "make_state",
           "running_bybit_sim", "start_bybit_sim"]

FUNDING_SOURCES = ("default", "bybit-shipped")
FundingOverrides = dict[str, tuple[Any, Any]]


# --------------------------------------------------------------------------- funding and state


def apply_funding(
    state: SimState, funding: str = "default", overrides: FundingOverrides | None = None
) -> dict[str, tuple[int, int]]:
    """Replace each overridden symbol's settled funding inside the override's span (first to last
    settlement), keeping the default data outside it. Returns {symbol: (first, last)} replaced."""
    if funding not in FUNDING_SOURCES:
        raise ValueError(f"funding must be one of {', '.join(FUNDING_SOURCES)}, not {funding!r}")
    series: FundingOverrides = {}
    if funding == "bybit-shipped":
        series = {coin: (fs.time, fs.rate) for (venue, coin), fs in load_funding_venues().items()
                  if venue == "bybit" and coin + QUOTE in state.instruments}
    for key, pair in (overrides or {}).items():
        base = key[: -len(QUOTE)] if key.endswith(QUOTE) and key != QUOTE else key
        if base + QUOTE not in state.instruments:
            raise ValueError(f"funding override for unknown symbol {key!r}")
        series[base] = pair
    spans = {}
    for base, (times, rates) in series.items():
        inst = state.instruments[base + QUOTE]
        t, r = np.asarray(times, dtype=np.int64), np.asarray(rates, dtype=np.float64)
        if t.ndim != 1 or t.shape != r.shape or not t.size or not np.all(np.isfinite(r)):
            raise ValueError(f"{base}: funding override needs equal-length, non-empty, finite times and rates")
        o = np.argsort(t, kind="stable")
        t, r = t[o], r[o] * 8.0 / inst.interval_h  # Instrument.funding_rate scales by interval / 8 h
        s = inst.series
        keep = (s.f_time < t[0]) | (s.f_time > t[-1])
        ft, fr = np.concatenate([s.f_time[keep], t]), np.concatenate([s.f_rate[keep], r])
        o = np.argsort(ft, kind="stable")
        inst.series = replace(s, f_time=ft[o], f_rate=fr[o])
        spans[inst.id] = (int(t[0]), int(t[-1]))
    return spans


def make_state(
    *,
    funding: str = "default",
    funding_overrides: FundingOverrides | None = None,
    usdt: float | None = None,
    spot_usdt: float = 100_000.0,
    futures_usdt: float = 100_000.0,
    default_leverage: int = 10,
    **state_kwargs: Any,
) -> tuple[SimState, dict[str, tuple[int, int]]]:
    """A `SimState` set up as one Bybit unified account (see the module docstring), and the funding
    spans overridden."""
    wallet = float(usdt) if usdt is not None else float(spot_usdt) + float(futures_usdt)
    state = SimState(spot_usdt=0.0, futures_usdt=wallet, default_leverage=default_leverage, **state_kwargs)
    return state, apply_funding(state, funding, funding_overrides)


class BybitSim:
    """One simulated Bybit: a `SimState`, the `BybitApi` over it and the admin snapshot."""

    def __init__(self, state: SimState, funding_spans: dict[str, tuple[int, int]] | None = None,
                 check_recv_window: bool = True):
        self.state = state
        self.api = BybitApi(state)
        self.funding_spans = dict(funding_spans or {})
        self.check_recv_window = check_recv_window

    def snapshot(self) -> dict[str, Any]:
        """Everything on the books, as ``GET /_sim/state`` answers it."""
        st = self.state
        with st.lock:
            return {
                "t": st.t,
                "time": datetime.fromtimestamp(st.t, UTC).isoformat().replace("+00:00", "Z"),
                "wallet_usdt": st.total_usdt(),
                "coins": {a: v for a, v in st.spot_bal.items() if v and a != QUOTE},
                "margin_mode": "ISOLATED_MARGIN" if st.default_margin_type == ISOLATED else "REGULAR_MARGIN",
                "positions": {s: asdict(p) for s, p in st.positions.items() if p.amt or p.iso_wallet},
                "leverage": dict(st.leverage),
                "account": self.api.wallet_balance({})["list"][0],
                "orders": [self.api.order_wire(o) for o in st.orders],
                "income": list(st.income),
                "funding_overrides": {s: list(span) for s, span in self.funding_spans.items()},
                "faults": asdict(st.faults),
                "requests": {"total": sum(st.requests.values()), "by_path": dict(st.requests),
                             "unknown": list(st.unknown_paths)},
            }


def _query_api(state: SimState) -> dict[str, Any]:
    """``/v5/user/query-api``: with ``/v5/account/info``, how ccxt learns the account is unified (``uta=1``)."""
    perms = {"ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"], "Wallet": ["AccountTransfer"],
             "Options": [], "Derivatives": [], "CopyTrading": [], "BlockTrade": [], "Exchange": [], "NFT": []}
    return {"id": "1", "note": "simulator", "apiKey": state.api_key, "readOnly": 0, "secret": "",
            "permissions": perms, "ips": ["*"], "type": 1, "deadlineDay": -1, "expiredAt": "",
            "createdAt": "2024-01-01T00:00:00Z", "unified": 0, "uta": 1, "userID": 100000001, "inviterID": 0,
            "vipLevel": "No VIP", "mktMakerLevel": "0", "affiliateID": 0, "rsaPublicKey": "", "isMaster": True,
            "parentUid": "0", "kycLevel": "LEVEL_DEFAULT", "kycRegion": ""}


def _coin_info(state: SimState) -> dict[str, Any]:
    """``/v5/asset/coin/query-info`` (ccxt's load_markets reads it when it has keys): no chains."""
    coins = [QUOTE] + sorted({i.base for i in state.instruments.values()})
    return {"rows": [{"name": c, "coin": c, "remainAmount": "1000000", "chains": []} for c in coins]}


# --------------------------------------------------------------------------- HTTP layer


def _wire(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


async def _read(request: Request) -> tuple[dict[str, str], str, str]:
    query = request.scope.get("query_string", b"").decode()  # raw, exactly as signed
    params = dict(parse_qsl(query, keep_blank_values=True))
    body = (await request.body()).decode() if request.method == "POST" else ""
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            raise BybitError(10001, "params error: the request body is not JSON") from None
        if not isinstance(data, dict):
            raise BybitError(10001, "params error: the request body is not a JSON object")
        params.update({k: _wire(v) for k, v in data.items()})
    return params, query, body


def _check_auth(sim: BybitSim, request: Request, query: str, body: str) -> None:
    """V5 HMAC auth: X-BAPI-SIGN = hex HMAC-SHA256(secret, timestamp + apiKey + recvWindow + (the
    query string of a GET | the JSON body of a POST))."""
    h = request.headers
    key, ts, sign = h.get("X-BAPI-API-KEY", ""), h.get("X-BAPI-TIMESTAMP", ""), h.get("X-BAPI-SIGN", "")
    window = h.get("X-BAPI-RECV-WINDOW", "")
    if not (key and ts and sign):
        raise BybitError(10001, f"empty value: apiTimestamp[{ts}] apiKey[{key}] apiSignature[{sign}]: "
                                "openapi sign params error!")
    if not hmac.compare_digest(key.encode(), sim.state.api_key.encode()):
        raise BybitError(10003, "API key is invalid.", 401)
    if sim.check_recv_window:
        now = int(time.time() * 1000)
        try:
            stamp, rw = int(ts), int(window or 5000)
        except ValueError:
            stamp, rw = -1, 5000
        if not now - rw <= stamp < now + 1000:
            raise BybitError(10002, "invalid request, please check your server timestamp or recv_window param. "
                                    f"req_timestamp[{ts}],server_timestamp[{now}],recv_window[{rw}]")
    payload = ts + key + window + (body if request.method == "POST" else query)
    if not sim.state.check_signature(payload, sign):
        raise BybitError(10004, f"error sign! origin_string[{payload}]")


def build_app(state: SimState, funding_spans: dict[str, tuple[int, int]] | None = None,
              check_recv_window: bool = True) -> Starlette:
    """The HTTP face of ``state``: Bybit V5 paths plus ``/_sim/*`` admin endpoints."""
    sim = BybitSim(state, funding_spans, check_recv_window)
    api = sim.api

    def envelope(result: Any, code: int = 0, msg: str = "OK", ext: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": ext or {}, "time": state.ms}

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
                return JSONResponse(envelope({}, 10006, "Too many visits!"),
                                    headers={"X-Bapi-Limit-Status": "0", "X-Bapi-Limit": "10"})
            try:
                params, query, body = await _read(request)
                if signed:
                    _check_auth(sim, request, query, body)
                result = handler(params)
                if inspect.isawaitable(result):
                    result = await result
            except (BybitError, BinanceError) as err:
                e = err if isinstance(err, BybitError) else translate(err, ORDER_CODES)
                return JSONResponse(envelope({}, e.code, e.msg, e.ext), e.status)
            except (ValueError, KeyError, TypeError) as e:
                return JSONResponse(envelope({}, 10001, f"params error: {e}"))
            msg = "OK"
            if isinstance(result, tuple):
                result, msg = result
            return JSONResponse(envelope(result, msg=msg))

        return endpoint

    async def create(p: dict[str, str]) -> Any:
        f = state.faults
        with state.lock:
            reject = f.take("reject_next")
            partial = f.partial_fraction if not reject and f.take("partial_fill_next") else None
            delay = f.timeout_delay_s if not reject and f.take("timeout_after_execute_next") else 0.0
        if reject:
            code = f.reject_code or (170131 if p.get("category") == "spot" else 110007)
            raise BybitError(code, f.reject_msg or ("Insufficient balance." if code == 170131
                                                    else "ab not enough for new order"))
        out = api.create_order(p, partial)
        if delay:
            await asyncio.sleep(delay)
        return out

    def cancel(p: dict[str, str]) -> Any:
        raise BybitError(110001, "Order does not exist.")  # market orders never rest

    def api_route(method: str, path: str, handler: Callable[[dict[str, str]], Any], signed: bool = False) -> Route:
        return Route(path, exchange(handler, signed), methods=[method])

    routes = [
        api_route("GET", "/v5/market/time", lambda p: {"timeSecond": str(state.t), "timeNano": str(state.t * 10**9)}),
        api_route("GET", "/v5/system/status", lambda p: {"list": []}),
        api_route("GET", "/v5/market/instruments-info", api.instruments),
        api_route("GET", "/v5/market/tickers", api.tickers),
        api_route("GET", "/v5/market/orderbook", api.orderbook),
        api_route("GET", "/v5/market/kline", lambda p: api.kline(p, "last")),
        api_route("GET", "/v5/market/mark-price-kline", lambda p: api.kline(p, "mark")),
        api_route("GET", "/v5/market/index-price-kline", lambda p: api.kline(p, "index")),
        api_route("GET", "/v5/market/funding/history", api.funding_history),
        api_route("POST", "/v5/order/create", create, True),
        api_route("POST", "/v5/order/cancel", cancel, True),
        api_route("POST", "/v5/order/cancel-all", lambda p: {"list": [], "success": "1"}, True),
        api_route("GET", "/v5/order/realtime", api.order_realtime, True),
        api_route("GET", "/v5/order/history", api.order_history, True),
        api_route("GET", "/v5/execution/list", api.executions, True),
        api_route("GET", "/v5/position/list", api.position_list, True),
        api_route("POST", "/v5/position/set-leverage", api.set_leverage, True),
        api_route("POST", "/v5/position/add-margin", api.add_margin, True),
        api_route("POST", "/v5/account/set-margin-mode", api.set_margin_mode, True),
        api_route("GET", "/v5/account/info", lambda p: api.account_info(), True),
        api_route("GET", "/v5/account/wallet-balance", api.wallet_balance, True),
        api_route("GET", "/v5/account/fee-rate", api.fee_rate, True),
        api_route("GET", "/v5/user/query-api", lambda p: _query_api(state), True),
        api_route("GET", "/v5/asset/coin/query-info", lambda p: _coin_info(state), True),
    ]

    async def admin_deposit(request: Request) -> Response:
        """``{"asset": "USDT" | a coin, "amount": x}``: USDT to the unified wallet, a coin to spot."""
        d = await request.json()
        try:
            asset = str(d.get("asset", QUOTE))
            state.deposit("futures" if asset == QUOTE else "spot", asset, float(d["amount"]))
        except (KeyError, ValueError, TypeError) as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"wallet_usdt": state.total_usdt()})

    async def not_found(request: Request) -> Response:
        with state.lock:
            state.unknown_paths.append(f"{request.method} {request.url.path}")
        return JSONResponse(envelope({}, 10017, f"route not found: {request.method} {request.url.path}"), 404)

    routes += [
        *admin_routes(state, sim.snapshot),
        Route("/_sim/deposit", admin_deposit, methods=["POST"]),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- running it


def start_bybit_sim(host: str = "127.0.0.1", port: int = 0, *, check_recv_window: bool = True,
                    **state_kwargs: Any) -> SimServer:
    """Start a Bybit simulator on a background thread; ``state_kwargs`` go to `make_state` (``funding``,
    ``funding_overrides``, ``usdt`` / ``spot_usdt`` + ``futures_usdt``, then `SimState`'s own)."""
    state, spans = make_state(**state_kwargs)
    return serve_app(build_app(state, spans, check_recv_window), state, host, port, "bybit-sim")


@contextlib.contextmanager
def running_bybit_sim(**kwargs: Any) -> Iterator[SimServer]:
    """``with running_bybit_sim(funding="bybit-shipped") as sim:`` → ``sim.url``, ``sim.state``, ``sim.stop()``."""
    sim = start_bybit_sim(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m basis_mcp.sim.bybit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port (printed)")
    ap.add_argument("--api-key", default=os.environ.get("BASIS_SIM_API_KEY", "sim-api-key"))
    ap.add_argument("--secret", default=os.environ.get("BASIS_SIM_SECRET", "sim-secret"))
    ap.add_argument("--start", default="2024-03-15T00:00:00Z", help="simulated start time (ISO-8601 or epoch s)")
    ap.add_argument("--usdt", type=float, default=200_000.0, help="the unified wallet's USDT")
    ap.add_argument("--extra-symbols", type=int, default=0)
    ap.add_argument("--margin-mode", choices=["cross", "isolated"], default="cross")
    ap.add_argument("--funding", choices=FUNDING_SOURCES, default="default")
    ap.add_argument("--no-recv-window-check", action="store_true", help="accept any X-BAPI-TIMESTAMP")
    args = ap.parse_args(argv)
    state, spans = make_state(
        funding=args.funding, usdt=args.usdt, start=args.start, api_key=args.api_key, secret=args.secret,
        extra_symbols=args.extra_symbols, default_margin_type=ISOLATED if args.margin_mode == "isolated" else CROSSED,
    )
    sock = _bind(args.host, args.port)
    print(json.dumps({"url": f"http://{args.host}:{sock.getsockname()[1]}", "t": state.t}), flush=True)
    uvicorn.Server(_config(build_app(state, spans, not args.no_recv_window_check))).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
