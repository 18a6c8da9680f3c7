"""Hyperliquid trading and account state for the local Hyperliquid server (`basis_mcp.sim.hyperliquid`):
the signed ``POST /exchange`` actions and the user-state ``POST /info`` types, in Hyperliquid's wire format,
over a `HyperliquidState` (a `SimState`: the same shipped hourly data, clock and position records as the
Binance simulator; its cross wallet is the account's USDC).

Signatures: every action is EIP-712 signed (`basis_mcp.sim.hyperliquid_signing`); the signer's address is
recovered and must be the one wallet the simulator is configured with (``wallet=``), else Hyperliquid's
answer ``{"status": "err", "response": "User or API Wallet 0x<signer> does not exist."}`` and nothing is
done. A nonce is accepted once per wallet. Vault and sub-account actions are not simulated.

Actions (``{"status": "ok", "response": {"type": ..., "data": ...}}``):

- ``order``: limit orders, ``tif`` Ioc / Gtc / Alo, with ``cloid`` and reduce-only ``r``. A size must be
  a multiple of 10^-szDecimals ("Order has invalid size."), a price have at most 5 significant figures
  (integers always allowed) and 6 − szDecimals decimals ("Price must be divisible by tick size.
  asset=N"), an order be worth $10 at its limit unless reduce-only, and lie within 80 % of the oracle.
  An order that crosses fills at once, as a taker, at the simulator's perp fill price (the data's perp
  price ± `DEFAULT_SPECS` half-spread and square-root impact, on Hyperliquid's price grid) if that is
  within its limit; an Ioc that cannot answers "Order could not immediately match against any resting
  orders. asset=N". A Gtc / Alo that does not cross rests (no margin held for it) and fills, as a maker
  at its limit, at the first hour whose perp bid / ask crosses it. Reduce-only orders are cut to the
  position and refused if they would increase it. Fees: taker 0.045 %, maker 0.015 % (Hyperliquid's
  base tier), in USDC off the cross balance; a builder code (``builder: {b, f}``) needs an
  ``approveBuilderFee`` at or above ``f`` and adds ``f`` tenths of a basis point (``builderFee``).
  Trigger (TP/SL) and TWAP orders are not simulated.
- ``cancel`` (by ``oid``) / ``cancelByCloid``: resting orders only; else "Order was never placed, already
  canceled, or filled. asset=N".
- ``updateLeverage``: cross or isolated, 1 to the coin's max leverage; the margin type cannot change
  while a position is open (a new leverage on an open position moves no margin).
- ``updateIsolatedMargin``: ``ntli`` micro-USDC added to (> 0) or removed from an isolated position (``isBuy``
  is ignored, as ccxt and the SDK always send true).
- ``approveBuilderFee`` (user-signed), ``setReferrer`` (accepted, no effect).

Accounts: new positions are cross at 20x (or the coin's max) until ``updateLeverage``. Isolated margin
(notional ÷ leverage at the fill) moves from the cross balance into the position and back, with its
realised P&L, on a close. Funding settles every hour on every open position at the oracle price:
``usdc = −szi × oraclePx × funding`` (received positive), into the isolated margin or the cross balance.
At each hour an isolated position whose margin plus unrealised P&L is at or below its maintenance margin
(half the initial margin at max leverage) is liquidated at the mark, as a fill with a ``liquidation``
field and no fee (SIMULATED); what margin is left goes back to the cross balance. Cross positions are
never liquidated here.

User state (``/info``): ``clearinghouseState`` (``marginSummary``, ``crossMarginSummary``, ``withdrawable``
= the cross balance less cross margin, ``assetPositions`` with ``szi``, ``entryPx``, ``leverage``
(isolated: ``rawUsd`` = isolated margin − szi × entryPx), ``marginUsed`` (isolated: margin + unrealised
P&L), ``liquidationPx``, ``cumFunding`` (paid positive)), ``openOrders``, ``orderStatus`` (by ``oid`` or
``cloid``; ``{"status": "unknownOid"}``), ``userFills`` (newest first) / ``userFillsByTime`` (ascending),
at most 2000, ``userFunding`` (ascending, at most 500), ``userAbstraction`` ("default"). Any other
address has an empty account. Refusals whose exact words Hyperliquid does not publish (bad leverage,
margin updates, a reused nonce or ``cloid``) are worded by the simulator.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from basis_mcp.history import HOUR
from basis_mcp.sim import hyperliquid_signing as signing
from basis_mcp.sim.instruments import CROSSED, ISOLATED, Instrument, Position
from basis_mcp.sim.state import SimState

__all__ = ["ActionError", "BadBody", "HyperliquidExchange", "HyperliquidState", "cloid_ok"]

TAKER_FEE, MAKER_FEE = 0.00045, 0.00015
MIN_ORDER_USD = 10.0
FILLS_PAGE, FUNDING_PAGE = 2000, 500
DEFAULT_LEVERAGE = 20
ZERO_HASH = "0x" + "0" * 64
INFO_TYPES = frozenset({"clearinghouseState", "openOrders", "frontendOpenOrders", "orderStatus", "userFills",
                        "userFillsByTime", "userFunding", "userAbstraction"})


class BadBody(Exception):
    """A body Hyperliquid cannot deserialize (HTTP 422)."""


class ActionError(Exception):
    """``{"status": "err", "response": message}``."""


class _Refused(Exception):
    """One order's ``{"error": message}`` status (the batch goes on)."""


