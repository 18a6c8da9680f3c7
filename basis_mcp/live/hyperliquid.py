"""Hyperliquid (perpetuals only, hourly funding, USDC): what `LiveVenue` does differently there, over ccxt's
``hyperliquid`` client (a wallet signs every action; reads are ``POST /info`` for the wallet's address).

- Markets: ``perp`` only (a spot or dated-future leg is refused by `LiveVenue` as ``bad_market``).
- Credentials: the balance read is unsigned, so start-up also sends one signed no-op, a cancel by a client
  id never used: "never placed" proves the key signs for the wallet; "User or API Wallet 0x... does not
  exist." is a wrong key (``auth``).
- Leverage: one ``updateLeverage`` action, isolated (``isCross`` false).
- Orders: ccxt turns a market order into an Ioc limit ``price × (1 ± 5 %)``, so the feed's mid is passed as
  the price. The desk's client order id becomes Hyperliquid's 128-bit ``cloid`` (`cloid`: ``0x`` + the
  first 16 bytes of its SHA-256), the same on every call, so an order whose answer was lost is found by
  ``orderStatus`` with that cloid, never sent twice. The order's answer (``filled``: size and average
  price) has no fee and no status: both come from the account's fills of that order (``userFills``;
  ``userFillsByTime`` from the order's time for a lookup); an Ioc that filled less than asked is
  ``partially_filled``.
- Positions: ``clearinghouseState``; a position's isolated wallet is ``marginUsed − unrealizedPnl``
  (ccxt's ``initialMargin``: ``marginUsed`` includes unrealised P&L).
- Balances: the account's USDC is its cash; what the desk can spend is ``withdrawable`` (the cross
  balance less cross margin; isolated margin sits in the positions), reported under the desk's cash key
  ``USDT`` (the desk counts cash in USD; USDC is taken 1:1).
- Margin: ``updateIsolatedMargin`` (ccxt's ``add_margin``).
- Funding: ``userFunding`` from the cursor, 500 rows a page; ``usdc`` is what the account received
  (+) or paid (−), as the desk books it; each row has the position (``szi``) and the hourly rate, and the
  price it was paid on (Hyperliquid's oracle) is ``usdc ÷ (−szi × rate)``.
- Liquidations: the account's fills that carry ``liquidation.liquidatedUser`` = the wallet
  (``userFillsByTime``), one event per fill, its id the fill's ``tid``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import ccxt

from basis_mcp.costs import Market
from basis_mcp.live.errors import scrub, venue_error
from basis_mcp.venue.base import FundingEvent, LiquidationEvent, OrderRequest, OrderResult, VenueError

FUNDING_PAGE = 500  # userFunding answers at most this many rows a request
FILLS_PAGE = 2000  # userFills / userFillsByTime
MAX_PAGES = 200
PROBE_CLOID = "0x" + "0" * 31 + "1"  # never used by the desk (cloids are SHA-256 prefixes)
WRONG_SIGNER = "User or API Wallet"


def cloid(client_order_id: str) -> str:
    """Hyperliquid's client order id for the desk's: ``0x`` + 32 hex digits, deterministic."""
    return "0x" + hashlib.sha256(client_order_id.encode()).hexdigest()[:32]


def _error(e: BaseException, venue: str, what: str) -> Exception:
    if WRONG_SIGNER in str(e):
        return VenueError(scrub(f"{venue} refused the wallet key while doing {what}: {e}"), "auth")
    return venue_error(e, venue, what)


async def verify_credentials(v: Any) -> None:
    await v._read("check the wallet (account state)", v.ex.fetch_balance)
    unified = v.feed.perp_symbol(v.feed.symbols[0] if v.feed.symbols else "BTC")
    try:
        await v.ex.cancel_order(None, unified, {"clientOrderId": PROBE_CLOID})
    except ccxt.OrderNotFound:
        return  # signed by the wallet's key: nothing to cancel, as expected
    except ccxt.BaseError as e:
        raise _error(e, v.venue, "check the wallet key (a signed no-op cancel)") from None


async def set_leverage(v: Any, unified: str, leverage: float) -> None:
    try:
        await v.ex.set_leverage(int(leverage), unified, {"marginMode": "isolated"})
    except ccxt.BaseError as e:
        raise _error(e, v.venue, f"set isolated leverage {leverage:g}x") from None


def order_params(req: OrderRequest) -> dict[str, Any]:
    params: dict[str, Any] = {"clientOrderId": cloid(req.client_order_id)}
    if req.reduce_only:
        params["reduceOnly"] = True
    return params


async def _order_fills(v: Any, oid: str, since_ms: int | None) -> list[dict[str, Any]]:
    """The account's fills of order ``oid`` (the newest 2000, or every page from ``since_ms``)."""
    if since_ms is None:
        rows = await v._read("order fills", v.ex.fetch_my_trades)
        return [t for t in rows if str(t.get("order")) == str(oid)]
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    start = since_ms
    for _ in range(MAX_PAGES):
        rows = await v._read("order fills", v.ex.fetch_my_trades, None, start)
        out.update({str(t["id"]): t for t in rows if str(t.get("order")) == str(oid)})
        new = {str(t["id"]) for t in rows} - seen
        seen |= new
        if len(rows) < FILLS_PAGE or not new:
            break
        start = _next_page(rows)
    return list(out.values())


