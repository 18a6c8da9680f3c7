"""OKX V5's PRIVATE API over a `SimState`: one unified trading account ("Spot and futures" mode, ``acctLv`` 2,
one-way ``net_mode`` positions), in OKX's wire format, with OKX's request signature checked.

Auth (`check_auth`): every private request carries ``OK-ACCESS-KEY``, ``OK-ACCESS-PASSPHRASE``,
``OK-ACCESS-TIMESTAMP`` (ISO 8601 with ms, wall clock: within 30 s unless ``check_timestamp=False``) and
``OK-ACCESS-SIGN`` = base64(HMAC-SHA256(secret, timestamp + method + path + ("?" + query of a GET | the JSON
body of a POST))). A missing header answers 50103 / 50104 / 50106 / 50107, a wrong key 50111, a wrong passphrase
50105, a stale or unreadable timestamp 50102 / 50112, a wrong signature 50113 (HTTP 401; ccxt:
AuthenticationError, InvalidNonce).

The account (as the Bybit simulator's unified account): one USDT cash balance (the `SimState` cross wallet plus
every isolated position's margin) pays spot buys, receives spot sells, margins swaps and futures and takes their
fees, P&L, funding and deliveries; spot coins sit beside it (not collateral). `OkxTrading` answers:

- ``GET /account/config``; ``GET /account/balance`` (``details`` per currency: ``cashBal``, ``eq``, ``availBal``,
  ``availEq``, ``frozenBal``, ``isoEq``, ``upl``);
- ``POST /account/set-leverage`` (``instId``, ``lever``, ``mgnMode`` isolated | cross: per instrument; refused for
  SPOT, and while the instrument holds a position in the other mode);
- ``POST /trade/order`` and ``/trade/batch-orders`` (ccxt's default, a JSON list): MARKET orders only (any other
  ``ordType`` 51000); ``sz`` in CONTRACTS for SWAP / FUTURES (a multiple of ``lotSz``: 51121; at least ``minSz``:
  51020), in coins for SPOT (a market buy spends USDT unless ``tgtCcy=base_ccy``); ``tdMode`` cash (SPOT) or
  isolated | cross; ``clOrdId`` 1-32 letters and digits, unique (51016); ``reduceOnly`` (51169 with nothing to
  reduce). Fills as the Binance simulator's (half-spread + square-root impact, taker fees; a spot buy pays its fee
  in the coin received); 51008 when the balance or margin is short, 51004 over the leverage tier. The answer
  carries the ids only (``sCode`` "0"); a refusal answers ``code`` "1" with the reason in ``sCode`` / ``sMsg``;
- ``GET /trade/order`` by ``ordId`` or ``clOrdId`` (delivered contracts too; 51603 unknown): ``state`` filled, or
  canceled with ``accFillSz`` what a ``partial_fill_next`` fault let through; ``avgPx``; ``fee`` NEGATIVE = paid
  (OKX's convention), ``feeCcy``; ``GET /trade/fills`` (3 days) and ``/trade/fills-history`` (3 months);
- ``GET /account/positions``: ``pos`` signed contracts, ``avgPx``, ``margin`` (isolated margin), ``upl``,
  ``liqPx``, ``mmr``, ``lever``, ``markPx``; ``POST /account/position/margin-balance`` (``type`` add | reduce);
- ``GET /account/bills`` (7 days) and ``/account/bills-archive`` (3 months), newest first: ``type`` 2 trade
  (subType 1 buy, 2 sell, 3 / 4 open long / short, 5 / 6 close long / short), 8 funding (173 expense, 174 income;
  ``px`` the rate, ``sz`` the position in contracts, ``balChg`` the amount, also ``posBalChg`` for an isolated
  position, whose margin takes it), 3 delivery (112 / 113 delivery long / short: ``sz`` contracts at ``px``, the
  delivery price; ``pnl``), 6 margin transfer (160 add / 161 reduce); filters ``instType``, ``instId``, ``ccy``,
  ``mgnMode``, ``type``, ``subType``, ``begin`` / ``end`` (ms, inclusive), ``after`` / ``before`` (bill id),
  ``limit`` (≤ 100).

Funding settles on open swap positions at the swaps' ``fundingTime`` (8 h); futures deliver at their
``expTime`` at the index (the coin's spot): the position closes, its margin and P&L return to the cash balance.
Faults (``/_sim/faults``): ``reject_next`` (51008 unless ``reject_code``), ``partial_fill_next``,
``timeout_after_execute_next`` (filled, answered ``timeout_delay_s`` late), and the public ones.

Not simulated: limit and algo orders, hedge (long/short) mode, a cross and an isolated position side by side in
one instrument (one position per instrument: its mode is the last one set while flat), liquidations, borrowing,
the delivery fee, ``/account/interest-rate`` and the funding account (``/asset/*``). A bill's ``bal`` is the cash
balance when the bill was written (funding and delivery bills: at the first request after the settlement)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.sim.accounts import AccountsApi
from basis_mcp.sim.binance import HTML_503
from basis_mcp.sim.instruments import CROSSED, ISOLATED, QUOTE, BinanceError, Order, Position, Quarterly, _r8
from basis_mcp.sim.okx_api import OkxError, _s
from basis_mcp.sim.okx_market import OkxMarket, ct_val, lot, okx_id
from basis_mcp.sim.state import SimState
from basis_mcp.sim.trading import TradingApi

PREFIX = "/api/v5"
CLIENT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
TIMESTAMP_WINDOW_S = 30.0
DAY_MS = 86_400_000
FIRST_BILL = 700_000_000_000_000_001
# refusals of the reused Binance families -> OKX's sCode / code and message
CODES = {
    -2019: ("51008", "Order failed. Insufficient USDT margin in account"),
    -2010: ("51008", "Order failed. Insufficient balance in account"),
    -2027: ("51004", "Order failed. The order amount exceeds the current tier limit."),
    -2022: ("51169", "Order failed because you don't have any positions in this direction for this contract to reduce or close."),
    -1013: ("51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist."),
    -4028: ("59102", "Leverage exceeds the maximum leverage. Please adjust the leverage."),
    -4049: ("59300", "Margin call failed. Position does not exist."),
    -4054: ("59300", "Margin call failed. Position does not exist."),
    -4050: ("51008", "Insufficient USDT balance to add margin."),
    -4051: ("59301", "Margin adjustment failed for exceeding the max limit."),
}


def okx_error(e: BinanceError) -> OkxError:
    code, msg = CODES.get(e.code, ("51000", f"Parameter error: {e.msg}"))
    return OkxError(code, msg)


def _need(p: dict[str, Any], name: str) -> str:
    v = p.get(name)
    if v is None or v == "":
        raise OkxError("50014", f"Parameter {name} can not be empty.")
    return str(v)


def _num(p: dict[str, Any], name: str) -> float:
    try:
        v = float(_need(p, name))
    except ValueError:
        raise OkxError("51000", f"Parameter {name} error") from None
    if not math.isfinite(v) or v <= 0:
        raise OkxError("51000", f"Parameter {name} error")
    return v


@dataclass
class OkxOrder:
    """What OKX shows of an order beyond the `Order` the shared books keep."""

    kind: str  # SPOT | SWAP | FUTURES
    inst_id: str
    td_mode: str
    tgt_ccy: str
    sz: str  # as asked: contracts, coins, or (a quote_ccy spot buy) USDT
    ct: float  # coins per contract (1 for SPOT)
    lever: str
    pnl: float = 0.0
    bill_id: str = ""
    sub_type: str = ""


class OkxTrading:
    """OKX's private endpoints over one `SimState` (module docstring)."""

    def __init__(self, state: SimState, market: OkxMarket | None = None):
        self.state = state
        self.market = market or OkxMarket(state)
        self.fills = TradingApi(state)  # its perp fill: margin, fees, realised P&L, reduce-only
        self.accounts = AccountsApi(state)
        self.orders: dict[tuple[str, int], OkxOrder] = {}
        self.by_coid: dict[str, Order] = {}
        self.bills: list[dict[str, Any]] = []
        self._income_seen = 0
        self._bill_seq = FIRST_BILL

    # ------------------------------------------------------------ bills

    def _bill(self, kind: str, inst_id: str, ccy: str, typ: str, sub: str, ts: int, bal_chg: float, *,
              pos_chg: float = 0.0, pnl: float = 0.0, fee: float = 0.0, sz: str = "", px: str = "", mode: str = "",
              o: Order | None = None) -> dict[str, Any]:
        st = self.state
        bal = st.total_usdt() if ccy == QUOTE else st.spot_bal.get(ccy, 0.0)
        row = {"bal": _s(bal), "balChg": _s(bal_chg), "billId": str(self._bill_seq), "ccy": ccy,
               "clOrdId": o.client_order_id if o else "", "execType": "T" if o else "", "fee": _s(fee), "from": "",
               "instId": inst_id, "instType": kind, "interest": "0", "mgnMode": mode, "notes": "",
               "ordId": str(o.order_id) if o else "", "pnl": _s(pnl), "posBal": "", "posBalChg": _s(pos_chg),
               "px": px, "subType": sub, "sz": sz, "tag": "", "to": "", "tradeId": str(o.trade_id) if o else "",
               "ts": str(ts), "type": typ}
        self._bill_seq += 1
        self.bills.append(row)
        return row

    def _held(self, symbol: str, before_ms: int | None = None) -> float:
        """Signed coins the account's orders left in a contract (up to ``before_ms``)."""
        return round(sum(o.executed_qty * (1 if o.side == "BUY" else -1) for o in self.state.orders
                         if o.market == "perp" and o.symbol == symbol and (before_ms is None or o.time_ms < before_ms)), 12)

    def sync(self) -> None:
        """Write the bills of the funding settlements and deliveries the state booked since the last call."""
        st = self.state
        for r in st.income[self._income_seen:]:
            amount, kind = float(r["income"]), r["incomeType"]
            if kind == "FUNDING_FEE":
                inst, T = st.instruments[r["symbol"]], r["time"] // 1000
                iso = st.margin_type_of(inst.id) == ISOLATED
                size = abs(self._held(inst.id, r["time"])) / ct_val(inst, "SWAP")
                self._bill("SWAP", okx_id(inst, "SWAP"), QUOTE, "8", "173" if amount < 0 else "174", r["time"], amount,
                           pos_chg=amount if iso else 0.0, pnl=amount, sz=_s(size), px=_s(inst.funding_rate(T) or 0.0, 12),
                           mode="isolated" if iso else "cross")
            elif kind == "DELIVERED_SETTELMENT":
                q = st.contract(r["symbol"])
                held = self._held(q.id)
                self._bill("FUTURES", okx_id(q, "FUTURES"), QUOTE, "3", "112" if held > 0 else "113", r["time"], amount,
                           pnl=amount, sz=_s(abs(held) / ct_val(q, "FUTURES")), px=_s(q.delivery_price()),
                           mode="isolated" if st.margin_type_of(q.id) == ISOLATED else "cross")
        self._income_seen = len(st.income)

    def list_bills(self, p: dict[str, str], archive: bool) -> list[dict[str, Any]]:
        """``/account/bills`` (7 days) or ``/account/bills-archive`` (3 months): newest first."""
        st = self.state
        limit = max(1, min(int(p.get("limit") or 100), 100))
        ints = {k: int(p[k]) for k in ("begin", "end", "after", "before") if p.get(k)}
        with st.lock:
            self.sync()
            lo = max(st.ms - (90 if archive else 7) * DAY_MS, ints.get("begin", 0))
            hi = ints.get("end", st.ms)
            keep = []
            for b in reversed(self.bills):
                ts, bid = int(b["ts"]), int(b["billId"])
                if not lo <= ts <= hi or bid >= ints.get("after", 2**63) or bid <= ints.get("before", 0):
                    continue
                if any(p.get(k) and p[k] != b[k] for k in ("instType", "instId", "ccy", "mgnMode", "type", "subType")):
                    continue
                keep.append(b)
                if len(keep) == limit:
                    break
            return keep

    # ------------------------------------------------------------ orders

    def place(self, body: dict[str, Any], partial: float | None = None) -> dict[str, Any]:
        """One market order, executed now; its ack row. `OkxError` if refused (nothing executed)."""
        st = self.state
        with st.lock:
            self.sync()
            inst, kind = self.market.inst({"instId": _need(body, "instId")}, ("SPOT", "SWAP", "FUTURES"))
            side = body.get("side")
            if side not in ("buy", "sell"):
                raise OkxError("51000", "Parameter side error")
            if body.get("ordType") != "market":
                raise OkxError("51000", "Parameter ordType error (this simulator fills market orders only)")
            td = body.get("tdMode")
            if td not in (("cash",) if kind == "SPOT" else ("isolated", "cross")):
                raise OkxError("51000", "Parameter tdMode error")
            if body.get("posSide") not in (None, "", "net"):
                raise OkxError("51000", "Parameter posSide error")
            coid = str(body.get("clOrdId") or "")
            if coid and not CLIENT_ID.match(coid):
                raise OkxError("51000", "Parameter clOrdId error")
            if coid and st.reject_duplicate_client_ids and coid in self.by_coid:
                raise OkxError("51016", "Duplicated client order ID")
            if not inst.has_data(st.t):
                raise okx_error(BinanceError(-1013, "Market is closed."))
            reduce = str(body.get("reduceOnly", "false")).lower() == "true"
            before = len(st.income)
            try:
                if kind == "SPOT":
                    o, facts = self._spot(inst, side, body, coid, partial)
                else:
                    o, facts = self._contract(inst, kind, side, _num(body, "sz"), td, coid, reduce, partial)
            except BinanceError as e:
                raise okx_error(e) from None
            facts.pnl = sum(float(r["income"]) for r in st.income[before:] if r["incomeType"] == "REALIZED_PNL")
            self._income_seen = max(self._income_seen, len(st.income))  # trades book no funding or delivery
            st.orders.append(o)
            st.orders_by_id[(o.market, o.order_id)] = o
            st.orders_by_coid[(o.market, inst.id, coid or str(o.order_id))] = o
            self.orders[(o.market, o.order_id)] = facts
            if coid:
                self.by_coid[coid] = o
            if o.executed_qty:
                self._trade_bills(o, facts, inst)
            return {"clOrdId": coid, "ordId": str(o.order_id), "tag": "", "ts": str(st.ms), "sCode": "0",
                    "sMsg": "Order placed"}

    def _contract(self, inst: Any, kind: str, side: str, sz: float, td: str, coid: str, reduce: bool,
                  partial: float | None) -> tuple[Order, OkxOrder]:
        st = self.state
        lot_sz, min_sz = lot(inst, kind)
        steps = sz / lot_sz
        if abs(steps - round(steps)) > 1e-6:
            raise OkxError("51121", f"Order quantity must be a multiple of the lot size ({lot_sz:g} contracts).")
        n = round(round(steps) * lot_sz, 8)
        if n + 1e-12 < min_sz:
            raise OkxError("51020", "Your order should meet or exceed the minimum order amount.")
        mode = ISOLATED if td == "isolated" else CROSSED
        held = st.positions.get(inst.id) or Position(inst.id)
        if st.margin_type_of(inst.id) != mode:
            if held.amt:
                raise OkxError("51000", "Parameter tdMode error (a cross and an isolated position in one instrument are "
                                        "not simulated)")
            st.margin_type[inst.id] = mode
        ct = ct_val(inst, kind)
        exe_n = n if partial is None else round(math.floor(n * partial / lot_sz + 1e-9) * lot_sz, 8)
        qty, exe = round(n * ct, 12), round(exe_n * ct, 12)
        _, mid, _ = inst.quote("perp", st.t)
        leg = inst.leg("perp")
        price = _r8(leg.fill_price(mid, side, exe * mid))
        o = Order("perp", inst.id, st.take_id("perp"), coid, side.upper(), qty, exe, _r8(exe * price),
                  "FILLED" if exe_n == n else "CANCELED", st.ms, 12, reduce)
        closing = bool(held.amt) and (held.amt > 0) != (side == "buy")
        sub = ("6" if side == "buy" else "5") if closing else ("3" if side == "buy" else "4")
        if exe > 0:
            o.trade_id = st.take_id("trade")
            self.fills._fill_perp(inst, o, leg)
        elif reduce:
            self.fills._check_reduce_only(inst.id, o.side, qty)
        return o, OkxOrder(kind, okx_id(inst, kind), td, "", _s(n), ct, str(st.leverage_of(inst.id)), sub_type=sub)

    def _spot(self, inst: Any, side: str, body: dict[str, Any], coid: str, partial: float | None) -> tuple[Order, OkxOrder]:
        st = self.state
        lot_sz, min_sz = lot(inst, "SPOT")
        _, mid, _ = inst.quote("spot", st.t)
        leg = inst.leg("spot")
        tgt = body.get("tgtCcy") or ("quote_ccy" if side == "buy" else "base_ccy")
        sz = _num(body, "sz")
        if tgt == "quote_ccy":
            qty = math.floor(sz / leg.fill_price(mid, side, sz) / lot_sz + 1e-9) * lot_sz
        elif tgt == "base_ccy":
            if abs(sz / lot_sz - round(sz / lot_sz)) > 1e-6:
                raise OkxError("51121", f"Order quantity must be a multiple of the lot size ({lot_sz:g}).")
            qty = round(sz / lot_sz) * lot_sz
        else:
            raise OkxError("51000", "Parameter tgtCcy error")
        qty = round(qty, 10)
        if qty + 1e-12 < min_sz:
            raise OkxError("51020", "Your order should meet or exceed the minimum order amount.")
        exe = qty if partial is None else round(math.floor(qty * partial / lot_sz + 1e-9) * lot_sz, 10)
        price = _r8(leg.fill_price(mid, side, exe * mid))
        cost, base = _r8(exe * price), inst.base
        o = Order("spot", inst.id, st.take_id("spot"), coid, side.upper(), qty, exe, cost,
                  "FILLED" if exe == qty else "CANCELED", st.ms, 10)
        if exe > 0:
            if side == "buy":
                if st.available() + 1e-9 < cost:
                    raise OkxError("51008", f"Order failed. Insufficient {QUOTE} balance in account")
                fee = _r8(exe * leg.taker_fee)
                st.cross_wallet = _r8(st.cross_wallet - cost)
                st.spot_bal[base] = _r8(st.spot_bal.get(base, 0.0) + exe - fee)
                o.commission, o.commission_asset = fee, base
            else:
                if st.spot_bal.get(base, 0.0) + 1e-12 < exe:
                    raise OkxError("51008", f"Order failed. Insufficient {base} balance in account")
                fee = _r8(cost * leg.taker_fee)
                st.spot_bal[base] = _r8(st.spot_bal[base] - exe)
                st.cross_wallet = _r8(st.cross_wallet + cost - fee)
                o.commission, o.commission_asset = fee, QUOTE
            o.trade_id = st.take_id("trade")
        return o, OkxOrder("SPOT", okx_id(inst, "SPOT"), "cash", tgt, _s(sz), 1.0, "", sub_type="1" if side == "buy" else "2")

    def _trade_bills(self, o: Order, f: OkxOrder, inst: Any) -> None:
        st, buy = self.state, o.side == "BUY"
        if f.kind == "SPOT":  # one bill per currency: the coin, then USDT
            fee_coin = o.commission if buy else 0.0
            self._bill("SPOT", f.inst_id, inst.base, "2", f.sub_type, st.ms, (o.executed_qty - fee_coin) if buy else -o.executed_qty,
                       fee=-fee_coin, sz=_s(o.executed_qty), px=_s(o.avg_price), mode="", o=o)
            row = self._bill("SPOT", f.inst_id, QUOTE, "2", f.sub_type, st.ms, -o.cum_quote if buy else o.cum_quote - o.commission,
                             fee=0.0 if buy else -o.commission, sz=_s(o.executed_qty), px=_s(o.avg_price), o=o)
        else:
            pos = st.positions.get(inst.id) or Position(inst.id)
            iso = st.margin_type_of(inst.id) == ISOLATED
            row = self._bill(f.kind, f.inst_id, QUOTE, "2", f.sub_type, st.ms, f.pnl - o.commission, pnl=f.pnl,
                             fee=-o.commission, sz=_s(o.executed_qty / f.ct), px=_s(o.avg_price),
                             mode="isolated" if iso else "cross", o=o)
            row["posBal"] = _s(pos.iso_wallet) if iso else ""
        f.bill_id = row["billId"]

    def order_wire(self, o: Order) -> dict[str, Any]:
        """OKX's order JSON (``/trade/order``)."""
        f = self.orders[(o.market, o.order_id)]
        filled = o.executed_qty / f.ct
        avg = _s(o.avg_price) if o.executed_qty else ""
        return {
            "accFillSz": _s(filled), "algoClOrdId": "", "algoId": "", "attachAlgoClOrdId": "", "attachAlgoOrds": [],
            "avgPx": avg, "cTime": str(o.time_ms), "cancelSource": "", "cancelSourceReason": "", "category": "normal",
            "ccy": "", "clOrdId": o.client_order_id, "fee": _s(-o.commission), "feeCcy": o.commission_asset,
            "fillPx": avg, "fillSz": _s(filled), "fillTime": str(o.time_ms) if o.executed_qty else "",
            "instId": f.inst_id, "instType": f.kind, "isTpLimit": "false", "lever": f.lever,
            "linkedAlgoOrd": {"algoId": ""}, "ordId": str(o.order_id), "ordType": "market", "pnl": _s(f.pnl),
            "posSide": "net", "px": "", "pxType": "", "pxUsd": "", "pxVol": "", "quickMgnType": "", "rebate": "0",
            "rebateCcy": QUOTE, "reduceOnly": "true" if o.reduce_only else "false", "side": o.side.lower(),
            "slOrdPx": "", "slTriggerPx": "", "slTriggerPxType": "", "source": "",
            "state": "filled" if o.status == "FILLED" else "canceled", "stpId": "", "stpMode": "cancel_maker",
            "sz": f.sz, "tag": "", "tdMode": f.td_mode, "tgtCcy": f.tgt_ccy, "tpOrdPx": "", "tpTriggerPx": "",
            "tpTriggerPxType": "", "tradeId": str(o.trade_id) if o.executed_qty else "", "uTime": str(o.time_ms),
        }

    def get_order(self, p: dict[str, str]) -> list[dict[str, Any]]:
        st = self.state
        with st.lock:
            inst, _ = self.market.inst({"instId": _need(p, "instId")}, ("SPOT", "SWAP", "FUTURES"), delisted=True)
            if p.get("ordId"):
                n = int(p["ordId"]) if p["ordId"].isdigit() else -1
                o = st.orders_by_id.get(("spot", n)) or st.orders_by_id.get(("perp", n))
            elif p.get("clOrdId"):
                o = self.by_coid.get(p["clOrdId"])
            else:
                raise OkxError("51003", "Either client order ID or order ID is required.")
            if o is None or o.symbol != inst.id or (o.market, o.order_id) not in self.orders:
                raise OkxError("51603", "Order does not exist")
            return [self.order_wire(o)]

    def list_fills(self, p: dict[str, str], history: bool) -> list[dict[str, Any]]:
        """``/trade/fills`` (3 days) and ``/trade/fills-history`` (3 months, ``instType`` required): newest first."""
        st = self.state
        if history:
            _need(p, "instType")
        limit = max(1, min(int(p.get("limit") or 100), 100))
        with st.lock:
            lo = max(st.ms - (90 if history else 3) * DAY_MS, int(p.get("begin") or 0))
            hi = int(p.get("end") or st.ms)
            out = []
            for o in reversed(st.orders):
                f = self.orders.get((o.market, o.order_id))
                if f is None or not o.executed_qty or not lo <= o.time_ms <= hi:
                    continue
                if any(p.get(k) and p[k] != v for k, v in (("instType", f.kind), ("instId", f.inst_id),
                                                            ("ordId", str(o.order_id)))):
                    continue
                if p.get("after") and int(f.bill_id) >= int(p["after"]) or p.get("before") and int(f.bill_id) <= int(p["before"]):
                    continue
                inst = self.market.inst({"instId": f.inst_id}, ("SPOT", "SWAP", "FUTURES"), delisted=True)[0]
                t = o.time_ms // 1000
                out.append({
                    "instType": f.kind, "instId": f.inst_id, "tradeId": str(o.trade_id), "ordId": str(o.order_id),
                    "clOrdId": o.client_order_id, "billId": f.bill_id, "subType": f.sub_type, "tag": "",
                    "fillPx": _s(o.avg_price), "fillSz": _s(o.executed_qty / f.ct), "fillIdxPx": _s(inst.spot(t)),
                    "fillPnl": _s(f.pnl), "fillPxVol": "", "fillPxUsd": "", "fillMarkVol": "", "fillFwdPx": "",
                    "fillMarkPx": "" if f.kind == "SPOT" else _s(inst.mark(t)), "side": o.side.lower(), "posSide": "net",
                    "execType": "T", "feeCcy": o.commission_asset, "fee": _s(-o.commission), "ts": str(o.time_ms),
                    "fillTime": str(o.time_ms), "feeRate": _s(-inst.leg("spot" if f.kind == "SPOT" else "perp").taker_fee),
                })
                if len(out) == limit:
                    break
            return out

    # ------------------------------------------------------------ account

    def config(self, p: dict[str, str]) -> list[dict[str, Any]]:
        return [{"acctLv": "2", "acctStpMode": "cancel_maker", "autoLoan": False, "ctIsoMode": "automatic",
                 "enableSpotBorrow": False, "greeksType": "PA", "ip": "", "kycLv": "1", "label": "basis-mcp sim",
                 "level": "Lv1", "levelTmp": "", "liquidationGear": "-1", "mainUid": "44705892343619584",
                 "mgnIsoMode": "automatic", "opAuth": "0", "perm": "read_only,trade", "posMode": "net_mode",
                 "roleType": "0", "settleCcy": QUOTE, "settleCcyList": [QUOTE], "spotBorrowAutoRepay": False,
                 "spotOffsetType": "", "spotRoleType": "0", "spotTraderInsts": [], "traderInsts": [], "type": "0",
                 "uid": "44705892343619584"}]

    def balance(self, p: dict[str, str]) -> list[dict[str, Any]]:
        st = self.state
        want = set(p["ccy"].split(",")) if p.get("ccy") else None
        with st.lock:
            upl = iso_eq = frozen = mm = im = 0.0
            for pos in st.positions.values():
                if pos.amt:
                    m = st.pos_metrics(pos)
                    upl, mm = upl + m["upnl"], mm + m["mm"]
                    im += pos.iso_wallet if m["iso"] else m["im"]
                    iso_eq += pos.iso_wallet + m["upnl"] if m["iso"] else 0.0
                    frozen += pos.iso_wallet if m["iso"] else m["im"]
            cash, avail, ms = st.total_usdt(), st.available(), str(st.ms)

            def row(ccy: str, bal: float, eq: float, free: float, usd: float, **kw: str) -> dict[str, Any]:
                return {"availBal": _s(free), "availEq": _s(free), "borrowFroz": "", "cashBal": _s(bal), "ccy": ccy,
                        "crossLiab": "", "disEq": _s(usd), "eq": _s(eq), "eqUsd": _s(usd), "fixedBal": "0",
                        "frozenBal": _s(max(bal - free, 0.0)), "imr": "", "interest": "", "isoEq": "0", "isoLiab": "",
                        "isoUpl": "0", "liab": "", "maxLoan": "", "mgnRatio": "", "mmr": "", "notionalLever": "",
                        "ordFrozen": "0", "rewardBal": "0", "spotInUseAmt": "", "spotIsoBal": "0", "stgyEq": "0",
                        "twap": "0", "uTime": ms, "upl": "0", "uplLiab": ""} | kw
            details = [row(QUOTE, cash, cash + upl, avail, cash + upl, isoEq=_s(iso_eq), upl=_s(upl), frozenBal=_s(frozen))]
            total = cash + upl
            for coin, bal in sorted(st.spot_bal.items()):
                if coin == QUOTE or not bal:
                    continue
                inst = st.instruments.get(coin + QUOTE)
                usd = bal * inst.spot(st.t) if inst and inst.has_data(st.t) else 0.0
                details.append(row(coin, bal, bal, bal, usd))
                total += usd
            details = [d for d in details if want is None or d["ccy"] in want]
            return [{"adjEq": "", "borrowFroz": "", "details": details, "imr": _s(im), "isoEq": _s(iso_eq),
                     "mgnRatio": _s(total / mm) if mm else "", "mmr": _s(mm), "notionalUsd": "", "ordFroz": "0",
                     "totalEq": _s(total), "uTime": ms, "upl": _s(upl)}]

    def _position_row(self, pos: Position) -> dict[str, Any]:
        st = self.state
        inst = st.contract(pos.symbol)
        kind = "FUTURES" if isinstance(inst, Quarterly) else "SWAP"
        m, ct = st.pos_metrics(pos), ct_val(inst, kind)
        mode = "isolated" if m["iso"] else "cross"
        margin = pos.iso_wallet if m["iso"] else m["im"]
        equity = margin + m["upnl"]
        return {
            "adl": "1", "availPos": "", "avgPx": _s(pos.entry), "baseBal": "", "baseBorrowed": "", "baseInterest": "",
            "bePx": _s(pos.entry), "bizRefId": "", "bizRefType": "", "cTime": str(pos.update_ms), "ccy": QUOTE,
            "closeOrderAlgo": [], "deltaBS": "", "deltaPA": "", "fee": "0", "fundingFee": "0", "gammaBS": "",
            "gammaPA": "", "idxPx": _s(inst.spot(st.t)) if inst.has_data(st.t) else "", "imr": "" if m["iso"] else _s(m["im"]),
            "instId": okx_id(inst, kind), "instType": kind, "interest": "", "last": _s(m["mark"]),
            "lever": str(st.leverage_of(pos.symbol)), "liab": "", "liabCcy": "", "liqPenalty": "0",
            "liqPx": _s(m["liq"]) if m["liq"] else "", "margin": _s(pos.iso_wallet) if m["iso"] else "",
            "markPx": _s(m["mark"]), "mgnMode": mode, "mgnRatio": _s(equity / m["mm"]) if m["mm"] else "",
            "mmr": _s(m["mm"]), "notionalUsd": _s(abs(m["notional"])), "optVal": "", "pendingCloseOrdLiabVal": "",
            "pnl": "0", "pos": _s(pos.amt / ct), "posCcy": "", "posId": str(abs(hash(pos.symbol)) % 10**18),
            "posSide": "net", "quoteBal": "", "quoteBorrowed": "", "quoteInterest": "", "realizedPnl": "0",
            "spotInUseAmt": "", "spotInUseCcy": "", "thetaBS": "", "thetaPA": "", "tradeId": "",
            "uTime": str(pos.update_ms), "upl": _s(m["upnl"]), "uplLastPx": _s(m["upnl"]),
            "uplRatio": _s(m["upnl"] / margin, 6) if margin else "0", "usdPx": "", "vegaBS": "", "vegaPA": "",
        }

    def positions(self, p: dict[str, str]) -> list[dict[str, Any]]:
        st = self.state
        ids = set(p["instId"].split(",")) if p.get("instId") else None
        with st.lock:
            self.sync()
            rows = [self._position_row(pos) for _, pos in sorted(st.positions.items()) if pos.amt]
            return [r for r in rows if (ids is None or r["instId"] in ids) and p.get("instType", r["instType"]) == r["instType"]]

    def set_leverage(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        st = self.state
        lever = _num(body, "lever")
        if lever != int(lever):
            raise OkxError("51000", "Parameter lever error (whole numbers only in this simulator)")
        mode = body.get("mgnMode")
        if mode not in ("isolated", "cross"):
            raise OkxError("51000", "Parameter mgnMode error")
        if body.get("posSide") not in (None, "", "net"):
            raise OkxError("51000", "Parameter posSide error")
        with st.lock:
            inst, kind = self.market.inst({"instId": _need(body, "instId")}, ("SWAP", "FUTURES"))
            target = ISOLATED if mode == "isolated" else CROSSED
            pos = st.positions.get(inst.id)
            if st.margin_type_of(inst.id) != target and pos and pos.amt:
                raise OkxError("59000", "Your settings failed as you have positions or open orders (a cross and an "
                                        "isolated position in one instrument are not simulated)")
            try:
                self.accounts.change_leverage(inst.id, int(lever))
            except BinanceError as e:
                raise okx_error(e) from None
            st.margin_type[inst.id] = target
            return [{"instId": okx_id(inst, kind), "lever": str(int(lever)), "mgnMode": mode, "posSide": "net"}]

    def margin_balance(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        st = self.state
        typ, amt = body.get("type"), _num(body, "amt")
        if typ not in ("add", "reduce"):
            raise OkxError("51000", "Parameter type error")
        with st.lock:
            self.sync()
            inst, kind = self.market.inst({"instId": _need(body, "instId")}, ("SWAP", "FUTURES"))
            try:
                self.accounts.position_margin(inst.id, amt, 1 if typ == "add" else 2)
            except BinanceError as e:
                raise okx_error(e) from None
            chg = amt if typ == "add" else -amt
            self._bill(kind, okx_id(inst, kind), QUOTE, "6", "160" if typ == "add" else "161", st.ms, 0.0, pos_chg=chg,
                       sz=_s(amt), mode="isolated")
            return [{"amt": _s(amt), "ccy": QUOTE, "instId": okx_id(inst, kind), "leverage": str(st.leverage_of(inst.id)),
                     "posSide": "net", "type": typ}]


# --------------------------------------------------------------------------- HTTP


def check_auth(request: Request, query: str, body: str, api_key: str, secret: bytes, passphrase: str,
               check_timestamp: bool = True) -> None:
    """OKX's V5 signature check (module docstring); `OkxError` when it fails."""
    h = request.headers
    key, sign = h.get("OK-ACCESS-KEY", ""), h.get("OK-ACCESS-SIGN", "")
    ts, phrase = h.get("OK-ACCESS-TIMESTAMP", ""), h.get("OK-ACCESS-PASSPHRASE", "")
    for value, code, name in ((key, "50103", "KEY"), (phrase, "50104", "PASSPHRASE"), (sign, "50106", "SIGN"),
                              (ts, "50107", "TIMESTAMP")):
        if not value:
            raise OkxError(code, f"Request header OK-ACCESS-{name} can not be empty.", 401)
    if not hmac.compare_digest(key.encode(), api_key.encode()):
        raise OkxError("50111", "Invalid OK-ACCESS-KEY.", 401)
    try:
        stamp = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise OkxError("50112", "Invalid OK-ACCESS-TIMESTAMP.", 401) from None
    if check_timestamp and abs(time.time() - stamp) > TIMESTAMP_WINDOW_S:
        raise OkxError("50102", "Timestamp request expired.", 401)
    if not hmac.compare_digest(phrase.encode(), passphrase.encode()):
        raise OkxError("50105", "Request header OK-ACCESS-PASSPHRASE incorrect.", 401)
    payload = ts + request.method + request.url.path + (("?" + query) if query and request.method == "GET" else "") + body
    want = base64.b64encode(hmac.new(secret, payload.encode(), hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(want, sign):
        raise OkxError("50113", "Invalid Sign", 401)


def private_routes(state: SimState, api: OkxTrading, passphrase: str, check_timestamp: bool = True) -> list[Route]:
    """The signed ``/api/v5/account/*`` and ``/api/v5/trade/*`` routes of `OkxTrading`, with the faults."""

    def endpoint(method: str, path: str, handler: Callable[[Any], Any]) -> Route:
        async def serve(request: Request) -> Response:
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
            query = request.scope.get("query_string", b"").decode()
            body = (await request.body()).decode() if request.method == "POST" else ""
            try:
                check_auth(request, query, body, state.api_key, state._secret, passphrase, check_timestamp)
                if method == "POST":
                    try:
                        args = json.loads(body or "{}")
                    except ValueError:
                        raise OkxError("50002", "Json data format error") from None
                else:
                    args = dict(parse_qsl(query, keep_blank_values=True))
                out = handler(args)
                if asyncio.iscoroutine(out):
                    out = await out
            except OkxError as e:
                return JSONResponse({"code": e.code, "msg": e.msg, "data": []}, e.status)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                return JSONResponse({"code": "51000", "msg": f"Parameter error: {e}", "data": []})
            if isinstance(out, JSONResponse):
                return out
            return JSONResponse({"code": "0", "msg": "", "data": out})

        return Route(PREFIX + path, serve, methods=[method])

    async def orders(body: Any) -> JSONResponse:
        """One order (``/trade/order``) or a list (``/trade/batch-orders``, ≤ 20): each executes or is refused on its own."""
        many = isinstance(body, list)
        if not isinstance(body, list | dict) or (many and not 1 <= len(body) <= 20):
            raise OkxError("51000", "Parameter error: an order object or a list of 1 to 20 orders")
        rows, delay = [], 0.0
        for one in body if many else [body]:
            f = state.faults
            with state.lock:
                reject = f.take("reject_next")
                partial = f.partial_fraction if not reject and f.take("partial_fill_next") else None
                if not reject and f.take("timeout_after_execute_next"):
                    delay = f.timeout_delay_s
            try:
                if reject:
                    raise OkxError(str(f.reject_code or "51008"), f.reject_msg or "Order failed. Insufficient USDT margin in account")
                if not isinstance(one, dict):
                    raise OkxError("51000", "Parameter error: an order is a JSON object")
                rows.append(api.place(one, partial))
            except OkxError as e:
                rows.append({"clOrdId": str(one.get("clOrdId") or "") if isinstance(one, dict) else "", "ordId": "",
                             "tag": "", "ts": str(state.ms), "sCode": e.code, "sMsg": e.msg})
        if delay:
            await asyncio.sleep(delay)
        ok = sum(r["sCode"] == "0" for r in rows)
        code, msg = ("0", "") if ok == len(rows) else ("1", "All operations failed") if not ok else ("2", "Bulk operation partially succeeded")
        return JSONResponse({"code": code, "msg": msg, "data": rows, "inTime": str(state.ms * 1000), "outTime": str(state.ms * 1000)})

    table: list[tuple[str, str, Callable[[Any], Any]]] = [
        ("GET", "/account/config", api.config),
        ("GET", "/account/balance", api.balance),
        ("GET", "/account/positions", api.positions),
        ("GET", "/account/bills", lambda p: api.list_bills(p, False)),
        ("GET", "/account/bills-archive", lambda p: api.list_bills(p, True)),
        ("POST", "/account/set-leverage", api.set_leverage),
        ("POST", "/account/position/margin-balance", api.margin_balance),
        ("POST", "/trade/order", orders),
        ("POST", "/trade/batch-orders", orders),
        ("GET", "/trade/order", api.get_order),
        ("GET", "/trade/fills", lambda p: api.list_fills(p, False)),
        ("GET", "/trade/fills-history", lambda p: api.list_fills(p, True)),
    ]
    return [endpoint(*row) for row in table]
