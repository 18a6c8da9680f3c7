"""Live execution over ccxt: real orders, only with the operator's explicit ``--live`` and keys.

- isolated margin and leverage are set per symbol before its first order;
- every order carries the desk's client order id (ccxt maps ``clientOrderId`` per venue);
- perp closes are ``reduceOnly``; spot closes only sell what the position holds;
- 429 / rate limit: the venue refused before executing, so the same order (same client id)
  is retried with backoff; 5xx or a timeout: the outcome is unknown, so `VenueTimeout` is
  raised and the desk looks the order up by its client id instead of resending;
- ccxt's rate limiter is on; reads retry transient errors with exponential backoff;
- every error is mapped to a desk error with secrets scrubbed (`live.errors`).

Bybit (V5, a unified trading account) differs from Binance where noted (``_bybit`` branches):
- one USDT wallet pays spot and margins perps: balances are one read, not spot + futures;
- an order's answer carries its ids only: the order is read back (``/v5/order/realtime`` by
  ``orderId``) until it is final; a read that fails leaves the outcome unknown (`VenueTimeout`),
  never a resend (Bybit refuses a reused ``orderLinkId`` anyway);
- lookup by client id asks ``orderLinkId`` (realtime: the last 500 orders, then the order history):
  ccxt's ``fetch_order`` would send ``orderId=None``;
- funding comes from ``/v5/execution/list`` (``execType=Funding``), paged by cursor inside Bybit's
  7-day windows; ``execFee`` is what the account PAID (the sign is flipped for the desk), and each
  row carries its own rate (``feeRate``) and mark;
- setting the leverage it already has answers 110043 "not modified": success;
- a position's isolated wallet is ``positionBalance`` (ccxt's ``collateral`` adds unrealised P&L);
- margin is added with ``/v5/position/add-margin`` (ccxt's bybit has no ``add_margin``).

Hyperliquid (perps only, USDC, hourly funding; a wallet key signs every action) goes through
`basis_mcp.live.hyperliquid` (``_hl`` hooks): a spot or dated leg is ``bad_market``; market orders carry the
feed's mid (ccxt sends an Ioc limit 5 % through it); the client id becomes a deterministic 128-bit ``cloid``,
so a lost answer is looked up with ``orderStatus`` and never resent; fees come from the order's fills,
funding from ``userFunding`` (received +), positions and cash (``withdrawable`` USDC, under the desk's
``USDT`` key) from ``clearinghouseState``, liquidations from the fills that carry ``liquidation``.

OKX (V5, a unified trading account; spot, swaps and USDT-margined quarterlies) goes through `basis_mcp.live.okx`
(``_okx`` hooks): ccxt's swap and futures amounts are contracts (``ctVal`` coins each), converted there and only
there; the client id becomes OKX's (letters and digits); one ``set-leverage`` call sets isolated margin and the
leverage; orders say ``tdMode=isolated`` (spot ``cash``) and are read back until final (the answer is the ids);
one balance read; the position's wallet is ``margin``; funding and deliveries come from the account's bills
(``type`` 8 and 3); margin is added on ``/account/position/margin-balance``.

Deribit is market data only (`basis_mcp.live.deribit`): its futures are inverse (coin-margined) and the desk's
ledger is USD-linear, so every order, leverage or margin call, and a live start-up's key check, is refused
(``bad_market``) before anything is sent; the desk holds nothing there.

Binance USD-M quarterlies (``market="future"``, desk code ``BTC-260327``, ccxt ``BTC/USDT:USDT-260327``:
`LiveFeed.dated`) trade like perps: isolated margin and leverage per contract, ``reduceOnly`` closes, the
position's wallet is ``isolatedWallet``. A contract the feed does not list is refused (``bad_symbol``).
Once a contract has delivered, ccxt no longer knows it: its orders are looked up on the raw endpoint
(`basis_mcp.live.dated_orders`), and its delivery (a ``DELIVERED_SETTELMENT`` income row, the price from
``/futures/data/delivery-price``) comes out of `LiveVenue.liquidations` as a ``delivery`` event with a
deterministic id, so the desk books it once. The income row has no quantity: it is the position last
seen in the contract, else the net of the account's trades in it (after a restart).
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import ccxt

from basis_mcp.clock import Clock
from basis_mcp.config import Settings
from basis_mcp.costs import Market
from basis_mcp.dated import contract_code, is_contract, parse_contract
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.live import dated_orders, deribit
from basis_mcp.live import hyperliquid as hl
from basis_mcp.live import okx as okx_venue
from basis_mcp.live.errors import venue_error
from basis_mcp.live.feed import DATED_VENUES, LiveFeed
from basis_mcp.venue.base import (
    FundingEvent,
    LiquidationEvent,
    OrderRequest,
    OrderResult,
    PerpPosition,
    TickReport,
    VenueError,
    VenueTimeout,
    VenueUnavailable,
)

READ_RETRIES = 3
ORDER_RATE_LIMIT_RETRIES = 3
FINAL = ("closed", "canceled", "rejected", "expired")  # ccxt order statuses after which nothing more fills
ORDER_POLL_S = 5.0  # how long a Bybit order is read back for before its outcome counts as unknown
BYBIT_WEEK_MS = 7 * 86_400_000  # /v5/execution/list answers at most 7 days a request
BYBIT_EXEC_PAGE = 100  # ... and at most 100 rows a page
FUNDING_LOOKBACK_S = 30 * 86_400  # a first read (no cursor yet) looks this far back
BYBIT_NOT_MODIFIED = "110043"  # set-leverage to the leverage it already has


class LiveVenue:
    remote = True  # every read is a request to the exchange: the desk reads heavy history sparingly
    def __init__(self, venue: str, exchange: Any, feed: LiveFeed, settings: Settings, clock: Clock):
        self.name = f"live:{venue}"
        self.venue = venue
        self.ex = exchange
        self.feed = feed
        self.settings = settings
        self.clock = clock
        self._configured: dict[str, float] = {}
        self._backoff_s = 0.25
        self._cache: dict[str, tuple[float, Any]] = {}
        self._bybit = venue == "bybit"
        self._hl = venue == "hyperliquid"  # perps only, a wallet signs: `basis_mcp.live.hyperliquid`
        if self._hl:
            self.markets = frozenset({"perp"})
        if venue in DATED_VENUES:  # USD-M quarterlies (Binance): the calendar spread's dated leg
            self.markets = frozenset({"spot", "perp", "future"})
        self._future_seen: dict[str, float] = {}  # contract code -> signed position last read (a delivery's quantity)
        self._okx = venue == "okx"  # contracts, clOrdId, bills: `basis_mcp.live.okx`
        self._deribit = venue == deribit.VENUE  # inverse futures: market data only, nothing is ever sent
        if self._deribit:
            self.markets = frozenset()

    # Account reads are cached briefly and dropped on every order or margin change: one watchdog
    # tick reads balances and positions once (2 + 1 requests), not once per check.
    BALANCES_TTL_S = 10.0
    POSITIONS_TTL_S = 1.0

    async def _cached(self, key: str, ttl: float, fetch) -> Any:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        value = await fetch()
        self._cache[key] = (time.monotonic(), value)
        return value

    def _invalidate(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ plumbing

    async def _read(self, what: str, fn, *args, **kwargs) -> Any:
        """A read with retries and backoff on transient errors."""
        delay = self._backoff_s
        for attempt in range(READ_RETRIES):
            try:
                return await fn(*args, **kwargs)
            except (ccxt.NetworkError, ccxt.RateLimitExceeded) as e:
                if attempt == READ_RETRIES - 1:
                    raise venue_error(e, self.venue, what) from None
                await anyio.sleep(delay)
                delay *= 2
            except Exception as e:  # noqa: BLE001
                raise venue_error(e, self.venue, what) from None
        raise VenueUnavailable(f"{self.venue} {what}: no answer")

    async def verify_credentials(self) -> None:
        """Fail at start-up, before anything is sent, if the venue rejects the keys."""
        if self._deribit:
            raise deribit.refusal("live trading")
        if self._okx:
            return await okx_venue.verify_credentials(self)
        if self._hl:
            return await hl.verify_credentials(self)
        await self._read("check API keys (spot balance)", self.ex.fetch_balance)
        if not self._bybit:  # a unified account has one wallet: one read
            await self._read("check API keys (futures balance)", self.ex.fetch_balance, {"type": "future"})

    markets = frozenset({"spot", "perp"})  # what this venue trades through ccxt (a leg on anything else is refused)

    def _unified(self, symbol: str, market: Market) -> str:
        if self._deribit:
            raise deribit.refusal(f"a {market} leg on {symbol}")
        if market not in self.markets:
            raise VenueError(f"{market} is not traded on {self.name}", "bad_market")
        if market == "future":
            unified = self.feed.dated.get(symbol)
            if unified is None:
                listed = ", ".join(sorted(self.feed.dated)) or "none"
                raise VenueError(f"{symbol}: not listed on {self.name} (listed quarterlies: {listed})", "bad_symbol")
            return unified
        return self.feed.spot_symbol(symbol) if market == "spot" else self.feed.perp_symbol(symbol)

    def _mid(self, symbol: str, market: Market, fallback: float = 0.0) -> float:
        """The mid the desk compares a fill with: spot's, or the perp's / the quarterly's mark; ``fallback``
        when there is none (a delivered contract)."""
        try:
            snap = self.feed.snapshot(symbol)
        except MarketDataUnavailable:
            return fallback
        return snap.spot if market == "spot" else snap.perp

    def _spot_step(self, symbol: str) -> float:
        m = self.ex.markets.get(self.feed.spot_symbol(symbol)) or {}
        return float((m.get("precision") or {}).get("amount") or 1e-8)

    def dust_qty(self, symbol: str) -> float:
        """Spot left over below what the venue lets you sell (lot step or minimum notional)."""
        m = self.ex.markets.get(self.feed.spot_symbol(symbol)) or {}
        min_cost = float(((m.get("limits") or {}).get("cost") or {}).get("min") or 0.0)
        try:
            price = self.feed.snapshot(symbol).spot
        except Exception:  # noqa: BLE001
            price = 0.0
        return max(self._spot_step(symbol), min_cost / price if price else 0.0) * 1.000001

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ Venue API

    async def set_leverage(self, symbol: str, leverage: float) -> None:
        """Isolated margin and ``leverage`` on the perp of a coin, or on a dated contract (``BTC-260327``)."""
        if self._configured.get(symbol) == leverage:
            return
        self._invalidate()
        perp = self._unified(symbol, "future" if is_contract(symbol) else "perp")
        if self._okx:  # one set-leverage call: isolated margin and the leverage, per instrument
            await okx_venue.set_leverage(self, perp, leverage)
            self._configured[symbol] = leverage
            return
        if self._hl:  # one updateLeverage action, isolated
            await hl.set_leverage(self, perp, leverage)
            self._configured[symbol] = leverage
            return
        try:
            await self.ex.set_margin_mode("isolated", perp)
        except ccxt.MarginModeAlreadySet:
            pass
        except ccxt.BaseError as e:
            if "No need to change margin type" not in str(e):
                raise venue_error(e, self.venue, "set isolated margin") from None
        try:
            await self.ex.set_leverage(int(leverage), perp)
        except ccxt.BaseError as e:
            if not (self._bybit and BYBIT_NOT_MODIFIED in str(e)):  # Bybit: already at that leverage
                raise venue_error(e, self.venue, f"set leverage {leverage:g}x") from None
        self._configured[symbol] = leverage

    async def place_order(self, req: OrderRequest) -> OrderResult:
        self._invalidate()
        try:
            res = await self._place_order(req)
        finally:
            self._invalidate()
        if req.market == "future" and res.filled_qty and req.symbol in self._future_seen:  # until positions are read again
            step = res.filled_qty if req.side == "buy" else -res.filled_qty
            self._future_seen[req.symbol] = round(self._future_seen[req.symbol] + step, 12)
        return res

    async def _place_order(self, req: OrderRequest) -> OrderResult:
        sym = self._unified(req.symbol, req.market)
        params: dict[str, Any] = hl.order_params(req) if self._hl else {"clientOrderId": req.client_order_id}
        if req.market in ("perp", "future") and req.reduce_only:
            params["reduceOnly"] = True
        snap = self.feed.snapshot(req.symbol)
        mid = snap.spot if req.market == "spot" else snap.perp  # a quarterly's snapshot: perp is its mark
        qty = req.quantity
        if req.market == "spot" and req.side == "buy" and self.venue in ("binance", "bybit", "okx"):
            # Binance, Bybit and OKX take a spot buy's fee in the coin bought: buy a fee more, so what arrives is ≥ the hedge
            step = self._spot_step(req.symbol)
            fee = self.settings.spec(req.symbol).spot_taker_fee
            qty = math.ceil(req.quantity / (1.0 - fee) / step - 1e-9) * step
            qty = float(self.ex.amount_to_precision(sym, qty))
        if self._okx:  # contracts for swaps and futures, OKX's client id, isolated margin
            qty, params = okx_venue.order_args(self, req, sym, qty, params)
        delay = self._backoff_s
        for attempt in range(ORDER_RATE_LIMIT_RETRIES + 1):
            try:
                o = await self.ex.create_order(sym, "market", req.side, qty, mid if self._hl else None, params)
                if self._hl:  # ccxt makes it an Ioc limit around the mid; fees from the order's fills
                    return await hl.result(self, o, req, sym, qty, mid)
                if self._bybit or self._okx:
                    break  # the answer is the ids alone: read the order back below
                return self._result(await self._with_fees(o, sym), req, mid)
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as e:  # refused before executing: safe to retry
                if attempt == ORDER_RATE_LIMIT_RETRIES:
                    raise venue_error(e, self.venue, "place order") from None
                await anyio.sleep(delay)
                delay *= 2
            except (ccxt.RequestTimeout, ccxt.ExchangeNotAvailable, ccxt.NetworkError) as e:
                raise VenueTimeout(str(venue_error(e, self.venue, "place order"))) from None  # unknown outcome
            except ccxt.BaseError as e:
                raise venue_error(e, self.venue, "place order") from None
        else:
            raise VenueUnavailable("unreachable")
        if self._okx:  # back in coins; the order carries its fee
            return self._result(okx_venue.in_coins(self, await self._settled_order(o, sym), sym), req, mid)
        return self._result(await self._with_fees(await self._settled_order(o, sym), sym), req, mid)

    async def _settled_order(self, ack: dict[str, Any], unified: str) -> dict[str, Any]:
        """Bybit: read an acknowledged order back until it is final. The order was accepted, so
        any failure here leaves its outcome unknown: `VenueTimeout`, and the desk looks it up by
        its client id (never a resend)."""
        if ack.get("status") in FINAL:
            return ack
        delay, deadline = 0.05, time.monotonic() + ORDER_POLL_S
        while True:
            try:
                o = await self._read("read the order back", self.ex.fetch_order, ack["id"], unified)
            except VenueError as e:
                if e.code != "order_not_found":  # not yet visible: keep asking until the deadline
                    raise VenueTimeout(str(e)) from None
                o = ack
            if o.get("status") in FINAL or time.monotonic() >= deadline:
                if o.get("status") not in FINAL:
                    raise VenueTimeout(f"{self.venue} order {ack.get('id')} not final after {ORDER_POLL_S:g} s")
                return o
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _with_fees(self, o: dict[str, Any], unified: str) -> dict[str, Any]:
        """Futures order responses (and any order looked up later) carry no commission: read the
        order's trades for it, so the ledger records the fee the venue actually charged."""
        if o.get("fee") or o.get("fees") or not float(o.get("filled") or 0.0):
            return o
        try:
            trades = await self._read("order trades", self.ex.fetch_my_trades, unified, None, None, {"orderId": o.get("id")})
        except VenueError:
            return o  # _result then values the fee at the taker rate
        fees = [t["fee"] for t in trades if t.get("fee") and str(t.get("order")) == str(o.get("id"))]
        return {**o, "fees": fees} if fees else o

    def _result(self, o: dict[str, Any], req: OrderRequest, mid: float) -> OrderResult:
        """The fill as the desk records it: quantity is what changed hands net of any fee taken in the
        base coin, and every fee is in USD, so the ledger's cash flows equal the venue's."""
        filled = float(o.get("filled") or 0.0)
        avg = float(o.get("average") or o.get("price") or 0.0)
        fee = 0.0
        base_fee = 0.0
        fees = o.get("fees") or ([o["fee"]] if o.get("fee") else [])
        if not fees and filled:  # the venue told us nothing: value it at the taker rate
            fee = filled * avg * self.settings.spec(req.symbol).costs.leg(req.market).taker_fee
        for f in fees:
            cost = float(f.get("cost") or 0.0)
            cur = f.get("currency")
            if cur in (None, self.feed.quote):
                fee += cost
            elif cur == req.symbol:
                fee += cost * avg
                base_fee += cost
            else:  # paid in another asset (e.g. BNB): value it at the taker rate instead
                leg = self.settings.spec(req.symbol).costs.leg(req.market)
                fee += filled * avg * leg.taker_fee
        # status from what the venue filled of what it was asked (gross; a spot buy was grossed up
        # by its fee), before the base-coin fee comes off the quantity the desk records
        status = o.get("status")
        asked = float(o.get("amount") or req.quantity)
        cut = (o.get("info") or {}).get("orderStatus") == "PartiallyFilledCanceled"  # Bybit: ccxt says "closed"
        if filled <= 0:
            st = "rejected" if status in ("canceled", "rejected", "expired") else "new"
        elif filled + 1e-12 < asked and (status != "closed" or cut):
            st = "partially_filled"
        else:
            st = "filled"
        if req.side == "buy" and base_fee:
            filled -= base_fee
        ts = (o.get("timestamp") or 0) / 1000.0 or self.clock.now()
        return OrderResult(req.client_order_id, str(o.get("id")), req.symbol, req.market, req.side, st, req.quantity,
                           filled, avg, fee, mid, ts, None if st != "rejected" else f"venue status {status}")

    async def fetch_order(self, client_order_id: str, symbol: str, market: Market) -> OrderResult | None:
        if self._deribit:
            return None  # no order was ever sent there
        if self._okx:  # by OKX's clOrdId; a delivered contract on its raw instId
            return await okx_venue.fetch_order(self, client_order_id, symbol, market)
        if market == "future" and symbol not in self.feed.dated:  # delivered (ccxt no longer knows it): the raw endpoint
            return await dated_orders.fetch_delisted_order(self, client_order_id, symbol)
        if self._hl:  # by the cloid derived from the client id
            return await hl.fetch_order(self, client_order_id, symbol, market)
        sym = self._unified(symbol, market)
        if self._bybit:
            o = await self._bybit_order_by_link_id(client_order_id, sym)
            if o is None:
                return None
        else:
            try:
                o = await self._read("look up order", self.ex.fetch_order, None, sym, {"clientOrderId": client_order_id})
            except VenueError as e:
                if e.code == "order_not_found":
                    return None
                raise
        side = o.get("side") or "buy"
        req = OrderRequest(client_order_id, symbol, market, side, float(o.get("amount") or o.get("filled") or 0.0),
                           bool(o.get("reduceOnly")))
        return self._result(await self._with_fees(o, sym), req, self._mid(symbol, market, float(o.get("average") or 0.0)))

    async def _bybit_order_by_link_id(self, client_order_id: str, unified: str) -> dict[str, Any] | None:
        """The order with this ``orderLinkId``: the realtime list (any of the last 500 orders,
        whatever their status), then the order history (the last 7 days)."""
        market = self.ex.market(unified)
        req = {"category": "spot" if market.get("spot") else "linear", "symbol": market["id"], "orderLinkId": client_order_id}
        resp = await self._read("look up order", self.ex.private_get_v5_order_realtime, req)
        rows = ((resp or {}).get("result") or {}).get("list") or []
        if rows:
            return self.ex.parse_order(rows[0], market)
        found = await self._read("look up order (history)", self.ex.fetch_closed_orders, unified, None, None,
                                 {"orderLinkId": client_order_id})
        found = [o for o in found if o.get("clientOrderId") == client_order_id]
        return found[0] if found else None

    async def _positions(self) -> dict[str, PerpPosition]:
        """Open perps by coin (``BTC``) and, where the venue lists them, open quarterlies by contract code
        (``BTC-260327``): the two never collide."""
        if self._deribit:
            return {}
        rows = await self._read("fetch positions", self.ex.fetch_positions)
        out: dict[str, PerpPosition] = {}
        for p in rows:
            m = self.ex.markets.get(p.get("symbol")) or {}
            contracts = float(p.get("contracts") or 0.0)
            dated = bool(m.get("future") and m.get("expiry") and "future" in self.markets)
            if not (m.get("swap") or dated) or m.get("quote") != self.feed.quote or contracts == 0:
                continue
            key = contract_code(m["base"], m["expiry"] / 1000.0) if dated else m["base"]
            signed = contracts if p.get("side") == "long" else -contracts
            info = p.get("info") or {}
            if self._bybit:  # the position's margin without unrealised P&L (ccxt's collateral includes it)
                wallet = float(info.get("positionBalance") or info.get("positionIM") or 0.0)
            elif self._hl:  # marginUsed − unrealizedPnl (marginUsed includes it)
                wallet = float(p.get("initialMargin") or 0.0)
            else:
                wallet = float(info.get("isolatedWallet") or info.get("isolatedMargin") or p.get("collateral") or 0.0)
            if self._okx:  # contracts × ctVal; the isolated wallet is ``margin``
                signed, wallet = okx_venue.position(p, m, signed)
            out[key] = PerpPosition(key, signed, float(p.get("entryPrice") or 0.0), wallet,
                                    float(p.get("leverage") or self._configured.get(key) or 0.0))
        self._note_futures(out)
        return out

    def _note_futures(self, held: dict[str, PerpPosition]) -> None:
        """Remember each quarterly's position: Binance's delivery row does not say how much was delivered.
        A contract gone from the positions before its expiry was closed (forgotten); one gone at or after
        its expiry keeps its last size until its delivery is read."""
        now = self.clock.now()
        for code in list(self._future_seen):
            if code not in held and parse_contract(code)[1] > now:
                del self._future_seen[code]
        self._future_seen.update({code: p.quantity for code, p in held.items() if is_contract(code)})

    async def fetch_perp_position(self, symbol: str) -> PerpPosition | None:
        return (await self._cached("positions", self.POSITIONS_TTL_S, self._positions)).get(symbol)

    async def fetch_position(self, market: str, symbol: str) -> PerpPosition | None:
        """The isolated position behind a leveraged leg: a perp (by coin) or a quarterly (by contract code)."""
        if market not in ("perp", "future") or market not in self.markets:
            return None
        return (await self._cached("positions", self.POSITIONS_TTL_S, self._positions)).get(symbol)

    async def held_instruments(self, market: str) -> list[str]:
        """Coins with an open perp here (how the desk finds a cross-exchange leg's position on a venue other
        than its primary one), or the contract codes of the open quarterlies (``market="future"``)."""
        if market not in ("perp", "future") or market not in self.markets:
            return []
        held = await self._cached("positions", self.POSITIONS_TTL_S, self._positions)
        return sorted(s for s in held if is_contract(s) == (market == "future"))

    async def fetch_balances(self) -> dict[str, float]:
        """Free spot balances; ``USDT`` is spot USDT plus the futures wallet's available USDT (on a Bybit
        unified account: the one wallet's USDT less the isolated margin, which the positions hold)."""
        return dict(await self._cached("balances", self.BALANCES_TTL_S, self._balances))

    async def _balances(self) -> dict[str, float]:
        if self._deribit:
            return {}
        if self._okx:  # one unified account: one read
            return await okx_venue.balances(self)
        if self._hl:  # the account's withdrawable USDC, as the desk's cash
            return await hl.balances(self)
        if self._bybit:  # one unified wallet: USDT free = wallet − isolated margin (in the positions' wallets)
            bal = await self._read("unified balance", self.ex.fetch_balance)
            return {k: float(v) for k, v in (bal.get("free") or {}).items() if v}
        spot = await self._read("spot balance", self.ex.fetch_balance)
        fut = await self._read("futures balance", self.ex.fetch_balance, {"type": "future"})
        out = {k: float(v) for k, v in (spot.get("free") or {}).items() if v}
        out[self.feed.quote] = out.get(self.feed.quote, 0.0) + float((fut.get("free") or {}).get(self.feed.quote) or 0.0)
        return out

    async def add_margin(self, symbol: str, amount_usd: float, market: Market = "perp") -> None:
        self._invalidate()
        unified = self._unified(symbol, market)
        if self._okx:
            return await okx_venue.add_margin(self, unified, amount_usd)
        try:
            if self._bybit:  # not in ccxt's bybit: the V5 endpoint itself (up to 4 decimals)
                m = self.ex.market(unified)
                margin = f"{math.floor(amount_usd * 1e4) / 1e4:.4f}"
                await self.ex.private_post_v5_position_add_margin({"category": "linear", "symbol": m["id"], "margin": margin})
                return
            await self.ex.add_margin(unified, amount_usd)
        except ccxt.BaseError as e:
            raise venue_error(e, self.venue, "add margin") from None

    async def funding_history(self, since: float) -> list[FundingEvent]:
        if self._deribit:
            return []
        if self._okx:  # the account's funding bills
            return await okx_venue.funding(self, since)
        if self._hl:
            return await hl.funding_history(self, since)
        if self._bybit:
            return await self._bybit_funding(since)
        rows = await self._read("funding history", self.ex.fetch_funding_history, None, int(since * 1000) + 1)
        out = []
        for r in rows:
            t = r["timestamp"] / 1000.0
            if t <= since:
                continue
            base = self.ex.markets.get(r.get("symbol"), {}).get("base") or str(r.get("symbol", "")).split("/")[0]
            rate, mark = next(((rt, mk) for tt, rt, mk in self.feed.settled.get(base, []) if tt == t), (0.0, 0.0))
            amount = float(r.get("amount") or 0.0)
            qty = -(amount / (mark * rate)) if rate and mark else 0.0
            out.append(FundingEvent(base, t, rate, mark, qty, amount))
        return out

    async def _bybit_funding(self, since: float) -> list[FundingEvent]:
        """Funding settlements after ``since``: every 7-day window up to now, every page of each.
        ``execFee`` is what the account paid; the row has the settlement's rate and mark."""
        now_ms = int(max(self.clock.now(), since) * 1000)
        start = max(int(since * 1000) + 1, now_ms - int(FUNDING_LOOKBACK_S * 1000))
        rows: list[dict[str, Any]] = []
        while start <= now_ms:
            req: dict[str, Any] = {"category": "linear", "execType": "Funding", "startTime": start,
                                   "endTime": start + BYBIT_WEEK_MS - 1, "limit": BYBIT_EXEC_PAGE}
            for _ in range(1000):
                resp = await self._read("funding history", self.ex.private_get_v5_execution_list, req)
                result = (resp or {}).get("result") or {}
                rows += result.get("list") or []
                cursor = result.get("nextPageCursor")
                if not cursor or not result.get("list"):
                    break
                req = {**req, "cursor": cursor}
            start += BYBIT_WEEK_MS
        out: dict[tuple[str, float], FundingEvent] = {}
        for r in rows:
            if r.get("execType", "Funding") != "Funding":
                continue
            t = int(r["execTime"]) / 1000.0
            m = self.ex.safe_market(r.get("symbol"), None, None, "swap")
            if t <= since or not m.get("swap") or m.get("quote") != self.feed.quote:
                continue
            amount = -float(r.get("execFee") or 0.0)  # paid → negative for the desk
            rate = float(r.get("feeRate") or 0.0)
            mark = float(r.get("markPrice") or r.get("execPrice") or 0.0)
            size = float(r.get("execQty") or 0.0)
            if rate and amount:  # receiving at a positive rate is a short (the side a payment implies, as on Binance)
                size = size or (abs(amount / (mark * rate)) if mark else 0.0)
                qty = math.copysign(size, -amount * rate)
            else:  # nothing to read the side from: the row's side is the position's
                qty = size if r.get("side") == "Buy" else -size
            out[(m["base"], t)] = FundingEvent(m["base"], t, rate, mark, qty, amount)
        return sorted(out.values(), key=lambda e: (e.time, e.symbol))

    async def liquidations(self, since: float, symbols: list[str] | None = None) -> list[LiquidationEvent]:
        """Forced closes of the desk's perps and quarterlies (asked per symbol: a fraction of the all-symbol
        weight), and the deliveries of its quarterlies (``symbols`` holding contract codes)."""
        if not symbols or self._deribit:
            return []
        if self._hl:  # the account's fills marked as its liquidations
            return await hl.liquidations(self, since, symbols)
        codes = [s for s in symbols if is_contract(s)]
        if self._okx:  # deliveries from the account's bills; ccxt's okx reads no liquidations
            return await okx_venue.deliveries(self, since, codes) if codes else []
        out = await dated_orders.deliveries(self, since, codes) if codes and "future" in self.markets else []
        if not self.ex.has.get("fetchMyLiquidations"):
            return out
        rows: list[dict[str, Any]] = []
        for sym in symbols:
            unified = self.feed.dated.get(sym) if is_contract(sym) else self._unified(sym, "perp")
            if unified is None:
                continue  # a delivered contract: ccxt no longer knows it (its delivery is read above)
            try:
                rows += await self.ex.fetch_my_liquidations(unified, int(since * 1000) + 1)
            except ccxt.BaseError:
                continue  # position reconciliation on every tick still catches a vanished leg
        for r in rows:
            m = self.ex.markets.get(r.get("symbol")) or {}
            dated = bool(m.get("future") and m.get("expiry"))
            sym = contract_code(m["base"], m["expiry"] / 1000.0) if dated else m.get("base") or ""
            qty = float(r.get("contracts") or 0.0)
            out.append(LiquidationEvent(sym, r["timestamp"] / 1000.0, -qty if r.get("side") == "buy" else qty,
                                        float(r.get("price") or 0.0), 0.0, str((r.get("info") or {}).get("clientOrderId") or r.get("id")),
                                        "future" if dated else "perp"))
        return sorted(out, key=lambda e: e.time)  # per-symbol answers interleave: oldest first, the cursor is the last

    def on_tick(self, t: float) -> TickReport:
        return TickReport(t, [], [])  # the real venue settles funding and liquidates on its own
