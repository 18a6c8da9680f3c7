"""A local Hyperliquid (perpetuals) server: ``POST /info`` as ccxt's ``hyperliquid`` client reads it.

ccxt's client, pointed here with ``make_exchange("hyperliquid", base_url=sim.url)``, loads markets
(``spotMeta`` for currencies, ``metaAndAssetCtxs`` for the perps: ``BTC/USDC:USDC``...), reads the
server time (``exchangeStatus``), funding rates and tickers (``metaAndAssetCtxs``: mark, oracle,
mid, impact prices and the current hourly ``funding``), the funding history (``fundingHistory``),
hourly candles (``candleSnapshot``), order books (``l2Book``) and mids (``allMids``), in Hyperliquid's
wire format: numbers as strings, coins named ``"BTC"``, times in ms, a perp's asset index its
position in ``meta.universe``.

Prices and time come from a `basis_mcp.sim.state.SimState` (composition: the same shipped hourly
data and clock as the Binance simulator), with every instrument's funding interval set to 1 h:

- ``oraclePx`` = the data's spot price (Hyperliquid's oracle is a weighted median of CEX spot
  prices, Binance among them), ``markPx`` = the data's mark, ``midPx`` = the perp price,
  ``impactPxs`` = the perp bid / ask (the data's price ± `DEFAULT_SPECS` half-spread), ``premium`` =
  (perp − oracle) / oracle; prices have 5 significant figures, as Hyperliquid's do.
- Funding settles hourly. The hourly rate is derived from the shipped 8-hour Binance rates: the
  rate of the Binance settlement covering the hour, divided by 8 (`Instrument.funding_rate` with a
  1 h interval). ``funding`` in the asset contexts is the rate that settles at the end of the
  current hour.
- ``fundingHistory``: settlements with ``startTime <= time <= endTime`` (default: now), ascending,
  at most 500 rows a call (page by ``startTime = last time + 1``), as the real API pages.
- ``candleSnapshot``: ``1h`` only; the candles that have closed, opened at or after ``startTime``
  and at or before ``endTime``, ascending, at most 5000 a call. A candle opened at T opens at the
  perp price observed at T and closes at the one observed at T + 1 h (high / low: the larger /
  smaller of the two); volume 0. The candle still open is not served.
- ``l2Book``: 20 levels a side of the Binance simulator's perp book (`MarketDataApi.depth`).

Trading and accounts (`basis_mcp.sim.hyperliquid_exchange`): ``POST /exchange`` orders (Ioc / Gtc / Alo
limits, ``cloid``, reduce-only), cancels, ``updateLeverage``, ``updateIsolatedMargin`` and builder-fee
approval, each EIP-712 signature checked against the one wallet the server accepts (``wallet=``; any other
signer: "User or API Wallet 0x... does not exist."), and the user-state ``/info`` types
(``clearinghouseState``, ``openOrders``, ``orderStatus``, ``userFills``, ``userFillsByTime``, ``userFunding``),
with hourly funding paid on open positions as the clock moves. The account holds ``usdc`` (100,000).
Not simulated: spot, vaults and sub-accounts, transfers and withdrawals, TWAP and trigger orders; those
actions and the remaining user types (``historicalOrders``, ``userFees``, ``portfolio``...) answer
``{"status": "err", "response": "simulator: ... not simulated ..."}``, which ccxt raises as
``ExchangeError`` naming the simulator. Unknown request types answer HTTP 422 "Failed to deserialize the
JSON body into the target type", as Hyperliquid does.

Admin endpoints (JSON): ``GET/POST /_sim/time`` (``{"t": ...}`` or ``{"advance_s": ...}``),
``GET/DELETE /_sim/requests`` (counts per ``"POST /info <type>"``), ``GET/POST /_sim/faults``
(``http_5xx_next``, ``rate_limit_next``, ``latency_ms``; on orders ``reject_next``, ``partial_fill_next``,
``timeout_after_execute_next``: executed, answered ``timeout_delay_s`` late). Time moving settles each hour.

Run in-process: ``with running_hyperliquid_sim(wallet=ADDRESS) as sim: ... sim.url, sim.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from basis_mcp.history import HOUR
from basis_mcp.sim.binance import SimServer, serve_app
from basis_mcp.sim.hyperliquid_exchange import BadBody, HyperliquidExchange, HyperliquidState
from basis_mcp.sim.instruments import Instrument
from basis_mcp.sim.market_data import MarketDataApi
from basis_mcp.sim.state import SimState

__all__ = ["HyperliquidInfo", "build_hyperliquid_app", "running_hyperliquid_sim", "start_hyperliquid_sim"]

FUNDING_PAGE = 500  # fundingHistory rows per call
CANDLE_PAGE = 5000  # candleSnapshot candles per call
BOOK_LEVELS = 20  # l2Book levels per side
SZ_DECIMALS = {"BTC": 5, "ETH": 4, "SOL": 2}  # Hyperliquid's size decimals; others: the data's perp step
MAX_LEVERAGE = {"BTC": 40, "ETH": 25, "SOL": 20}
BAD_BODY = "Failed to deserialize the JSON body into the target type"
USER_TYPES = {
    "clearinghouseState", "spotClearinghouseState", "openOrders", "frontendOpenOrders", "orderStatus",
    "historicalOrders", "userFills", "userFillsByTime", "userFunding", "userFees", "userAbstraction",
    "userNonFundingLedgerUpdates", "userRateLimit", "subAccounts", "portfolio", "twapHistory",
}
NOT_SIMULATED = "simulator: this Hyperliquid request is not simulated"


class HyperliquidError(Exception):
    """An answer other than a 200 with the requested data."""

    def __init__(self, status: int, body: Any):
        super().__init__(str(body))
        self.status, self.body = status, body

    def response(self) -> Response:
        if isinstance(self.body, str):
            return PlainTextResponse(self.body, self.status)
        return JSONResponse(self.body, self.status)


def _bad() -> HyperliquidError:
    return HyperliquidError(422, BAD_BODY)


def _fmt(x: float, decimals: int) -> str:
    s = f"{x + 0.0:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0")
        s = s + "0" if s.endswith(".") else s
    return "0.0" if s in ("-0.0", "0.0") else s


def _px(x: float, sz_decimals: int) -> str:
    """A perp price as Hyperliquid writes it: 5 significant figures, at most 6 − szDecimals decimals."""
    if not x:
        return "0.0"
    d = max(0, min(6 - sz_decimals, 4 - math.floor(math.log10(abs(x)))))
    return _fmt(round(x, d), d)


def _rate(x: float) -> str:
    return _fmt(x, 12)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise _bad()
    try:
        return int(v)
    except ValueError:
        raise _bad() from None


class HyperliquidInfo:
    """The public ``/info`` request types over one `SimState` (which it reads, never changes)."""

    def __init__(self, state: SimState):
        self.state = state
        self.depth = MarketDataApi(state)

    # ------------------------------------------------------------ the perps

    def coins(self) -> list[Instrument]:
        """The universe at the current time, in asset-index order (instruments with data now)."""
        return [i for i in self.state.instruments.values() if i.has_data(self.state.t)]

    def coin(self, name: Any) -> Instrument:
        for inst in self.state.instruments.values():
            if inst.base == name:
                return inst
        raise _bad()

    @staticmethod
    def sz_decimals(inst: Instrument) -> int:
        return SZ_DECIMALS.get(inst.base, inst.dec("perp"))

    def px(self, inst: Instrument, x: float) -> str:
        return _px(x, self.sz_decimals(inst))

    def meta(self) -> dict[str, Any]:
        return {
            "universe": [
                {"name": i.base, "szDecimals": self.sz_decimals(i), "maxLeverage": MAX_LEVERAGE.get(i.base, 20),
                 "marginTableId": MAX_LEVERAGE.get(i.base, 20)}
                for i in self.coins()
            ]
        }

    def premium(self, inst: Instrument, t: float) -> float:
        spot = inst.spot(t)
        return (inst.perp(t) - spot) / spot

    def asset_ctx(self, inst: Instrument) -> dict[str, Any]:
        t = self.state.t
        bid, mid, ask = inst.quote("perp", t)
        rate = inst.funding_rate(inst.next_funding(t)) or 0.0
        prev = inst.perp(t - 86_400) if inst.has_data(t - 86_400) else mid
        return {
            "funding": _rate(rate),
            "openInterest": "0.0",
            "prevDayPx": self.px(inst, prev),
            "dayNtlVlm": "0.0",
            "premium": _fmt(self.premium(inst, t), 8),
            "oraclePx": self.px(inst, inst.spot(t)),
            "markPx": self.px(inst, inst.mark(t)),
            "midPx": self.px(inst, mid),
            "impactPxs": [self.px(inst, bid), self.px(inst, ask)],
            "dayBaseVlm": "0.0",
        }

    def meta_and_asset_ctxs(self) -> list[Any]:
        return [self.meta(), [self.asset_ctx(i) for i in self.coins()]]

    @staticmethod
    def spot_meta() -> dict[str, Any]:
        """Only USDC, the perps' collateral: the desk uses no Hyperliquid spot market."""
        usdc = {"name": "USDC", "szDecimals": 8, "weiDecimals": 8, "index": 0,
                "tokenId": "0x6d1e7cde53ba9467b783cb7c530ce054", "isCanonical": True,
                "evmContract": None, "fullName": None}
        return {"universe": [], "tokens": [usdc]}

    def all_mids(self) -> dict[str, str]:
        return {i.base: self.px(i, i.quote("perp", self.state.t)[1]) for i in self.coins()}

    def exchange_status(self) -> dict[str, Any]:
        return {"specialStatuses": None, "time": self.state.ms}

    # ------------------------------------------------------------ history

    def funding_history(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        inst = self.coin(req.get("coin"))
        start_ms = _int(req.get("startTime"))
        end_ms = min(_int(req["endTime"]) if req.get("endTime") is not None else self.state.ms, self.state.ms)
        first = max(-(-start_ms // 1000), inst.series.t0)  # the first second at or after startTime
        rows: list[dict[str, Any]] = []
        T = inst.next_funding(first - 1)
        while T * 1000 <= end_ms and len(rows) < FUNDING_PAGE:
            rate = inst.funding_rate(T) if inst.has_data(T) else None
            if rate is not None:
                rows.append({"coin": inst.base, "fundingRate": _rate(rate),
                             "premium": _fmt(self.premium(inst, T), 8), "time": T * 1000})
            T += inst.interval_h * HOUR
        return rows

    def candle_snapshot(self, req: Any) -> list[dict[str, Any]]:
        if not isinstance(req, dict):
            raise _bad()
        inst = self.coin(req.get("coin"))
        if req.get("interval") != "1h":
            raise HyperliquidError(500, f"simulator: only 1h candles are served, not {req.get('interval')!r}")
        end = req.get("endTime")
        start_ms, end_ms = _int(req.get("startTime")), (self.state.ms if end is None else _int(end))
        t = max(-(-start_ms // (HOUR * 1000)) * HOUR, inst.series.t0)
        last_open = min(end_ms // 1000, self.state.t - HOUR)  # closed candles only
        arr, rows = inst.series.perp, []
        while t <= last_open and len(rows) < CANDLE_PAGE:
            i, j = inst._i(t), inst._i(t + HOUR)
            if i >= 0 and not (math.isnan(arr[i]) or math.isnan(arr[j])):
                o, c = float(arr[i]) * inst.scale, float(arr[j]) * inst.scale
                rows.append({"t": t * 1000, "T": (t + HOUR) * 1000 - 1, "s": inst.base, "i": "1h",
                             "o": self.px(inst, o), "c": self.px(inst, c), "h": self.px(inst, max(o, c)),
                             "l": self.px(inst, min(o, c)), "v": "0.0", "n": 0})
            t += HOUR
        return rows

    def l2_book(self, req: dict[str, Any]) -> dict[str, Any]:
        inst = self.coin(req.get("coin"))
        if not inst.has_data(self.state.t):
            return {"coin": inst.base, "time": self.state.ms, "levels": [[], []]}
        book = self.depth.depth("perp", inst.id, BOOK_LEVELS)

        def side(levels: list[list[str]]) -> list[dict[str, Any]]:
            return [{"px": _fmt(float(p), 2), "sz": q, "n": 1} for p, q in levels]

        return {"coin": inst.base, "time": self.state.ms, "levels": [side(book["bids"]), side(book["asks"])]}

    # ------------------------------------------------------------ dispatch

    def answer(self, body: Any) -> Any:
        """The answer to one ``/info`` request body (a JSON object with a ``type``)."""
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise _bad()
        kind = body["type"]
        if kind in USER_TYPES:
            raise HyperliquidError(200, {"status": "err", "response": f"{NOT_SIMULATED}: {kind}"})
        handlers: dict[str, Callable[[], Any]] = {
            "meta": self.meta,
            "metaAndAssetCtxs": self.meta_and_asset_ctxs,
            "spotMeta": self.spot_meta,
            "allMids": self.all_mids,
            "exchangeStatus": self.exchange_status,
            "fundingHistory": lambda: self.funding_history(body),
            "candleSnapshot": lambda: self.candle_snapshot(body.get("req")),
            "l2Book": lambda: self.l2_book(body),
        }
        if kind not in handlers:
            with self.state.lock:
                self.state.unknown_paths.append(f"POST /info {kind}")
            raise _bad()
        if body.get("dex"):  # HIP-3 builder dexes: none here
            return [{"universe": []}, []] if kind == "metaAndAssetCtxs" else []
        with self.state.lock:
            return handlers[kind]()


def hourly_state(**state_kwargs: Any) -> HyperliquidState:
    """A `HyperliquidState` (a `SimState` whose every instrument settles funding hourly: the 8-h data rates
    / 8); ``wallet`` and ``usdc`` go to it, the rest to `SimState`."""
    return HyperliquidState(**state_kwargs)


# --------------------------------------------------------------------------- HTTP layer


def build_hyperliquid_app(state: SimState) -> Starlette:
    """``POST /info``, ``POST /exchange`` and the ``/_sim/*`` admin endpoints."""
    info = HyperliquidInfo(state)
    trading = HyperliquidExchange(state, info) if isinstance(state, HyperliquidState) else None

    async def faulted() -> Response | None:
        f = state.faults
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        with state.lock:
            unavailable = f.take("http_5xx_next")
            limited = not unavailable and f.take("rate_limit_next")
        if unavailable:
            return PlainTextResponse("<html><body>502 Bad Gateway</body></html>", 502, media_type="text/html")
        if limited:
            return PlainTextResponse("null", 429)
        return None

    async def info_endpoint(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        kind = body.get("type") if isinstance(body, dict) else None
        state.count("POST", f"/info {kind}")
        if (fault := await faulted()) is not None:
            return fault
        try:
            if trading is not None and kind in trading.INFO_TYPES:
                return JSONResponse(trading.info_answer(body))
            return JSONResponse(info.answer(body))
        except HyperliquidError as e:
            return e.response()
        except (KeyError, TypeError, ValueError, BadBody):
            return _bad().response()

    async def exchange_endpoint(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            kind = (body.get("action") or {}).get("type")
        except (ValueError, AttributeError):
            body, kind = None, None
        state.count("POST", f"/exchange {kind}")
        if (fault := await faulted()) is not None:
            return fault
        if trading is None:
            return JSONResponse({"status": "err", "response": f"{NOT_SIMULATED}: action {kind!r} refused"})
        try:
            answer, delay = trading.exchange(body)
        except BadBody:
            return _bad().response()
        if delay:  # executed; the answer comes too late (timeout_after_execute_next)
            await asyncio.sleep(delay)
        return JSONResponse(answer)

    async def admin_time(request: Request) -> Response:
        if request.method == "POST":
            d = await request.json()
            try:
                settled = state.advance(d["advance_s"]) if "advance_s" in d else state.set_time(d["t"])
            except (KeyError, ValueError, TypeError) as e:
                return JSONResponse({"error": f"give 't' (epoch s or ISO) or 'advance_s': {e}"}, 400)
            return JSONResponse({"t": state.t, "funding": settled})
        return JSONResponse({"t": state.t})

    async def admin_requests(request: Request) -> Response:
        if request.method == "DELETE":
            state.reset_counts()
        return JSONResponse({"total": sum(state.requests.values()), "by_path": dict(state.requests),
                             "unknown": list(state.unknown_paths)})

    async def admin_faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                with state.lock:
                    state.faults.update(await request.json())
            except (ValueError, TypeError) as e:
                return JSONResponse({"error": str(e)}, 400)
        return JSONResponse(asdict(state.faults))

    async def not_found(request: Request) -> Response:
        with state.lock:
            state.unknown_paths.append(f"{request.method} {request.url.path}")
        return PlainTextResponse("Not Found", 404)

    return Starlette(routes=[
        Route("/info", info_endpoint, methods=["POST"]),
        Route("/exchange", exchange_endpoint, methods=["POST"]),
        Route("/_sim/time", admin_time, methods=["GET", "POST"]),
        Route("/_sim/requests", admin_requests, methods=["GET", "DELETE"]),
        Route("/_sim/faults", admin_faults, methods=["GET", "POST"]),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
    ])


# --------------------------------------------------------------------------- running it


def start_hyperliquid_sim(host: str = "127.0.0.1", port: int = 0, **state_kwargs: Any) -> SimServer:
    """Start the server on a background thread; ``state_kwargs`` go to `HyperliquidState` (``wallet``: the
    address whose signatures trade, ``usdc``; then `SimState`'s ``start``, ``extra_symbols``, ``histories``...).
    ``.url``, ``.state``, ``.stop()``."""
    state = hourly_state(**state_kwargs)
    return serve_app(build_hyperliquid_app(state), state, host, port, "hyperliquid-sim")


@contextlib.contextmanager
def running_hyperliquid_sim(**kwargs: Any) -> Iterator[SimServer]:
    """``with running_hyperliquid_sim(start="2024-03-15T00:00:00Z") as sim:`` → ``sim.url``, ``sim.state``."""
    sim = start_hyperliquid_sim(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()