def _next_page(rows: list[dict[str, Any]]) -> int:
    """Where the next page of a time-cursored read starts: AT the newest row's time, not after it. Rows
    sharing a millisecond (every coin's hourly funding, the fills of one liquidation) can straddle a page;
    starting after it would skip the rest. Rows come back again and collapse on their keys; a page that adds
    nothing new ends the read."""
    return max(int(r["timestamp"]) for r in rows)


def _with_fills(o: dict[str, Any], fills: list[dict[str, Any]], asked: float) -> dict[str, Any]:
    filled = sum(float(t["amount"]) for t in fills)
    out = {**o, "amount": asked}
    if fills and filled:
        out |= {"filled": filled, "average": sum(float(t["amount"]) * float(t["price"]) for t in fills) / filled,
                "fees": [t["fee"] for t in fills if t.get("fee")], "fee": None}
        out["timestamp"] = out.get("timestamp") or min(int(t["timestamp"]) for t in fills)  # an answer has no time
    if out.get("status") is None:  # an order's answer has no status: an Ioc is over once it answers
        out["status"] = "closed" if float(out.get("filled") or 0.0) + 1e-12 >= asked else "canceled"
    return out


async def result(v: Any, o: dict[str, Any], req: OrderRequest, unified: str, qty: float, mid: float) -> OrderResult:
    """The answer to an order (``filled``: size and average price), with its fees from the account's fills."""
    asked = float(v.ex.amount_to_precision(unified, qty))
    try:
        fills = await _order_fills(v, o.get("id"), None) if float(o.get("filled") or 0.0) else []
    except VenueError:
        fills = []  # `LiveVenue._result` values the fee at the taker rate
    return v._result(_with_fills(o, fills, asked), req, mid)


async def fetch_order(v: Any, client_order_id: str, symbol: str, market: Market) -> OrderResult | None:
    unified = v._unified(symbol, market)
    try:
        o = await v._read("look up order", v.ex.fetch_order, None, unified, {"clientOrderId": cloid(client_order_id)})
    except VenueError as e:
        if e.code == "order_not_found":
            return None
        raise
    asked = float(o.get("amount") or 0.0)
    fills = await _order_fills(v, o["id"], int(o.get("timestamp") or 0)) if float(o.get("filled") or 0.0) else []
    req = OrderRequest(client_order_id, symbol, market, o.get("side") or "buy", asked, bool(o.get("reduceOnly")))
    o = _with_fills(o, fills, asked)
    return v._result(o, req, v._mid(symbol, market, float(o.get("average") or 0.0)))


async def balances(v: Any) -> dict[str, float]:
    bal = await v._read("account state", v.ex.fetch_balance)
    free = float((bal.get("info") or {}).get("withdrawable") or (bal.get("free") or {}).get(v.feed.quote) or 0.0)
    return {"USDT": free}


def _base(v: Any, unified: Any) -> str | None:
    m = v.ex.markets.get(unified) or {}
    return m.get("base") if m.get("swap") and m.get("quote") == v.feed.quote else None


async def funding_history(v: Any, since: float) -> list[FundingEvent]:
    out: dict[tuple[str, float], FundingEvent] = {}
    seen: set[tuple[str, int]] = set()
    start = int(since * 1000) + 1
    for _ in range(MAX_PAGES):
        rows = await v._read("funding history", v.ex.fetch_funding_history, None, start)
        for r in rows:
            t, base = r["timestamp"] / 1000.0, _base(v, r.get("symbol"))
            delta = (r.get("info") or {}).get("delta") or {}
            if base is None or t <= since or delta.get("type", "funding") != "funding":
                continue
            amount, rate, szi = float(r.get("amount") or 0.0), float(r.get("rate") or 0.0), float(delta.get("szi") or 0.0)
            q = v.feed.q.get(base)
            price = amount / (-szi * rate) if szi and rate and amount else float(getattr(q, "mark", None) or 0.0)
            out[(base, t)] = FundingEvent(base, t, rate, price, szi, amount)
        keys = {(str(r.get("symbol")), int(r["timestamp"])) for r in rows} - seen
        seen |= keys
        if len(rows) < FUNDING_PAGE or not keys:
            break
        start = _next_page(rows)
    return sorted(out.values(), key=lambda e: (e.time, e.symbol))


async def liquidations(v: Any, since: float, symbols: list[str] | None) -> list[LiquidationEvent]:
    if not symbols:
        return []
    wallet = str(v.ex.walletAddress or "").lower()
    out: dict[str, LiquidationEvent] = {}
    seen: set[str] = set()
    start = int(since * 1000) + 1
    for _ in range(MAX_PAGES):
        rows = await v._read("fills (liquidations)", v.ex.fetch_my_trades, None, start)
        for t in rows:
            info = t.get("info") or {}
            liq = info.get("liquidation") or {}
            base = _base(v, t.get("symbol"))
            if str(liq.get("liquidatedUser") or "").lower() != wallet or base not in symbols or t["timestamp"] <= since * 1000:
                continue
            qty = float(t["amount"])
            price = float(t["price"])
            closed = float(info.get("closedPnl") or 0.0)
            out[str(t["id"])] = LiquidationEvent(base, t["timestamp"] / 1000.0, -qty if t.get("side") == "buy" else qty, price,
                                                 max(-closed, 0.0), f"hl-liq-{t['id']}")
        ids = {str(t["id"]) for t in rows} - seen
        seen |= ids
        if len(rows) < FILLS_PAGE or not ids:
            break
        start = _next_page(rows)
    return sorted(out.values(), key=lambda e: e.time)
