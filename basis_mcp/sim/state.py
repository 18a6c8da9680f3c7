"""`SimState`: the simulated exchange's books and clock, pure Python, no I/O.

It holds everything that changes (time, balances, positions, orders, income, faults, request
counts) plus the lookups and margin arithmetic every API family shares. The API families
(`market_data`, `trading`, `accounts`) hold a reference to one `SimState` and import this
module; it imports none of them.

Quarterlies (``quarterlies=True``, or the bases that have them): the current and the next
quarterly of each perp are listed (`Quarterly`, SIMULATED price); moving time across a delivery
closes every position in the delivering contract at the index (`Quarterly.delivery_price`),
returns its isolated margin and P&L to the cross wallet and books a ``DELIVERED_SETTELMENT``
income row (Binance's spelling); the contract is then delisted and the next one listed."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
from collections import Counter
from collections.abc import Collection
from typing import Any

from basis_mcp.config import DEFAULT_SPECS, SymbolSpec
from basis_mcp.dated import listed_expiries, quarterly_expiries
from basis_mcp.history import SymbolHistory
from basis_mcp.margin import liquidation_price, maintenance_margin
from basis_mcp.sim.instruments import (
    CROSSED,
    ISOLATED,
    QUOTE,
    BinanceError,
    Faults,
    Instrument,
    Order,
    Position,
    Quarterly,
    _r8,
    _s8,
    _Series,
    _shipped,
    parse_time,
)


class SimState:
    """The simulated exchange's books and clock. Time moves, deposits and counters take ``lock``
    (an RLock); the shared helpers below (lookups, ids, income, margin) expect the caller to hold
    it, as every API-family method does."""

    def __init__(
        self,
        *,
        start: str | int = "2024-03-15T00:00:00Z",
        api_key: str = "sim-api-key",
        secret: str = "sim-secret",
        spot_usdt: float = 100_000.0,
        futures_usdt: float = 100_000.0,
        extra_symbols: int = 0,
        funding_intervals: dict[str, int] | None = None,
        default_leverage: int = 20,
        default_margin_type: str = CROSSED,
        spot_fee_in_quote: bool = False,
        reject_duplicate_client_ids: bool = True,
        histories: dict[str, SymbolHistory] | None = None,
        quarterlies: bool | Collection[str] = False,
    ):
        self.lock = threading.RLock()
        self.api_key, self._secret = api_key, secret.encode()
        self.t = parse_time(start)
        self._funding_cursor = self.t
        self.faults = Faults()
        self.default_leverage = default_leverage
        self.default_margin_type = default_margin_type
        self.spot_fee_in_quote = spot_fee_in_quote
        self.reject_duplicate_client_ids = reject_duplicate_client_ids
        # the daily cross-margin interest rate each coin is lent at (of the order Binance charged VIP 0 in quiet
        # markets); a coin not in it is not lendable (-3045). A test sets its own.
        self.lend_rates: dict[str, float] = {"BTC": 0.0000548, "ETH": 0.0000822, "USDT": 0.000137}
        intervals = {"S001": 4} if funding_intervals is None else dict(funding_intervals)
        hist = histories if histories is not None else _shipped()
        series = {s: _Series.of(h) for s, h in hist.items()}
        self.instruments: dict[str, Instrument] = {}
        for base, s in sorted(series.items()):
            self.instruments[base + QUOTE] = Instrument(
                base, s, DEFAULT_SPECS.get(base) or SymbolSpec(), 1.0, intervals.get(base, 8)
            )
        src = series.get("BTC") or next(iter(series.values()))
        for k in range(1, extra_symbols + 1):
            base = f"S{k:03d}"
            self.instruments[base + QUOTE] = Instrument(
                base, src, SymbolSpec(), 1.0 / (k + 1), intervals.get(base, 8)
            )
        for inst in self.instruments.values():
            if inst.interval_h not in (1, 2, 4, 8):
                raise ValueError(f"{inst.base}: funding interval must be 1, 2, 4 or 8 h")
        self.spot_bal: dict[str, float] = {QUOTE: float(spot_usdt)} | {
            i.base: 0.0 for i in self.instruments.values()
        }
        self.cross_wallet = float(futures_usdt)
        self.positions: dict[str, Position] = {}
        self.leverage: dict[str, int] = {}
        self.margin_type: dict[str, str] = {}
        self.orders: list[Order] = []
        self.orders_by_id: dict[tuple[str, int], Order] = {}
        self.orders_by_coid: dict[tuple[str, str, str], Order] = {}
        self.income: list[dict[str, Any]] = []
        # the bases with USD-M quarterlies (Binance: BTC, ETH...): True = every perp, False = none
        if quarterlies is True:
            self.quarterly_bases = {i.base for i in self.instruments.values()}
        else:
            self.quarterly_bases = {str(b).upper() for b in (quarterlies or ())}
        self._quarterlies: dict[str, Quarterly] = {}  # every contract ever listed, by id (delivered ones too)
        self._next = {"spot": 1_000_001, "perp": 5_000_001, "trade": 1, "tran": 9_000_000_001}
        self.requests: Counter[str] = Counter()
        self.unknown_paths: list[str] = []

    # ------------------------------------------------------------ time and funding

    @property
    def ms(self) -> int:
        return self.t * 1000

    def set_time(self, t: str | int | float) -> list[dict[str, Any]]:
        """Move simulated time; settle funding and deliver quarterlies crossed on the way forward
        (in time order; at a delivery time funding first). Returns the new income rows."""
        with self.lock:
            t = parse_time(t)
            settled: list[dict[str, Any]] = []
            if t > self.t:
                a = max(self._funding_cursor, self.t)
                for expiry in (int(e) for e in quarterly_expiries(a, t)) if self.quarterly_bases else ():
                    settled += self._settle_funding(a, expiry)
                    settled += self._deliver(expiry)
                    a = expiry
                settled += self._settle_funding(a, t)
            self._funding_cursor = max(self._funding_cursor, t)
            self.t = t
            return settled

    def advance(self, seconds: float) -> list[dict[str, Any]]:
        with self.lock:
            return self.set_time(self.t + int(seconds))

    def _settle_funding(self, a: int, b: int) -> list[dict[str, Any]]:
        events = []
        for sym, pos in self.positions.items():
            inst = self.instruments.get(sym)  # a quarterly pays no funding
            if pos.amt == 0 or inst is None:
                continue
            for T in inst.settlements(a, b):
                rate = inst.funding_rate(T)
                events.append((T, sym, _r8(-pos.amt * inst.mark(T) * rate)))
        out = []
        for T, sym, amount in sorted(events):
            pos = self.positions[sym]
            if self.margin_type_of(sym) == ISOLATED:
                pos.iso_wallet = _r8(pos.iso_wallet + amount)
            else:
                self.cross_wallet = _r8(self.cross_wallet + amount)
            pos.update_ms = T * 1000
            out.append(self.add_income(sym, "FUNDING_FEE", amount, T * 1000))
        return out

    def _deliver(self, expiry: int) -> list[dict[str, Any]]:
        """Settle every position in the contracts delivering at ``expiry`` at the index."""
        out = []
        for sym, pos in sorted(self.positions.items()):
            q = self._quarterlies.get(sym)
            if q is None or q.expiry != expiry or pos.amt == 0:
                continue
            price = _r8(q.delivery_price())
            realized = _r8(pos.amt * (price - pos.entry))
            if self.margin_type_of(sym) == ISOLATED:
                self.cross_wallet = _r8(self.cross_wallet + pos.iso_wallet + realized)
            else:
                self.cross_wallet = _r8(self.cross_wallet + realized)
            pos.amt, pos.entry, pos.iso_wallet, pos.update_ms = 0.0, 0.0, 0.0, expiry * 1000
            out.append(self.add_income(sym, "DELIVERED_SETTELMENT", realized, expiry * 1000))
        return out

    def add_income(
        self, sym: str, kind: str, amount: float, ms: int, trade_id: int | None = None
    ) -> dict[str, Any]:
        """Book one ``/fapi/v1/income`` row (the caller has already moved the money)."""
        rec = {
            "symbol": sym,
            "incomeType": kind,
            "income": _s8(amount),
            "asset": QUOTE,
            "info": kind,
            "time": ms,
            "tranId": self.take_id("tran"),
            "tradeId": str(trade_id) if trade_id else "",
        }
        self.income.append(rec)
        return rec

    def take_id(self, kind: str) -> int:
        """The next id of ``kind``: "spot" / "perp" order ids, "trade" ids, "tran" income ids."""
        n = self._next[kind]
        self._next[kind] = n + 1
        return n

    # ------------------------------------------------------------ lookups

    def inst(self, symbol: str | None, market: str = "spot", delisted: bool = False) -> Any:
        """The `Instrument` of ``symbol``; on the futures market (any ``market`` but "spot") also a
        listed `Quarterly` (``delisted``: or one delivered before, for order and trade queries)."""
        inst: Any = self.instruments.get(symbol or "")
        if inst is None and market != "spot":
            inst = self._quarterlies.get(symbol or "") if delisted else self.listed_quarterlies().get(symbol or "")
        if inst is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return inst

    def live(self, symbol: str | None = None, symbols: str | None = None, market: str = "spot") -> list[Any]:
        """The named symbol(s), or every symbol with data at ``t`` (futures: listed quarterlies too)."""
        if symbol:
            return [self.inst(symbol, market)]
        if symbols:
            try:
                ids = json.loads(symbols)
            except ValueError:
                raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'.") from None
            return [self.inst(s, market) for s in ids]
        every = self.futures_contracts() if market != "spot" else list(self.instruments.values())
        return [i for i in every if i.has_data(self.t)]

    def listed_quarterlies(self) -> dict[str, Quarterly]:
        """The quarterlies trading at ``t``, by id: the current and the next quarter of every base
        that has them, in base then expiry order."""
        out: dict[str, Quarterly] = {}
        if not self.quarterly_bases:
            return out
        expiries = [int(e) for e in listed_expiries(self.t)]
        for inst in self.instruments.values():
            if inst.base not in self.quarterly_bases:
                continue
            for e in expiries:
                q = Quarterly(inst, e)
                q = self._quarterlies.setdefault(q.id, q)
                out[q.id] = q
        return out

    def contract_type(self, q: Quarterly) -> str:
        """Binance's ``contractType`` of a listed quarterly at ``t``."""
        return "CURRENT_QUARTER" if q.expiry == int(listed_expiries(self.t)[0]) else "NEXT_QUARTER"

    def futures_contracts(self) -> list[Any]:
        """Every futures symbol at ``t``: the perps, then the listed quarterlies."""
        return list(self.instruments.values()) + list(self.listed_quarterlies().values())

    def contract(self, symbol: str) -> Any:
        """The perp or quarterly (listed or delivered) a position is in."""
        return self.instruments.get(symbol) or self._quarterlies[symbol]

    def leverage_of(self, sym: str) -> int:
        return self.leverage.get(sym, self.default_leverage)

    def margin_type_of(self, sym: str) -> str:
        return self.margin_type.get(sym, self.default_margin_type)

    @staticmethod
    def max_leverage(inst: Instrument | Quarterly) -> int:
        return max(1, int(1 / (2 * inst.brackets[0].mmr)))

    def max_notional(self, inst: Instrument | Quarterly, lev: int) -> float:
        caps = [b.notional_cap_usd for b in inst.brackets if max(1, int(1 / (2 * b.mmr))) >= lev]
        return min(max(caps, default=0.0), 5e9)

    # ------------------------------------------------------------ margin (shared by trading and accounts)

    def pos_metrics(self, pos: Position) -> dict[str, float]:
        """Mark, notional, unrealised P&L, initial / maintenance margin and liquidation price."""
        inst = self.contract(pos.symbol)
        mark = inst.mark(self.t) if inst.has_data(self.t) else pos.entry
        notional = pos.amt * mark
        upnl = pos.amt * (mark - pos.entry)
        lev = self.leverage_of(pos.symbol)
        iso = self.margin_type_of(pos.symbol) == ISOLATED
        mm = maintenance_margin(abs(notional), inst.brackets) if pos.amt else 0.0
        wallet = pos.iso_wallet if iso else self.cross_wallet
        liq = liquidation_price(wallet, pos.amt, pos.entry, inst.brackets) if pos.amt else 0.0
        return {
            "mark": mark,
            "notional": notional,
            "upnl": upnl,
            "im": abs(notional) / lev,
            "mm": mm,
            "liq": 0.0 if math.isnan(liq) else liq,
            "iso": iso,
        }

    def available(self) -> float:
        """Futures available balance: cross wallet + Σ (uPnL − initial margin) of cross positions."""
        avail = self.cross_wallet
        for pos in self.positions.values():
            if pos.amt and self.margin_type_of(pos.symbol) != ISOLATED:
                m = self.pos_metrics(pos)
                avail += m["upnl"] - m["im"]
        return avail

    # ------------------------------------------------------------ test helpers (no Binance equivalent)

    def deposit(self, account: str, asset: str, amount: float) -> None:
        with self.lock:
            if account == "spot":
                self.spot_bal[asset] = _r8(self.spot_bal.get(asset, 0.0) + amount)
            elif account == "futures" and asset == QUOTE:
                self.cross_wallet = _r8(self.cross_wallet + amount)
            else:
                raise ValueError("account must be 'spot', or 'futures' with asset USDT")

    def total_usdt(self) -> float:
        """Spot USDT + futures cross wallet + every isolated wallet."""
        with self.lock:
            return _r8(
                self.spot_bal[QUOTE] + self.cross_wallet + sum(p.iso_wallet for p in self.positions.values())
            )

    def count(self, method: str, path: str) -> None:
        with self.lock:
            self.requests[f"{method} {path}"] += 1

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.unknown_paths.clear()

    def check_signature(self, payload: str, signature: str) -> bool:
        want = hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, signature)
