"""Recovery: bring every position caught mid-flight back to a safe, consistent state, and copy
what the venue did on its own (funding, liquidations) into the ledger.

On start-up and on every watchdog tick: every order whose outcome the desk does not know is
looked up by client order id; an entry whose legs all filled is completed, one with only some
legs filled is unwound; an interrupted exit is completed. What cannot be reconciled puts the
desk in REDUCING with the reason (fail closed). Calls `Orders`, `Execution`, `Book`, `Risk`
(trading state) and `Events`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from basis_mcp.clock import iso
from basis_mcp.desk.book import Book
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.desk.execution import Execution, ExitIncomplete
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.orders import Orders
from basis_mcp.desk.risk import Risk
from basis_mcp.legs import QTY_EPS, hedge_units
from basis_mcp.models import FundingSettlementOut
from basis_mcp.store import Store
from basis_mcp.venue.base import LiquidationEvent, OrderResult, VenueError, VenueTimeout, VenueUnavailable
from basis_mcp.venues import qualify, split

RETRY_BASE_S = 10.0
RETRY_MAX_S = 300.0


class RecoveryFailed(Exception):
    pass


class Recovery:
    def __init__(self, store: Store, venue: Any, events: Events, health: VenueHealth, market: MarketData, book: Book,
                 orders: Orders, execution: Execution, risk: Risk):
        self.store = store
        self.venue = venue
        self.events = events
        self.health = health
        self.market = market
        self.book = book
        self.orders = orders
        self.execution = execution
        self.risk = risk
        self._retry: dict[int, tuple[int, float]] = {}  # position → (failed reconciliations, next attempt at market time)

    async def recover_position(self, row: Any) -> str:
        """Bring one position caught mid-entry/mid-exit to a safe, consistent state."""
        pid, sym, key = row["id"], row["symbol"], row["entry_key"] or ""
        await self.orders.resolve(pid)
        legs = self.book.legs(pid)
        held = self.book.held_abs(legs, self.book.held(pid))
        flat = [abs(q) <= self.orders.flat_threshold(leg) for leg, q in zip(legs, held, strict=True)]
        if row["status"] == "opening":
            args = self.execution.entry_args(row)
            if all(flat):
                self.execution.fail_position(pid, key, args, "interrupted before any leg executed",
                                             "interrupted before any leg executed; nothing traded")
                return "entry abandoned: nothing had executed"
            common = min(hedge_units(held, [leg.ratio for leg in legs]))
            ref = legs[0]
            try:
                ref_mid = self.market.mid(ref.market, ref.symbol)
            except Exception:  # noqa: BLE001 - no price: cannot judge the size, unwind
                ref_mid = 0.0
            if common > QTY_EPS and common * ref.ratio * ref_mid >= self.book.settings.spec(ref.symbol).min_notional_usd:
                await self.execution.settle_entry(pid, key, args)
                return f"entry completed: every leg had filled ({common:g} {sym})"
            _, left = await self.execution.unwind_all(pid, key)
            if not left:
                self.execution.fail_position(pid, key, args, "some legs filled, the others did not: unwound on recovery",
                                             "interrupted with only some legs filled; those legs were unwound")
                return "naked leg unwound"
            raise RecoveryFailed(f"position {pid}: could not unwind a naked {sym} leg ({', '.join(leg.role for leg in left)})")
        if row["status"] == "closing":
            with self.store.tx():  # fresh intents for whatever is still open, then the normal exit path
                self.execution.write_close_intents(pid, row["exit_key"] or "")
            try:
                await self.execution.execute_exit(pid, row["exit_key"] or "", row["close_reason"] or "exit completed on recovery",
                                                  emergency=True)
            except ExitIncomplete as e:
                if e.venue_trouble:
                    raise VenueUnavailable(str(e)) from None
                raise RecoveryFailed(str(e)) from None
            return "interrupted exit completed"
        return "nothing to do"

    async def recover_all(self) -> None:
        """Reconcile every position caught mid-entry or mid-exit, and look up every order whose
        outcome is unknown whatever its position's state. A venue that does not answer is not a
        failure to reconcile (it is retried, and the unreachable-venue rule takes over after 10
        minutes); anything else that stops a reconciliation puts the desk in REDUCING with the
        reason. A position that keeps failing is retried with a growing pause (10 s doubling to
        5 min of market time), so a venue that keeps refusing is not sent an order every tick."""
        for row in self.book.positions(("open",)):
            if self.orders.unresolved(row["id"]):
                try:
                    await self.orders.resolve(row["id"])
                except (VenueError, VenueTimeout) as e:
                    self.health.down(str(e) or type(e).__name__)
        now = self.events.now()
        for row in self.book.positions(("opening", "closing")):
            pid = row["id"]
            if row["execute_at"] is not None and row["execute_at"] > now:
                continue  # orders resting until their fill time (replay fill delay): not interrupted, just waiting
            failures, next_at = self._retry.get(pid, (0, 0.0))
            if now < next_at:
                continue
            try:
                what = await self.recover_position(row)
            except (VenueUnavailable, VenueTimeout) as e:
                self.health.down(str(e) or type(e).__name__)
                self.events.note_once(f"unreconciled:{pid}", "critical", "reconcile_pending",
                                      f"position {pid} {row['symbol']} is {row['status']} and is waiting for the venue ({e}): "
                                      "the watchdog retries", {"position_id": pid})
                self._retry[pid] = (failures + 1, now + min(RETRY_BASE_S * 2 ** failures, RETRY_MAX_S))
                continue
            except (RecoveryFailed, VenueError, sqlite3.Error) as e:
                self.risk.set_trading_state("REDUCING", f"could not reconcile position {pid}: {e}", {"position_id": pid})
                self._retry[pid] = (failures + 1, now + min(RETRY_BASE_S * 2 ** failures, RETRY_MAX_S))
                continue
            self._retry.pop(pid, None)
            self.events.clear_note(f"unreconciled:{pid}")
            self.events.alert("warning", "recovered", f"position {pid} {row['symbol']} was caught mid-"
                              f"{'entry' if row['status'] == 'opening' else 'exit'}: {what}", {"position_id": pid, "was": row["status"]})

    # ------------------------------------------------------------------ what the venue did on its own

    async def sync_venue_events(self) -> tuple[list[FundingSettlementOut], list[dict[str, Any]]]:
        """Copy funding and liquidations from the venue into the desk's ledger (idempotent). A
        funding payment belongs to the perp leg that was open on that symbol at that time."""
        self.market.flush_samples()
        settled: list[FundingSettlementOut] = []
        # one cursor per venue: a venue that was down (or left out of the book for a while) still has its settlements
        # booked when it answers again, whatever the others' cursors say
        for venue, key, fetch in self._per_venue("funding_cursor", "funding_history"):
            cursor = float(self.store.get_meta(key) or 0)
            try:
                raw = await fetch(cursor)
            except (VenueError, VenueTimeout):
                if venue is None:
                    raise
                continue  # another venue down: its cursor waits, its settlements are booked when it answers
            self._book_funding([dataclasses.replace(e, symbol=qualify(e.symbol, venue)) for e in raw], settled, key)
        await self.sync_borrow()
        liq_out: list[dict[str, Any]] = []
        held = [r["symbol"] for r in self.store.q(
            "SELECT DISTINCT l.symbol FROM legs l JOIN positions p ON p.id = l.position_id WHERE l.market != 'spot'"
            " AND p.status IN ('opening','open','closing')")]
        for venue, key, fetch in self._per_venue("liquidation_cursor", "liquidations"):
            mine = [split(s)[0] for s in held if split(s)[1] == venue]
            if venue is not None and not mine:
                continue
            lcursor = float(self.store.get_meta(key) or 0)
            try:
                evs = await fetch(lcursor, mine if venue is not None else [s for s in held if split(s)[1] is None])
            except (VenueError, VenueTimeout):
                if venue is None:
                    raise
                continue
            for ev in sorted((dataclasses.replace(e, symbol=qualify(e.symbol, venue)) for e in evs), key=lambda e: e.time):
                liq_out.append(await self.on_liquidation(ev, key))
        return settled, liq_out

    def _per_venue(self, cursor: str, method: str) -> list[tuple[str | None, str, Any]]:
        """(venue or None for the primary, its cursor's meta key, the venue's own call) for every venue of the desk."""
        out: list[tuple[str | None, str, Any]] = [(None, cursor, getattr(getattr(self.venue, "primary", self.venue), method))]
        for v, ex in getattr(self.venue, "others", {}).items():
            out.append((v, f"{cursor}:{v}", getattr(ex, method)))
        return out

    def _book_funding(self, events: list[Any], settled: list[FundingSettlementOut], cursor_key: str) -> None:
        if events:
            with self.store.tx():
                for ev in events:
                    leg = self.store.one(
                        "SELECT l.id, l.position_id FROM legs l JOIN positions p ON p.id = l.position_id WHERE l.market = 'perp'"
                        " AND l.symbol = ? AND p.opened_at <= ? AND (p.closed_at IS NULL OR p.closed_at >= ?)"
                        " AND p.status != 'failed' ORDER BY p.id DESC LIMIT 1", (ev.symbol, ev.time, ev.time))
                    pid = leg["position_id"] if leg else None
                    if leg is not None:
                        self.store.x(
                            "INSERT OR IGNORE INTO funding_payments(position_id, leg_id, symbol, ts, rate, mark_price, quantity,"
                            " amount_usd) VALUES (?,?,?,?,?,?,?,?)",
                            (pid, leg["id"], ev.symbol, ev.time, ev.rate, ev.mark_price, ev.quantity, ev.amount_usd))
                    settled.append(FundingSettlementOut(position_id=pid, symbol=ev.symbol, time=iso(ev.time) or "",
                                                        rate_pct=ev.rate * 100, mark_price=ev.mark_price, quantity=ev.quantity,
                                                        amount_usd=ev.amount_usd))
                self.store.set_meta(cursor_key, repr(max(ev.time for ev in events)))

    async def sync_borrow(self) -> int:
        """Copy the venue's hourly borrow interest onto the borrowed-spot leg open at that hour (idempotent)."""
        history = getattr(self.venue, "borrow_history", None)
        if history is None:
            return 0
        cursor = float(self.store.get_meta("borrow_cursor") or 0)
        events = await history(cursor)
        if not events:
            return 0
        with self.store.tx():
            for ev in events:
                leg = self.store.one(
                    "SELECT l.id, l.position_id FROM legs l JOIN positions p ON p.id = l.position_id WHERE l.market = 'margin_spot'"
                    " AND l.symbol = ? AND p.opened_at <= ? AND (p.closed_at IS NULL OR p.closed_at >= ?)"
                    " AND p.status != 'failed' ORDER BY p.id DESC LIMIT 1", (ev.symbol, ev.time, ev.time))
                if leg is not None:
                    self.store.x("INSERT OR IGNORE INTO borrow_payments(position_id, leg_id, asset, ts, rate, quantity, price,"
                                 " amount_usd) VALUES (?,?,?,?,?,?,?,?)",
                                 (leg["position_id"], leg["id"], ev.symbol, ev.time, ev.rate, ev.quantity, ev.price, ev.amount_usd))
                self.store.x("INSERT OR IGNORE INTO borrow_rates(asset, ts, rate, source) VALUES (?,?,?,?)",
                             (ev.symbol, ev.time, ev.rate, ev.source))
            self.store.set_meta("borrow_cursor", repr(max(ev.time for ev in events)))
        return len(events)

    def _advance_liquidation_cursor(self, t: float, key: str = "liquidation_cursor") -> None:
        if t > float(self.store.get_meta(key) or 0):
            self.store.set_meta(key, repr(t))

    async def on_liquidation(self, ev: LiquidationEvent, cursor_key: str = "liquidation_cursor") -> dict[str, Any]:
        info: dict[str, Any] = {"symbol": ev.symbol, "time": iso(ev.time), "quantity": ev.quantity, "price": ev.price,
                                "margin_lost_usd": ev.loss_usd}
        if self.store.one("SELECT 1 FROM orders WHERE client_order_id = ?", (ev.client_order_id,)) is not None:
            with self.store.tx():  # already booked (crash after the fill, before the cursor moved): don't book it twice
                self._advance_liquidation_cursor(ev.time, cursor_key)
            return {**info, "already_recorded": True}
        market = getattr(ev, "market", "perp")
        row = self.book.position_on(market, ev.symbol)
        if row is None:
            with self.store.tx():
                self._advance_liquidation_cursor(ev.time, cursor_key)
            self.events.alert("critical", "liquidation", f"{ev.symbol} {market} liquidated at {ev.price:.2f} with no desk position", info)
            return info
        pid = row["id"]
        info["position_id"] = pid
        leg = next(leg for leg in self.book.legs(pid) if leg.market == market and leg.symbol == ev.symbol)
        kind = getattr(ev, "kind", "liquidation")
        delivered, recalled = kind == "delivery", kind == "recall"
        if delivered:
            info = {k: v for k, v in info.items() if k != "margin_lost_usd"} | {"delivery_price": ev.price}
        if recalled:
            info = {k: v for k, v in info.items() if k != "margin_lost_usd"} | {"buyback_price": ev.price, "fee_usd": ev.loss_usd}
        what = {"delivery": "delivered at expiry", "recall": "loan recalled by the venue"}.get(kind, "liquidated")
        side = "buy" if ev.quantity < 0 else "sell"
        liq = OrderResult(ev.client_order_id, ev.client_order_id, ev.symbol, market, side,  # type: ignore[arg-type]
                          "filled", abs(ev.quantity), abs(ev.quantity), ev.price, ev.loss_usd if recalled else 0.0, ev.price,
                          ev.time)
        # the venue's fill, the position's new state and the cursor land in one transaction: a crash
        # between them cannot book the liquidation twice or lose it
        with self.store.tx():
            if row["execute_at"] is not None:
                # its orders rest for a later fill (replay with a fill delay): never sent, and they would act on legs
                # the venue has just closed (an intent left by a crash is different: recovery looks it up at the venue)
                self.store.x("UPDATE orders SET status = 'cancelled', reason = ?, updated_at = ? WHERE position_id = ?"
                             " AND status = 'intent'", (f"superseded: {what}", ev.time, pid))
                self.store.x("UPDATE positions SET execute_at = NULL WHERE id = ?", (pid,))
            oid = self.orders.new_order(leg, "", "liquidation", side, abs(ev.quantity), True, coid=ev.client_order_id)
            self.orders.record_fill(oid, liq)
            self.store.x("UPDATE positions SET status = 'closing', close_reason = ? WHERE id = ?", (f"{leg.role} {what}", pid))
            self._advance_liquidation_cursor(ev.time, cursor_key)
        try:
            _, left = await self.execution.unwind_all(pid, row["entry_key"] or f"pos{pid}")
        except (VenueError, VenueTimeout):
            left = [leg]  # the position stays 'closing': the watchdog finishes unwinding the rest
        others = [x.role for x in self.book.legs(pid) if x.id != leg.id]
        head = (f"position {pid} {ev.symbol}: {leg.role} leg SETTLED AT EXPIRY at the index {ev.price:.2f} (it was still open at "
                "expiry: the watchdog could not close it in time)" if delivered else
                f"position {pid} {ev.symbol}: the venue RECALLED the {leg.role} loan and bought the coins back at {ev.price:.2f} "
                f"(fee ${ev.loss_usd:,.2f}): a borrow squeeze" if recalled else
                f"position {pid} {ev.symbol}: {leg.role} leg LIQUIDATED at {ev.price:.2f} (isolated margin ${ev.loss_usd:,.2f} lost)")
        msg = (head + "; " + (f"{' and '.join(others)} leg{'s' if len(others) > 1 else ''} unwound at once" if not left
                              else "UNWIND OF THE OTHER LEGS FAILED: a naked leg, the watchdog retries"))
        if not left:
            out = self.execution.finalize_close(pid, "closed" if delivered or recalled else "liquidated",
                                                f"{leg.role} {what}; {' and '.join(others)} unwound", None)
            info["realized_pnl_usd"] = out.realized.total_usd if out.realized else None
        self.events.alert("critical", kind if kind in ("delivery", "recall") else "liquidation", msg, info)
        return info
