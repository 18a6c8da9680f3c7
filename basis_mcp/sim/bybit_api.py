"""Bybit V5's wire format over a `SimState`: the ``result`` objects of the market, order, execution,
position and account endpoints, and Bybit's ``retCode`` errors (`BybitError`).

`BybitApi` holds a `SimState` plus the Binance API families it reuses (composition): linear
orders go through `TradingApi.place_order` (same fills, margin and reduce-only rules as the Binance
simulator), leverage and isolated margin through `AccountsApi`, order books through
`MarketDataApi.depth`; their `BinanceError` codes are translated to the retCodes Bybit answers,
so ccxt raises the same exception classes it raises against the real venue. Spot orders settle
against the unified wallet here (see `basis_mcp.sim.bybit` for the account model).
Its only Bybit-specific memory is the quote amount of spot market orders placed in ``quoteCoin``."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

from basis_mcp.history import HOUR
from basis_mcp.sim.accounts import AccountsApi
from basis_mcp.sim.instruments import (
    CROSSED,
    ISOLATED,
    QUOTE,
    BinanceError,
    Instrument,
    Order,
    Position,
    _dec,
    _r8,
    hourly_price,
    last_closed_open,
    select_candles,
)
from basis_mcp.sim.market_data import MarketDataApi
from basis_mcp.sim.state import SimState
from basis_mcp.sim.trading import TradingApi

SPOT_STEPS = {"BTC": 0.000001, "ETH": 0.00001, "SOL": 0.001}  # Bybit spot basePrecision
# kline interval -> seconds (Bybit also has W and M, not simulated)
INTERVALS = {"1": 60, "3": 180, "5": 300, "15": 900, "30": 1800, "60": HOUR, "120": 2 * HOUR, "240": 4 * HOUR,
             "360": 6 * HOUR, "720": 12 * HOUR, "D": 24 * HOUR}
WEEK_MS = 7 * 86_400_000
_ORDER_TAG, _EXEC_TAG, _FUNDING_TAG = 0x5EB0_4C1A_9B1E_0000, 0xE7EC_4A11_8F00_0000, 0xF0DD_4A11_8F00_0000
MSG_NO_SYMBOL = "Not supported symbols"  # ccxt matches it broadly -> BadSymbol

# BinanceError codes from the reused API families -> what Bybit answers for the same refusal
ORDER_CODES = {
    -1121: (10001, MSG_NO_SYMBOL),
    -1013: (110066, "No trading is allowed at the current time"),
    -4116: (110072, "OrderLinkedID is duplicate"),
    -1111: (10001, "params error: Qty invalid"),
    -4003: (10001, "params error: Qty invalid"),
    -4164: (110094, "Order does not meet minimum order value"),
    -2019: (110007, "ab not enough for new order"),
    -2027: (110016, "Requested quantity of contracts exceeds risk limit, please adjust your risk limit level"),
    -2022: (110017, "Reduce-only rule not satisfied"),
}
LEVERAGE_CODES = {-1121: (10001, MSG_NO_SYMBOL), -4028: (10001, "params error: leverage invalid"),
                  -2027: (110013, "Due to risk limit, cannot set leverage")}
MARGIN_CODES = {-1121: (10001, MSG_NO_SYMBOL), -4049: (110015, "the position is in cross_margin"),
                -4054: (110033, "Margin cannot be set without open position"),
                -4050: (110014, "Available balance not enough to add margin"),
                -4051: (110044, "Insufficient available margin"), -1102: (10001, "params error: margin")}


class BybitError(Exception):
    """An error Bybit would answer: ``{"retCode": code, "retMsg": msg, "result": {}}`` (HTTP ``status``)."""

    def __init__(self, code: int, msg: str, status: int = 200, ext: dict[str, Any] | None = None):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status, self.ext = code, msg, status, ext or {}


def translate(e: BinanceError, table: dict[int, tuple[int, str]]) -> BybitError:
    code, msg = table.get(e.code, (10001, f"params error: {e.msg}"))
    return BybitError(code, msg)


def _s(x: float, dec: int = 8) -> str:
    """Bybit's number strings: fixed point, trailing zeros dropped ("0.001", "67012.5", "0")."""
    s = f"{x + 0.0:.{dec}f}"
    s = s.rstrip("0").rstrip(".") if "." in s else s
    return "0" if s in ("", "-0") else s


def _need(p: dict[str, str], name: str) -> str:
    v = p.get(name)
    if v is None or v == "":
        raise BybitError(10001, f"params error: {name} is required")
    return v


def _num(p: dict[str, str], name: str) -> float:
    try:
        v = float(_need(p, name))
    except ValueError:
        raise BybitError(10001, f"params error: {name} invalid") from None
    if not math.isfinite(v):
        raise BybitError(10001, f"params error: {name} invalid")
    return v


