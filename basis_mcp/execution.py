"""Two-leg execution that cannot leave a naked leg, and crash recovery.

Rules, in the order they protect you:
- every order is written as an *intent* (with a client order id derived from the trade's
  idempotency key) and committed before it is sent; the row moves to ``sent`` before the
  venue call and to ``filled``/``rejected`` after it;
- an order whose outcome is unknown (timeout) is looked up by client order id, never
  blindly resent; a retry of a leg uses a new, derived client id;
- the second leg of an entry is sized to what the first leg actually filled; a partial
  second leg trims the first to match; a failed second leg unwinds the first at once;
- every close is reduce-only (perp buy-back, spot sell of what the position holds), so a
  close can never open a position;
- on start-up (and on every watchdog tick) positions caught mid-entry or mid-exit are
  reconciled with the venue: the entry is completed if both legs filled, otherwise the
  filled leg is unwound; an interrupted exit is completed. What cannot be reconciled puts
  the desk in REDUCING with the reason.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio

from basis_mcp.errors import Rejected
from basis_mcp.ledger import leg_quantities, pnl
from basis_mcp.models import EnterTradeOutput, ExitTradeOutput
from basis_mcp.sizing import floor_to_step
from basis_mcp.venue.base import OrderRequest, OrderResult, VenueError, VenueTimeout, VenueUnavailable

if TYPE_CHECKING:
    from basis_mcp.desk import Desk

QTY_EPS = 1e-9
MAX_LEG_ATTEMPTS = 4
LOOKUP_ATTEMPTS = 3


class ExecutionMixin:
    """Order plumbing for `Desk` (kept in its own module for readability)."""

    # ------------------------------------------------------------------ single orders

    def _new_order(
        self: Desk, position_id: int, key: str, purpose: str, market: str, side: str, qty: float, reduce_only: bool,
        coid: str | None = None,
    ) -> int:
        """Record an intent. Its client order id is derived from the trade's key and numbered by the
        orders this position already has for the same leg and purpose, so a retry, a second exit
        attempt or a recovery can never reuse an id (or collide with one the venue has seen)."""
        if coid is None:
            n = self.store.one(
                "SELECT COUNT(*) AS n FROM orders WHERE position_id = ? AND market = ? AND purpose = ?", (position_id, market, purpose)
            )["n"]
            coid = self.client_order_id(key or f"pos{position_id}", position_id, market, purpose, attempt=n)
        now = self.now()
        cur = self.store.x(
            "INSERT INTO orders(client_order_id, position_id, purpose, market, side, quantity, reduce_only, status,"
            " created_at, updated_at, created_wall) VALUES (?,?,?,?,?,?,?,'intent',?,?,?)",
            (coid, position_id, purpose, market, side, qty, int(reduce_only), now, now, time.time()),
        )
        return int(cur.lastrowid)

    async def _send(self: Desk, order_id: int, symbol: str, step: str | None = None) -> OrderResult | None:
        """Send one recorded intent. Returns the venue's result, or None if it was refused.

        ``VenueUnavailable`` (5xx/429) propagates after the order is marked rejected: nothing
        executed. A timeout is resolved by looking the order up.
        """
        o = self.store.one("SELECT * FROM orders WHERE id = ?", (order_id,))
        with self.store.tx():
            self.store.x("UPDATE orders SET status = 'sent', updated_at = ? WHERE id = ?", (self.now(), order_id))
        if step:
            await self.faults.checkpoint(f"{step}_marked_sent")
        req = OrderRequest(o["client_order_id"], symbol, o["market"], o["side"], o["quantity"], bool(o["reduce_only"]))
        try:
            res = await self.venue.place_order(req)
        except VenueTimeout:
            self._set_order_status(order_id, "unknown", "timed out; looking it up by client order id")
            answered, res = await self._lookup(req)
            if res is None and answered:
                self._set_order_status(order_id, "rejected", "timed out and not found at the venue: not executed")
                return None
            if res is None:  # the venue did not answer the lookup either: the outcome stays unknown
                self._venue_down("order lookup failed after a timeout")
                raise VenueTimeout(f"order {req.client_order_id}: no answer, outcome unknown; the watchdog resolves it") from None
        except VenueUnavailable as e:
            self._set_order_status(order_id, "rejected", f"venue unavailable: {e}")
            self._venue_down(str(e))
            raise
        except VenueError as e:
            self._set_order_status(order_id, "rejected", str(e))
            self.audit("venue", "order_rejected", {"client_order_id": req.client_order_id, "code": e.code}, "rejected", str(e))
            return None
        self._venue_up()
        self._record_fill(order_id, res)
        return res

    async def _lookup(self: Desk, req: OrderRequest) -> tuple[bool, OrderResult | None]:
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

    def _set_order_status(self: Desk, order_id: int, status: str, reason: str | None) -> None:
        with self.store.tx():
            self.store.x("UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE id = ?", (status, reason, self.now(), order_id))

    def _record_fill(self: Desk, order_id: int, res: OrderResult) -> None:
        o = self.store.one("SELECT * FROM orders WHERE id = ?", (order_id,))
        with self.store.tx():
            self.store.x(
                "UPDATE orders SET status = ?, venue_order_id = ?, filled_qty = ?, avg_price = ?, updated_at = ? WHERE id = ?",
                (res.status if res.filled_qty > 0 or res.status != "filled" else "filled", res.venue_order_id, res.filled_qty,
                 res.avg_price, self.now(), order_id),
            )
            if res.filled_qty > 0:
                self.store.x(
                    "INSERT OR IGNORE INTO fills(order_id, position_id, market, side, quantity, price, mid_price, fee_usd, ts)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (order_id, o["position_id"], res.market, res.side, res.filled_qty, res.avg_price, res.mid_price, res.fee_usd, res.ts),
                )

    def _order_reason(self: Desk, order_id: int) -> str:
        return self.store.one("SELECT reason FROM orders WHERE id = ?", (order_id,))["reason"] or "refused"

    async def _fill_leg(
        self: Desk, pid: int, key: str, symbol: str, market: str, side: str, qty: float, purpose: str, reduce_only: bool
    ) -> float:
        """Trade ``qty`` on one leg, retrying the unfilled remainder with new derived client ids.

        Returns the quantity filled; stops at the first refusal (nothing more will fill).
        ``VenueUnavailable`` (nothing executed; the venue is down) and ``VenueTimeout`` (an
        order's outcome is unknown: nothing more may be sent until it is resolved) propagate, so
        every caller decides what they mean for its position.
        """
        filled = 0.0
        step = self.settings.spec(symbol).qty_step
        for _ in range(MAX_LEG_ATTEMPTS):
            remaining = floor_to_step(qty - filled, step) if market == "perp" else round(qty - filled, 12)
            if remaining <= (self._dust(symbol) if market == "spot" else QTY_EPS):
                break
            with self.store.tx():
                oid = self._new_order(pid, key, purpose, market, side, remaining, reduce_only)
            res = await self._send(oid, symbol)
            if res is None or res.filled_qty <= 0:
                break
            filled += res.filled_qty
        return filled

    # ------------------------------------------------------------------ entry

    async def _execute_entry(self: Desk, pid: int, key: str, sym: str, args: dict[str, Any], lev: float) -> EnterTradeOutput:
        spot_oid, perp_oid = (r["id"] for r in self.store.q(
            "SELECT id FROM orders WHERE position_id = ? AND purpose = 'open' ORDER BY market = 'perp', id", (pid,)))
        await self.faults.checkpoint("entry.intent_written")
        try:
            await self.venue.set_leverage(sym, lev)
        except (VenueUnavailable, VenueTimeout) as e:
            return self._entry_failed(pid, key, args, f"venue did not answer the leverage change ({e or 'timeout'}); nothing executed")
        except VenueError as e:
            return self._entry_failed(pid, key, args, f"venue refused leverage {lev:g}x: {e}; nothing executed")
        try:
            spot = await self._send(spot_oid, sym, step="entry.leg1")
        except VenueUnavailable as e:
            return self._entry_failed(pid, key, args, f"venue unavailable before the first leg: {e}; nothing executed")
        except VenueTimeout:
            return self._entry_unknown(pid, "spot")
        await self.faults.checkpoint("entry.leg1_filled")
        if spot is None or spot.filled_qty <= 0:
            return self._entry_failed(pid, key, args, f"spot leg refused by the venue: {self._order_reason(spot_oid)}; nothing executed")
        spec = self.settings.spec(sym)
        perp_qty = floor_to_step(spot.filled_qty, spec.qty_step)
        if perp_qty * spot.mid_price < spec.min_notional_usd:
            return await self._unwind_and_fail(pid, key, args, sym, spot.filled_qty, "spot leg filled too little to hedge")
        if perp_qty != self.store.one("SELECT quantity FROM orders WHERE id = ?", (perp_oid,))["quantity"]:
            with self.store.tx():
                self.store.x("UPDATE orders SET quantity = ? WHERE id = ? AND status = 'intent'", (perp_qty, perp_oid))
        try:
            perp = await self._send(perp_oid, sym, step="entry.leg2")
        except VenueUnavailable:
            perp = None
        except VenueTimeout:
            return self._entry_unknown(pid, "perp")
        if perp is None or perp.filled_qty <= 0:
            why = f"perp leg refused by the venue: {self._order_reason(perp_oid)}"
            return await self._unwind_and_fail(pid, key, args, sym, spot.filled_qty, why)
        await self.faults.checkpoint("entry.both_filled")
        try:
            return await self._settle_entry(pid, key, args, sym)
        except VenueTimeout:
            return self._entry_unknown(pid, "trim")

    async def _unwind_and_fail(self: Desk, pid: int, key: str, args: dict[str, Any], sym: str, spot_qty: float, why: str) -> EnterTradeOutput:
        """The spot leg filled but cannot be hedged: sell it back at once. If that fails too the
        position stays 'opening' (the watchdog retries the unwind every tick) and a critical
        alert says so."""
        try:
            ok = await self._unwind(pid, key, sym, "spot", spot_qty)
        except VenueUnavailable:
            ok = False
        except VenueTimeout:
            return self._entry_unknown(pid, "spot unwind")
        if ok:
            return self._entry_failed(pid, key, args, f"{why}; the spot leg was unwound")
        msg = f"{why}; UNWIND OF THE SPOT LEG FAILED: naked long spot, the watchdog retries every tick"
        self.alert("critical", "naked_leg", f"position {pid} {sym}: {msg}", {"position_id": pid, "symbol": sym})
        return self._entry_failed(pid, key, args, msg, keep_open=True)

    def _entry_unknown(self: Desk, pid: int, market: str) -> EnterTradeOutput:
        """A leg timed out and the venue would not say whether it executed. Nothing more is sent;
        the position stays 'opening' and the watchdog reconciles it (completes the entry if both
        legs filled, unwinds a lone leg) as soon as the venue answers. The idempotency key is not
        consumed, but a retry with it is refused while the position is unresolved."""
        row = self.store.one("SELECT symbol FROM positions WHERE id = ?", (pid,))
        msg = (f"{market} order of position {pid} {row['symbol']} timed out and the venue did not answer the lookup: outcome unknown. "
               "Nothing more was sent; the watchdog reconciles it (completes or unwinds) when the venue answers. "
               "Check portfolio_status before retrying.")
        self.alert("critical", "entry_outcome_unknown", msg, {"position_id": pid, "leg": market})
        with self.store.tx():
            self.store.x("UPDATE orders SET status = 'cancelled', reason = 'not sent: an earlier leg is unresolved'"
                         " WHERE position_id = ? AND status = 'intent'", (pid,))
        self.audit("desk", "entry_outcome_unknown", {"position_id": pid, "leg": market}, "unknown", msg)
        raise Rejected("venue", self.venue.name, msg)

    async def _settle_entry(self: Desk, pid: int, key: str, args: dict[str, Any], sym: str) -> EnterTradeOutput:
        """Match the legs (trim the larger), then mark the position open and remember the result."""
        spot_q, perp_q = leg_quantities(self._fills(pid))
        spec = self.settings.spec(sym)
        dust = self._dust(sym)
        try:  # a trim the venue refuses leaves the legs apart: the alert below says so, the watchdog rebalances
            if spot_q + perp_q > dust:
                await self._fill_leg(pid, key, sym, "spot", "sell", spot_q + perp_q, "rebalance", True)
            elif -perp_q - spot_q > QTY_EPS:
                await self._fill_leg(pid, key, sym, "perp", "buy", -perp_q - spot_q, "rebalance", True)
        except VenueUnavailable:
            pass
        spot_q, perp_q = leg_quantities(self._fills(pid))
        if spot_q + perp_q > dust or -(spot_q + perp_q) > QTY_EPS:
            self.alert("critical", "naked_leg", f"position {pid}: legs still differ after trimming ({spot_q} vs {perp_q})",
                       {"position_id": pid, "spot_quantity": spot_q, "perp_quantity": perp_q})
        fills = self._fills(pid)
        opens = {f["market"]: f for f in fills if f["purpose"] == "open"}
        snap = self.feed.snapshot(sym)
        row = self.store.one("SELECT quantity, notional_usd, leverage FROM positions WHERE id = ?", (pid,))
        try:
            lp, ratio, wallet = await self._perp_risk(sym, snap.mark)
        except (VenueError, VenueTimeout):  # both legs are on: file the position; the watchdog reads the margin next tick
            lp, ratio, wallet = None, None, -perp_q * opens["perp"]["price"] / (row["leverage"] or 1.0)
        # notional is measured at the reference mid the caps were checked at, scaled to what filled
        ref_price = row["notional_usd"] / row["quantity"] if row["quantity"] else opens["spot"]["mid_price"]
        hedged = min(spot_q, -perp_q)  # the hedged quantity; spot dust above it is not part of the hedge
        entry_basis = (opens["perp"]["mid_price"] - opens["spot"]["mid_price"]) / opens["spot"]["mid_price"] * 100.0
        with self.store.tx():
            self.store.x(
                "UPDATE positions SET status = 'open', quantity = ?, notional_usd = ?, entry_spot = ?, entry_perp = ?,"
                " entry_basis_pct = ?, margin_usd = ?, reserved_usd = 0 WHERE id = ?",
                (hedged, hedged * ref_price, opens["spot"]["price"], opens["perp"]["price"], entry_basis, wallet, pid),
            )
            row = self.store.one("SELECT * FROM positions WHERE id = ?", (pid,))
            out = EnterTradeOutput(
                position=self._position_out(row),
                replayed=False,
                liquidation_price=None if lp is None else round(lp, 6),
                margin_ratio_pct=None if ratio is None else round(ratio * 100, 4),
            )
            if key:
                self._remember(key, "enter_trade", args, out.model_dump(exclude={"alerts", "replayed"}))
        self.audit("desk", "position_opened", {"position_id": pid, "symbol": sym, "quantity": spot_q}, "ok")
        if spot_q < spec.min_notional_usd / snap.spot:
            self.alert("warning", "small_position", f"position {pid} is below the venue minimum after trimming", {"position_id": pid})
        return out

    def _fail_position(self: Desk, pid: int, key: str, args: dict[str, Any], reason: str, outcome: str, keep_open: bool = False) -> None:
        """File an entry that did not become a position: the position is 'failed' (its realized P&L
        is what the attempt cost) unless a leg is still on (``keep_open``: it stays 'opening' for
        the watchdog), leftover intents are cancelled, and the key's outcome is remembered."""
        with self.store.tx():
            self.store.x("UPDATE orders SET status = 'cancelled', reason = 'not sent: the entry failed'"
                         " WHERE position_id = ? AND status = 'intent'", (pid,))
            if not keep_open:
                self.store.x(
                    "UPDATE positions SET status = 'failed', closed_at = ?, close_reason = ?, realized_pnl_usd = ?, reserved_usd = 0"
                    " WHERE id = ?",
                    (self.now(), reason, pnl(self._fills(pid), self._funding_amounts(pid)).total_usd, pid),
                )
            if key and self.store.one("SELECT 1 FROM idempotency WHERE key = ?", (key,)) is None:
                self._remember(key, "enter_trade", args, {"error": outcome})

    def _entry_failed(self: Desk, pid: int, key: str, args: dict[str, Any], msg: str, keep_open: bool = False) -> EnterTradeOutput:
        self._fail_position(pid, key, args, msg, msg, keep_open)
        self.audit("desk", "entry_failed", {"position_id": pid}, "failed", msg)
        raise Rejected("venue", self.venue.name, msg)

    async def _unwind(self: Desk, pid: int, key: str, sym: str, market: str, qty: float) -> bool:
        """Reverse a filled leg at once (reduce-only). True if fully unwound."""
        side = "sell" if market == "spot" else "buy"
        filled = await self._fill_leg(pid, key or f"pos{pid}", sym, market, side, qty, "unwind", True)
        return qty - filled <= (self._dust(sym) if market == "spot" else QTY_EPS)

    # ------------------------------------------------------------------ exit

    async def _execute_exit(self: Desk, pid: int, key: str, reason: str, emergency: bool = False) -> ExitTradeOutput:
        """Close both legs of a position marked 'closing': perp first (reduce-only), then spot.

        Spot is sold only down to what still hedges an open short: if the perp buy-back is
        refused or fills partly, the hedged remainder stays on, the position stays 'closing'
        and the watchdog retries. An order whose outcome is unknown (timeout, failed lookup)
        stops every further send until the watchdog has looked it up; a venue that is down
        stops them too. An exit never turns a hedge into a naked leg.
        """
        row = self.store.one("SELECT * FROM positions WHERE id = ?", (pid,))
        sym = row["symbol"]
        await self.faults.checkpoint("exit.intent_written")
        spot_q, perp_q = leg_quantities(self._fills(pid))
        intents = {r["market"]: r["id"] for r in self.store.q(
            "SELECT id, market FROM orders WHERE position_id = ? AND purpose = 'close' AND status = 'intent'", (pid,))}
        dust = self._dust(sym)

        def to_sell() -> float:
            s_q, p_q = leg_quantities(self._fills(pid))
            return s_q - max(-p_q, 0.0)  # spot still hedging an open short stays

        trouble: str | None = None
        try:
            if perp_q < -QTY_EPS and "perp" in intents:
                try:
                    res = await self._send(intents.pop("perp"), sym, step="exit.leg1")
                except VenueUnavailable:
                    if emergency:
                        raise
                    res = None
                if res is None and not emergency:  # refused before anything executed: the position stays as it was
                    why = self._order_reason(self._last_order(pid, "perp", "close"))
                    self._reopen_after_failed_exit(pid)
                    raise Rejected("venue", self.venue.name, f"perp close refused: {why}; position {pid} is still open and hedged")
            await self.faults.checkpoint("exit.leg1_filled")
            spot_q, perp_q = leg_quantities(self._fills(pid))
            if perp_q < -QTY_EPS:  # partial or missing buy-back: retry the remainder
                await self._fill_leg(pid, key, sym, "perp", "buy", -perp_q, "close", True)
            if to_sell() > dust and "spot" in intents:
                with self.store.tx():
                    self.store.x("UPDATE orders SET quantity = ? WHERE id = ? AND status = 'intent'", (to_sell(), intents["spot"]))
                await self._send(intents.pop("spot"), sym, step="exit.leg2")
            await self.faults.checkpoint("exit.both_filled")
            if to_sell() > dust:
                await self._fill_leg(pid, key, sym, "spot", "sell", to_sell(), "close", True)
        except VenueTimeout:
            trouble = "an order timed out and its outcome is unknown until the venue answers a lookup"
        except VenueUnavailable as e:
            trouble = f"the venue is unavailable ({e})"
        with self.store.tx():
            for oid in intents.values():  # an intent not sent (its leg was already flat, still hedging, or sends stopped)
                self.store.x("UPDATE orders SET status = 'cancelled', reason = 'not sent' WHERE id = ? AND status = 'intent'", (oid,))
        spot_q, perp_q = leg_quantities(self._fills(pid))
        if spot_q > dust or spot_q < -QTY_EPS or abs(perp_q) > QTY_EPS:
            with self.store.tx():
                self.store.x("UPDATE positions SET quantity = ? WHERE id = ?", (max(min(spot_q, -perp_q), 0.0), pid))
            hedged = abs(spot_q + perp_q) <= max(dust, QTY_EPS)
            state = f"{spot_q:g} spot and {perp_q:g} perp remain" + (" (still hedged)" if hedged else "")
            msg = (f"position {pid} {sym}: exit incomplete, {state}" + (f"; {trouble}" if trouble else "")
                   + "; the position stays 'closing' and the watchdog retries")
            # once per position until it closes: the agent reads it once, the watchdog keeps retrying quietly
            self._note_once(f"exit_incomplete:{pid}", "critical", "exit_incomplete", msg,
                            {"position_id": pid, "spot_quantity": spot_q, "perp_quantity": perp_q})
            raise ExitIncomplete(self.venue.name, msg, venue_trouble=trouble is not None)
        self._clear_note(f"exit_incomplete:{pid}")
        return self._finalize_close(pid, "closed", reason, key)

    def _dust(self: Desk, symbol: str) -> float:
        """Spot below what the venue lets you sell: treated as flat, never as a naked leg."""
        fn = getattr(self.venue, "dust_qty", None)
        return fn(symbol) if fn else QTY_EPS

    def _last_order(self: Desk, pid: int, market: str, purpose: str) -> int:
        return self.store.one(
            "SELECT id FROM orders WHERE position_id = ? AND market = ? AND purpose = ? ORDER BY id DESC LIMIT 1", (pid, market, purpose)
        )["id"]

    def _reopen_after_failed_exit(self: Desk, pid: int) -> None:
        with self.store.tx():
            self.store.x("UPDATE positions SET status = 'open', exit_key = NULL WHERE id = ?", (pid,))
            self.store.x("UPDATE orders SET status = 'cancelled', reason = 'exit abandoned: first leg refused'"
                         " WHERE position_id = ? AND purpose = 'close' AND status = 'intent'", (pid,))

    def _finalize_close(self: Desk, pid: int, status: str, reason: str, key: str | None) -> ExitTradeOutput:
        fills = self._fills(pid)
        row0 = self.store.one("SELECT symbol FROM positions WHERE id = ?", (pid,))
        spot_left, _ = leg_quantities(fills)
        marks = None
        if abs(spot_left) > 1e-12:  # unsellable dust stays in the account: value it at mid, don't book it as lost
            try:
                marks = {"spot": self.feed.snapshot(row0["symbol"]).spot, "perp": 0.0}
            except Exception:  # noqa: BLE001
                marks = None
        p = pnl(fills, self._funding_amounts(pid), marks)
        closes = [f for f in fills if f["purpose"] in ("close", "liquidation", "unwind")]
        last = {f["market"]: f for f in closes}
        exit_basis = None
        if "perp" in last and "spot" in last:
            exit_basis = (last["perp"]["mid_price"] - last["spot"]["mid_price"]) / last["spot"]["mid_price"] * 100.0
        with self.store.tx():
            self.store.x(
                "UPDATE positions SET status = ?, exit_spot = ?, exit_perp = ?, exit_basis_pct = ?, closed_at = ?,"
                " realized_pnl_usd = ?, close_reason = ?, reserved_usd = 0 WHERE id = ?",
                (status, last.get("spot", {}).get("price"), last.get("perp", {}).get("price"), exit_basis, self.now(),
                 p.total_usd, reason, pid),
            )
            row = self.store.one("SELECT * FROM positions WHERE id = ?", (pid,))
            out = ExitTradeOutput(position=self._position_out(row), realized=self._pnl_out(p), replayed=False)
            if key and self.store.one("SELECT 1 FROM idempotency WHERE key = ?", (key,)) is None and row["exit_key"] == key:
                self._remember(key, "exit_trade", {"position_id": pid}, out.model_dump(exclude={"alerts", "replayed"}))
        self.audit("desk", f"position_{status}", {"position_id": pid, "realized_pnl_usd": p.total_usd, "reason": reason}, "ok")
        return out

    # ------------------------------------------------------------------ recovery

    async def _resolve_orders(self: Desk, pid: int, symbol: str) -> None:
        """Ask the venue about every order of a position whose outcome the desk does not know."""
        for o in self.store.q("SELECT * FROM orders WHERE position_id = ? AND status IN ('intent','sent','unknown')", (pid,)):
            try:
                res = await self.venue.fetch_order(o["client_order_id"], symbol, o["market"])
            except (VenueUnavailable, VenueTimeout):
                raise
            if res is not None:
                self._record_fill(o["id"], res)
                self.audit("recovery", "fill_recovered", {"client_order_id": o["client_order_id"], "filled": res.filled_qty}, "ok")
            elif o["status"] == "intent":
                self._set_order_status(o["id"], "cancelled", "never sent (recovered after restart)")
            else:
                self._set_order_status(o["id"], "rejected", "not at the venue after restart: not executed")

    async def _recover_position(self: Desk, row) -> str:
        """Bring one position caught mid-entry/mid-exit to a safe, consistent state."""
        pid, sym, key = row["id"], row["symbol"], row["entry_key"] or ""
        await self._resolve_orders(pid, sym)
        spot_q, perp_q = leg_quantities(self._fills(pid))
        spec = self.settings.spec(sym)
        dust = self._dust(sym)
        if row["status"] == "opening":
            args = self._entry_args(row)
            if spot_q <= dust and abs(perp_q) <= QTY_EPS:
                self._fail_position(pid, key, args, "interrupted before any leg executed",
                                    "interrupted before any leg executed; nothing traded")
                return "entry abandoned: nothing had executed"
            hedge = min(spot_q, -perp_q)
            if hedge > QTY_EPS and hedge * self.feed.snapshot(sym).spot >= spec.min_notional_usd:
                await self._settle_entry(pid, key, args, sym)
                return f"entry completed: both legs had filled ({hedge:g} {sym})"
            ok = True
            if spot_q > dust:
                ok &= await self._unwind(pid, key, sym, "spot", spot_q)
            if perp_q < -QTY_EPS:
                ok &= await self._unwind(pid, key, sym, "perp", -perp_q)
            if ok:
                self._fail_position(pid, key, args, "one leg filled, the other did not: unwound on recovery",
                                    "interrupted with one leg filled; that leg was unwound")
                return "naked leg unwound"
            raise RecoveryFailed(f"position {pid}: could not unwind a naked {sym} leg")
        if row["status"] == "closing":
            with self.store.tx():  # fresh intents for whatever is still open, then the normal exit path
                if perp_q < -QTY_EPS:
                    self._new_order(pid, row["exit_key"] or "", "close", "perp", "buy", -perp_q, True)
                if spot_q > dust:
                    self._new_order(pid, row["exit_key"] or "", "close", "spot", "sell", spot_q, True)
            try:
                await self._execute_exit(pid, row["exit_key"] or "", row["close_reason"] or "exit completed on recovery", emergency=True)
            except ExitIncomplete as e:
                if e.venue_trouble:
                    raise VenueUnavailable(str(e)) from None
                raise RecoveryFailed(str(e)) from None
            return "interrupted exit completed"
        return "nothing to do"

    def _entry_args(self: Desk, row) -> dict[str, Any]:
        """The arguments the entry was requested with (to file its idempotent outcome after a crash)."""
        raw = self.store.one("SELECT args_json FROM positions WHERE id = ?", (row["id"],))["args_json"]
        return json.loads(raw) if raw else {}


class RecoveryFailed(Exception):
    pass


class ExitIncomplete(Rejected):
    """An exit that left something on. ``venue_trouble``: it stopped because the venue was down
    or an order's outcome is unknown (the watchdog retries; not a reason for REDUCING)."""

    def __init__(self, venue: str, message: str, venue_trouble: bool):
        super().__init__("venue", venue, message)
        self.venue_trouble = venue_trouble
