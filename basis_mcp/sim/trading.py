"""Orders: MARKET orders on spot, USD-M perps and USD-M quarterlies (a quarterly trades and is
margined like a perp: its own isolated position, leverage and margin type, no funding), their
fills and accounting, order queries, trade lists and Binance's order JSON."""

from __future__ import annotations

import math
import uuid
from typing import Any

from basis_mcp.costs import LegCosts
from basis_mcp.sim.instruments import (
    ISOLATED,
    MSG_INSUFFICIENT_SPOT,
    MSG_MARGIN,
    QUOTE,
    BinanceError,
    Instrument,
    Order,
    Position,
    Quarterly,
    _bool,
    _need,
    _num,
    _r8,
    _s8,
)
from basis_mcp.sim.state import SimState

SPOT_ORDER_STATIC: dict[str, Any] = {
    "price": "0.00000000",
    "origQuoteOrderQty": "0.00000000",
    "timeInForce": "GTC",
    "type": "MARKET",
    "selfTradePreventionMode": "EXPIRE_MAKER",
}
PERP_ORDER_STATIC: dict[str, Any] = {
    "price": "0.00",
    "timeInForce": "GTC",
    "type": "MARKET",
    "closePosition": False,
    "positionSide": "BOTH",
    "stopPrice": "0.00",
    "workingType": "CONTRACT_PRICE",
    "priceProtect": False,
    "origType": "MARKET",
    "priceMatch": "NONE",
    "selfTradePreventionMode": "EXPIRE_MAKER",
    "goodTillDate": 0,
}