def _fmt(x: float, decimals: int) -> str:
    s = f"{x + 0.0:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0")
        s = s + "0" if s.endswith(".") else s
    return "0.0" if s in ("-0.0", "0.0") else s


def _usd(x: float) -> str:
    return _fmt(x, 6)


def _r6(x: float) -> float:
    return round(x, 6) + 0.0


def cloid_ok(c: Any) -> bool:
    """A client order id as Hyperliquid takes one: ``0x`` + 32 hex digits (128 bits)."""
    if not isinstance(c, str) or len(c) != 34 or not c.startswith("0x"):
        return False
    try:
        int(c[2:], 16)
    except ValueError:
        return False
    return True


def _dec(s: Any) -> Decimal:
    if not isinstance(s, str):
        raise BadBody()
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise BadBody() from None
    if not d.is_finite():
        raise BadBody()
    return d


@dataclass
class HlOrder:
    oid: int
    cloid: str | None
    coin: str
    sym: str
    asset: int
    buy: bool
    limit_px: str
    orig_sz: float
    sz: float  # still open
    tif: str
    reduce_only: bool
    timestamp: int
    status: str = "open"
    status_ts: int = 0
    builder_fee: float = 0.0  # fraction of notional
    fills: list[dict[str, Any]] = field(default_factory=list)


class HyperliquidState(SimState):
    """A `SimState` as one Hyperliquid perp account: every instrument settles funding hourly, the cross
    wallet is the account's USDC (``usdc``), ``wallet`` the one address whose signatures are accepted. Time
    moving hands each crossed hour to the `HyperliquidExchange` (resting fills, funding, liquidations)."""

    def __init__(self, *, wallet: str | None = None, usdc: float = 100_000.0,
                 default_leverage: int = DEFAULT_LEVERAGE, **kwargs: Any):
        kwargs.setdefault("default_margin_type", CROSSED)
        super().__init__(spot_usdt=0.0, futures_usdt=usdc, default_leverage=default_leverage, **kwargs)
        for inst in self.instruments.values():
            inst.interval_h = 1
        self.wallet = wallet.lower() if wallet else None
        self.engine: HyperliquidExchange | None = None
        self.hl_orders: list[HlOrder] = []
        self.by_oid: dict[int, HlOrder] = {}
        self.by_cloid: dict[str, HlOrder] = {}
        self.fills: list[dict[str, Any]] = []  # wire rows, oldest first
        self.funding_rows: list[dict[str, Any]] = []
        self.cum_funding: dict[str, list[float]] = {}  # symbol -> paid [all time, since open, since change]
        self.nonces: set[int] = set()
        self.builders: dict[str, int] = {}  # approved builder -> max fee, tenths of a basis point
        self.hl_ids = {"oid": 30_000_000_001, "tid": 900_000_000_000_001}

    def next_id(self, kind: str) -> int:
        n = self.hl_ids[kind]
        self.hl_ids[kind] = n + 1
        return n

    def _settle_funding(self, a: int, b: int) -> list[dict[str, Any]]:
        return self.engine.on_hours(a, b) if self.engine is not None else []


