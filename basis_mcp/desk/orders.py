"""Orders: intents written before sending, sends, lookups and fills, one leg at a time.

Owns the ``orders`` and ``fills`` tables. Every order is written as an *intent* (with a
client order id derived from the trade's idempotency key) and committed before it is sent;
the row moves to ``sent`` before the venue call and to ``filled``/``rejected`` after it. An
order whose outcome is unknown (timeout) is looked up by client order id, never blindly
resent; a retry uses a new, derived client id. Calls the store, the venue, `Events` and
`VenueHealth`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import anyio

from basis_mcp.clock import Clock
from basis_mcp.config import Settings
from basis_mcp.desk.book import Book, Leg
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.legs import QTY_EPS, trims
from basis_mcp.sizing import floor_to_step
from basis_mcp.store import Store
from basis_mcp.strategies.base import SPOT_LIKE
from basis_mcp.venue.base import OrderRequest, OrderResult, VenueError, VenueTimeout, VenueUnavailable
from basis_mcp.venue.faults import FaultPlan

MAX_LEG_ATTEMPTS = 4
LOOKUP_ATTEMPTS = 3


class Orders:
    def __init__(self, settings: Settings, store: Store, venue: Any, clock: Clock, events: Events, health: VenueHealth,
                 book: Book, faults: FaultPlan):
        self.settings = settings
        self.store = store
        self.venue = venue
        self.clock = clock
        self.events = events
        self.health = health
        self.book = book
        self.faults = faults
        self._desk_id = store.get_meta("desk_id")  # fixed for the database's life: read once, not per order

    def client_order_id(self, key: str, position_id: int, market: str, purpose: str, attempt: int = 0) -> str:
        """Deterministic id ≤ 36 chars, Binance-safe: derived from the idempotency key and this
        database's id (so a fresh database reusing position numbers never reuses an id the
        venue has already seen), numbered by attempt."""
        h = hashlib.sha256(f"{self._desk_id}:{key}".encode()).hexdigest()[:8]
        suffix = f"-{attempt}" if attempt else ""
        return f"bm-{position_id}-{market[0]}{purpose[0]}-{h}{suffix}"

    def dust(self, symbol: str) -> float:
        """Spot below what the venue lets you sell: treated as flat, never as a naked leg."""
        fn = getattr(self.venue, "dust_qty", None)
        return fn(symbol) if fn else QTY_EPS

    def flat_threshold(self, leg: Leg) -> float:
        """Below this a leg counts as flat: the venue's spot dust, or a float's noise."""
        return self.dust(leg.symbol) if leg.market == "spot" else QTY_EPS

    def lot_step(self, leg: Leg) -> float:
        """The quantity step a leg trades in (0: any quantity, as spot and borrowed spot here)."""
        return 0.0 if leg.market in SPOT_LIKE else self.settings.spec(leg.symbol).qty_step

    def cuts(self, legs: list[Leg], held_abs: list[float]) -> list[float]:
        """What to take off each leg to bring the legs back together on their lot steps (`legs.trims`);
        less than a lot step cannot be traded and is left alone."""
        steps = [self.lot_step(leg) for leg in legs]
        return trims([max(q, 0.0) for q in held_abs], [leg.ratio for leg in legs],
                     [max(self.flat_threshold(leg), step * (1 - 1e-9)) for leg, step in zip(legs, steps, strict=True)], steps)

    # ------------------------------------------------------------------ intents

    def new_order(self, leg: Leg, key: str, purpose: str, side: str, qty: float, reduce_only: bool, coid: str | None = None) -> int:
        """Record an intent (inside the caller's transaction). Its client order id is derived from the
        trade's key and numbered by the orders this position already has for the same market and
        purpose, so a retry, a second exit attempt, a second leg on the same market or a recovery
        can never reuse an id (or collide with one the venue has seen)."""
        pid = leg.position_id
        if coid is None:
            n = self.store.one("SELECT COUNT(*) AS n FROM orders WHERE position_id = ? AND market = ? AND purpose = ?",
                               (pid, leg.market, purpose))["n"]
            coid = self.client_order_id(key or f"pos{pid}", pid, leg.market, purpose, attempt=n)
        now = self.clock.now()
        cur = self.store.x(
            "INSERT INTO orders(client_order_id, position_id, leg_id, purpose, market, side, quantity, reduce_only, status,"
            " created_at, updated_at, created_wall) VALUES (?,?,?,?,?,?,?,?,'intent',?,?,?)",
            (coid, pid, leg.id, purpose, leg.market, side, qty, int(reduce_only), now, now, time.time()))
        return int(cur.lastrowid)

    def intents(self, pid: int, purpose: str) -> dict[int, int]:
        """Unsent intents of a position for ``purpose``: leg id → order id."""
        return {r["leg_id"]: r["id"] for r in self.store.q(
            "SELECT id, leg_id FROM orders WHERE position_id = ? AND purpose = ? AND status = 'intent' ORDER BY id", (pid, purpose))}

    def cancel_intents(self, pid: int, reason: str, purpose: str | None = None) -> None:
        """Mark a position's unsent intents cancelled (inside the caller's transaction)."""
        if purpose is None:
            self.store.x("UPDATE orders SET status = 'cancelled', reason = ? WHERE position_id = ? AND status = 'intent'", (reason, pid))
        else:
            self.store.x("UPDATE orders SET status = 'cancelled', reason = ? WHERE position_id = ? AND purpose = ? AND status = 'intent'",
                         (reason, pid, purpose))

    def resize_intent(self, order_id: int, qty: float) -> None:
        with self.store.tx():
            self.store.x("UPDATE orders SET quantity = ? WHERE id = ? AND status = 'intent'", (qty, order_id))

    def set_status(self, order_id: int, status: str, reason: str | None) -> None:
        with self.store.tx():
            self.store.x("UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                         (status, reason, self.clock.now(), order_id))

    def reason(self, order_id: int) -> str:
        return self.store.one("SELECT reason FROM orders WHERE id = ?", (order_id,))["reason"] or "refused"

    def last_order(self, leg: Leg, purpose: str) -> int:
        return self.store.one("SELECT id FROM orders WHERE leg_id = ? AND purpose = ? ORDER BY id DESC LIMIT 1",
                              (leg.id, purpose))["id"]

    def unresolved(self, pid: int) -> bool:
        """An order of this position was sent and the desk does not know yet what became of it."""
        return self.store.one("SELECT 1 FROM orders WHERE position_id = ? AND status IN ('sent','unknown') LIMIT 1",
                              (pid,)) is not None

    # ------------------------------------------------------------------ sending

    async def send(self, order_id: int, step: str | None = None) -> OrderResult | None:
        """Send one recorded intent. Returns the venue's result, or None if it was refused.

        ``VenueUnavailable`` (5xx/429) propagates after the order is marked rejected: nothing
        executed. A timeout is resolved by looking the order up.
        """
        o = self.store.one("SELECT o.*, l.symbol FROM orders o JOIN legs l ON l.id = o.leg_id WHERE o.id = ?", (order_id,))
        with self.store.tx():
            self.store.x("UPDATE orders SET status = 'sent', updated_at = ? WHERE id = ?", (self.clock.now(), order_id))
        if step:
            await self.faults.checkpoint(f"{step}_marked_sent")
        req = OrderRequest(o["client_order_id"], o["symbol"], o["market"], o["side"], o["quantity"], bool(o["reduce_only"]))
        try:
            res = await self.venue.place_order(req)
        except VenueTimeout:
            self.set_status(order_id, "unknown", "timed out; looking it up by client order id")
            answered, res = await self.lookup(req)
            if res is None and answered:
                self.set_status(order_id, "rejected", "timed out and not found at the venue: not executed")
                return None
            if res is None:  # the venue did not answer the lookup either: the outcome stays unknown
                self.health.down("order lookup failed after a timeout")
                raise VenueTimeout(f"order {req.client_order_id}: no answer, outcome unknown; the watchdog resolves it") from None
        except VenueUnavailable as e:
            self.set_status(order_id, "rejected", f"venue unavailable: {e}")
            self.health.down(str(e))
            raise
        except VenueError as e:
            self.set_status(order_id, "rejected", str(e))
            self.events.audit("venue", "order_rejected", {"client_order_id": req.client_order_id, "code": e.code}, "rejected", str(e))
            return None
        self.health.up()
        self.record_fill(order_id, res)
        return res

    async def lookup(self, req: OrderRequest) -> tuple[bool, OrderResult | None]:
        """(the venue answered, the order if it exists). Only an answer of "no such order" means
        the order never executed; a lookup that fails says nothing."""
        answered = False
        for attempt in range(LOOKUP_ATTEMPTS):
            try:
                res = await self.venue.fetch_order(req.client_order_id, req.symbol, req.market)
                answered = True
            except (VenueError, VenueTimeout):  # an error is not an answer: only "no such order" is
                res = None
            if res is not None:
                return True, res
            if not self.clock.simulated:
                await anyio.sleep(0.5 * (attempt + 1))
        return answered, None

    def record_fill(self, order_id: int, res: OrderResult) -> None:
        o = self.store.one("SELECT position_id, leg_id FROM orders WHERE id = ?", (order_id,))
        with self.store.tx():
            self.store.x(
                "UPDATE orders SET status = ?, venue_order_id = ?, filled_qty = ?, avg_price = ?, updated_at = ? WHERE id = ?",
                (res.status if res.filled_qty > 0 or res.status != "filled" else "filled", res.venue_order_id, res.filled_qty,
                 res.avg_price, self.clock.now(), order_id))
            if res.filled_qty > 0:
                self.store.x(
                    "INSERT OR IGNORE INTO fills(order_id, position_id, leg_id, market, side, quantity, price, mid_price, fee_usd, ts)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (order_id, o["position_id"], o["leg_id"], res.market, res.side, res.filled_qty, res.avg_price, res.mid_price,
                     res.fee_usd, res.ts))

    async def fill_leg(self, leg: Leg, key: str, side: str, qty: float, purpose: str, reduce_only: bool) -> float:
        """Trade ``qty`` on one leg, retrying the unfilled remainder with new derived client ids.

        Returns the quantity filled; stops at the first refusal (nothing more will fill).
        ``VenueUnavailable`` (nothing executed; the venue is down) and ``VenueTimeout`` (an
        order's outcome is unknown: nothing more may be sent until it is resolved) propagate, so
        every caller decides what they mean for its position.
        """
        filled = 0.0
        step = self.lot_step(leg)
        for _ in range(MAX_LEG_ATTEMPTS):
            remaining = floor_to_step(qty - filled, step) if step > 0 else round(qty - filled, 12)
            if remaining <= self.flat_threshold(leg):
                break
            with self.store.tx():
                oid = self.new_order(leg, key or f"pos{leg.position_id}", purpose, side, remaining, reduce_only)
            res = await self.send(oid)
            if res is None or res.filled_qty <= 0:
                break
            filled += res.filled_qty
        return filled

    async def resolve(self, pid: int) -> None:
        """Ask the venue about every order of a position whose outcome the desk does not know."""
        for o in self.store.q("SELECT o.*, l.symbol FROM orders o JOIN legs l ON l.id = o.leg_id WHERE o.position_id = ?"
                              " AND o.status IN ('intent','sent','unknown')", (pid,)):
            res = await self.venue.fetch_order(o["client_order_id"], o["symbol"], o["market"])
            if res is not None:
                self.record_fill(o["id"], res)
                self.events.audit("recovery", "fill_recovered", {"client_order_id": o["client_order_id"], "filled": res.filled_qty}, "ok")
            elif o["status"] == "intent":
                self.set_status(o["id"], "cancelled", "never sent (recovered after restart)")
            else:
                self.set_status(o["id"], "rejected", "not at the venue after restart: not executed")
