"""Binance USD-M quarterlies after they stop trading: what `LiveVenue` reads on the raw endpoints.

Once a contract has delivered, the venue delists it and ccxt, after its next markets reload, no
longer knows its symbol (``BadSymbol``); the venue still answers for it by its own id
(``BTCUSDT_240329``):

- an order looked up by client id: ``GET /fapi/v1/order`` (``origClientOrderId``), its fees from
  ``GET /fapi/v1/userTrades`` (``orderId``);
- the delivery: a ``DELIVERED_SETTELMENT`` row of ``GET /fapi/v1/income`` (one request for every
  contract), the price from ``GET /futures/data/delivery-price`` (the row whose ``deliveryTime`` is
  the expiry; one request per pair). The income row carries no quantity: it is the position the
  venue last showed in the contract (`LiveVenue._future_seen`), else (nothing seen: the desk was
  stopped across the expiry) the net of the account's trades in it, paged from the first.

A delivery comes out as ``LiquidationEvent(code, expiry, qty, price, 0, "dlv-<code>-<expiry>",
"future", "delivery")``: its id is the same on every read, so the desk books it once.
"""

from __future__ import annotations

from typing import Any

from basis_mcp.dated import contract_code, parse_contract
from basis_mcp.venue.base import LiquidationEvent, OrderRequest, OrderResult, VenueError

DELIVERED = "DELIVERED_SETTELMENT"  # Binance's spelling
INCOME_PAGE = 1000
TRADES_PAGE = 1000
TRADES_MAX_PAGES = 50


def venue_id(v: Any, code: str) -> str:
    """Binance's own id of a contract code: ``BTC-240329`` → ``BTCUSDT_240329``."""
    base, expiry = parse_contract(code)
    return f"{base}{v.feed.quote}_{contract_code(base, expiry).rsplit('-', 1)[1]}"


async def fetch_delisted_order(v: Any, client_order_id: str, code: str) -> OrderResult | None:
    """The desk's order in a contract ccxt no longer lists, by client id; None if the venue has no such
    order (or does not know the contract at all)."""
    try:
        raw_id = venue_id(v, code)
    except ValueError:
        return None
    try:
        raw = await v._read("look up order (delivered contract)", v.ex.fapiPrivateGetOrder,
                            {"symbol": raw_id, "origClientOrderId": client_order_id})
    except VenueError as e:
        if e.code in ("order_not_found", "bad_symbol"):
            return None
        raise
    o = v.ex.parse_order(raw, None)
    if float(o.get("filled") or 0.0) and not (o.get("fee") or o.get("fees")):
        try:
            trades = await v._read("order trades (delivered contract)", v.ex.fapiPrivateGetUserTrades,
                                   {"symbol": raw_id, "orderId": raw.get("orderId")})
        except VenueError:
            trades = []  # _result values the fee at the taker rate
        fees = [{"cost": float(t.get("commission") or 0.0), "currency": t.get("commissionAsset")}
                for t in trades if str(t.get("orderId")) == str(raw.get("orderId"))]
        if fees:
            o = {**o, "fees": fees}
    req = OrderRequest(client_order_id, code, "future", o.get("side") or "buy",
                       float(o.get("amount") or o.get("filled") or 0.0), bool(o.get("reduceOnly")))
    return v._result(o, req, float(o.get("average") or 0.0))


async def net_traded(v: Any, code: str) -> float:
    """The account's signed position in ``code`` from its trades (buys − sells), every page from the first."""
    raw_id = venue_id(v, code)
    seen: dict[Any, float] = {}
    from_id = 0
    for _ in range(TRADES_MAX_PAGES):
        rows = await v._read("trades (delivered contract)", v.ex.fapiPrivateGetUserTrades,
                             {"symbol": raw_id, "fromId": from_id, "limit": TRADES_PAGE})
        for t in rows or []:
            seen[t.get("id")] = float(t.get("qty") or 0.0) * (1.0 if str(t.get("side")).upper() == "BUY" else -1.0)
        if not rows or len(rows) < TRADES_PAGE:
            break
        from_id = max(int(t.get("id") or 0) for t in rows) + 1
    return round(sum(seen.values()), 12)


async def deliveries(v: Any, since: float, codes: list[str]) -> list[LiquidationEvent]:
    """The deliveries of ``codes`` booked by the venue after ``since`` (one income request; a delivery
    price request per pair delivered). A delivery whose price is not published yet is left for the
    next read (the desk's cursor does not move past it)."""
    rows = await v._read("delivery income", v.ex.fapiPrivateGetIncome,
                         {"incomeType": DELIVERED, "startTime": int(since * 1000) + 1, "limit": INCOME_PAGE})
    found: dict[str, float] = {}
    for r in rows or []:
        if r.get("incomeType", DELIVERED) != DELIVERED or int(r.get("time") or 0) <= since * 1000:
            continue
        try:
            base, expiry = parse_contract(str(r.get("symbol") or ""))
        except ValueError:
            continue
        code = contract_code(base, expiry)
        if code in codes:
            found[code] = expiry
    out: list[LiquidationEvent] = []
    prices: dict[str, list[dict[str, Any]]] = {}
    for code, expiry in sorted(found.items(), key=lambda kv: (kv[1], kv[0])):
        pair = venue_id(v, code).split("_")[0]
        if pair not in prices:
            prices[pair] = await v._read("delivery price", v.ex.fapiDataGetDeliveryPrice, {"pair": pair}) or []
        price = next((float(p["deliveryPrice"]) for p in prices[pair] if int(p.get("deliveryTime") or 0) == int(expiry * 1000)),
                     None)
        if price is None:
            continue
        qty = v._future_seen.get(code)
        if qty is None:
            qty = await net_traded(v, code)
        if not qty:
            continue  # nothing the account held: nothing to book
        out.append(LiquidationEvent(code, expiry, qty, price, 0.0, f"dlv-{code}-{int(expiry)}", "future", "delivery"))
    return out
