"""OKX (V5: one unified trading account, one-way positions) through ccxt: what `basis_mcp.live.venue.LiveVenue`
does differently there (its ``_okx`` hooks call these).

- Units: ccxt's amounts on OKX swaps and futures are CONTRACTS (``ctVal`` coins each: 0.01 BTC), on spot coins.
  The desk speaks coins; `contract_size` is the one conversion factor, applied on the way out (an order's
  ``sz``: `order_args`) and on the way in (orders: `in_coins`; positions: `position`; funding and delivery bills).
- Client order ids: OKX takes 1-32 letters and digits (``clOrdId``): `client_id` maps the desk's id
  (``bm-12-pe-1a2b3c4d``) to one deterministically (``bm12pe1a2b3c4d``), so a lookup after a crash finds it.
- Margin: isolated per instrument: one ``/account/set-leverage`` with ``mgnMode=isolated``; every swap or futures
  order says ``tdMode=isolated``, spot orders ``cash``; margin is added on ``/account/position/margin-balance``
  directly (ccxt 4.5's ``add_margin`` sends it, then fails parsing the answer).
- Orders: the answer (``/trade/batch-orders``) carries ids only: the order is read back (``/trade/order``) until
  final, as on Bybit; its fee is in the order (negative = paid; ccxt flips the sign). A spot buy's fee is taken
  in the coin bought (the desk buys a fee more, as on Binance and Bybit).
- Balances: one read (``/account/balance``): each currency's ``availEq``.
- Positions: ``pos`` (contracts) × ctVal; the isolated wallet is ``margin`` (without unrealised P&L).
- Funding: ``/account/bills-archive`` rows of ``type`` 8 (subType 173 expense, 174 income), paged newest first by
  ``after`` (the last bill id): ``px`` is the rate, ``sz`` the position in contracts, ``balChg`` (else
  ``posBalChg``) the amount (− paid). The settlement's mark is the feed's (else amount ÷ (size × rate)).
- Delivery: a ``type`` 3 bill of the contract (112 delivery long, 113 short): ``sz`` contracts settled at ``px``.
  It comes out of `LiveVenue.liquidations` as a ``delivery`` event at the expiry with id ``dlv-<code>-<expiry>``
  (the same on every read, so the desk books it once). Orders of a delivered contract (ccxt no longer lists it)
  are read on the raw ``/trade/order`` by its instId (``BTC-USDT-240329``); its contract size is the coin's swap's
  when ccxt no longer knows it (OKX sizes USDT-margined futures and swaps alike).
- Liquidations: ccxt's okx reads none; position reconciliation catches a vanished leg.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import ccxt

from basis_mcp.dated import contract_code, parse_contract
from basis_mcp.live.errors import venue_error
from basis_mcp.venue.base import FundingEvent, LiquidationEvent, OrderRequest, OrderResult, VenueError

BILLS_PAGE = 100  # OKX answers at most 100 bills a request
BILLS_MAX_PAGES = 100
FUNDING_BILL, DELIVERY_BILL = "8", "3"
DELIVERY_LONG = "112"
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def client_id(coid: str) -> str:
    """OKX's ``clOrdId`` for the desk's client order id: its letters and digits (≤ 32), else a hash of it."""
    s = _NOT_ALNUM.sub("", coid)
    return s if 0 < len(s) <= 32 else "h" + hashlib.sha256(coid.encode()).hexdigest()[:31]


def contract_size(ex: Any, unified: str) -> float:
    """Coins per unit of ccxt's amount: ``contractSize`` for a swap or a future, 1 for spot."""
    m = ex.markets.get(unified) or {}
    return float(m.get("contractSize") or 1.0) if m.get("contract") else 1.0


def inst_id(v: Any, code: str) -> str:
    """OKX's instId of a contract code: ``BTC-240329`` → ``BTC-USDT-240329``."""
    base, expiry = parse_contract(code)
    return f"{base}-{v.feed.quote}-{contract_code(base, expiry).rsplit('-', 1)[1]}"


