"""Execution: entries and exits of any number of legs that cannot leave a naked leg.

Rules, in the order they protect you:
- the position, its legs and one intent per leg are committed before anything is sent
  (`Orders`);
- an entry sends the legs in the strategy's ``entry_order`` (the thinner or riskier leg
  first); each later leg is sized to the hedge units every earlier leg actually filled, so
  a partial fill never leaves the legs apart; a later leg that fails unwinds every filled
  leg at once; a leg whose outcome is unknown stops every further send;
- once every leg is on, the larger legs are trimmed to the smallest (`legs.trims`);
- an exit closes in ``exit_order``, reduce-only; a later leg closes only down to what still
  hedges earlier legs that did not close, so an exit never turns a hedge into a naked leg.

Calls `Orders`, `Book`, `MarketData`, `Requests`, `Risk` (margin readings) and `Events`.
"""

from __future__ import annotations

import json
from typing import Any

from basis_mcp.clock import Clock
from basis_mcp.config import Settings
from basis_mcp.desk.book import Book, Leg
from basis_mcp.desk.events import Events
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.orders import Orders
from basis_mcp.desk.requests import Requests
from basis_mcp.desk.risk import Risk
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.ledger import pnl
from basis_mcp.legs import QTY_EPS, close_amount, hedge_units, later_leg_quantity
from basis_mcp.models import EnterTradeOutput, ExitTradeOutput
from basis_mcp.sizing import floor_to_step
from basis_mcp.store import Store
from basis_mcp.venue.base import VenueError, VenueTimeout, VenueUnavailable
from basis_mcp.venue.faults import FaultPlan


class ExitIncomplete(Rejected):
    """An exit that left something on. ``venue_trouble``: it stopped because the venue was down
    or an order's outcome is unknown (the watchdog retries; not a reason for REDUCING)."""

    def __init__(self, venue: str, message: str, venue_trouble: bool):
        super().__init__("venue", venue, message)
        self.venue_trouble = venue_trouble