def _int(p: dict[str, str], name: str, default: int | None = None) -> int | None:
    if not p.get(name):
        return default
    try:
        return int(p[name])
    except ValueError:
        raise BybitError(10001, f"params error: {name} invalid") from None


def page(rows: list[Any], p: dict[str, str], default: int, maximum: int) -> tuple[list[Any], str]:
    """One page of ``rows`` and the ``nextPageCursor`` for the rest ("" at the end)."""
    limit = max(1, min(_int(p, "limit", default) or default, maximum))
    cur = p.get("cursor") or ""
    try:
        off = int(cur.removeprefix("page:")) if cur else 0
        if off < 0:
            raise ValueError(cur)
    except ValueError:
        raise BybitError(10001, "params error: cursor invalid") from None
    return rows[off : off + limit], (f"page:{off + limit}" if off + limit < len(rows) else "")


def _uid(tag: int, n: int) -> str:
    return str(uuid.UUID(int=(tag << 64) | n))


class BybitApi:
    """Bybit V5 endpoints (categories ``spot`` and ``linear``, unified account) over one `SimState`."""

    def __init__(self, state: SimState):
        self.state = state
        self.trading = TradingApi(state)
        self.accounts = AccountsApi(state)
        self.book = MarketDataApi(state)
        self.quote_qty: dict[int, float] = {}  # spot order id -> quoteCoin amount asked

    # ------------------------------------------------------------ lookups

    def inst(self, p: dict[str, str]) -> Instrument:
        inst = self.state.instruments.get(_need(p, "symbol"))
        if inst is None:
            raise BybitError(10001, MSG_NO_SYMBOL)
        return inst

    @staticmethod
    def category(p: dict[str, str], allowed: tuple[str, ...] = ("spot", "linear"), default: str | None = None) -> str:
        cat = p.get("category") or default
        if cat not in allowed:
            raise BybitError(10001, f"params error: category only support {', '.join(allowed)}")
        return cat

    @staticmethod
    def spot_step(inst: Instrument) -> float:
        return SPOT_STEPS.get(inst.base, 0.000001)

    def step(self, inst: Instrument, cat: str) -> float:
        return self.spot_step(inst) if cat == "spot" else inst.step("perp")

    def order_id(self, o: Order) -> str:
        return str(o.order_id) if o.market == "spot" else _uid(_ORDER_TAG, o.order_id)

    def find_order(self, oid: str) -> Order | None:
        if oid.isdigit():
            return self.state.orders_by_id.get(("spot", int(oid)))
        try:
            n = uuid.UUID(oid).int
        except ValueError:
            return None
        return self.state.orders_by_id.get(("perp", n & (2**64 - 1))) if n >> 64 == _ORDER_TAG else None

    # ------------------------------------------------------------ market data

    def instruments(self, p: dict[str, str]) -> dict[str, Any]:
        cat = self.category(p, ("spot", "linear", "inverse", "option"))
        st, rows = self.state, []
        with st.lock:
            for inst in st.instruments.values() if cat in ("spot", "linear") else []:
                if p.get("symbol") and inst.id != p["symbol"]:
                    continue
                if p.get("baseCoin") and inst.base != p["baseCoin"]:
                    continue
                status = "Trading" if inst.has_data(st.t) else "Closed"
                if p.get("status") and p["status"] != status:
                    continue
                step, mn = self.step(inst, cat), inst.spec.min_notional_usd
                if cat == "spot":
                    rows.append({
                        "symbol": inst.id, "baseCoin": inst.base, "quoteCoin": QUOTE, "innovation": "0",
                        "status": status, "marginTrading": "utaOnly", "stTag": "0",
                        "lotSizeFilter": {"basePrecision": _s(step), "quotePrecision": "0.00000001",
                                          "minOrderQty": _s(step), "maxOrderQty": "9000", "minOrderAmt": _s(mn),
                                          "maxOrderAmt": "9000000"},
                        "priceFilter": {"tickSize": "0.01"},
                        "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.05"},
                    })
                    continue
                rows.append({
                    "symbol": inst.id, "contractType": "LinearPerpetual", "status": status, "baseCoin": inst.base,
                    "quoteCoin": QUOTE, "launchTime": str(inst.series.t0 * 1000), "deliveryTime": "0",
                    "deliveryFeeRate": "", "priceScale": "2",
                    "leverageFilter": {"minLeverage": "1", "maxLeverage": f"{st.max_leverage(inst)}.00",
                                       "leverageStep": "1"},
                    "priceFilter": {"minPrice": "0.01", "maxPrice": "1999999.80", "tickSize": "0.01"},
                    "lotSizeFilter": {"maxOrderQty": "1190", "minOrderQty": _s(step), "qtyStep": _s(step),
                                      "postOnlyMaxOrderQty": "1190", "maxMktOrderQty": "119",
                                      "minNotionalValue": _s(mn)},
                    "unifiedMarginTrade": True, "fundingInterval": inst.interval_h * 60, "settleCoin": QUOTE,
                    "copyTrading": "both", "upperFundingRate": "0.005", "lowerFundingRate": "-0.005",
                    "isPreListing": False, "preListingInfo": None, "displayName": "", "symbolType": "",
                    "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.1"},
                })
        if cat == "spot":
            return {"category": cat, "list": rows}
        chunk, nxt = page(rows, p, 500, 1000)
        return {"category": cat, "list": chunk, "nextPageCursor": nxt}

    def tickers(self, p: dict[str, str]) -> dict[str, Any]:
        cat = self.category(p, ("spot", "linear", "inverse", "option"))
        st, rows = self.state, []
        with st.lock:
            if cat not in ("spot", "linear"):
                insts: list[Instrument] = []
            elif p.get("symbol"):
                insts = [self.inst(p)]
            else:
                insts = [i for i in st.instruments.values() if i.has_data(st.t)]
            for inst in insts:
                market = "spot" if cat == "spot" else "perp"
                bid, last, ask = inst.quote(market, st.t)
                w = inst.window(market, st.t)
                opn, size = float(w[0]), _s(250_000 / last, inst.dec(market))
                row = {
                    "symbol": inst.id, "bid1Price": _s(bid), "bid1Size": size, "ask1Price": _s(ask),
                    "ask1Size": size, "lastPrice": _s(last), "prevPrice24h": _s(opn),
                    "price24hPcnt": _s(last / opn - 1, 6), "highPrice24h": _s(float(max(w))),
                    "lowPrice24h": _s(float(min(w))), "turnover24h": "0", "volume24h": "0",
                }
                if cat == "spot":
                    rows.append(row | {"usdIndexPrice": _s(last)})
                    continue
                nxt = inst.next_funding(st.t)
                row |= {
                    "indexPrice": _s(inst.spot(st.t)), "markPrice": _s(inst.mark(st.t)),
                    "prevPrice1h": _s(float(w[-2] if w.size > 1 else w[-1])), "openInterest": "0",
                    "openInterestValue": "0", "fundingRate": _s(inst.funding_rate(nxt) or 0.0, 10),
                    "nextFundingTime": str(nxt * 1000), "predictedDeliveryPrice": "", "basisRate": "",
                    "deliveryFeeRate": "", "deliveryTime": "0", "fundingIntervalHour": str(inst.interval_h),
                    "fundingCap": "0.005", "basis": "", "curPreListingPhase": "",
                }
                rows.append(row)
        return {"category": cat, "list": rows}

    def orderbook(self, p: dict[str, str]) -> dict[str, Any]:
        cat = self.category(p)
        default, cap = (1, 200) if cat == "spot" else (25, 500)
        limit = max(1, min(_int(p, "limit", default) or default, cap))
        try:
            d = self.book.depth("spot" if cat == "spot" else "perp", _need(p, "symbol"), limit)
        except BinanceError as e:
            raise translate(e, ORDER_CODES) from None
        ms = self.state.ms
        return {"s": p["symbol"], "b": d["bids"], "a": d["asks"], "ts": ms, "u": self.state.t, "seq": self.state.t,
                "cts": ms}

    def kline(self, p: dict[str, str], price: str = "last") -> dict[str, Any]:
        """``/v5/market/kline`` (``price`` "last"), ``mark-price-kline`` ("mark"), ``index-price-kline``
        ("index"): newest first, at most ``limit`` (max 1000, default 200) closed candles. With ``start``,
        the first ``limit`` candles opening at or after it (up to ``end``); without, the last ``limit``
        up to ``end`` (default: now). Intervals 1, 3, 5, 15, 30, 60, 120, 240, 360, 720 (minutes) and D.

        Built by `basis_mcp.sim.instruments.path_candles` from the hourly data: a candle opening at T opens
        at the price at T and closes at the price at T + its length, high / low over the hourly prices
        between; a sub-hour candle is SIMULATED on the straight line between its hour's two prices (served
        once the hour has closed)."""
        cat = self.category(p, ("spot", "linear") if price == "last" else ("linear",), "linear")
        st = self.state
        step = INTERVALS.get(p.get("interval") or "")
        if step is None:
            raise BybitError(10001, "params error: Invalid period!")
        limit = max(1, min(_int(p, "limit", 200) or 200, 1000))
        with st.lock:
            inst = self.inst(p)
            arr = {"last": inst.series.spot if cat == "spot" else inst.series.perp, "mark": inst.series.mark,
                   "index": inst.series.spot}[price]
            hi = last_closed_open(st.t, step)
            end, start = _int(p, "end"), _int(p, "start")
            if end is not None:
                hi = min(hi, end // 1000 // step * step)
            at = hourly_price(arr, inst.series.t0, inst.scale)
            opens, ohlc = select_candles(at, step, inst.series.t0, hi, None if start is None else start // 1000, limit)
        rows = []
        for T, (o, h, lo, c) in zip(opens.tolist()[::-1], ohlc.tolist()[::-1], strict=True):
            row = [str(T * 1000), _s(o), _s(h), _s(lo), _s(c)]
            rows.append(row + ["0", "0"] if price == "last" else row)
        return {"category": cat, "symbol": inst.id, "list": rows}

    def funding_history(self, p: dict[str, str]) -> dict[str, Any]:
        """``/v5/market/funding/history``: newest first, at most ``limit`` (max 200) settlements up to
        ``endTime`` (default now) and from ``startTime``; ``startTime`` alone is an error, as on Bybit."""
        cat = self.category(p, ("linear",))
        st = self.state
        limit = max(1, min(_int(p, "limit", 200) or 200, 200))
        start, end = _int(p, "startTime"), _int(p, "endTime")
        if start is not None and end is None:
            raise BybitError(10001, "params error: endTime must be passed together with startTime")
        with st.lock:
            inst = self.inst(p)
            hi = st.t if end is None else min(st.t, end // 1000)
            lo = start // 1000 - 1 if start is not None else hi - (limit + 1) * inst.interval_h * HOUR
            times = inst.settlements(lo, hi)[-limit:]
            rows = [{"symbol": inst.id, "fundingRate": _s(inst.funding_rate(T) or 0.0, 10),
                     "fundingRateTimestamp": str(T * 1000)} for T in reversed(times)]
        return {"category": cat, "list": rows}

    # ------------------------------------------------------------ orders

    def create_order(self, p: dict[str, str], partial: float | None = None) -> dict[str, Any]:
        """``POST /v5/order/create``: market orders only (``orderType`` Limit is refused with 110032).
        Answers what Bybit answers, the ids alone: the fill is read with ``/v5/order/realtime``."""
        cat = self.category(p)
        side = _need(p, "side")
        if side not in ("Buy", "Sell"):
            raise BybitError(10001, "params error: side invalid")
        if p.get("positionIdx") not in (None, "", "0"):
            raise BybitError(10001, "position idx not match position mode")  # one-way mode only
        if _need(p, "orderType") != "Market":
            raise BybitError(110032, "Illegal order: this simulator fills Market orders only")
        with self.state.lock:
            inst = self.inst(p)
            coid = p.get("orderLinkId") or ""
            if coid and self.state.reject_duplicate_client_ids and any(
                (m, inst.id, coid) in self.state.orders_by_coid for m in ("spot", "perp")
            ):
                raise BybitError(110072, "OrderLinkedID is duplicate")
            o = self._spot(inst, side, p, coid, partial) if cat == "spot" else self._linear(inst, side, p, coid, partial)
            return {"orderId": self.order_id(o), "orderLinkId": o.client_order_id}

    def _linear(self, inst: Instrument, side: str, p: dict[str, str], coid: str, partial: float | None) -> Order:
        bp = {"symbol": inst.id, "side": side.upper(), "type": "MARKET", "quantity": _need(p, "qty"),
              "reduceOnly": str(p.get("reduceOnly", "false")).lower()}
        if coid:
            bp["newClientOrderId"] = coid
        try:
            self.trading.place_order("perp", bp, partial)
        except BinanceError as e:
            raise translate(e, ORDER_CODES) from None
        return self.state.orders[-1]

    def _spot(self, inst: Instrument, side: str, p: dict[str, str], coid: str, partial: float | None) -> Order:
        st = self.state
        if not inst.has_data(st.t):
            raise BybitError(110066, "No trading is allowed at the current time")
        if p.get("reduceOnly") == "true":
            raise BybitError(10001, "params error: reduceOnly is not supported for spot")
        step, leg = self.spot_step(inst), inst.leg("spot")
        _, mid, _ = inst.quote("spot", st.t)
        unit = p.get("marketUnit") or ("quoteCoin" if side == "Buy" else "baseCoin")  # Bybit's defaults
        qty = _num(p, "qty")
        if qty <= 0:
            raise BybitError(170136, "Order quantity lower than the minimum.")
        if unit == "quoteCoin":
            quote = qty
            qty = math.floor(quote / leg.fill_price(mid, side.lower(), quote) / step + 1e-9) * step
        elif abs(qty / step - round(qty / step)) > 1e-6:
            raise BybitError(170137, "Order quantity has too many decimals.")
        qty = round(round(qty / step) * step, _dec(step))
        if qty <= 0:
            raise BybitError(170136, "Order quantity lower than the minimum.")
        if qty * mid < inst.spec.min_notional_usd:
            raise BybitError(170140, "Order value exceeded lower limit.")
        exe = qty if partial is None else round(math.floor(qty * partial / step + 1e-9) * step, _dec(step))
        price = _r8(leg.fill_price(mid, side.lower(), exe * mid))
        cost, fee_rate = _r8(exe * price), leg.taker_fee
        o = Order("spot", inst.id, st.take_id("spot"), coid, side.upper(), qty, exe, cost,
                  "FILLED" if exe == qty else "EXPIRED", st.ms, _dec(step))
        if exe > 0:
            if side == "Buy":  # the fee comes off the coin received, as on Bybit (USDT with spot_fee_in_quote)
                fee_q = _r8(cost * fee_rate) if st.spot_fee_in_quote else 0.0
                if st.available() + 1e-9 < cost + fee_q:
                    raise BybitError(170131, "Insufficient balance.")
                fee_b = 0.0 if st.spot_fee_in_quote else _r8(exe * fee_rate)
                st.cross_wallet = _r8(st.cross_wallet - cost - fee_q)
                st.spot_bal[inst.base] = _r8(st.spot_bal.get(inst.base, 0.0) + exe - fee_b)
                o.commission, o.commission_asset = (fee_q, QUOTE) if st.spot_fee_in_quote else (fee_b, inst.base)
            else:
                if st.spot_bal.get(inst.base, 0.0) + 1e-12 < exe:
                    raise BybitError(170131, "Insufficient balance.")
                fee = _r8(cost * fee_rate)
                st.spot_bal[inst.base] = _r8(st.spot_bal[inst.base] - exe)
                st.cross_wallet = _r8(st.cross_wallet + cost - fee)
                o.commission, o.commission_asset = fee, QUOTE
            o.trade_id = st.take_id("trade")
        if unit == "quoteCoin":
            self.quote_qty[o.order_id] = quote
        st.orders.append(o)
        st.orders_by_id[("spot", o.order_id)] = o
        st.orders_by_coid[("spot", inst.id, coid or str(o.order_id))] = o
        return o

    def order_wire(self, o: Order) -> dict[str, Any]:
        """Bybit's order JSON (``/v5/order/realtime`` and ``/history``)."""
        linear, exe = o.market == "perp", o.executed_qty
        quote = self.quote_qty.get(o.order_id) if not linear else None
        status = "Filled" if o.status == "FILLED" else "PartiallyFilledCanceled" if exe else "Cancelled"
        d: dict[str, Any] = {
            "orderId": self.order_id(o), "orderLinkId": o.client_order_id, "blockTradeId": "", "symbol": o.symbol,
            "price": "0", "qty": _s(quote if quote is not None else o.orig_qty, o.qdec if quote is None else 8),
            "side": o.side.capitalize(), "isLeverage": "" if linear else "0", "positionIdx": 0,
            "orderStatus": status, "cancelType": "UNKNOWN" if status == "Filled" else "CancelByUser",
            "rejectReason": "EC_NoError" if exe else "EC_NoImmediateQtyToFill", "avgPrice": _s(o.avg_price) if exe else "",
            "leavesQty": "0", "leavesValue": "0", "cumExecQty": _s(exe, o.qdec), "cumExecValue": _s(o.cum_quote),
            "cumExecFee": _s(o.commission), "timeInForce": "IOC", "orderType": "Market", "stopOrderType": "",
            "orderIv": "", "triggerPrice": "0", "takeProfit": "0", "stopLoss": "0", "tpTriggerBy": "",
            "slTriggerBy": "", "triggerDirection": 0, "triggerBy": "", "lastPriceOnCreated": _s(o.avg_price),
            "reduceOnly": o.reduce_only, "closeOnTrigger": False, "placeType": "", "smpType": "None",
            "smpGroup": 0, "smpOrderId": "", "createdTime": str(o.time_ms), "updatedTime": str(o.time_ms),
            "cumFeeDetail": {o.commission_asset: _s(o.commission)} if o.commission else {},
        }
        if linear:
            d |= {"tpslMode": "UNKNOWN", "tpLimitPrice": "0", "slLimitPrice": "0"}
        else:
            d["marketUnit"] = "quoteCoin" if quote is not None else "baseCoin"
        return d

    def _orders(self, p: dict[str, str], cat: str) -> list[Order]:
        """Orders of ``cat``, newest first, filtered as Bybit does (orderId before orderLinkId)."""
        market = "spot" if cat == "spot" else "perp"
        if p.get("orderId"):
            o = self.find_order(p["orderId"])
            found = [o] if o is not None and o.market == market else []
        else:
            found = [o for o in reversed(self.state.orders) if o.market == market]
            if p.get("orderLinkId"):
                found = [o for o in found if o.client_order_id == p["orderLinkId"]]
        return [o for o in found if not p.get("symbol") or o.symbol == p["symbol"]]

    def order_realtime(self, p: dict[str, str]) -> dict[str, Any]:
        """Open orders (a market order never rests, so none) and, asked by orderId or orderLinkId, any of
        the last 500 orders whatever their status."""
        cat = self.category(p)
        with self.state.lock:
            found = self._orders(p, cat)[:500] if p.get("orderId") or p.get("orderLinkId") else []
            chunk, nxt = page(found, p, 20, 50)
            return {"category": cat, "list": [self.order_wire(o) for o in chunk], "nextPageCursor": nxt}

    def order_history(self, p: dict[str, str]) -> dict[str, Any]:
        cat = self.category(p)
        with self.state.lock:
            lo, hi = self._window(p)
            found = [o for o in self._orders(p, cat) if lo <= o.time_ms <= hi]
            chunk, nxt = page(found, p, 20, 50)
            return {"category": cat, "list": [self.order_wire(o) for o in chunk], "nextPageCursor": nxt}

    def _window(self, p: dict[str, str]) -> tuple[int, int]:
        """Bybit's 7-day query window: startTime alone reaches 7 days on, endTime alone 7 days back,
        neither the last 7 days; a longer range is an error."""
        start, end = _int(p, "startTime"), _int(p, "endTime")
        if start is not None and end is not None:
            if end - start > WEEK_MS:
                raise BybitError(10001, "params error: The time range between startTime and endTime cannot exceed 7 days")
            return start, end
        if start is not None:
            return start, start + WEEK_MS
        end = self.state.ms if end is None else end
        return end - WEEK_MS, end

    # ------------------------------------------------------------ executions

    def executions(self, p: dict[str, str]) -> dict[str, Any]:
        """``/v5/execution/list``: trades (``execType`` Trade) and funding settlements (Funding; ``execFee``
        is what the account paid, negative when it received), newest first, 50 a page by default, at
        most 100 (ccxt's ``size`` parameter is not Bybit's and is ignored, as on Bybit)."""
        cat = self.category(p)
        st, kind = self.state, p.get("execType") or ""
        with st.lock:
            lo, hi = self._window(p)
            rows: list[tuple[int, int, dict[str, Any]]] = []
            if kind in ("", "Trade"):
                for o in self._orders(p, cat):
                    if o.executed_qty and lo <= o.time_ms <= hi:
                        rows.append((o.time_ms, o.trade_id, self._trade_row(o)))
            if kind in ("", "Funding") and cat == "linear" and not (p.get("orderId") or p.get("orderLinkId")):
                for r in st.income:
                    if r["incomeType"] == "FUNDING_FEE" and lo <= r["time"] <= hi and p.get("symbol", r["symbol"]) == r["symbol"]:
                        rows.append((r["time"], r["tranId"], self._funding_row(r)))
            rows.sort(key=lambda x: (x[0], x[1]), reverse=True)
            chunk, nxt = page([r for _, _, r in rows], p, 50, 100)
            return {"category": cat, "list": chunk, "nextPageCursor": nxt}

    def _trade_row(self, o: Order) -> dict[str, Any]:
        inst = self.state.instruments[o.symbol]
        row = {
            "symbol": o.symbol, "orderId": self.order_id(o), "orderLinkId": o.client_order_id,
            "side": o.side.capitalize(), "orderPrice": "0", "orderQty": _s(o.orig_qty, o.qdec), "leavesQty": "0",
            "orderType": "Market", "stopOrderType": "", "execFee": _s(o.commission), "execId": _uid(_EXEC_TAG, o.trade_id),
            "execPrice": _s(o.avg_price), "execQty": _s(o.executed_qty, o.qdec), "execType": "Trade",
            "execValue": _s(o.cum_quote), "execTime": str(o.time_ms), "isMaker": False,
            "feeRate": _s(inst.leg("spot" if o.market == "spot" else "perp").taker_fee), "tradeIv": "", "markIv": "",
            "markPrice": _s(inst.mark(o.time_ms // 1000)), "indexPrice": "", "underlyingPrice": "",
            "blockTradeId": "", "closedSize": "0", "seq": o.trade_id,
        }
        if o.market == "spot":
            return row | {"feeCurrency": o.commission_asset}
        return row | {"createType": "CreateByUser"}

    def _funding_row(self, r: dict[str, Any]) -> dict[str, Any]:
        inst, T = self.state.instruments[r["symbol"]], r["time"] // 1000
        size = sum(o.executed_qty * (1 if o.side == "BUY" else -1) for o in self.state.orders
                   if o.market == "perp" and o.symbol == inst.id and o.time_ms < r["time"])
        mark = inst.mark(T)
        return {
            "symbol": inst.id, "orderId": "", "orderLinkId": "", "side": "Buy" if size > 0 else "Sell",
            "orderPrice": "0", "orderQty": "0", "leavesQty": "0", "createType": "", "orderType": "UNKNOWN",
            "stopOrderType": "UNKNOWN", "execFee": _s(-float(r["income"])), "execId": _uid(_FUNDING_TAG, r["tranId"]),
            "execPrice": _s(mark), "execQty": _s(abs(size), inst.qdec), "execType": "Funding",
            "execValue": _s(abs(size) * mark), "execTime": str(r["time"]), "isMaker": False,
            "feeRate": _s(inst.funding_rate(T) or 0.0, 10), "tradeIv": "", "markIv": "", "markPrice": _s(mark),
            "indexPrice": "", "underlyingPrice": "", "blockTradeId": "", "closedSize": "0", "seq": r["tranId"],
        }

    # ------------------------------------------------------------ positions and account

    def _position_row(self, inst: Instrument) -> dict[str, Any]:
        st = self.state
        pos = st.positions.get(inst.id) or Position(inst.id)
        m, lev = st.pos_metrics(pos), st.leverage_of(inst.id)
        cum = sum(float(r["income"]) for r in st.income if r["symbol"] == inst.id)
        balance = pos.iso_wallet if m["iso"] else m["im"]
        return {
            "positionIdx": 0, "riskId": 1, "riskLimitValue": _s(st.max_notional(inst, lev), 0), "symbol": inst.id,
            "side": "" if not pos.amt else "Buy" if pos.amt > 0 else "Sell", "size": _s(abs(pos.amt), inst.qdec),
            "avgPrice": _s(pos.entry), "positionValue": _s(abs(pos.amt) * pos.entry), "tradeMode": 0,
            "positionStatus": "Normal", "autoAddMargin": 0, "adlRankIndicator": 2 if pos.amt else 0,
            "leverage": str(lev), "positionBalance": _s(balance), "markPrice": _s(m["mark"]),
            "liqPrice": _s(m["liq"]) if pos.amt and m["liq"] else "", "bustPrice": "",
            "positionMM": _s(m["mm"]), "positionIM": _s(m["im"]), "tpslMode": "Full", "takeProfit": "0",
            "stopLoss": "0", "trailingStop": "0", "unrealisedPnl": _s(m["upnl"]), "curRealisedPnl": _s(cum),
            "cumRealisedPnl": _s(cum), "seq": pos.update_ms, "isReduceOnly": False, "mmrSysUpdatedTime": "",
            "leverageSysUpdatedTime": "", "sessionAvgPrice": "", "createdTime": str(pos.update_ms),
            "updatedTime": str(pos.update_ms),
        }

    def position_list(self, p: dict[str, str]) -> dict[str, Any]:
        """``/v5/position/list``: the symbol's position whatever its size, or (``settleCoin``) every
        open position."""
        cat = self.category(p, ("linear",))
        with self.state.lock:
            if p.get("symbol"):
                rows = [self._position_row(self.inst(p))]
            elif p.get("settleCoin") or p.get("baseCoin"):
                rows = [self._position_row(self.state.instruments[s]) for s, pos in self.state.positions.items()
                        if pos.amt and p.get("baseCoin", self.state.instruments[s].base) == self.state.instruments[s].base]
            else:
                raise BybitError(10001, "params error: symbol or settleCoin is required")
            chunk, nxt = page(rows, p, 20, 200)
            return {"category": cat, "list": chunk, "nextPageCursor": nxt}

    def wallet_balance(self, p: dict[str, str]) -> dict[str, Any]:
        """The unified wallet: USDT (spot cash, perp margin, fees, P&L and funding, all one balance) and
        the spot coins."""
        if (p.get("accountType") or "UNIFIED") != "UNIFIED":
            raise BybitError(10001, "accountType only support UNIFIED")
        st = self.state
        with st.lock:
            im = mm = upnl = 0.0
            for pos in st.positions.values():
                if pos.amt:
                    m = st.pos_metrics(pos)
                    im += pos.iso_wallet if m["iso"] else m["im"]
                    mm, upnl = mm + m["mm"], upnl + m["upnl"]
            wallet = st.total_usdt()
            cum = sum(float(r["income"]) for r in st.income)
            coins = [self._coin(QUOTE, wallet, wallet + upnl, im, mm, upnl, cum)]
            total = wallet + upnl
            for coin, bal in sorted(st.spot_bal.items()):
                if coin == QUOTE or not bal or (p.get("coin") and coin not in p["coin"].split(",")):
                    continue
                inst = st.instruments.get(coin + QUOTE)
                value = bal * inst.spot(st.t) if inst and inst.has_data(st.t) else 0.0
                coins.append(self._coin(coin, bal, bal, 0.0, 0.0, 0.0, 0.0, value))
                total += value
            if p.get("coin"):
                coins = [c for c in coins if c["coin"] in p["coin"].split(",")]
            avail = st.available()
            return {"list": [{
                "accountType": "UNIFIED", "accountIMRate": _s(im / total if total else 0.0, 4),
                "accountMMRate": _s(mm / total if total else 0.0, 4), "accountLTV": "0",
                "totalEquity": _s(total), "totalWalletBalance": _s(total - upnl), "totalMarginBalance": _s(total),
                "totalAvailableBalance": _s(avail), "totalPerpUPL": _s(upnl), "totalInitialMargin": _s(im),
                "totalMaintenanceMargin": _s(mm), "accountIMRateByMp": _s(im / total if total else 0.0, 4),
                "accountMMRateByMp": _s(mm / total if total else 0.0, 4), "totalInitialMarginByMp": _s(im),
                "totalMaintenanceMarginByMp": _s(mm), "coin": coins,
            }]}

    @staticmethod
    def _coin(coin: str, wallet: float, equity: float, im: float, mm: float, upnl: float, cum: float,
              usd: float | None = None) -> dict[str, Any]:
        return {
            "coin": coin, "equity": _s(equity), "usdValue": _s(equity if usd is None else usd),
            "walletBalance": _s(wallet), "locked": "0", "spotHedgingQty": "0", "borrowAmount": "0",
            "availableToWithdraw": "", "accruedInterest": "0", "totalOrderIM": "0", "totalPositionIM": _s(im),
            "totalPositionMM": _s(mm), "unrealisedPnl": _s(upnl), "cumRealisedPnl": _s(cum), "bonus": "0",
            "marginCollateral": True, "collateralSwitch": True, "availableToBorrow": "", "spotBorrow": "0",
        }

    def set_leverage(self, p: dict[str, str]) -> dict[str, Any]:
        self.category(p, ("linear",))
        buy, sell = _num(p, "buyLeverage"), _num(p, "sellLeverage")
        if buy != sell:
            raise BybitError(10001, "params error: buyLeverage must be equal to sellLeverage in one-way mode")
        if buy != int(buy):
            raise BybitError(10001, "params error: leverage invalid (whole numbers only in this simulator)")
        with self.state.lock:
            inst = self.inst(p)
            if self.state.leverage_of(inst.id) == int(buy):
                raise BybitError(110043, "Set leverage not modified")
            self._binance(self.accounts.change_leverage, LEVERAGE_CODES, inst.id, int(buy))
        return {}

    def set_margin_mode(self, p: dict[str, str]) -> tuple[dict[str, Any], str]:
        """The unified account's mode: REGULAR_MARGIN (cross) or ISOLATED_MARGIN, for every symbol."""
        mode = {"REGULAR_MARGIN": CROSSED, "ISOLATED_MARGIN": ISOLATED}.get(_need(p, "setMarginMode"))
        st = self.state
        with st.lock:
            if mode is None:
                raise BybitError(3400045, "Set margin mode failed",
                                 ext={"reasons": [{"reasonCode": "3400000", "reasonMsg": "not supported"}]})
            current = {st.margin_type_of(s) for s in st.instruments} | {st.default_margin_type}
            if current == {mode}:
                return {"reasons": []}, "Request accepted"
            if any(pos.amt for pos in st.positions.values()):
                raise BybitError(3400045, "Set margin mode failed", ext={"reasons": [
                    {"reasonCode": "3400207", "reasonMsg": "You have open positions; close them first."}]})
            st.default_margin_type = mode
            st.margin_type.clear()
        return {"reasons": []}, "Request accepted"

    def add_margin(self, p: dict[str, str]) -> dict[str, Any]:
        """``/v5/position/add-margin``: ``margin`` > 0 adds isolated margin, < 0 takes it back."""
        self.category(p, ("linear",))
        margin = _num(p, "margin")
        with self.state.lock:
            inst = self.inst(p)
            self._binance(self.accounts.position_margin, MARGIN_CODES, inst.id, abs(margin), 1 if margin > 0 else 2)
            row = self._position_row(inst)
            keep = ("positionIdx", "riskId", "riskLimitValue", "size", "avgPrice", "liqPrice", "bustPrice",
                    "markPrice", "positionValue", "leverage", "autoAddMargin", "positionStatus", "positionIM",
                    "positionMM", "unrealisedPnl", "cumRealisedPnl", "stopLoss", "takeProfit", "trailingStop",
                    "createdTime", "updatedTime")
            return {"category": "linear", "symbol": inst.id} | {k: row[k] for k in keep}

    @staticmethod
    def _binance(fn: Callable[..., Any], table: dict[int, tuple[int, str]], *args: Any) -> Any:
        try:
            return fn(*args)
        except BinanceError as e:
            raise translate(e, table) from None

    def account_info(self) -> dict[str, Any]:
        with self.state.lock:
            iso = self.state.default_margin_type == ISOLATED
            return {"unifiedMarginStatus": 6, "marginMode": "ISOLATED_MARGIN" if iso else "REGULAR_MARGIN",
                    "isMasterTrader": False, "spotHedgingStatus": "OFF", "updatedTime": str(self.state.ms),
                    "dcpStatus": "OFF", "timeWindow": 10, "smpGroup": 0}

    def fee_rate(self, p: dict[str, str]) -> dict[str, Any]:
        cat = self.category(p)
        with self.state.lock:
            insts = [self.inst(p)] if p.get("symbol") else list(self.state.instruments.values())
            leg = "spot" if cat == "spot" else "perp"
            maker = "0.001" if cat == "spot" else "0.0002"  # unused here (market orders only): Bybit's VIP 0
            return {"list": [{"symbol": i.id, "baseCoin": "" if cat == "linear" else i.base,
                              "takerFeeRate": _s(i.leg(leg).taker_fee), "makerFeeRate": maker} for i in insts]}