class TradingApi:
    """Binance's order endpoints (spot and USD-M), executed against a `SimState`."""

    def __init__(self, state: SimState):
        self.state = state

    def place_order(self, market: str, p: dict[str, str], partial: float | None = None) -> dict[str, Any]:
        """Execute a MARKET order now. ``partial``: fill only this fraction (status EXPIRED)."""
        with self.state.lock:
            inst = self.state.inst(_need(p, "symbol"), market)
            side = _need(p, "side").upper()
            if side not in ("BUY", "SELL"):
                raise BinanceError(-1117, "Invalid side.")
            if _need(p, "type").upper() != "MARKET":
                raise BinanceError(-1116, "Invalid orderType.")  # this simulator trades MARKET orders only
            coid = p.get("newClientOrderId") or uuid.uuid4().hex[:22]  # Binance makes one up too
            duplicate = (market, inst.id, coid) in self.state.orders_by_coid
            if self.state.reject_duplicate_client_ids and duplicate:
                if market == "spot":
                    raise BinanceError(-2010, "Duplicate order sent.")
                raise BinanceError(-4116, "ClientOrderId is duplicated.")
            if not inst.has_data(self.state.t):
                raise BinanceError(-1013, "Market is closed.")
            step = inst.step(market)
            _, mid, _ = inst.quote(market, self.state.t)
            leg = inst.leg(market)
            if p.get("quantity"):
                qty = _num(p, "quantity")
            elif market == "spot" and p.get("quoteOrderQty"):
                quote_qty = _num(p, "quoteOrderQty")
                qty = (
                    math.floor(quote_qty / leg.fill_price(mid, side.lower(), quote_qty) / step + 1e-9) * step
                )
            else:
                raise BinanceError(
                    -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
                )
            steps = qty / step
            if qty <= 0 or abs(steps - round(steps)) > 1e-6:
                if market == "spot":
                    raise BinanceError(-1013, "Filter failure: LOT_SIZE")
                raise BinanceError(
                    -4003 if qty <= 0 else -1111,
                    "Quantity less than or equal to zero."
                    if qty <= 0
                    else "Precision is over the maximum defined for this asset.",
                )
            qty = round(round(steps) * step, inst.dec(market))
            reduce_only = market == "perp" and _bool(p.get("reduceOnly"))
            if qty * mid < inst.spec.min_notional_usd and not reduce_only:
                if market == "spot":
                    raise BinanceError(-1013, "Filter failure: NOTIONAL")
                raise BinanceError(
                    -4164,
                    f"Order's notional must be no smaller than {inst.spec.min_notional_usd:g}"
                    " (unless you choose reduce only).",
                )
            exe = qty if partial is None else round(math.floor(qty * partial / step + 1e-9) * step, inst.dec(market))
            price = _r8(leg.fill_price(mid, side.lower(), exe * mid))
            o = Order(
                market=market,
                symbol=inst.id,
                order_id=self.state.take_id(market),
                client_order_id=coid,
                side=side,
                orig_qty=qty,
                executed_qty=exe,
                cum_quote=_r8(exe * price),
                status="FILLED" if exe == qty else "EXPIRED",
                time_ms=self.state.ms,
                qdec=inst.dec(market),
                reduce_only=reduce_only,
            )
            if exe > 0:
                o.trade_id = self.state.take_id("trade")
                if market == "spot":
                    self._fill_spot(inst, o, leg)
                else:
                    self._fill_perp(inst, o, leg)
            elif reduce_only:
                self._check_reduce_only(inst.id, side, qty)
            self.state.orders.append(o)
            self.state.orders_by_id[(market, o.order_id)] = o
            self.state.orders_by_coid[(market, inst.id, coid)] = o
            return self.order_wire(o, p.get("newOrderRespType") or ("FULL" if market == "spot" else "ACK"))

    def _fill_spot(self, inst: Instrument, o: Order, leg: LegCosts) -> None:
        cost, base = o.cum_quote, inst.base
        bal, in_quote = self.state.spot_bal, self.state.spot_fee_in_quote
        if o.side == "BUY":
            fee_q = _r8(cost * leg.taker_fee) if in_quote else 0.0
            if bal[QUOTE] + 1e-9 < cost + fee_q:
                raise BinanceError(-2010, MSG_INSUFFICIENT_SPOT)
            fee_b = 0.0 if in_quote else _r8(o.executed_qty * leg.taker_fee)
            bal[QUOTE] = _r8(bal[QUOTE] - cost - fee_q)
            bal[base] = _r8(bal[base] + o.executed_qty - fee_b)
            o.commission, o.commission_asset = (fee_q, QUOTE) if in_quote else (fee_b, base)
        else:
            if bal[base] + 1e-12 < o.executed_qty:
                raise BinanceError(-2010, MSG_INSUFFICIENT_SPOT)
            fee = _r8(cost * leg.taker_fee)
            bal[base] = _r8(bal[base] - o.executed_qty)
            bal[QUOTE] = _r8(bal[QUOTE] + cost - fee)
            o.commission, o.commission_asset = fee, QUOTE

    def _check_reduce_only(self, sym: str, side: str, qty: float) -> None:
        pos = self.state.positions.get(sym) or Position(sym)
        s = 1 if side == "BUY" else -1
        if pos.amt == 0 or (pos.amt > 0) == (s > 0) or qty > abs(pos.amt) + 1e-12:
            raise BinanceError(-2022, "ReduceOnly Order is rejected.")

    def _fill_perp(self, inst: Instrument | Quarterly, o: Order, leg: LegCosts) -> None:
        sym, x, p = inst.id, o.executed_qty, o.avg_price
        if o.reduce_only:
            self._check_reduce_only(sym, o.side, o.orig_qty)
        pos = self.state.positions.get(sym) or Position(sym)
        s = 1 if o.side == "BUY" else -1
        held = abs(pos.amt)
        close = min(x, held) if pos.amt and (pos.amt > 0) != (s > 0) else 0.0
        opening = round(x - close, max(inst.qdec, 9))  # finer lots than the instrument's own (OKX: 0.01 contracts)
        fee = _r8(o.cum_quote * leg.taker_fee)
        lev, isolated = self.state.leverage_of(sym), self.state.margin_type_of(sym) == ISOLATED
        need = _r8(opening * p / lev)
        if opening > 0:
            if self.state.available() + 1e-9 < need + fee:
                raise BinanceError(-2019, MSG_MARGIN)
            if (held - close + opening) * p > self.state.max_notional(inst, lev):
                raise BinanceError(-2027, "Exceeded the maximum allowable position at current leverage.")
        self.state.positions[sym] = pos
        realized = _r8(close * (p - pos.entry) * (1 if pos.amt > 0 else -1)) if close else 0.0
        if close:
            if isolated:
                pos.iso_wallet = _r8(pos.iso_wallet + realized)
                release = pos.iso_wallet if close >= held else _r8(pos.iso_wallet * close / held)
                pos.iso_wallet = _r8(pos.iso_wallet - release)
                self.state.cross_wallet = _r8(self.state.cross_wallet + release)
            else:
                self.state.cross_wallet = _r8(self.state.cross_wallet + realized)
            pos.amt = round(pos.amt - math.copysign(close, pos.amt), 9)
            if pos.amt == 0:
                pos.entry, pos.amt = 0.0, 0.0
        if opening:
            a = abs(pos.amt)
            pos.entry = (a * pos.entry + opening * p) / (a + opening) if a else p
            pos.amt = round(pos.amt + s * opening, 9)
            if isolated:
                self.state.cross_wallet = _r8(self.state.cross_wallet - need)
                pos.iso_wallet = _r8(pos.iso_wallet + need)
        self.state.cross_wallet = _r8(self.state.cross_wallet - fee)
        pos.update_ms = self.state.ms
        if close:
            self.state.add_income(sym, "REALIZED_PNL", realized, self.state.ms, o.trade_id)
        self.state.add_income(sym, "COMMISSION", -fee, self.state.ms, o.trade_id)
        o.commission = fee

    def get_order(self, market: str, p: dict[str, str]) -> dict[str, Any]:
        with self.state.lock:
            inst = self.state.inst(_need(p, "symbol"), market, delisted=True)
            if p.get("orderId"):
                o = self.state.orders_by_id.get((market, int(p["orderId"])))
            elif p.get("origClientOrderId"):
                o = self.state.orders_by_coid.get((market, inst.id, p["origClientOrderId"]))
            else:
                raise BinanceError(
                    -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
                )
            if o is None or o.symbol != inst.id:
                raise BinanceError(-2013, "Order does not exist.")
            return self.order_wire(o, "QUERY")

    def my_trades(self, market: str, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/api/v3/myTrades`` and ``/fapi/v1/userTrades``: one trade per executed order, with its
        commission (futures order responses carry none: this is where a client finds its fees)."""
        with self.state.lock:
            sym = _need(p, "symbol")
            oid = int(p["orderId"]) if p.get("orderId") else None
            out = []
            for o in self.state.orders:
                if o.market != market or o.symbol != sym or not o.executed_qty or (oid is not None and o.order_id != oid):
                    continue
                row = {
                    "symbol": o.symbol, "id": o.trade_id, "orderId": o.order_id, "price": _s8(o.avg_price),
                    "qty": _s8(o.executed_qty), "quoteQty": _s8(o.cum_quote), "commission": _s8(o.commission),
                    "commissionAsset": o.commission_asset, "time": o.time_ms,
                }
                if market == "spot":
                    row |= {"orderListId": -1, "isBuyer": o.side == "BUY", "isMaker": False, "isBestMatch": True}
                else:
                    row |= {"side": o.side, "buyer": o.side == "BUY", "maker": False, "positionSide": "BOTH",
                            "realizedPnl": "0"}
                out.append(row)
            return out

    def order_wire(self, o: Order, resp_type: str = "RESULT") -> dict[str, Any]:
        """Binance's JSON for an order: ``ACK`` / ``RESULT`` / ``FULL`` (spot) answer a POST,
        ``QUERY`` a GET."""
        q = (lambda v: _s8(v)) if o.market == "spot" else (lambda v: f"{v:.{o.qdec}f}")
        if o.market == "spot":
            d: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1}
            d["clientOrderId"] = o.client_order_id
            if resp_type == "ACK":
                return d | {"transactTime": o.time_ms}
            d |= SPOT_ORDER_STATIC | {
                "origQty": q(o.orig_qty),
                "executedQty": q(o.executed_qty),
                "cummulativeQuoteQty": _s8(o.cum_quote),
                "status": o.status,
                "side": o.side,
                "workingTime": o.time_ms,
            }
            if resp_type == "QUERY":
                return d | {
                    "stopPrice": "0.00000000",
                    "icebergQty": "0.00000000",
                    "time": o.time_ms,
                    "updateTime": o.time_ms,
                    "isWorking": True,
                }
            d["transactTime"] = o.time_ms
            if resp_type == "FULL":
                fill = {"price": _s8(o.avg_price), "qty": q(o.executed_qty), "commission": _s8(o.commission)}
                fill |= {"commissionAsset": o.commission_asset, "tradeId": o.trade_id}
                d["fills"] = [fill] if o.executed_qty else []
            return d
        ack = resp_type == "ACK"  # Binance's futures ACK: accepted, nothing reported as executed yet
        exe, cum = (0.0, 0.0) if ack else (o.executed_qty, o.cum_quote)
        d = {"orderId": o.order_id, "symbol": o.symbol, "status": "NEW" if ack else o.status}
        d |= PERP_ORDER_STATIC | {
            "clientOrderId": o.client_order_id,
            "avgPrice": _s8(cum / exe) if exe else "0.00",
            "origQty": q(o.orig_qty),
            "executedQty": q(exe),
            "cumQty": q(exe),
            "cumQuote": _s8(cum),
            "reduceOnly": o.reduce_only,
            "side": o.side,
            "updateTime": o.time_ms,
        }
        if resp_type == "QUERY":
            d["time"] = o.time_ms
        return d
