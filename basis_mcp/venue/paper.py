"""Paper venue: a simulator, not a stub.

- Fills at a modelled bid/ask: mid ± (half-spread + square-root impact), plus taker fees.
- One USDT balance, spot balances per asset, one-way perp positions in isolated margin.
- Funding settled on every perp position at the venue's settlement times with the real
  settled rate and the mark price at settlement; it moves the isolated wallet, as on
  Binance.
- Liquidation when the hour's mark high (short) or low (long) reaches the liquidation
  price from Binance's bracket model; the isolated wallet is lost (closed at the
  bankruptcy price).
- Borrowed spot (``margin_spot``): selling coins the venue lends is an isolated short on the
  spot price, margined like a perp (collateral = value ÷ leverage, the perp's brackets), with
  no funding: interest accrues every hour on the borrowed value at the MODELLED rate of
  `basis_mcp.borrow` and is taken from the collateral; liquidation at the spot close.

State lives in ``paper_*`` tables in the same SQLite file, committed in the venue's own
transactions, so a desk crash between "order sent" and "fill recorded" looks exactly
like it would against a real exchange: the venue has the order, the desk must ask.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from basis_mcp import margin as mm
from basis_mcp.borrow import BorrowModel, interest_usd
from basis_mcp.clock import Clock
from basis_mcp.config import Settings
from basis_mcp.costs import Market
from basis_mcp.dated import parse_contract
from basis_mcp.feed import MarketDataUnavailable, MarketFeed
from basis_mcp.store import BUSY_PATIENT_MS, Database
from basis_mcp.venue.base import (
    BorrowEvent,
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
from basis_mcp.venue.faults import FaultPlan
from basis_mcp.venues import MARKET_DATA_ONLY

QUOTE = "USDT"

PAPER_SCHEMA = """
CREATE TABLE IF NOT EXISTS paper_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS paper_balances (asset TEXT PRIMARY KEY, free REAL NOT NULL);
CREATE TABLE IF NOT EXISTS paper_leverage (symbol TEXT PRIMARY KEY, leverage REAL NOT NULL);
CREATE TABLE IF NOT EXISTS paper_perp (
    symbol          TEXT PRIMARY KEY,
    quantity        REAL NOT NULL,
    entry_price     REAL NOT NULL,
    isolated_wallet REAL NOT NULL,
    leverage        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS paper_margin (
    symbol          TEXT PRIMARY KEY,  -- borrowed spot, sold: an isolated short on the spot price
    quantity        REAL NOT NULL,     -- signed, negative: the coins owed
    entry_price     REAL NOT NULL,
    isolated_wallet REAL NOT NULL,     -- collateral posted beyond the sale proceeds
    leverage        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS paper_future (
    symbol          TEXT PRIMARY KEY,  -- a dated contract, base-YYMMDD; SIMULATED price (basis_mcp.dated)
    quantity        REAL NOT NULL,
    entry_price     REAL NOT NULL,
    isolated_wallet REAL NOT NULL,
    leverage        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS paper_borrow (
    id          INTEGER PRIMARY KEY,
    symbol      TEXT NOT NULL,
    time        REAL NOT NULL,
    rate        REAL NOT NULL,  -- per hour, a fraction of the borrowed value
    price       REAL NOT NULL,
    quantity    REAL NOT NULL,
    amount_usd  REAL NOT NULL,  -- negative: paid
    source      TEXT NOT NULL,
    UNIQUE (symbol, time)
);
CREATE TABLE IF NOT EXISTS paper_orders (
    seq             INTEGER PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    symbol          TEXT NOT NULL,
    market          TEXT NOT NULL,
    side            TEXT NOT NULL,
    requested_qty   REAL NOT NULL,
    filled_qty      REAL NOT NULL,
    avg_price       REAL NOT NULL,
    fee_usd         REAL NOT NULL,
    mid_price       REAL NOT NULL,
    status          TEXT NOT NULL,
    reduce_only     INTEGER NOT NULL,
    reason          TEXT,
    ts              REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS paper_funding (
    id          INTEGER PRIMARY KEY,
    symbol      TEXT NOT NULL,
    time        REAL NOT NULL,
    rate        REAL NOT NULL,
    mark_price  REAL NOT NULL,
    quantity    REAL NOT NULL,
    amount_usd  REAL NOT NULL,
    UNIQUE (symbol, time)
);
CREATE TABLE IF NOT EXISTS paper_liquidations (
    id              INTEGER PRIMARY KEY,
    symbol          TEXT NOT NULL,
    time            REAL NOT NULL,
    quantity        REAL NOT NULL,
    price           REAL NOT NULL,
    loss_usd        REAL NOT NULL,
    client_order_id TEXT NOT NULL,
    market          TEXT NOT NULL DEFAULT 'perp',
    kind            TEXT NOT NULL DEFAULT 'liquidation'  -- or 'delivery': a dated future settled at expiry
);
"""

QTY_EPS = 1e-12
TABLES = {"perp": "paper_perp", "margin_spot": "paper_margin", "future": "paper_future"}  # the isolated books, one per leveraged market


class _Namespaced:
    """Another paper venue's tables in the same file: every statement's ``paper_`` tables become
    ``paper_<venue>_`` ones (``paper_bybit_perp``), so two venues' books never mix."""

    def __init__(self, db: Database, prefix: str):
        self.db = db
        self.prefix = prefix
        self._sql: dict[str, str] = {}

    def _rewrite(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = _TABLE_NAME.sub(self.prefix, sql)
        return out

    def q(self, sql: str, params: tuple | dict = ()):
        return self.db.q(self._rewrite(sql), params)

    def one(self, sql: str, params: tuple | dict = ()):
        return self.db.one(self._rewrite(sql), params)

    def x(self, sql: str, params: tuple | dict = ()):
        return self.db.x(self._rewrite(sql), params)

    def tx(self):
        return self.db.tx()

    def read_cache(self):
        return self.db.read_cache()

    def relaxed(self):
        return self.db.relaxed()

    def close(self) -> None:
        self.db.close()


_TABLE_NAME = re.compile(r"\bpaper_(?=[a-z])")


class PaperVenue:
    """One paper exchange. ``venue`` None: the primary venue (every market, the feed's venue name,
    ``paper_*`` tables); a name (``bybit``): a second exchange for cross-exchange trades, perps only,
    its own collateral pool (``capital_usd``) and tables (``paper_bybit_*``), settling the funding
    of its own feed (that venue's real history)."""

    remote = False
    lazy = False  # a replay fast-forwarding: `on_tick` opens no transaction for an hour with nothing to write (`_due`)

    def __init__(self, path: Path | str, feed: MarketFeed, settings: Settings, clock: Clock, faults: FaultPlan | None = None,
                 *, venue: str | None = None, capital_usd: float | None = None):
        self.name = f"paper:{venue or feed.venue}"
        self.venue = venue
        self.coid_tag = f"{venue}-" if venue else ""  # the venue's own order ids (liquidations, deliveries) stay distinct
        # what this venue trades (anything else is refused)
        self.markets = frozenset({"perp"}) if venue else frozenset({"spot", "margin_spot", "perp", "future"})
        self.refusal = MARKET_DATA_ONLY.get(venue or feed.venue)
        if self.refusal:  # prices to read, contracts that cannot be booked as if they were linear
            self.markets = frozenset()
        self.borrow = BorrowModel(settings.borrow_scenario)
        if venue:
            prefix = f"paper_{venue}_"
            self.db = _Namespaced(Database(path, PAPER_SCHEMA.replace("paper_", prefix), busy_ms=BUSY_PATIENT_MS), prefix)
        else:
            self.db = Database(path, PAPER_SCHEMA, busy_ms=BUSY_PATIENT_MS)  # the exchange never gives up on a lock
        self.faults = faults or FaultPlan()
        self.feed = feed
        self.settings = settings
        self.clock = clock
        self._brackets: dict[str, list[mm.Bracket]] = {}  # per symbol, from the settings (fixed for the venue's life)
        with self.db.tx():
            cols = {r["name"] for r in self.db.q("PRAGMA table_info(paper_liquidations)")}
            if "market" not in cols:  # a book from before borrowed-spot legs: its liquidations were all perps
                self.db.x("ALTER TABLE paper_liquidations ADD COLUMN market TEXT NOT NULL DEFAULT 'perp'")
            if "kind" not in cols:  # a book from before dated futures: no deliveries
                self.db.x("ALTER TABLE paper_liquidations ADD COLUMN kind TEXT NOT NULL DEFAULT 'liquidation'")
            if self.db.one("SELECT 1 FROM paper_balances LIMIT 1") is None:
                self.db.x("INSERT INTO paper_balances(asset, free) VALUES (?, ?)",
                          (QUOTE, settings.capital_usd if capital_usd is None else capital_usd))
            if self._state("last_tick") is None:
                self._set_state("last_tick", repr(clock.now()))
        # Funding is settled for (last_tick, t]. The persisted value is only moved inside a
        # transaction that writes anyway (funding, liquidation, perp order), which keeps the
        # invariant that matters after a restart: it is never earlier than the last change
        # to a perp position, so no settlement can be applied to a position that did not
        # exist at that time, and re-applied ones are ignored (UNIQUE(symbol, time)).
        self._last_tick = float(self._state("last_tick") or clock.now())

    # ------------------------------------------------------------------ state helpers

    def _state(self, key: str) -> str | None:
        row = self.db.one("SELECT value FROM paper_state WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def _set_state(self, key: str, value: str) -> None:
        self.db.x(
            "INSERT INTO paper_state(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _balance(self, asset: str) -> float:
        row = self.db.one("SELECT free FROM paper_balances WHERE asset = ?", (asset,))
        return 0.0 if row is None else float(row["free"])

    def _credit(self, asset: str, amount: float) -> None:
        self.db.x(
            "INSERT INTO paper_balances(asset, free) VALUES (?, ?) ON CONFLICT(asset) DO UPDATE SET free = free + excluded.free",
            (asset, amount),
        )

    def _perp(self, symbol: str, market: str = "perp") -> PerpPosition | None:
        r = self.db.one(f"SELECT * FROM {TABLES[market]} WHERE symbol = ?", (symbol,))
        if r is None or abs(r["quantity"]) < QTY_EPS:
            return None
        return PerpPosition(symbol, r["quantity"], r["entry_price"], r["isolated_wallet"], r["leverage"])

    def _leverage(self, symbol: str) -> float:
        r = self.db.one("SELECT leverage FROM paper_leverage WHERE symbol = ?", (symbol,))
        return float(r["leverage"]) if r else 20.0  # Binance's default when never set

    def close(self) -> None:
        self.db.close()

    def dust_qty(self, symbol: str) -> float:
        return 1e-9  # the paper venue takes fees in USDT and trades any size: no dust

    def _reachable(self) -> None:
        if self.faults.unavailable_always:
            raise VenueUnavailable("HTTP 503 Service Unavailable (injected)")

    # ------------------------------------------------------------------ venue API

    async def set_leverage(self, symbol: str, leverage: float) -> None:
        if not 1 <= leverage <= 125:
            raise VenueError(f"leverage {leverage} out of range", "bad_leverage")
        with self.db.tx():
            self.db.x(
                "INSERT INTO paper_leverage(symbol, leverage) VALUES (?, ?) ON CONFLICT(symbol) DO UPDATE SET leverage = excluded.leverage",
                (symbol, leverage),
            )

    async def fetch_balances(self) -> dict[str, float]:
        self._reachable()
        return {r["asset"]: float(r["free"]) for r in self.db.q("SELECT asset, free FROM paper_balances")}

    async def fetch_perp_position(self, symbol: str) -> PerpPosition | None:
        self._reachable()
        return self._perp(symbol)

    async def fetch_position(self, market: str, symbol: str) -> PerpPosition | None:
        """A leveraged holding: the perp, or borrowed spot (margined the same way)."""
        self._reachable()
        return self._perp(symbol, market)

    async def held_instruments(self, market: str) -> list[str]:
        """The instruments with an open isolated position in ``market`` (dated contracts have no fixed list)."""
        self._reachable()
        return [r["symbol"] for r in self.db.q(f"SELECT symbol FROM {TABLES[market]} ORDER BY symbol")]

    async def borrow_history(self, since: float) -> list[BorrowEvent]:
        rows = self.db.q("SELECT * FROM paper_borrow WHERE time > ? ORDER BY time, symbol", (since,))
        return [BorrowEvent(r["symbol"], r["time"], r["rate"], r["price"], r["quantity"], r["amount_usd"], r["source"]) for r in rows]

    async def fetch_order(self, client_order_id: str, symbol: str, market: Market) -> OrderResult | None:
        self._reachable()
        if self.faults.lookups_fail > 0:
            self.faults.lookups_fail -= 1
            raise VenueUnavailable("HTTP 503 Service Unavailable (injected, order lookup)")
        r = self.db.one("SELECT * FROM paper_orders WHERE client_order_id = ?", (client_order_id,))
        return None if r is None else self._result(r)

    async def add_margin(self, symbol: str, amount_usd: float, market: str = "perp") -> None:
        self._reachable()
        if amount_usd <= 0:
            raise VenueError("margin amount must be positive", "bad_amount")
        if self.faults.reject_add_margin:
            raise VenueError("margin transfer refused (injected)", "transfer_refused")
        with self.db.tx():
            if self._perp(symbol, market) is None:
                raise VenueError(f"no {symbol} {market} position to add margin to", "no_position")
            if self._balance(QUOTE) < amount_usd:
                raise VenueError(f"insufficient {QUOTE} to add ${amount_usd:,.2f} margin", "insufficient_balance")
            self._credit(QUOTE, -amount_usd)
            self.db.x(f"UPDATE {TABLES[market]} SET isolated_wallet = isolated_wallet + ? WHERE symbol = ?", (amount_usd, symbol))

    async def funding_history(self, since: float) -> list[FundingEvent]:
        rows = self.db.q("SELECT * FROM paper_funding WHERE time > ? ORDER BY time, symbol", (since,))
        return [FundingEvent(r["symbol"], r["time"], r["rate"], r["mark_price"], r["quantity"], r["amount_usd"]) for r in rows]

    async def liquidations(self, since: float, symbols: list[str] | None = None) -> list[LiquidationEvent]:
        rows = self.db.q("SELECT * FROM paper_liquidations WHERE time > ? ORDER BY time", (since,))
        return [LiquidationEvent(r["symbol"], r["time"], r["quantity"], r["price"], r["loss_usd"], r["client_order_id"], r["market"],
                                 r["kind"]) for r in rows]

    async def place_order(self, req: OrderRequest) -> OrderResult:
        f = self.faults
        f.orders_seen += 1
        n = f.orders_seen
        if f.unavailable_always or n in f.unavailable_nth:
            raise VenueUnavailable(f"HTTP 503 Service Unavailable (injected, order #{n})")
        if n in f.rate_limited_nth:
            raise VenueUnavailable(f"HTTP 429 Too Many Requests (injected, order #{n})", code="rate_limited")
        if n in f.reject_nth:
            raise VenueError(f"order rejected by the venue (injected, order #{n})", code="rejected")
        if n in f.timeout_before_execute_nth:
            raise VenueTimeout(f"no answer within the timeout (injected, order #{n}); the order never arrived")
        res = self._execute(req, f.partial_nth.get(n, 1.0))
        await f.checkpoint(f"venue.executed.{n}")
        if n in f.timeout_after_execute_nth:
            raise VenueTimeout(f"no answer within the timeout (injected, order #{n}); the order WAS executed")
        return res

    # ------------------------------------------------------------------ matching

    def _result(self, r) -> OrderResult:
        return OrderResult(
            client_order_id=r["client_order_id"],
            venue_order_id=str(r["seq"]),
            symbol=r["symbol"],
            market=r["market"],
            side=r["side"],
            status=r["status"],
            requested_qty=r["requested_qty"],
            filled_qty=r["filled_qty"],
            avg_price=r["avg_price"],
            fee_usd=r["fee_usd"],
            mid_price=r["mid_price"],
            ts=r["ts"],
            reason=r["reason"],
        )

    def _execute(self, req: OrderRequest, fill_fraction: float = 1.0) -> OrderResult:
        if req.market not in self.markets:
            why = f": {self.refusal}" if self.refusal else ""
            raise VenueError(f"{req.market} is not traded on {self.name}{why}", "bad_market")
        if req.quantity <= 0:
            raise VenueError(f"quantity must be positive, got {req.quantity}", "bad_quantity")
        try:
            snap = self.feed.snapshot(req.symbol)
        except (MarketDataUnavailable, KeyError) as e:
            raise VenueError(f"{req.symbol}: no market ({e})", "no_market") from None
        spec = self.settings.spec(f"{req.symbol}@{self.venue}" if self.venue else req.symbol)  # this venue's own fees
        leg = spec.costs.leg("spot" if req.market == "margin_spot" else req.market)
        on_spot = req.market in ("spot", "margin_spot")
        mid = snap.spot if on_spot else snap.perp
        qty = req.quantity * fill_fraction
        bid, ask = (snap.spot_bid, snap.spot_ask) if on_spot else (snap.perp_bid, snap.perp_ask)
        if bid and ask:  # live prices: take the real touch
            mid = (bid + ask) / 2.0
            price = leg.fill_from_touch(ask if req.side == "buy" else bid, req.side, qty * mid)
        else:
            price = leg.fill_price(mid, req.side, qty * mid)
        fee = qty * price * leg.taker_fee
        now = self.clock.now()
        with self.db.tx():
            if self.db.one("SELECT 1 FROM paper_orders WHERE client_order_id = ?", (req.client_order_id,)):
                raise VenueError(f"duplicate client order id {req.client_order_id}", "duplicate_client_order_id")
            if req.market == "spot":
                self._fill_spot(req, qty, price, fee)
            else:
                self._fill_perp(req, qty, price, fee, spec)
                self._mark_tick(now)
            status = "filled" if fill_fraction >= 1.0 else "partially_filled"
            cur = self.db.x(
                "INSERT INTO paper_orders(client_order_id, symbol, market, side, requested_qty, filled_qty, avg_price,"
                " fee_usd, mid_price, status, reduce_only, reason, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (req.client_order_id, req.symbol, req.market, req.side, req.quantity, qty, price, fee, mid, status, int(req.reduce_only), None, now),
            )
            seq = cur.lastrowid
        return OrderResult(req.client_order_id, str(seq), req.symbol, req.market, req.side, status, req.quantity, qty, price, fee, mid, now)

    def _fill_spot(self, req: OrderRequest, qty: float, price: float, fee: float) -> None:
        base = req.symbol
        if req.side == "buy":
            if req.reduce_only:
                raise VenueError("reduce-only spot buy: spot is never held short here", "reduce_only")
            cost = qty * price + fee
            if self._balance(QUOTE) + 1e-9 < cost:
                raise VenueError(f"insufficient {QUOTE}: need ${cost:,.2f}, have ${self._balance(QUOTE):,.2f}", "insufficient_balance")
            self._credit(QUOTE, -cost)
            self._credit(base, qty)
        else:
            held = self._balance(base)
            if held + 1e-12 < qty:
                raise VenueError(f"insufficient {base}: selling {qty}, holding {held}", "insufficient_balance")
            self._credit(base, -qty)
            self._credit(QUOTE, qty * price - fee)

    def _fill_perp(self, req: OrderRequest, qty: float, price: float, fee: float, spec) -> None:
        """A perp, or borrowed spot (the same isolated book in its own table)."""
        table = TABLES[req.market]
        if req.market == "margin_spot" and req.side == "buy" and self._perp(req.symbol, "margin_spot") is None:
            raise VenueError("margin buy with nothing borrowed: a borrowed-spot leg is only ever short here", "reduce_only")
        pos = self._perp(req.symbol, req.market)
        cur_qty = pos.quantity if pos else 0.0
        signed = qty if req.side == "buy" else -qty
        reducing = cur_qty != 0 and (cur_qty > 0) != (signed > 0)
        if req.reduce_only and not reducing:
            raise VenueError("ReduceOnly order rejected: it would open or increase a position", "reduce_only")
        if reducing:
            if qty > abs(cur_qty) + 1e-12:
                raise VenueError(
                    f"order of {qty} would flip a {cur_qty} position (the paper venue does not flip in one order)",
                    "reduce_only" if req.reduce_only else "would_flip",
                )
            assert pos is not None
            closed = min(qty, abs(cur_qty))
            realised = closed * (price - pos.entry_price) * (1 if cur_qty > 0 else -1)
            share = closed / abs(cur_qty)
            released = pos.isolated_wallet_usd * share
            remaining = cur_qty + signed
            if abs(remaining) < QTY_EPS:
                released = pos.isolated_wallet_usd
                self.db.x(f"DELETE FROM {table} WHERE symbol = ?", (req.symbol,))
            else:
                self.db.x(
                    f"UPDATE {table} SET quantity = ?, isolated_wallet = isolated_wallet - ? WHERE symbol = ?",
                    (remaining, released, req.symbol),
                )
            self._credit(QUOTE, released + realised - fee)
            return
        lev = self._leverage(req.symbol)
        margin = qty * price / lev
        need = margin + fee
        if self._balance(QUOTE) + 1e-9 < need:
            raise VenueError(f"insufficient margin: need ${need:,.2f}, have ${self._balance(QUOTE):,.2f}", "insufficient_margin")
        self._credit(QUOTE, -need)
        if pos is None:
            self.db.x(
                f"INSERT INTO {table}(symbol, quantity, entry_price, isolated_wallet, leverage) VALUES (?,?,?,?,?)"
                " ON CONFLICT(symbol) DO UPDATE SET quantity = excluded.quantity, entry_price = excluded.entry_price,"
                " isolated_wallet = excluded.isolated_wallet, leverage = excluded.leverage",
                (req.symbol, signed, price, margin, lev),
            )
        else:
            new_qty = cur_qty + signed
            entry = (abs(cur_qty) * pos.entry_price + qty * price) / abs(new_qty)
            self.db.x(
                f"UPDATE {table} SET quantity = ?, entry_price = ?, isolated_wallet = isolated_wallet + ? WHERE symbol = ?",
                (new_qty, entry, margin, req.symbol),
            )

    # ------------------------------------------------------------------ market ticks

    def _mark_tick(self, t: float) -> None:
        self._last_tick = max(self._last_tick, t)
        self._set_state("last_tick", repr(self._last_tick))

    def on_tick(self, t: float) -> TickReport:
        """Settle funding and borrow interest due in (last_tick, t] and liquidate breached positions at t."""
        last = self._last_tick
        funding: list[FundingEvent] = []
        liquidations: list[LiquidationEvent] = []
        borrow: list[BorrowEvent] = []
        has_perp = self.db.one("SELECT 1 FROM paper_perp LIMIT 1") is not None
        has_margin = self.db.one("SELECT 1 FROM paper_margin LIMIT 1") is not None
        has_future = self.db.one("SELECT 1 FROM paper_future LIMIT 1") is not None
        if not (has_perp or has_margin or has_future) or (self.lazy and not self._due(last, t, has_perp, has_margin, has_future)):
            self._last_tick = max(last, t)  # nothing settles, accrues, expires or breaches: no transaction
            return TickReport(t, funding, liquidations)
        with self.db.tx():
            for s in self.feed.settlements_between(last, t) if has_perp else []:
                pos = self._perp(s.symbol)
                if pos is None:
                    continue
                amount = -pos.quantity * s.mark * s.rate
                cur = self.db.x(
                    "INSERT OR IGNORE INTO paper_funding(symbol, time, rate, mark_price, quantity, amount_usd) VALUES (?,?,?,?,?,?)",
                    (s.symbol, s.time, s.rate, s.mark, pos.quantity, amount),
                )
                if cur.rowcount:
                    self.db.x("UPDATE paper_perp SET isolated_wallet = isolated_wallet + ? WHERE symbol = ?", (amount, s.symbol))
                    funding.append(FundingEvent(s.symbol, s.time, s.rate, s.mark, pos.quantity, amount))
            if has_margin:
                borrow = self._accrue_borrow(last, t)
                liquidations.extend(self._recall(last, t))
            if has_future:
                liquidations.extend(self._deliver(t))
            for market, table in TABLES.items():
                for r in self.db.q(f"SELECT symbol FROM {table}"):
                    ev = self._maybe_liquidate(r["symbol"], t, market)
                    if ev:
                        liquidations.append(ev)
            if funding or liquidations or borrow:
                self._mark_tick(t)
            else:
                self._last_tick = max(last, t)
        return TickReport(t, funding, liquidations, borrow)

    def flat(self) -> bool:
        """No isolated position of any kind: a tick can settle, accrue or liquidate nothing."""
        return all(self.db.one(f"SELECT 1 FROM {table} LIMIT 1") is None for table in TABLES.values())

    def _due(self, last: float, t: float, has_perp: bool, has_margin: bool, has_future: bool) -> bool:
        """Whether `on_tick` over (last, t] has anything to write (read only): a settlement on a perp held,
        borrowed spot (interest every hour, recalls), a dated contract at expiry, or a breached position."""
        if has_margin:
            return True
        if has_perp:
            held = {r["symbol"] for r in self.db.q("SELECT symbol FROM paper_perp")}
            if any(s.symbol in held for s in self.feed.settlements_between(last, t)):
                return True
        if has_future and any(parse_contract(r["symbol"])[1] <= t for r in self.db.q("SELECT symbol FROM paper_future")):
            return True
        return any(self._breach(r["symbol"], t, market) is not None
                   for market, table in TABLES.items() for r in self.db.q(f"SELECT symbol FROM {table}"))

    def _accrue_borrow(self, last: float, t: float) -> list[BorrowEvent]:
        """Interest for every whole hour in (last, t] on every borrowed-spot position, at that hour's
        spot price and the modelled rate, taken from the position's collateral."""
        out: list[BorrowEvent] = []
        first = (int(last // 3600) + 1) * 3600
        for h in range(first, int(t) + 1, 3600):
            for r in self.db.q("SELECT symbol FROM paper_margin ORDER BY symbol"):
                pos = self._perp(r["symbol"], "margin_spot")
                if pos is None:
                    continue
                try:
                    price = self.feed.snapshot(pos.symbol, at=float(h)).spot
                except MarketDataUnavailable:
                    continue
                rate = self.borrow.hourly_rate(pos.symbol, float(h))
                amount = -interest_usd(pos.quantity, price, rate)
                cur = self.db.x("INSERT OR IGNORE INTO paper_borrow(symbol, time, rate, price, quantity, amount_usd, source)"
                                " VALUES (?,?,?,?,?,?,?)", (pos.symbol, float(h), rate, price, pos.quantity, amount, self.borrow.label))
                if cur.rowcount:
                    self.db.x("UPDATE paper_margin SET isolated_wallet = isolated_wallet + ? WHERE symbol = ?", (amount, pos.symbol))
                    out.append(BorrowEvent(pos.symbol, float(h), rate, price, pos.quantity, amount, self.borrow.label))
        return out

    def _recall(self, last: float, t: float) -> list[LiquidationEvent]:
        """The venue recalls every open loan at the model's recall times in (last, t]: the borrowed coins
        are bought back at the spot price of that hour plus the taker fee and repaid, and the collateral
        less the loss is returned to USDT (an event the desk books like a liquidation, kind 'recall')."""
        out = []
        for when in self.borrow.recall_times(last, t):
            for r in self.db.q("SELECT symbol FROM paper_margin ORDER BY symbol"):
                pos = self._perp(r["symbol"], "margin_spot")
                if pos is None:
                    continue
                try:
                    spot = self.feed.snapshot(pos.symbol, at=when).spot
                except MarketDataUnavailable:
                    continue
                leg = self.settings.spec(pos.symbol).costs.spot
                qty = abs(pos.quantity)
                price = leg.fill_price(spot, "buy", qty * spot)
                fee = qty * price * leg.taker_fee
                realised = pos.quantity * (price - pos.entry_price)  # a short: negative when bought back higher
                coid = f"{self.coid_tag}rcl-{pos.symbol}-{int(when)}"
                self.db.x("DELETE FROM paper_margin WHERE symbol = ?", (pos.symbol,))
                self._credit(QUOTE, pos.isolated_wallet_usd + realised - fee)
                self.db.x(
                    "INSERT INTO paper_orders(client_order_id, symbol, market, side, requested_qty, filled_qty, avg_price, fee_usd,"
                    " mid_price, status, reduce_only, reason, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (coid, pos.symbol, "margin_spot", "buy", qty, qty, price, fee, spot, "filled", 1,
                     f"loan recall: the venue bought back {qty:g} {pos.symbol} at {price:.2f} and repaid the loan", when))
                self.db.x("INSERT INTO paper_liquidations(symbol, time, quantity, price, loss_usd, client_order_id, market, kind)"
                          " VALUES (?,?,?,?,?,?,?,?)", (pos.symbol, when, pos.quantity, price, fee, coid, "margin_spot", "recall"))
                out.append(LiquidationEvent(pos.symbol, when, pos.quantity, price, fee, coid, "margin_spot", "recall"))
        return out

    def _deliver(self, t: float) -> list[LiquidationEvent]:
        """Dated futures whose expiry is at or before ``t`` are settled in cash at the spot price at expiry
        (the index): the position is closed at that price, its margin and P&L returned to USDT."""
        out = []
        for r in self.db.q("SELECT symbol FROM paper_future ORDER BY symbol"):
            base, expiry = parse_contract(r["symbol"])
            if expiry > t:
                continue
            pos = self._perp(r["symbol"], "future")
            if pos is None:
                continue
            try:
                price = self.feed.snapshot(base, at=expiry).spot
            except MarketDataUnavailable:
                continue  # no index price yet: settled on the first tick that has one
            realised = pos.quantity * (price - pos.entry_price)
            coid = f"{self.coid_tag}dlv-{r['symbol']}-{int(expiry)}"
            side = "buy" if pos.quantity < 0 else "sell"
            self.db.x("DELETE FROM paper_future WHERE symbol = ?", (r["symbol"],))
            self._credit(QUOTE, pos.isolated_wallet_usd + realised)
            self.db.x(
                "INSERT INTO paper_orders(client_order_id, symbol, market, side, requested_qty, filled_qty, avg_price, fee_usd,"
                " mid_price, status, reduce_only, reason, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (coid, r["symbol"], "future", side, abs(pos.quantity), abs(pos.quantity), price, 0.0, price, "filled", 1,
                 f"delivery: settled at the {base} index {price:.2f} at expiry", expiry))
            self.db.x("INSERT INTO paper_liquidations(symbol, time, quantity, price, loss_usd, client_order_id, market, kind)"
                      " VALUES (?,?,?,?,?,?,?,?)", (r["symbol"], expiry, pos.quantity, price, 0.0, coid, "future", "delivery"))
            out.append(LiquidationEvent(r["symbol"], expiry, pos.quantity, price, 0.0, coid, "future", "delivery"))
        return out

    def _breach(self, symbol: str, t: float, market: str) -> tuple[PerpPosition, Any, float] | None:
        """(position, snapshot, liquidation price) when the position is liquidated at ``t``, else None."""
        pos = self._perp(symbol, market)
        if pos is None:
            return None
        try:
            snap = self.feed.snapshot(symbol, at=t)
        except MarketDataUnavailable:
            return None
        table = self._brackets.get(symbol)
        if table is None:
            table = self._brackets[symbol] = self.settings.spec(symbol).brackets
        lp = mm.liquidation_price(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, table)
        if market in ("perp", "future"):  # a dated future's mark is its (simulated) price at the close
            breached = snap.mark_high >= lp if pos.quantity < 0 else snap.mark_low <= lp
        else:  # borrowed spot: judged on the spot close
            breached = snap.spot >= lp if pos.quantity < 0 else snap.spot <= lp
        if not breached and pos.isolated_wallet_usd > 0:
            return None
        return pos, snap, lp

    def _maybe_liquidate(self, symbol: str, t: float, market: str = "perp") -> LiquidationEvent | None:
        hit = self._breach(symbol, t, market)
        if hit is None:
            return None
        pos, snap, lp = hit
        price = mm.bankruptcy_price(pos.isolated_wallet_usd, pos.quantity, pos.entry_price)
        coid = self.coid_tag + (f"liq-{symbol}-{int(t)}" if market == "perp" else f"liq-{symbol}-{market[0]}-{int(t)}")
        side = "buy" if pos.quantity < 0 else "sell"
        self.db.x(f"DELETE FROM {TABLES[market]} WHERE symbol = ?", (symbol,))
        self.db.x(
            "INSERT INTO paper_orders(client_order_id, symbol, market, side, requested_qty, filled_qty, avg_price, fee_usd,"
            " mid_price, status, reduce_only, reason, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (coid, symbol, market, side, abs(pos.quantity), abs(pos.quantity), price, 0.0,
             snap.spot if market == "margin_spot" else snap.mark, "filled", 1, f"liquidation: price reached {lp:.2f}", t),
        )
        self.db.x(
            "INSERT INTO paper_liquidations(symbol, time, quantity, price, loss_usd, client_order_id, market) VALUES (?,?,?,?,?,?,?)",
            (symbol, t, pos.quantity, price, pos.isolated_wallet_usd, coid, market),
        )
        return LiquidationEvent(symbol, t, pos.quantity, price, pos.isolated_wallet_usd, coid, market)
