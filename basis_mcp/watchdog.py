"""The watchdog: runs on every market tick, whether or not the agent is calling tools.

Per tick, under the desk lock: finish anything caught mid-flight, check the venue is
reachable, check drawdown, then apply the position rules of `guardrails.watchdog_actions`
and verify the desk's ledger against the venue's balances. Every action is audited with
its rule and numbers and raised as an alert for the agent's next response.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import TYPE_CHECKING, Any

from basis_mcp import margin as mm
from basis_mcp.errors import Rejected
from basis_mcp.execution import QTY_EPS, RecoveryFailed
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.guardrails import (
    PositionReadings,
    WatchdogLimits,
    defer_planned_exit,
    drawdown,
    watchdog_actions,
)
from basis_mcp.ledger import leg_quantities
from basis_mcp.venue.base import VenueError, VenueTimeout, VenueUnavailable

if TYPE_CHECKING:
    from basis_mcp.desk import Desk

VENUE_DOWN_LIMIT_S = 600.0
LEDGER_TOLERANCE_USD = 0.01


class WatchdogMixin:
    def watchdog_limits(self: Desk) -> WatchdogLimits:
        s = self.settings
        return WatchdogLimits(
            margin_add_ratio=s.margin_add_ratio,
            margin_close_ratio=s.margin_close_ratio,
            max_imbalance_pct=s.max_imbalance_pct,
            liquidation_distance_add_pct=s.liquidation_distance_add_pct,
            liquidation_distance_target_pct=s.liquidation_distance_target_pct,
            rules=s.exit_rules,
        )

    # ------------------------------------------------------------------ venue reachability

    def _venue_down(self: Desk, why: str) -> None:
        if self._venue_down_since is None:
            self._venue_down_since = self.now()
            self.audit("watchdog", "venue_unreachable", {"reason": why}, "warning")

    def _venue_up(self: Desk) -> None:
        if self._venue_down_since is not None:
            down = self.now() - self._venue_down_since
            self._venue_down_since = None
            self.audit("watchdog", "venue_reachable", {"down_seconds": down}, "ok")

    def venue_down_seconds(self: Desk) -> float:
        return 0.0 if self._venue_down_since is None else self.now() - self._venue_down_since

    # ------------------------------------------------------------------ the tick

    async def watchdog_tick(self: Desk) -> list[dict[str, Any]]:
        """One pass over the book. Caller holds ``self.lock``. Returns the actions taken."""
        actions: list[dict[str, Any]] = []
        try:
            await self.venue.fetch_balances()
            if not self.feed.healthy():
                raise VenueUnavailable(f"{self.feed.venue} market data has not refreshed for over a minute")
            self._venue_up()
        except (VenueUnavailable, VenueTimeout) as e:
            self._venue_down(str(e))
            down = self.venue_down_seconds()
            if down > VENUE_DOWN_LIMIT_S and self.store.get_meta("close_all_when_reachable") is None:
                self.store.set_meta("close_all_when_reachable", repr(self.now()))
                self.alert("critical", "venue_unreachable",
                           f"venue unreachable for {down / 60:.0f} min: no entries; every position will be closed when it is reachable",
                           {"down_seconds": round(down, 1)})
            return actions
        await self._recover_all()
        close_all = self.store.get_meta("close_all_when_reachable") is not None
        equity = self.equity_usd()
        dd = drawdown(equity, self.capital_usd)
        if dd > self.settings.max_drawdown and self.trading_state()[0] == "ACTIVE":
            self.set_trading_state("REDUCING", f"drawdown {dd * 100:.2f}% of capital > {self.settings.max_drawdown * 100:g}% limit",
                                   {"equity_usd": round(equity, 2), "capital_usd": self.capital_usd})
        lim = self.watchdog_limits()
        for row in self.store.q("SELECT * FROM positions WHERE status IN ('open','closing') ORDER BY id"):
            if self._unresolved_orders(row["id"]):
                continue  # its fills are not known yet: acting on them could trade twice; _recover_all chases it
            if row["status"] == "open" and row["opened_at"] >= self.now():
                continue  # it filled on this very tick: judged from the next one (as the backtest does)
            if row["status"] == "closing":
                # an exit the watchdog is finishing may hold a hedged remainder for a while: keep its margin safe
                readings = await self._position_readings(row)
                for act in watchdog_actions(readings, lim) if readings is not None else []:
                    if act.kind == "add_margin":
                        actions.append(await self._apply(row, act, readings))
                continue
            if close_all:
                msg = "venue was unreachable > 10 min: closing now that it answers"
                data = {"position_id": row["id"], "symbol": row["symbol"], "rule": "venue_was_unreachable",
                        "unreachable_since": self.store.get_meta("close_all_when_reachable")}
                self.audit("watchdog", "venue_was_unreachable", data, "triggered", msg)
                actions.append(await self._watchdog_close(row, "venue_was_unreachable", msg, data))
                continue
            readings = await self._position_readings(row)
            if readings is None:
                continue
            for act in watchdog_actions(readings, lim):
                if act.kind == "close" and not act.emergency and defer_planned_exit(readings, lim):
                    self._note_deferral(row["id"], act.rule, readings)
                    continue
                actions.append(await self._apply(row, act, readings))
                if act.kind == "close":
                    break
        if close_all and not self.store.q("SELECT id FROM positions WHERE status IN ('open','opening','closing')"):
            self.store.x("DELETE FROM meta WHERE key = 'close_all_when_reachable'")
        await self._check_ledger()
        return actions

    def _unresolved_orders(self: Desk, pid: int) -> bool:
        return self.store.one("SELECT 1 FROM orders WHERE position_id = ? AND status IN ('sent','unknown') LIMIT 1",
                              (pid,)) is not None

    RETRY_BASE_S = 10.0
    RETRY_MAX_S = 300.0

    async def _recover_all(self: Desk) -> None:
        """Reconcile every position caught mid-entry or mid-exit, and look up every order whose
        outcome is unknown whatever its position's state. A venue that does not answer is not a
        failure to reconcile (it is retried, and the unreachable-venue rule takes over after 10
        minutes); anything else that stops a reconciliation puts the desk in REDUCING with the
        reason. A position that keeps failing is retried with a growing pause (10 s doubling to
        5 min of market time), so a venue that keeps refusing is not sent an order every tick."""
        for row in self.store.q("SELECT * FROM positions WHERE status = 'open' ORDER BY id"):
            if self._unresolved_orders(row["id"]):
                try:
                    await self._resolve_orders(row["id"], row["symbol"])
                except (VenueError, VenueTimeout) as e:
                    self._venue_down(str(e) or type(e).__name__)
        now = self.now()
        for row in self.store.q("SELECT * FROM positions WHERE status IN ('opening','closing') ORDER BY id"):
            pid = row["id"]
            if row["execute_at"] is not None and row["execute_at"] > now:
                continue  # orders resting until their fill time (replay fill delay): not interrupted, just waiting
            failures, next_at = self._retry.get(pid, (0, 0.0))
            if now < next_at:
                continue
            try:
                what = await self._recover_position(row)
            except (VenueUnavailable, VenueTimeout) as e:
                self._venue_down(str(e) or type(e).__name__)
                self._note_once(f"unreconciled:{pid}", "critical", "reconcile_pending",
                                f"position {pid} {row['symbol']} is {row['status']} and is waiting for the venue ({e}): "
                                "the watchdog retries", {"position_id": pid})
                self._retry[pid] = (failures + 1, now + min(self.RETRY_BASE_S * 2 ** failures, self.RETRY_MAX_S))
                continue
            except (RecoveryFailed, VenueError, sqlite3.Error) as e:
                self.set_trading_state("REDUCING", f"could not reconcile position {pid}: {e}", {"position_id": pid})
                self._retry[pid] = (failures + 1, now + min(self.RETRY_BASE_S * 2 ** failures, self.RETRY_MAX_S))
                continue
            self._retry.pop(pid, None)
            self._clear_note(f"unreconciled:{pid}")
            self.alert("warning", "recovered", f"position {row['id']} {row['symbol']} was caught mid-{'entry' if row['status'] == 'opening' else 'exit'}: {what}",
                       {"position_id": row["id"], "was": row["status"]})

    async def _position_readings(self: Desk, row) -> PositionReadings | None:
        sym = row["symbol"]
        try:
            snap = self.feed.snapshot(sym)
        except MarketDataUnavailable:
            return None
        if snap.data_age_seconds > self._stale_limit():
            self._note_once(f"stale:{sym}", "warning", "market_data_stale",
                            f"{sym} market data is {snap.data_age_seconds:.0f}s old: the watchdog will not act on stale prices",
                            {"symbol": sym, "data_age_seconds": snap.data_age_seconds})
            return None
        self._clear_note(f"stale:{sym}")
        spot_q, perp_q = leg_quantities(self._fills(row["id"]))
        pos = await self.venue.fetch_perp_position(sym)
        ratio = None
        needed = 0.0
        distance = None
        for_distance = 0.0
        if pos is not None:
            lim = self.watchdog_limits()
            table = self.settings.spec(sym).brackets
            ratio = mm.margin_ratio(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, snap.mark, table)
            mmargin = mm.maintenance_margin(abs(pos.quantity) * snap.mark, table)
            mbal = pos.isolated_wallet_usd + mm.unrealised_pnl(pos.quantity, pos.entry_price, snap.mark)
            needed = max(lim.margin_target_ratio * mmargin - mbal, 0.0)
            if not math.isfinite(ratio):
                ratio = None
            if pos.quantity < 0 and snap.mark > 0:
                lp = mm.liquidation_price(pos.isolated_wallet_usd, pos.quantity, pos.entry_price, table)
                if math.isfinite(lp) and lp > 0:
                    distance = (lp - snap.mark) / snap.mark * 100.0
                    target = snap.mark * (1.0 + lim.liquidation_distance_target_pct / 100.0)
                    for_distance = max(mm.wallet_for_liquidation_price(target, pos.quantity, pos.entry_price, table)
                                       - pos.isolated_wallet_usd, 0.0)
        rate = snap.funding_rate
        return PositionReadings(
            position_id=row["id"],
            symbol=sym,
            status=row["status"],
            entry_basis_pct=row["entry_basis_pct"] or 0.0,
            signals=self.signals(sym, snap),
            playbook=row["playbook"],
            margin_ratio=ratio,
            spot_quantity=spot_q,
            perp_quantity=perp_q,
            held_seconds=self.now() - row["opened_at"],
            seconds_to_funding=snap.seconds_to_funding,
            next_funding_usd=-perp_q * snap.mark * rate,
            margin_needed_usd=needed,
            liquidation_distance_pct=distance,
            margin_for_distance_usd=for_distance,
        )

    async def _apply(self: Desk, row, act, r: PositionReadings) -> dict[str, Any]:
        pid, sym = row["id"], row["symbol"]
        data = {"position_id": pid, "symbol": sym, "rule": act.rule, **act.numbers}
        self.audit("watchdog", act.rule, data, "triggered", act.message)
        if act.kind == "close":
            return await self._watchdog_close(row, act.rule, act.message, data)
        if act.kind == "add_margin":
            free = await self._free_cash()
            amount = min(act.amount_usd, max(free, 0.0))
            if amount >= 1.0:
                try:
                    await self.venue.add_margin(sym, amount)
                except (VenueError, VenueTimeout) as e:
                    amount = 0.0
                    data["error"] = str(e)
            if amount >= act.amount_usd - 0.01:
                self.alert("warning", act.rule, f"position {pid} {sym}: {act.message}", {**data, "added_usd": round(amount, 2)})
                return {**data, "action": "add_margin", "added_usd": amount}
            if row["status"] == "closing":  # already being closed: say so, the exit retries on its own
                self._note_once(f"margin:{pid}", "critical", act.rule,
                                f"position {pid} {sym} (closing): {act.message}; could add only ${amount:,.2f}", data)
                return {**data, "action": "add_margin_failed", "added_usd": amount}
            # not enough free capital: reduce instead (close; half-measures leave the same ratio)
            return await self._watchdog_close(row, act.rule, f"{act.message}; not enough free capital (${free:,.2f}): closing", data)
        # rebalance: trim the larger leg to the smaller one
        key = f"wd{pid}-{int(self.now())}"
        try:
            if r.spot_quantity > -r.perp_quantity:
                await self._fill_leg(pid, key, sym, "spot", "sell", r.spot_quantity + r.perp_quantity, "rebalance", True)
            else:
                await self._fill_leg(pid, key, sym, "perp", "buy", -r.perp_quantity - r.spot_quantity, "rebalance", True)
        except (VenueUnavailable, VenueTimeout) as e:  # unknown outcome: looked up next tick before anything else is sent
            self.alert("warning", act.rule, f"position {pid} {sym}: rebalance did not complete ({e}); retried next tick",
                       {**data, "error": str(e)})
            return {**data, "action": "rebalance_failed", "error": str(e)}
        spot_q, perp_q = leg_quantities(self._fills(pid))
        with self.store.tx():
            self.store.x("UPDATE positions SET quantity = ? WHERE id = ?", (min(spot_q, -perp_q), pid))
        self.alert("warning", act.rule, f"position {pid} {sym}: {act.message}; now {spot_q:g} spot / {perp_q:g} perp",
                   {**data, "spot_quantity": spot_q, "perp_quantity": perp_q})
        return {**data, "action": "rebalance"}

    async def _watchdog_close(self: Desk, row, rule: str, message: str, data: dict[str, Any]) -> dict[str, Any]:
        pid, sym = row["id"], row["symbol"]
        key = f"wd{pid}-{rule}"[:64]
        spot_q, perp_q = leg_quantities(self._fills(pid))
        try:
            fill_at = self._scheduled_fill_time(sym) if row["status"] == "open" else None
        except Rejected:  # no price that late (the data ends): close at once
            fill_at = None
        with self.store.tx():
            self.store.x("UPDATE positions SET status = 'closing', close_reason = ?, execute_at = ? WHERE id = ? AND status = 'open'",
                         (f"watchdog: {rule}", fill_at, pid))
            if perp_q < -QTY_EPS:
                self._new_order(pid, key, "close", "perp", "buy", -perp_q, True)
            if spot_q > self._dust(sym):
                self._new_order(pid, key, "close", "spot", "sell", spot_q, True)
        if fill_at is not None:  # replay with a fill delay: the close orders rest until their fill time
            from basis_mcp.clock import iso

            self.alert("warning", rule, f"position {pid} {sym}: the watchdog closes it ({message}); the orders fill at "
                       f"{iso(fill_at)}", {**data, "fills_at": iso(fill_at)})
            return {**data, "action": "close_scheduled", "fills_at": iso(fill_at)}
        try:
            out = await self._execute_exit(pid, "", f"watchdog: {rule}", emergency=True)
            realized = out.realized.total_usd
            self.alert("critical" if rule in ("margin_ratio_below_130", "basis_blowout", "margin_ratio_below_150") else "warning",
                       rule, f"position {pid} {sym} closed by the watchdog: {message}", {**data, "realized_pnl_usd": round(realized, 2)})
            return {**data, "action": "close", "realized_pnl_usd": realized}
        except Rejected as e:
            return {**data, "action": "close_failed", "error": str(e)}

    def _note_deferral(self: Desk, pid: int, rule: str, r: PositionReadings) -> None:
        self._note_once(f"defer:{pid}:{rule}", "info", "exit_deferred",
                        f"position {pid}: planned exit ({rule}) waits {r.seconds_to_funding / 60:.0f} min for a settlement "
                        f"worth ${r.next_funding_usd:,.2f}",
                        {"position_id": pid, "rule": rule, "seconds_to_funding": r.seconds_to_funding,
                         "next_funding_usd": round(r.next_funding_usd, 4)})

    def _note_once(self: Desk, tag: str, severity: str, rule: str, message: str, data: dict[str, Any]) -> None:
        if tag in self._notes:
            return
        self._notes.add(tag)
        self.alert(severity, rule, message, data)

    def _clear_note(self: Desk, tag: str) -> None:
        self._notes.discard(tag)

    # ------------------------------------------------------------------ ledger vs venue

    def _desk_holdings(self: Desk) -> tuple[dict[str, float], dict[str, float]]:
        """(spot held, signed perp) per symbol, summed over every fill the desk recorded."""
        desk_spot: dict[str, float] = {}
        desk_perp: dict[str, float] = {}
        for r in self.store.q("SELECT f.market, f.side, f.quantity, p.symbol FROM fills f JOIN positions p ON p.id = f.position_id"):
            q = r["quantity"] if r["side"] == "buy" else -r["quantity"]
            book = desk_spot if r["market"] == "spot" else desk_perp
            book[r["symbol"]] = book.get(r["symbol"], 0.0) + q
        return desk_spot, desk_perp

    def ledger_discrepancies(
        self: Desk, balances: dict[str, float], perps: dict[str, Any], holdings: tuple[dict[str, float], dict[str, float]]
    ) -> list[str]:
        """Differences between what the desk recorded (``holdings``, from `_desk_holdings`) and what the venue holds."""
        out: list[str] = []
        desk_spot, desk_perp = holdings
        exact = self.mode != "live"  # a live account may hold other spot coins; the desk's must be there
        for sym in set(desk_spot) | ({a for a in balances if a != "USDT"} if exact else set()):
            venue_q = balances.get(sym, 0.0)
            want = desk_spot.get(sym, 0.0)
            if (exact and abs(venue_q - want) > 1e-8) or (not exact and venue_q + 1e-8 < want):
                out.append(f"{sym} spot: venue holds {venue_q:g}, desk ledger says {want:g}")
        for sym in set(desk_perp) | set(perps):
            venue_q = perps[sym].quantity if sym in perps else 0.0
            if abs(venue_q - desk_perp.get(sym, 0.0)) > 1e-8:
                out.append(f"{sym} perp: venue position {venue_q:g}, desk ledger says {desk_perp.get(sym, 0.0):g}")
        return out

    async def _check_ledger(self: Desk) -> None:
        """Fail closed when the desk's records and the venue disagree (paper venue: exact).
        Skipped while an order's outcome is still unknown: the books cannot agree until the venue
        says what happened to it, and `_recover_all` is already chasing that."""
        if self.store.one("SELECT 1 FROM orders WHERE status IN ('sent','unknown') LIMIT 1") is not None:
            return
        balances, perps = await self._venue_holdings()
        holdings = self._desk_holdings()  # one pass over the fills for both checks
        problems = self.ledger_discrepancies(balances, perps, holdings)
        if self.mode == "live":
            self._check_spot_baseline(balances, holdings[0])
        cash_gap = 0.0 if self.mode == "live" else await self.cash_discrepancy_usd()  # live fees may be paid in BNB
        if abs(cash_gap) > LEDGER_TOLERANCE_USD:
            problems.append(f"cash: venue USDT + margin differs from the ledger by ${cash_gap:,.4f}")
        if problems and self.trading_state()[0] == "ACTIVE":
            self.set_trading_state("REDUCING", "ledger does not reconcile with the venue: " + "; ".join(problems), {"problems": problems})

    def _check_spot_baseline(self: Desk, balances: dict[str, float], desk_spot: dict[str, float]) -> None:
        """A live account may hold coins of its own. The first reconciliation records them
        (venue balance − what the desk's fills account for) as the baseline; afterwards the venue
        must hold baseline + the desk's coins. Less means coins moved outside the desk (a manual
        sale, a withdrawal): a warning, not REDUCING — the owner may trade their own coins — and
        the reason to give the desk an account (or sub-account) of its own."""
        raw = self.store.get_meta("spot_baseline_json")
        if raw is None:
            baseline = {sym: max(balances.get(sym, 0.0) - desk_spot.get(sym, 0.0), 0.0) for sym in self.feed.symbols}
            with self.store.tx():
                self.store.set_meta("spot_baseline_json", json.dumps(baseline))
            self.audit("watchdog", "spot_baseline", baseline, "ok", "coins in the account the desk does not manage")
            return
        baseline = json.loads(raw)
        for sym in self.feed.symbols:
            want = baseline.get(sym, 0.0) + desk_spot.get(sym, 0.0)
            have = balances.get(sym, 0.0)
            tag = f"baseline:{sym}"
            if have + max(self._dust(sym), 1e-8) < want:
                self._note_once(tag, "warning", "spot_moved_outside_desk",
                                f"{sym} spot at the venue is {have:g}, below the {baseline.get(sym, 0.0):g} the account held "
                                f"before the desk + the desk's {desk_spot.get(sym, 0.0):g}: coins were sold or moved outside "
                                "the desk", {"symbol": sym, "venue_quantity": have, "baseline_quantity": baseline.get(sym, 0.0),
                                             "desk_quantity": desk_spot.get(sym, 0.0)})
            else:
                self._clear_note(tag)
