"""Live execution over ccxt: real orders, only with the operator's explicit ``--live`` and keys.

- isolated margin and leverage are set per symbol before its first order;
- every order carries the desk's client order id (ccxt maps ``clientOrderId`` per venue);
- perp closes are ``reduceOnly``; spot closes only sell what the position holds;
- 429 / rate limit: the venue refused before executing, so the same order (same client id)
  is retried with backoff; 5xx or a timeout: the outcome is unknown, so `VenueTimeout` is
  raised and the desk looks the order up by its client id instead of resending;
- ccxt's rate limiter is on; reads retry transient errors with exponential backoff;
- every error is mapped to a desk error with secrets scrubbed (`live.errors`).
"""

from __future__ import annotations

from typing import Any

import anyio
import ccxt

from basis_mcp.clock import Clock
from basis_mcp.config import Settings
from basis_mcp.costs import Market
from basis_mcp.live.errors import venue_error
from basis_mcp.live.feed import LiveFeed
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


class LiveVenue:
    def __init__(self, venue: str, exchange: Any, feed: LiveFeed, settings: Settings, clock: Clock):
        self.name = f"live:{venue}"
        self.venue = venue
        self.ex = exchange
        self.feed = feed
        self.settings = settings
        self.clock = clock
        self._configured: dict[str, float] = {}
        self._backoff_s = 0.25

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
        await self._read("check API keys (spot balance)", self.ex.fetch_balance)
        await self._read("check API keys (futures balance)", self.ex.fetch_balance, {"type": "future"})

    def _unified(self, symbol: str, market: Market) -> str:
        return self.feed.spot_symbol(symbol) if market == "spot" else self.feed.perp_symbol(symbol)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ Venue API

    async def set_leverage(self, symbol: str, leverage: float) -> None:
        if self._configured.get(symbol) == leverage:
            return
        perp = self._unified(symbol, "perp")
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
            raise venue_error(e, self.venue, f"set leverage {leverage:g}x") from None
        self._configured[symbol] = leverage

    async def place_order(self, req: OrderRequest) -> OrderResult:
        sym = self._unified(req.symbol, req.market)
        params: dict[str, Any] = {"clientOrderId": req.client_order_id}
        if req.market == "perp" and req.reduce_only:
            params["reduceOnly"] = True
        snap = self.feed.snapshot(req.symbol)
        mid = snap.spot if req.market == "spot" else snap.perp
        delay = self._backoff_s
        for attempt in range(ORDER_RATE_LIMIT_RETRIES + 1):
            try:
                o = await self.ex.create_order(sym, "market", req.side, req.quantity, None, params)
                return self._result(o, req, mid)
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as e:  # refused before executing: safe to retry
                if attempt == ORDER_RATE_LIMIT_RETRIES:
                    raise venue_error(e, self.venue, "place order") from None
                await anyio.sleep(delay)
                delay *= 2
            except (ccxt.RequestTimeout, ccxt.ExchangeNotAvailable, ccxt.NetworkError) as e:
                raise VenueTimeout(str(venue_error(e, self.venue, "place order"))) from None  # unknown outcome
            except ccxt.BaseError as e:
                raise venue_error(e, self.venue, "place order") from None
        raise VenueUnavailable("unreachable")

    def _result(self, o: dict[str, Any], req: OrderRequest, mid: float) -> OrderResult:
        filled = float(o.get("filled") or 0.0)
        avg = float(o.get("average") or o.get("price") or 0.0)
        fee = 0.0
        for f in o.get("fees") or ([o["fee"]] if o.get("fee") else []):
            cost = float(f.get("cost") or 0.0)
            cur = f.get("currency")
            if cur in (None, self.feed.quote):
                fee += cost
            elif cur == req.symbol:
                fee += cost * avg
            else:  # paid in another asset (e.g. BNB): value it at the taker rate instead
                leg = self.settings.spec(req.symbol).costs.leg(req.market)
                fee += filled * avg * leg.taker_fee
        status = o.get("status")
        if filled <= 0:
            st = "rejected" if status in ("canceled", "rejected", "expired") else "new"
        elif filled + 1e-12 < req.quantity:
            st = "partially_filled"
        else:
            st = "filled"
        ts = (o.get("timestamp") or 0) / 1000.0 or self.clock.now()
        return OrderResult(req.client_order_id, str(o.get("id")), req.symbol, req.market, req.side, st, req.quantity,
                           filled, avg, fee, mid, ts, None if st != "rejected" else f"venue status {status}")

    async def fetch_order(self, client_order_id: str, symbol: str, market: Market) -> OrderResult | None:
        sym = self._unified(symbol, market)
        try:
            o = await self._read("look up order", self.ex.fetch_order, None, sym, {"clientOrderId": client_order_id})
        except VenueError as e:
            if e.code == "order_not_found":
                return None
            raise
        side = o.get("side") or "buy"
        req = OrderRequest(client_order_id, symbol, market, side, float(o.get("amount") or o.get("filled") or 0.0),
                           bool(o.get("reduceOnly")))
        snap = self.feed.snapshot(symbol)
        return self._result(o, req, snap.spot if market == "spot" else snap.perp)

    async def fetch_perp_position(self, symbol: str) -> PerpPosition | None:
        perp = self._unified(symbol, "perp")
        rows = await self._read("fetch positions", self.ex.fetch_positions, [perp])
        for p in rows:
            if p.get("symbol") != perp:
                continue
            contracts = float(p.get("contracts") or 0.0)
            if contracts == 0:
                return None
            signed = contracts if p.get("side") == "long" else -contracts
            info = p.get("info") or {}
            wallet = float(info.get("isolatedWallet") or info.get("isolatedMargin") or p.get("collateral") or 0.0)
            return PerpPosition(symbol, signed, float(p.get("entryPrice") or 0.0), wallet, float(p.get("leverage") or 0.0))
        return None

    async def fetch_balances(self) -> dict[str, float]:
        """Free spot balances; ``USDT`` is spot USDT plus the futures wallet's available USDT."""
        spot = await self._read("spot balance", self.ex.fetch_balance)
        fut = await self._read("futures balance", self.ex.fetch_balance, {"type": "future"})
        out = {k: float(v) for k, v in (spot.get("free") or {}).items() if v}
        out[self.feed.quote] = out.get(self.feed.quote, 0.0) + float((fut.get("free") or {}).get(self.feed.quote) or 0.0)
        return out

    async def add_margin(self, symbol: str, amount_usd: float) -> None:
        try:
            await self.ex.add_margin(self._unified(symbol, "perp"), amount_usd)
        except ccxt.BaseError as e:
            raise venue_error(e, self.venue, "add margin") from None

    async def funding_history(self, since: float) -> list[FundingEvent]:
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

    async def liquidations(self, since: float) -> list[LiquidationEvent]:
        if not self.ex.has.get("fetchMyLiquidations"):
            return []
        try:
            rows = await self.ex.fetch_my_liquidations(None, int(since * 1000) + 1)
        except (ccxt.NotSupported, ccxt.BadRequest, ccxt.ExchangeError):
            return []  # position reconciliation on every tick still catches a vanished leg
        out = []
        for r in rows:
            base = self.ex.markets.get(r.get("symbol"), {}).get("base") or ""
            qty = float(r.get("contracts") or 0.0)
            out.append(LiquidationEvent(base, r["timestamp"] / 1000.0, -qty if r.get("side") == "buy" else qty,
                                        float(r.get("price") or 0.0), 0.0, str((r.get("info") or {}).get("clientOrderId") or r.get("id"))))
        return out

    def on_tick(self, t: float) -> TickReport:
        return TickReport(t, [], [])  # the real venue settles funding and liquidates on its own