def _leg_names(legs: list[Leg]) -> str:
    names = [leg.role for leg in legs]
    return (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else names[0]


def _vwap(fills: list[dict[str, Any]]) -> float | None:
    if not fills:
        return None
    if len(fills) == 1:
        return float(fills[0]["price"])
    q = sum(f["quantity"] for f in fills)
    return sum(f["quantity"] * f["price"] for f in fills) / q if q > 0 else None


class Execution:
    def __init__(self, settings: Settings, store: Store, venue: Any, clock: Clock, events: Events, market: MarketData,
                 book: Book, orders: Orders, requests: Requests, risk: Risk, faults: FaultPlan):
        self.settings = settings
        self.store = store
        self.venue = venue
        self.clock = clock
        self.events = events
        self.market = market
        self.book = book
        self.orders = orders
        self.requests = requests
        self.risk = risk
        self.faults = faults

    # ------------------------------------------------------------------ leg state

    def held_abs(self, pid: int, legs: list[Leg]) -> list[float]:
        return self.book.held_abs(legs, self.book.held(pid))

    def thresholds(self, legs: list[Leg]) -> list[float]:
        return [self.orders.flat_threshold(leg) for leg in legs]

    def entry_args(self, row: Any) -> dict[str, Any]:
        """The arguments the entry was requested with (to file its idempotent outcome after a crash)."""
        raw = self.store.one("SELECT args_json FROM positions WHERE id = ?", (row["id"],))["args_json"]
        return json.loads(raw) if raw else {}

    # ------------------------------------------------------------------ entry

    async def execute_entry(self, pid: int, key: str, args: dict[str, Any], lev: float) -> EnterTradeOutput:
        row = self.book.position(pid)
        strategy = self.book.strategy(row)
        legs = self.book.legs(pid)
        intents = self.orders.intents(pid, "open")
        await self.faults.checkpoint("entry.intent_written")
        for sym in dict.fromkeys(leg.symbol for leg in legs if leg.leveraged):
            try:
                await self.venue.set_leverage(sym, lev)
            except (VenueUnavailable, VenueTimeout) as e:
                return self.entry_failed(pid, key, args, f"venue did not answer the leverage change ({e or 'timeout'}); nothing executed")
            except VenueError as e:
                return self.entry_failed(pid, key, args, f"venue refused leverage {lev:g}x: {e}; nothing executed")
        units: float | None = None  # hedge units every leg sent so far has filled
        for n, i in enumerate(strategy.entry_order, 1):
            leg = legs[i]
            oid = intents[leg.id]
            if units is not None:
                qty = later_leg_quantity(units, leg.ratio, self.orders.lot_step(leg))
                if qty * self._mid(leg) < self.settings.spec(leg.symbol).min_notional_usd:
                    return await self.unwind_and_fail(pid, key, args, f"the legs before the {leg.role} leg filled too little to hedge")
                if qty != self.store.one("SELECT quantity FROM orders WHERE id = ?", (oid,))["quantity"]:
                    self.orders.resize_intent(oid, qty)
            try:
                res = await self.orders.send(oid, step=f"entry.leg{n}")
            except VenueUnavailable as e:
                if units is None:
                    return self.entry_failed(pid, key, args, f"venue unavailable before the first leg: {e}; nothing executed")
                res = None
            except VenueTimeout:
                return self.entry_unknown(pid, leg.role)
            await self.faults.checkpoint(f"entry.leg{n}_filled")
            if res is None or res.filled_qty <= 0:
                why = f"{leg.role} leg refused by the venue: {self.orders.reason(oid)}"
                if units is None:
                    return self.entry_failed(pid, key, args, f"{why}; nothing executed")
                return await self.unwind_and_fail(pid, key, args, why)
            got = res.filled_qty / leg.ratio
            units = got if units is None else min(units, got)
        await self.faults.checkpoint("entry.all_filled")
        try:
            return await self.settle_entry(pid, key, args)
        except VenueTimeout:
            return self.entry_unknown(pid, "trim")

    def _mid(self, leg: Leg) -> float:
        try:
            return self.market.mid(leg.market, leg.symbol)
        except (MarketDataUnavailable, KeyError):
            last = self.store.one("SELECT mid_price FROM fills WHERE position_id = ? ORDER BY id DESC LIMIT 1", (leg.position_id,))
            return float(last["mid_price"]) if last else 0.0

    async def unwind_and_fail(self, pid: int, key: str, args: dict[str, Any], why: str) -> EnterTradeOutput:
        """Some legs filled but the position cannot be hedged: reverse every filled leg at once. If
        that fails too the position stays 'opening' (the watchdog retries the unwind every tick)
        and a critical alert says so."""
        row = self.book.position(pid)
        try:
            done, left = await self.unwind_all(pid, key)
        except VenueUnavailable:
            done, left = [], [leg for leg, q in zip(self.book.legs(pid), self.held_abs(pid, self.book.legs(pid)), strict=True)
                              if abs(q) > QTY_EPS]
        except VenueTimeout:
            return self.entry_unknown(pid, "unwind")
        if not left:
            what = (f"the {_leg_names(done)} leg{'s were' if len(done) > 1 else ' was'} unwound" if done
                    else "nothing was left to unwind")
            return self.entry_failed(pid, key, args, f"{why}; {what}")
        msg = f"{why}; UNWIND OF THE {_leg_names(left).upper()} LEG FAILED: a naked leg, the watchdog retries every tick"
        self.events.alert("critical", "naked_leg", f"position {pid} {row['symbol']}: {msg}", {"position_id": pid, "symbol": row["symbol"]})
        return self.entry_failed(pid, key, args, msg, keep_open=True)

    async def unwind_all(self, pid: int, key: str) -> tuple[list[Leg], list[Leg]]:
        """Reverse every leg that holds anything, newest first (reduce-only). Returns (legs unwound, legs still on)."""
        row = self.book.position(pid)
        strategy = self.book.strategy(row)
        legs = self.book.legs(pid)
        done: list[Leg] = []
        left: list[Leg] = []
        for i in reversed(strategy.entry_order):
            leg = legs[i]
            q = self.held_abs(pid, legs)[i]
            if abs(q) <= self.orders.flat_threshold(leg):
                continue
            if await self.unwind(leg, key, q):
                done.append(leg)
            else:
                left.append(leg)
        return done, left

    async def unwind(self, leg: Leg, key: str, qty: float) -> bool:
        """Reverse ``qty`` of a filled leg at once (reduce-only; a negative ``qty`` is a leg held the
        wrong way round). True if fully unwound."""
        side = leg.order_side(opening=qty < 0)
        filled = await self.orders.fill_leg(leg, key or f"pos{leg.position_id}", side, abs(qty), "unwind", True)
        return abs(qty) - filled <= self.orders.flat_threshold(leg)

    def entry_unknown(self, pid: int, role: str) -> EnterTradeOutput:
        """A leg timed out and the venue would not say whether it executed. Nothing more is sent;
        the position stays 'opening' and the watchdog reconciles it (completes the entry if every
        leg filled, unwinds the rest) as soon as the venue answers. The idempotency key is not
        consumed, but a retry with it is refused while the position is unresolved."""
        row = self.book.position(pid)
        msg = (f"{role} order of position {pid} {row['symbol']} timed out and the venue did not answer the lookup: outcome unknown. "
               "Nothing more was sent; the watchdog reconciles it (completes or unwinds) when the venue answers. "
               "Check portfolio_status before retrying.")
        self.events.alert("critical", "entry_outcome_unknown", msg, {"position_id": pid, "leg": role})
        with self.store.tx():
            self.orders.cancel_intents(pid, "not sent: an earlier leg is unresolved")
        self.events.audit("desk", "entry_outcome_unknown", {"position_id": pid, "leg": role}, "unknown", msg)
        raise Rejected("venue", self.venue.name, msg)

    async def settle_entry(self, pid: int, key: str, args: dict[str, Any]) -> EnterTradeOutput:
        """Match the legs (trim the larger ones), then mark the position open and remember the result."""
        row = self.book.position(pid)
        strategy = self.book.strategy(row)
        legs = self.book.legs(pid)
        ratios = [leg.ratio for leg in legs]
        try:  # a trim the venue refuses leaves the legs apart: the alert below says so, the watchdog rebalances
            for leg, cut in zip(legs, self.orders.cuts(legs, self.held_abs(pid, legs)), strict=True):
                if cut > 0:
                    await self.orders.fill_leg(leg, key, leg.order_side(opening=False), cut, "rebalance", True)
        except VenueUnavailable:
            pass
        held = self.held_abs(pid, legs)
        if any(t > 0 for t in self.orders.cuts(legs, held)):
            self.events.alert("critical", "naked_leg", f"position {pid}: legs still differ after trimming ("
                              + ", ".join(f"{leg.role} {q:g}" for leg, q in zip(legs, held, strict=True)) + ")",
                              {"position_id": pid, **{f"{leg.role}_quantity": leg.sign * q for leg, q in zip(legs, held, strict=True)}})
        fills = self.book.fills(pid)
        opens = {leg.id: [f for f in fills if f["leg_id"] == leg.id and f["purpose"] == "open"] for leg in legs}
        hedged = max(min(hedge_units(held, ratios)), 0.0)  # reference-leg units every leg covers; dust above it is not hedge
        margins: dict[int, float] = {}
        lp = ratio = None
        for leg in legs:
            if not leg.leveraged:
                continue
            try:
                l_lp, l_ratio, wallet = await self.risk.leg_margin(leg, self.market.mark(leg.market, leg.symbol))
            except (VenueError, VenueTimeout, MarketDataUnavailable):  # every leg is on: file it, the watchdog reads margin next tick
                l_lp, l_ratio = None, None
                wallet = sum(f["quantity"] * f["price"] for f in opens[leg.id]) / (row["leverage"] or 1.0)
            margins[leg.id] = wallet
            if l_ratio is not None and (ratio is None or l_ratio < ratio):
                lp, ratio = l_lp, l_ratio
        # notional is measured at the reference mid the caps were checked at, scaled to what filled
        ref_price = row["notional_usd"] / row["quantity"] if row["quantity"] else opens[legs[0].id][-1]["mid_price"]
        entry_basis = None
        if strategy.basis_legs is not None:
            a, b = (opens[legs[i].id][-1]["mid_price"] for i in strategy.basis_legs)
            entry_basis = (b - a) / a * 100.0
        with self.store.tx():
            for leg in legs:
                self.store.x("UPDATE legs SET quantity = ?, entry_price = ?, margin_usd = ? WHERE id = ?",
                             (hedged * leg.ratio, _vwap(opens[leg.id]), margins.get(leg.id), leg.id))
            self.store.x(
                "UPDATE positions SET status = 'open', quantity = ?, notional_usd = ?, entry_basis_pct = ?, margin_usd = ?,"
                " reserved_usd = 0 WHERE id = ?",
                (hedged, hedged * ref_price, entry_basis, sum(margins.values()) if margins else None, pid))
            out = EnterTradeOutput(
                position=self.book.position_out(self.book.position(pid)),
                replayed=False,
                liquidation_price=None if lp is None else round(lp, 6),
                margin_ratio_pct=None if ratio is None else round(ratio * 100, 4),
            )
            if key:
                self.requests.remember(key, "enter_trade", args, out.model_dump(exclude={"alerts", "replayed"}))
        self.events.audit("desk", "position_opened", {"position_id": pid, "symbol": row["symbol"], "quantity": hedged}, "ok")
        spec = self.settings.spec(legs[0].symbol)
        if hedged * self._mid(legs[0]) < spec.min_notional_usd:
            self.events.alert("warning", "small_position", f"position {pid} is below the venue minimum after trimming",
                              {"position_id": pid})
        return out

    def fail_position(self, pid: int, key: str, args: dict[str, Any], reason: str, outcome: str, keep_open: bool = False) -> None:
        """File an entry that did not become a position: the position is 'failed' (its realized P&L
        is what the attempt cost) unless a leg is still on (``keep_open``: it stays 'opening' for
        the watchdog), leftover intents are cancelled, and the key's outcome is remembered."""
        with self.store.tx():
            self.orders.cancel_intents(pid, "not sent: the entry failed")
            if not keep_open:
                self.store.x(
                    "UPDATE positions SET status = 'failed', closed_at = ?, close_reason = ?, realized_pnl_usd = ?, reserved_usd = 0"
                    " WHERE id = ?", (self.clock.now(), reason, self.book.position_pnl(pid).total_usd, pid))
            self.requests.remember_once(key, "enter_trade", args, {"error": outcome})

    def entry_failed(self, pid: int, key: str, args: dict[str, Any], msg: str, keep_open: bool = False) -> EnterTradeOutput:
        self.fail_position(pid, key, args, msg, msg, keep_open)
        self.events.audit("desk", "entry_failed", {"position_id": pid}, "failed", msg)
        raise Rejected("venue", self.venue.name, msg)

    # ------------------------------------------------------------------ exit

    def write_close_intents(self, pid: int, key: str) -> None:
        """One close intent per leg that still holds something (inside the caller's transaction)."""
        legs = self.book.legs(pid)
        for leg, q in zip(legs, self.held_abs(pid, legs), strict=True):
            if q > self.orders.flat_threshold(leg):
                self.orders.new_order(leg, key, "close", leg.order_side(opening=False), q, True)

    async def execute_exit(self, pid: int, key: str, reason: str, emergency: bool = False) -> ExitTradeOutput:
        """Close every leg of a position marked 'closing', in the strategy's exit order (reduce-only).

        A later leg is closed only down to what still hedges earlier legs that did not close: if
        the first close is refused or fills partly, the hedged remainder stays on, the position
        stays 'closing' and the watchdog retries. An order whose outcome is unknown (timeout,
        failed lookup) stops every further send until the watchdog has looked it up; a venue
        that is down stops them too. An exit never turns a hedge into a naked leg.
        """
        row = self.book.position(pid)
        strategy = self.book.strategy(row)
        legs = self.book.legs(pid)
        await self.faults.checkpoint("exit.intent_written")
        intents = self.orders.intents(pid, "close")
        trouble: str | None = None
        try:
            left_units = 0.0  # hedge units still on among the legs already handled
            for n, i in enumerate(strategy.exit_order, 1):
                leg = legs[i]
                th = self.orders.flat_threshold(leg)

                def amount(leg: Leg = leg, i: int = i, earlier: float = left_units) -> float:
                    return close_amount(self.held_abs(pid, legs)[i], leg.ratio, earlier)

                if amount() > th and leg.id in intents:
                    oid = intents.pop(leg.id)
                    if n > 1:  # only down to what still hedges the earlier legs, on the leg's lot step
                        step = self.orders.lot_step(leg)
                        self.orders.resize_intent(oid, floor_to_step(amount(), step) if step > 0 else amount())
                    try:
                        res = await self.orders.send(oid, step=f"exit.leg{n}")
                    except VenueUnavailable:
                        if emergency or n > 1:
                            raise
                        res = None
                    if n == 1 and res is None and not emergency:  # refused before anything executed: the position stays as it was
                        why = self.orders.reason(self.orders.last_order(leg, "close"))
                        self.reopen_after_failed_exit(pid)
                        raise Rejected("venue", leg.venue,
                                       f"{leg.role} close refused: {why}; position {pid} is still open and hedged")
                await self.faults.checkpoint(f"exit.leg{n}_filled")
                if amount() > th:  # partial or missing close: retry the remainder
                    await self.orders.fill_leg(leg, key, leg.order_side(opening=False), amount(), "close", True)
                left_units = max(left_units, max(self.held_abs(pid, legs)[i], 0.0) / leg.ratio)
            await self.faults.checkpoint("exit.all_filled")
        except VenueTimeout:
            trouble = "an order timed out and its outcome is unknown until the venue answers a lookup"
        except VenueUnavailable as e:
            trouble = f"the venue is unavailable ({e})"
        with self.store.tx():  # intents not sent (their leg was already flat, still hedging, or sends stopped)
            for oid in intents.values():
                self.store.x("UPDATE orders SET status = 'cancelled', reason = 'not sent' WHERE id = ? AND status = 'intent'", (oid,))
        held = self.held_abs(pid, legs)
        th = self.thresholds(legs)
        if any(q > t or q < -QTY_EPS for q, t in zip(held, th, strict=True)):
            units = hedge_units([max(q, 0.0) for q in held], [leg.ratio for leg in legs])
            with self.store.tx():
                self.store.x("UPDATE positions SET quantity = ? WHERE id = ?", (max(min(units), 0.0), pid))
            hedged = not any(t > 0 for t in self.orders.cuts(legs, held))
            state = " and ".join(f"{leg.sign * q:g} {leg.role}" for leg, q in zip(legs, held, strict=True)) + " remain" + (
                " (still hedged)" if hedged else "")
            msg = (f"position {pid} {row['symbol']}: exit incomplete, {state}" + (f"; {trouble}" if trouble else "")
                   + "; the position stays 'closing' and the watchdog retries")
            # once per position until it closes: the agent reads it once, the watchdog keeps retrying quietly
            self.events.note_once(f"exit_incomplete:{pid}", "critical", "exit_incomplete", msg,
                                  {"position_id": pid, **{f"{leg.role}_quantity": leg.sign * q for leg, q in zip(legs, held, strict=True)}})
            raise ExitIncomplete(self.venue.name, msg, venue_trouble=trouble is not None)
        self.events.clear_note(f"exit_incomplete:{pid}")
        return self.finalize_close(pid, "closed", reason, key)

    def reopen_after_failed_exit(self, pid: int) -> None:
        with self.store.tx():
            self.store.x("UPDATE positions SET status = 'open', exit_key = NULL WHERE id = ?", (pid,))
            self.orders.cancel_intents(pid, "exit abandoned: first leg refused", "close")

    def finalize_close(self, pid: int, status: str, reason: str, key: str | None) -> ExitTradeOutput:
        row0 = self.book.position(pid)
        strategy = self.book.strategy(row0)
        legs = self.book.legs(pid)
        fills = self.book.fills(pid)
        held = self.book.held(pid, fills)
        marks = None
        if any(leg.market == "spot" and abs(held.get(leg.id, 0.0)) > 1e-12 for leg in legs):
            # unsellable dust stays in the account: value it at mid, don't book it as lost
            try:
                marks = {leg.id: (self.market.mid(leg.market, leg.symbol) if leg.market == "spot" else 0.0) for leg in legs}
            except Exception:  # noqa: BLE001
                marks = None
        p = pnl(fills, self.book.funding_amounts(pid), marks, self.book.borrow_amounts(pid))
        last = {}
        for f in fills:
            if f["purpose"] in ("close", "liquidation", "unwind"):
                last[f["leg_id"]] = f
        exit_basis = None
        if strategy.basis_legs is not None:
            a_leg, b_leg = (legs[i] for i in strategy.basis_legs)
            if a_leg.id in last and b_leg.id in last:
                a, b = last[a_leg.id]["mid_price"], last[b_leg.id]["mid_price"]
                exit_basis = (b - a) / a * 100.0
        with self.store.tx():
            for leg in legs:
                if leg.id in last:
                    self.store.x("UPDATE legs SET exit_price = ? WHERE id = ?", (last[leg.id]["price"], leg.id))
            self.store.x(
                "UPDATE positions SET status = ?, exit_basis_pct = ?, closed_at = ?, realized_pnl_usd = ?, close_reason = ?,"
                " reserved_usd = 0 WHERE id = ?", (status, exit_basis, self.clock.now(), p.total_usd, reason, pid))
            row = self.book.position(pid)
            out = ExitTradeOutput(position=self.book.position_out(row), realized=self.book.pnl_out(p), replayed=False)
            if key and row["exit_key"] == key:
                self.requests.remember_once(key, "exit_trade", {"position_id": pid}, out.model_dump(exclude={"alerts", "replayed"}))
        self.events.audit("desk", f"position_{status}", {"position_id": pid, "realized_pnl_usd": p.total_usd, "reason": reason}, "ok")
        return out