class HyperliquidExchange:
    """The ``/exchange`` actions and user ``/info`` types over a `HyperliquidState`. ``info`` is the
    server's `HyperliquidInfo` (the universe in asset-index order, szDecimals, price formatting)."""

    INFO_TYPES = INFO_TYPES

    def __init__(self, state: HyperliquidState, info: Any):
        self.state = state
        self.info = info
        state.engine = self

    # ------------------------------------------------------------ instruments

    def asset(self, a: Any) -> tuple[int, Instrument]:
        if isinstance(a, bool) or not isinstance(a, int):
            raise BadBody()
        coins = self.info.coins()
        if not 0 <= a < len(coins):
            raise ActionError(f"simulator: unknown asset {a}")
        return a, coins[a]

    def index_of(self, inst: Instrument) -> int:
        return next((i for i, c in enumerate(self.info.coins()) if c is inst), -1)

    def max_leverage(self, inst: Instrument) -> int:
        return next((u["maxLeverage"] for u in self.info.meta()["universe"] if u["name"] == inst.base), DEFAULT_LEVERAGE)

    def szd(self, inst: Instrument) -> int:
        return int(self.info.sz_decimals(inst))

    def grid(self, inst: Instrument, x: float) -> float:
        return float(self.info.px(inst, x))

    def leverage(self, inst: Instrument) -> int:
        return min(self.state.leverage_of(inst.id), self.max_leverage(inst))

    # ------------------------------------------------------------ POST /exchange

    def exchange(self, body: Any) -> tuple[dict[str, Any], float]:
        """(the answer, seconds to wait before sending it: the ``timeout_after_execute_next`` fault)."""
        if not isinstance(body, dict) or not isinstance(body.get("action"), dict) or not isinstance(body.get("nonce"), int):
            raise BadBody()
        action, nonce = body["action"], body["nonce"]
        kind = action.get("type")
        st = self.state
        with st.lock:
            try:
                if "signatureChainId" in action:  # user-signed: its own EIP-712 struct
                    digest = signing.user_signed_digest(action)
                else:
                    if body.get("vaultAddress"):
                        raise ActionError("simulator: vault and sub-account actions are not simulated")
                    digest = signing.l1_digest(action, nonce, None, body.get("expiresAfter"))
                signer = signing.recover_address(digest, body.get("signature"))
            except (KeyError, TypeError, ValueError) as e:
                if isinstance(e, signing.BadSignature):
                    return {"status": "err", "response": "Invalid signature"}, 0.0
                if kind not in signing.USER_SIGNED and "signatureChainId" in action:
                    return {"status": "err", "response": f"simulator: action {kind!r} not simulated"}, 0.0
                raise BadBody() from None
            except ActionError as e:
                return {"status": "err", "response": str(e)}, 0.0
            if st.wallet is None or signer != st.wallet:
                return {"status": "err", "response": f"User or API Wallet {signer} does not exist."}, 0.0
            if nonce in st.nonces:
                return {"status": "err", "response": f"Invalid nonce: {nonce} was already used"}, 0.0
            st.nonces.add(nonce)
            handlers = {"order": self.order, "cancel": self.cancel, "cancelByCloid": self.cancel,
                        "updateLeverage": self.update_leverage, "updateIsolatedMargin": self.update_isolated_margin,
                        "approveBuilderFee": self.approve_builder_fee, "setReferrer": lambda a: None}
            if kind not in handlers:
                return {"status": "err", "response": f"simulator: action {kind!r} not simulated"}, 0.0
            delay = 0.0
            if kind == "order":
                f = st.faults
                delay = f.timeout_delay_s if f.take("timeout_after_execute_next") else 0.0
            try:
                data = handlers[kind](action)
            except ActionError as e:
                return {"status": "err", "response": str(e)}, 0.0
            except (KeyError, TypeError, ValueError, AttributeError):
                raise BadBody() from None
        response: dict[str, Any] = {"type": "default"} if data is None else {"type": data[0], "data": data[1]}
        return {"status": "ok", "response": response}, delay

    def approve_builder_fee(self, a: dict[str, Any]) -> None:
        rate = str(a["maxFeeRate"]).strip()
        if not rate.endswith("%"):
            raise ActionError("simulator: maxFeeRate must be a percentage")
        self.state.builders[str(a["builder"]).lower()] = int(round(float(rate[:-1]) * 1000))  # 0.01 % -> 10

    def update_leverage(self, a: dict[str, Any]) -> None:
        _, inst = self.asset(a["asset"])
        lev, cross = a["leverage"], a["isCross"]
        if isinstance(lev, bool) or not isinstance(lev, int) or not isinstance(cross, bool):
            raise BadBody()
        top = self.max_leverage(inst)
        if not 1 <= lev <= top:
            raise ActionError(f"Invalid leverage value: {inst.base} allows 1 to {top}x")
        st, mode = self.state, CROSSED if cross else ISOLATED
        pos = st.positions.get(inst.id)
        if pos is not None and pos.amt and st.margin_type_of(inst.id) != mode:
            raise ActionError("Cannot switch leverage type with open position.")
        st.leverage[inst.id], st.margin_type[inst.id] = lev, mode

    def update_isolated_margin(self, a: dict[str, Any]) -> None:
        _, inst = self.asset(a["asset"])
        ntli = a["ntli"]
        if isinstance(ntli, bool) or not isinstance(ntli, int):
            raise BadBody()
        st, amount = self.state, ntli / 1e6
        pos = st.positions.get(inst.id)
        if pos is None or not pos.amt:
            raise ActionError("Cannot update margin for empty position")
        if st.margin_type_of(inst.id) != ISOLATED:
            raise ActionError("Cannot update isolated margin for cross position")
        if amount > 0 and st.available() + 1e-9 < amount:
            raise ActionError("Insufficient margin to add isolated margin")
        if amount < 0:
            mark = inst.mark(st.t)
            keep = abs(pos.amt) * mark / self.leverage(inst) - pos.amt * (mark - pos.entry)
            if pos.iso_wallet + amount < keep - 1e-9:
                raise ActionError("Insufficient isolated margin to remove")
        pos.iso_wallet = _r6(pos.iso_wallet + amount)
        st.cross_wallet = _r6(st.cross_wallet - amount)

    def cancel(self, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        out: list[Any] = []
        by_cloid = a["type"] == "cancelByCloid"
        for c in a["cancels"]:
            asset, _ = self.asset(c["asset"] if by_cloid else c["a"])
            o = self.state.by_cloid.get(str(c["cloid"]).lower()) if by_cloid else self.state.by_oid.get(c["o"])
            if o is None or o.asset != asset or o.status != "open":
                out.append({"error": f"Order was never placed, already canceled, or filled. asset={asset}"})
                continue
            self._finish(o, "canceled")
            out.append("success")
        return "cancel", {"statuses": out}

    # ------------------------------------------------------------ orders

    def order(self, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if a.get("grouping", "na") != "na":
            raise ActionError("simulator: TP/SL groupings are not simulated")
        builder = a.get("builder")
        fee_tenths = 0
        if builder is not None:
            fee_tenths = int(builder["f"])
            if fee_tenths > self.state.builders.get(str(builder["b"]).lower(), -1):
                raise ActionError("Builder fee has not been approved.")
        statuses = []
        for o in a["orders"]:
            try:
                statuses.append(self._one_order(o, fee_tenths / 1e5))
            except _Refused as e:
                statuses.append({"error": str(e)})
        return "order", {"statuses": statuses}

    def _one_order(self, w: dict[str, Any], builder_fee: float) -> dict[str, Any]:
        st = self.state
        asset, inst = self.asset(w["a"])
        buy, reduce_only, kind = w["b"], w["r"], w["t"]
        if not isinstance(buy, bool) or not isinstance(reduce_only, bool) or not isinstance(kind, dict):
            raise BadBody()
        if "limit" not in kind:
            raise _Refused("simulator: trigger orders are not simulated")
        tif = kind["limit"]["tif"]
        if tif not in ("Ioc", "Gtc", "Alo"):
            raise BadBody()
        cloid = w.get("c")
        if cloid is not None:
            if not cloid_ok(cloid):
                raise BadBody()
            cloid = cloid.lower()
            if cloid in st.by_cloid:
                raise _Refused(f"simulator: cloid {cloid} was already used. asset={asset}")
        px_d, sz_d = _dec(w["p"]), _dec(w["s"])
        szd = self.szd(inst)
        if sz_d <= 0:
            raise _Refused("Order has zero size." if sz_d == 0 else "Order has invalid size.")
        if sz_d != sz_d.quantize(Decimal(1).scaleb(-szd)):
            raise _Refused("Order has invalid size.")
        if px_d <= 0:
            raise _Refused("Order has invalid price.")
        integral = px_d == px_d.to_integral_value()
        sig = len(px_d.normalize().as_tuple().digits)
        places = max(0, -px_d.normalize().as_tuple().exponent)
        if not integral and (sig > 5 or places > 6 - szd):
            raise _Refused(f"Price must be divisible by tick size. asset={asset}")
        if not inst.has_data(st.t):
            raise _Refused(f"simulator: no market for {inst.base} now. asset={asset}")
        limit, sz = float(px_d), float(sz_d)
        oracle = inst.spot(st.t)
        if abs(limit - oracle) > 0.8 * oracle:
            raise _Refused(f"Order price cannot be more than 80% away from the reference price. asset={asset}")
        if not reduce_only and limit * sz < MIN_ORDER_USD:
            raise _Refused(f"Order must have minimum value of $10. asset={asset}")
        o = HlOrder(st.next_id("oid"), cloid, inst.base, inst.id, asset, buy, _fmt(limit, 8), sz, sz, tif, reduce_only,
                    st.ms, status_ts=st.ms, builder_fee=builder_fee)
        f = st.faults
        if f.take("reject_next"):
            raise _Refused(f.reject_msg or f"Insufficient margin to place order. asset={asset}")
        bid, _, ask = inst.quote("perp", st.t)
        crosses = limit >= ask if buy else limit <= bid
        if tif == "Alo" and crosses:
            raise _Refused(f"Post only order would have immediately matched, bbo was {self.info.px(inst, bid)}@"
                           f"{self.info.px(inst, ask)}. asset={asset}")
        take = sz
        if reduce_only:
            pos = st.positions.get(inst.id)
            amt = pos.amt if pos else 0.0
            if not amt or (amt > 0) == buy:
                self._record(o, "reduceOnlyRejected")
                raise _Refused(f"Reduce only order would increase position. asset={asset}")
            take = min(sz, abs(amt))  # cut to the position
        _, mid, _ = inst.quote("perp", st.t)
        px = self.grid(inst, inst.leg("perp").fill_price(mid, "buy" if buy else "sell", take * mid))
        if f.take("partial_fill_next"):
            take = math.floor(take * f.partial_fraction * 10**szd + 1e-9) / 10**szd
        if not crosses or (px > limit if buy else px < limit) or take <= 0:
            if tif == "Ioc":
                self._record(o, "iocCancelRejected")
                raise _Refused(f"Order could not immediately match against any resting orders. asset={asset}")
            self._record(o, "open")
            return {"resting": {"oid": o.oid} | ({"cloid": cloid} if cloid else {})}
        try:
            fill = self._fill(inst, o, px, take, TAKER_FEE)
        except _Refused:
            self._record(o, "perpMarginRejected")
            raise
        self._record(o, "filled" if o.sz <= 1e-12 else "open" if tif != "Ioc" else "canceled")
        return {"filled": {"totalSz": fill["sz"], "avgPx": fill["px"], "oid": o.oid} | ({"cloid": cloid} if cloid else {})}

    def _record(self, o: HlOrder, status: str) -> None:
        st = self.state
        st.hl_orders.append(o)
        st.by_oid[o.oid] = o
        if o.cloid:
            st.by_cloid[o.cloid] = o
        o.status, o.status_ts = status, st.ms

    def _finish(self, o: HlOrder, status: str, ms: int | None = None) -> None:
        o.status, o.status_ts = status, self.state.ms if ms is None else ms

    def _fill(self, inst: Instrument, o: HlOrder, px: float, sz: float, fee_rate: float, ms: int | None = None,
              liquidation: dict[str, Any] | None = None) -> dict[str, Any]:
        """Execute ``sz`` of ``o`` at ``px``: position, margin, fee, the fill row. `_Refused` (nothing done) when the
        cross balance cannot pay the margin and fee of the part that opens a position."""
        st = self.state
        sym, s = inst.id, 1 if o.buy else -1
        pos = st.positions.get(sym) or Position(sym)
        start, held = pos.amt, abs(pos.amt)
        close = min(sz, held) if pos.amt and (pos.amt > 0) != o.buy else 0.0
        szd = self.szd(inst)
        opening = round(sz - close, szd)
        fee = _r6(px * sz * (fee_rate + o.builder_fee))
        lev, isolated = self.leverage(inst), st.margin_type_of(sym) == ISOLATED
        need = _r6(opening * px / lev)
        if opening > 0 and liquidation is None and st.available() + 1e-9 < need + fee:
            raise _Refused(f"Insufficient margin to place order. asset={o.asset}")
        st.positions[sym] = pos
        realized = _r6(close * (px - pos.entry) * (1 if pos.amt > 0 else -1)) if close else 0.0
        if close:
            if isolated:
                pos.iso_wallet = _r6(pos.iso_wallet + realized)
                release = pos.iso_wallet if close >= held else _r6(pos.iso_wallet * close / held)
                pos.iso_wallet = _r6(pos.iso_wallet - release)
                st.cross_wallet = _r6(st.cross_wallet + (max(release, 0.0) if liquidation else release))
            else:
                st.cross_wallet = _r6(st.cross_wallet + realized)
            pos.amt = round(pos.amt - math.copysign(close, pos.amt), szd)
            if pos.amt == 0:
                pos.entry, pos.amt, pos.iso_wallet = 0.0, 0.0, 0.0
        if opening:
            if pos.amt == 0:
                st.cum_funding[sym] = [st.cum_funding.get(sym, [0.0])[0], 0.0, 0.0]
            a = abs(pos.amt)
            pos.entry = (a * pos.entry + opening * px) / (a + opening) if a else px
            pos.amt = round(pos.amt + s * opening, szd)
            if isolated:
                st.cross_wallet = _r6(st.cross_wallet - need)
                pos.iso_wallet = _r6(pos.iso_wallet + need)
        st.cross_wallet = _r6(st.cross_wallet - fee)
        ms = st.ms if ms is None else ms
        pos.update_ms = ms
        if sym in st.cum_funding:
            st.cum_funding[sym][2] = 0.0
        side = ("Long" if start > 0 else "Short") if start else None
        if close and opening:
            direction = f"{side} > {'Long' if o.buy else 'Short'}"
        elif close:
            direction = f"Close {side}"
        else:
            direction = f"Open {'Long' if o.buy else 'Short'}"
        tid = st.next_id("tid")
        row: dict[str, Any] = {
            "coin": inst.base, "px": self.info.px(inst, px), "sz": _fmt(sz, szd), "side": "B" if o.buy else "A",
            "time": ms, "startPosition": _fmt(start, szd), "dir": direction, "closedPnl": _usd(realized),
            "hash": "0x" + hashlib.sha256(f"{o.oid}:{tid}".encode()).hexdigest(), "oid": o.oid,
            "crossed": fee_rate != MAKER_FEE, "fee": _usd(fee - _r6(px * sz * o.builder_fee)), "tid": tid,
            "feeToken": "USDC", "twapId": None,
        }
        if liquidation is not None:
            row["liquidation"] = liquidation
        if o.builder_fee:
            row["builderFee"] = _usd(_r6(px * sz * o.builder_fee))
        o.sz = round(o.sz - sz, szd)
        o.fills.append(row)
        st.fills.append(row)
        return row

    # ------------------------------------------------------------ the clock: resting fills, funding, liquidations

    def on_hours(self, a: int, b: int) -> list[dict[str, Any]]:
        """Every hour T with a < T <= b, in order: resting orders the hour's perp touch crosses fill (maker, at
        their limit), funding settles, isolated positions under maintenance are liquidated. Returns the
        funding rows booked."""
        st, out = self.state, []
        T = (a // HOUR + 1) * HOUR
        while T <= b:
            for o in [o for o in st.hl_orders if o.status == "open"]:
                self._rest_fill(o, T)
            for sym, pos in sorted(st.positions.items()):
                inst = st.instruments.get(sym)
                if inst is None or not pos.amt or not inst.has_data(T) or inst.funding_rate(T) is None:
                    continue
                rate = float(inst.funding_rate(T) or 0.0)
                oracle = inst.spot(T)
                amount = _r6(-pos.amt * oracle * rate)
                if st.margin_type_of(sym) == ISOLATED:
                    pos.iso_wallet = _r6(pos.iso_wallet + amount)
                else:
                    st.cross_wallet = _r6(st.cross_wallet + amount)
                cum = st.cum_funding.setdefault(sym, [0.0, 0.0, 0.0])
                st.cum_funding[sym] = [_r6(c - amount) for c in cum]
                row = {"time": T * 1000, "hash": ZERO_HASH,
                       "delta": {"type": "funding", "coin": inst.base, "usdc": _usd(amount),
                                 "szi": _fmt(pos.amt, self.szd(inst)), "fundingRate": _fmt(rate, 12), "nSamples": None}}
                st.funding_rows.append(row)
                out.append(row)
            for sym, pos in sorted(st.positions.items()):
                self._maybe_liquidate(sym, pos, T)
            T += HOUR
        return out

    def _rest_fill(self, o: HlOrder, T: int) -> None:
        inst = self.state.instruments[o.sym]
        if not inst.has_data(T):
            return
        bid, _, ask = inst.quote("perp", T)
        limit = float(o.limit_px)
        if not (ask <= limit if o.buy else bid >= limit):
            return
        pos = self.state.positions.get(o.sym)
        amt = pos.amt if pos else 0.0
        if o.reduce_only and (not amt or (amt > 0) == o.buy):
            self._finish(o, "reduceOnlyCanceled", T * 1000)
            return
        size = min(o.sz, abs(amt)) if o.reduce_only else o.sz
        try:
            self._fill(inst, o, limit, size, MAKER_FEE, T * 1000)
        except _Refused:
            self._finish(o, "marginCanceled", T * 1000)
            return
        self._finish(o, "filled" if o.sz <= 1e-12 else "open", T * 1000)

    def _maybe_liquidate(self, sym: str, pos: Position, T: int) -> None:
        st = self.state
        inst = st.instruments.get(sym)
        if inst is None or not pos.amt or st.margin_type_of(sym) != ISOLATED or not inst.has_data(T):
            return
        mark = inst.mark(T)
        if pos.iso_wallet + pos.amt * (mark - pos.entry) > abs(pos.amt) * mark / (2 * self.max_leverage(inst)):
            return
        o = HlOrder(st.next_id("oid"), None, inst.base, sym, self.index_of(inst), pos.amt < 0, self.info.px(inst, mark),
                    abs(pos.amt), abs(pos.amt), "Ioc", True, T * 1000, status_ts=T * 1000)
        self._record(o, "filled")
        self._fill(inst, o, self.grid(inst, mark), abs(pos.amt), 0.0, T * 1000,
                   {"liquidatedUser": st.wallet, "markPx": self.info.px(inst, mark), "method": "market"})
        o.status_ts = T * 1000

    # ------------------------------------------------------------ POST /info (user state)

    def info_answer(self, body: dict[str, Any]) -> Any:
        kind, st = body["type"], self.state
        if kind == "userAbstraction":
            return "default"
        user = body.get("user")
        if not isinstance(user, str) or len(user) != 42 or not user.startswith("0x"):
            raise BadBody()
        mine = st.wallet is not None and user.lower() == st.wallet
        with st.lock:
            if kind == "clearinghouseState":
                return self.clearinghouse(mine)
            if kind in ("openOrders", "frontendOpenOrders"):
                return [self.order_wire(o, kind == "frontendOpenOrders") for o in reversed(st.hl_orders)
                        if mine and o.status == "open"]
            if kind == "orderStatus":
                oid = body.get("oid")
                o = (st.by_cloid.get(oid.lower()) if isinstance(oid, str) and oid.startswith("0x")
                     else st.by_oid.get(int(oid)) if isinstance(oid, int | str) and not isinstance(oid, bool) else None)
                if o is None or not mine:
                    return {"status": "unknownOid"}
                return {"status": "order", "order": {"order": self.order_wire(o, True), "status": o.status,
                                                     "statusTimestamp": o.status_ts}}
            rows = st.fills if kind in ("userFills", "userFillsByTime") else st.funding_rows
            if not mine:
                return []
            if kind == "userFills":
                return list(reversed(rows))[:FILLS_PAGE]
            lo = body.get("startTime")
            hi = body.get("endTime")
            if isinstance(lo, bool) or not isinstance(lo, int) or (hi is not None and (isinstance(hi, bool) or not isinstance(hi, int))):
                raise BadBody()
            hi = st.ms if hi is None else hi
            page = FILLS_PAGE if kind == "userFillsByTime" else FUNDING_PAGE
            return [r for r in rows if lo <= r["time"] <= hi][:page]

    def order_wire(self, o: HlOrder, frontend: bool = False) -> dict[str, Any]:
        szd = self.szd(self.state.instruments[o.sym])
        d: dict[str, Any] = {"coin": o.coin, "side": "B" if o.buy else "A", "limitPx": o.limit_px, "sz": _fmt(o.sz, szd),
                             "oid": o.oid, "timestamp": o.timestamp, "origSz": _fmt(o.orig_sz, szd), "cloid": o.cloid}
        if frontend:
            d |= {"triggerCondition": "N/A", "isTrigger": False, "triggerPx": "0.0", "children": [],
                  "isPositionTpsl": False, "reduceOnly": o.reduce_only, "orderType": "Limit", "tif": o.tif}
        return d

    def clearinghouse(self, mine: bool) -> dict[str, Any]:
        st = self.state
        cross_wallet = st.cross_wallet if mine else 0.0
        positions, cross_upnl, cross_used, cross_mm, cross_ntl, cross_signed = [], 0.0, 0.0, 0.0, 0.0, 0.0
        iso_value, iso_used, iso_ntl, iso_signed = 0.0, 0.0, 0.0, 0.0
        rows = [(sym, p) for sym, p in sorted(st.positions.items()) if p.amt] if mine else []
        for sym, p in rows:
            inst = st.instruments[sym]
            mark = inst.mark(st.t) if inst.has_data(st.t) else p.entry
            upnl, ntl, lev = p.amt * (mark - p.entry), p.amt * mark, self.leverage(inst)
            mm = abs(ntl) / (2 * self.max_leverage(inst))
            if st.margin_type_of(sym) == ISOLATED:
                used = p.iso_wallet + upnl
                iso_value, iso_used, iso_ntl, iso_signed = iso_value + used, iso_used + used, iso_ntl + abs(ntl), iso_signed + ntl
                leverage = {"type": "isolated", "value": lev, "rawUsd": _usd(p.iso_wallet - p.amt * p.entry)}
            else:
                used = abs(ntl) / lev
                cross_upnl, cross_used, cross_mm = cross_upnl + upnl, cross_used + used, cross_mm + mm
                cross_ntl, cross_signed = cross_ntl + abs(ntl), cross_signed + ntl
                leverage = {"type": "cross", "value": lev}
            positions.append((sym, p, inst, mark, upnl, ntl, used, mm, leverage))
        cross_value = cross_wallet + cross_upnl
        out = []
        for sym, p, inst, mark, upnl, ntl, used, mm, leverage in positions:
            side, l_rate = (1 if p.amt > 0 else -1), 1 / (2 * self.max_leverage(inst))
            available = (used if leverage["type"] == "isolated" else cross_value) - (mm if leverage["type"] == "isolated" else cross_mm)
            liq = mark - side * available / abs(p.amt) / (1 - l_rate * side)
            cum = st.cum_funding.get(sym, [0.0, 0.0, 0.0])
            out.append({"type": "oneWay", "position": {
                "coin": inst.base, "szi": _fmt(p.amt, self.szd(inst)), "leverage": leverage,
                "entryPx": self.info.px(inst, p.entry), "positionValue": _usd(abs(ntl)), "unrealizedPnl": _usd(upnl),
                "returnOnEquity": _fmt(upnl / (abs(p.amt) * p.entry / leverage["value"]), 8),
                "liquidationPx": _fmt(liq, 8) if liq > 0 else None, "marginUsed": _usd(used),
                "maxLeverage": self.max_leverage(inst),
                "cumFunding": {"allTime": _usd(cum[0]), "sinceOpen": _usd(cum[1]), "sinceChange": _usd(cum[2])}}})
        value = cross_value + iso_value

        def summary(acv: float, ntl: float, signed: float, used: float) -> dict[str, str]:
            return {"accountValue": _usd(acv), "totalNtlPos": _usd(ntl), "totalRawUsd": _usd(acv - signed),
                    "totalMarginUsed": _usd(used)}

        return {"marginSummary": summary(value, cross_ntl + iso_ntl, cross_signed + iso_signed, cross_used + iso_used),
                "crossMarginSummary": summary(cross_value, cross_ntl, cross_signed, cross_used),
                "crossMaintenanceMarginUsed": _usd(cross_mm), "withdrawable": _usd(max(cross_value - cross_used, 0.0)),
                "assetPositions": out, "time": st.ms}