def order_args(v: Any, req: OrderRequest, unified: str, qty: float, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(ccxt amount, params) of an order for ``qty`` coins: contracts on the lot for a swap or a future,
    OKX's client id, isolated margin (``cash`` for spot: no margin parameter at all)."""
    out = {**params, "clientOrderId": client_id(req.client_order_id)}
    if req.market == "spot":
        return qty, out
    contracts = round(qty / contract_size(v.ex, unified), 10)  # 4.7 not 4.6999…: ccxt truncates to the lot
    try:
        return float(v.ex.amount_to_precision(unified, contracts)), {**out, "marginMode": "isolated"}
    except ccxt.BaseError as e:  # under one lot: nothing is sent
        raise venue_error(e, v.venue, f"size {qty:g} {req.symbol} in contracts") from None


def in_coins(v: Any, o: dict[str, Any], unified: str, size: float | None = None) -> dict[str, Any]:
    """A ccxt order with its amounts in coins (``size``: coins per contract, if ccxt no longer knows the market)."""
    cs = size or contract_size(v.ex, unified)
    if cs == 1.0:
        return o
    return {**o, **{k: round(float(o[k]) * cs, 12) for k in ("amount", "filled", "remaining") if o.get(k) is not None}}


def position(p: dict[str, Any], m: dict[str, Any], signed_contracts: float) -> tuple[float, float]:
    """(signed coins, isolated margin) of a ccxt position on OKX."""
    return signed_contracts * float(m.get("contractSize") or 1.0), float((p.get("info") or {}).get("margin") or 0.0)


async def verify_credentials(v: Any) -> None:
    await v._read("check API keys (trading account)", v.ex.fetch_balance)


async def balances(v: Any) -> dict[str, float]:
    """The unified account's available balance of each currency (USDT net of the isolated margin)."""
    bal = await v._read("trading account balance", v.ex.fetch_balance)
    return {k: float(val) for k, val in (bal.get("free") or {}).items() if val}


async def set_leverage(v: Any, unified: str, leverage: float) -> None:
    try:
        await v.ex.set_leverage(int(leverage), unified, {"marginMode": "isolated"})
    except ccxt.BaseError as e:
        raise venue_error(e, v.venue, f"set isolated margin at {leverage:g}x") from None


async def add_margin(v: Any, unified: str, amount_usd: float) -> None:
    m = v.ex.market(unified)
    req = {"instId": m["id"], "posSide": "net", "type": "add", "amt": f"{math.floor(amount_usd * 1e4) / 1e4:.4f}"}
    try:
        await v.ex.private_post_account_position_margin_balance(req)
    except ccxt.BaseError as e:
        raise venue_error(e, v.venue, "add margin") from None


# ---------------------------------------------------------------------------------------------- orders


def _delisted_size(v: Any, base: str) -> float:
    return contract_size(v.ex, v.feed.perp_symbol(base))


async def fetch_order(v: Any, client_order_id: str, symbol: str, market: str) -> OrderResult | None:
    """The desk's order by its client id, None if OKX has none; a delivered contract's on its raw instId."""
    coid = client_id(client_order_id)
    if market == "future" and symbol not in v.feed.dated:
        try:
            iid, base = inst_id(v, symbol), parse_contract(symbol)[0]
        except ValueError:
            return None
        o = await _order(v, v.ex.private_get_trade_order, {"instId": iid, "clOrdId": coid}, raw=True)
        o = in_coins(v, o, "", _delisted_size(v, base)) if o else None
    else:
        unified = v._unified(symbol, market)
        o = await _order(v, v.ex.fetch_order, None, unified, {"clOrdId": coid})
        o = in_coins(v, o, unified) if o else None
    if o is None:
        return None
    req = OrderRequest(client_order_id, symbol, market, o.get("side") or "buy",  # type: ignore[arg-type]
                       float(o.get("amount") or o.get("filled") or 0.0), bool(o.get("reduceOnly")))
    return v._result(o, req, v._mid(symbol, market, float(o.get("average") or 0.0)))


async def _order(v: Any, fn: Any, *args: Any, raw: bool = False) -> dict[str, Any] | None:
    try:
        got = await v._read("look up order", fn, *args)
    except VenueError as e:
        if e.code in ("order_not_found", "bad_symbol"):
            return None
        raise
    if not raw:
        return got
    rows = (got or {}).get("data") or []
    return v.ex.parse_order(rows[0], None) if rows else None


# ---------------------------------------------------------------------------------------------- bills


async def bills(v: Any, since: float, kind: str, inst_type: str) -> list[dict[str, Any]]:
    """The account's bills of ``kind`` after ``since`` (three months at most), every page, newest first."""
    req: dict[str, Any] = {"type": kind, "instType": inst_type, "begin": str(int(since * 1000) + 1), "limit": str(BILLS_PAGE)}
    rows: list[dict[str, Any]] = []
    for _ in range(BILLS_MAX_PAGES):
        resp = await v._read(f"bills (type {kind})", v.ex.private_get_account_bills_archive, req)
        page = (resp or {}).get("data") or []
        rows += page
        if len(page) < BILLS_PAGE:
            break
        req = {**req, "after": page[-1]["billId"]}
    return rows


async def funding(v: Any, since: float) -> list[FundingEvent]:
    """Funding settlements on the account's swaps after ``since`` (received +, paid −)."""
    out: dict[tuple[str, float], FundingEvent] = {}
    for r in await bills(v, since, FUNDING_BILL, "SWAP"):
        t = int(r["ts"]) / 1000.0
        m = v.ex.safe_market(r.get("instId"), None, None, "swap")
        if t <= since or not m.get("swap") or m.get("quote") != v.feed.quote:
            continue
        amount = float(r.get("balChg") or 0.0) or float(r.get("posBalChg") or 0.0)
        rate = float(r.get("px") or 0.0)
        size = float(r.get("sz") or 0.0) * float(m.get("contractSize") or 1.0)
        mark = next((mk for tt, _, mk in v.feed.settled.get(m["base"], []) if tt == t), 0.0)
        if not mark and rate and size:
            mark = abs(amount / (size * rate))
        qty = math.copysign(size, -amount * rate) if rate and amount else size  # paying a positive rate: long
        out[(m["base"], t)] = FundingEvent(m["base"], t, rate, mark, qty, amount)
    return sorted(out.values(), key=lambda e: (e.time, e.symbol))


async def deliveries(v: Any, since: float, codes: list[str]) -> list[LiquidationEvent]:
    """The deliveries of ``codes`` the account's bills show after ``since``."""
    out = []
    for r in await bills(v, since, DELIVERY_BILL, "FUTURES"):
        try:
            base, expiry = parse_contract(str(r.get("instId") or ""))
        except ValueError:
            continue
        code = contract_code(base, expiry)
        if code not in codes or int(r.get("ts") or 0) <= since * 1000:
            continue
        m = v.ex.markets.get(v.feed.dated.get(code, "")) or {}
        size = float(m.get("contractSize") or 0.0) or _delisted_size(v, base)
        qty = float(r.get("sz") or 0.0) * size * (1.0 if str(r.get("subType")) == DELIVERY_LONG else -1.0)
        if qty:
            out.append(LiquidationEvent(code, expiry, qty, float(r.get("px") or 0.0), 0.0, f"dlv-{code}-{int(expiry)}",
                                        "future", "delivery"))
    return sorted(out, key=lambda e: (e.time, e.symbol))
