"""The watchdog: runs on every market tick, whether or not the agent is calling tools.

Per tick (the caller holds the desk lock): finish anything caught mid-flight, check the venue
is reachable, check drawdown, then apply the position rules of `guardrails.watchdog_actions`
to every leg of every position and verify the ledger against the venue. Every action is
audited with its rule and numbers and raised as an alert for the agent's next response.
Calls `Recovery`, `Reconcile`, `Execution`, `Orders`, `Risk`, `Book`, `MarketData` and `Events`.

A new position rule goes in `guardrails.watchdog_actions` (the decision) and, if it needs a
new reading, in `readings` here.
"""

from __future__ import annotations

from typing import Any

from basis_mcp.clock import iso
from basis_mcp.config import Settings
from basis_mcp.desk.book import Book
from basis_mcp.desk.events import Events, VenueHealth
from basis_mcp.desk.execution import Execution
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.orders import Orders
from basis_mcp.desk.reconcile import Reconcile
from basis_mcp.desk.recovery import Recovery
from basis_mcp.desk.risk import Risk
from basis_mcp.errors import Rejected
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.guardrails import Action, PositionReadings, defer_planned_exit, drawdown, watchdog_actions
from basis_mcp.legs import imbalance_pct
from basis_mcp.store import Store
from basis_mcp.venue.base import VenueError, VenueTimeout, VenueUnavailable
from basis_mcp.venues import venue_of

VENUE_DOWN_LIMIT_S = 600.0
CRITICAL_RULES = ("margin_ratio_below_130", "basis_blowout", "margin_ratio_below_150", "borrow_spike", "expiry_near")


class Watchdog:
    def __init__(self, settings: Settings, store: Store, venue: Any, events: Events, health: VenueHealth, market: MarketData,
                 book: Book, orders: Orders, execution: Execution, recovery: Recovery, reconcile: Reconcile, risk: Risk):
        self.settings = settings
        self.store = store
        self.venue = venue
        self.events = events
        self.health = health
        self.market = market
        self.book = book
        self.orders = orders
        self.execution = execution
        self.recovery = recovery
        self.reconcile = reconcile
        self.risk = risk

    async def tick(self) -> list[dict[str, Any]]:
        """One pass over the book. The caller holds the desk lock. Returns the actions taken."""
        actions: list[dict[str, Any]] = []
        down: dict[str, str] = {}
        try:
            if getattr(self.venue, "multi", False):
                reach = await self.venue.reachable()
                primary = self.venue.primary_venue
                if reach.get(primary):
                    raise VenueUnavailable(str(reach[primary]))
                down = {v: why for v, why in reach.items() if why}
                self.other_venues_health(reach)
            else:
                await self.venue.fetch_balances()
            if not self.market.feed.healthy():
                raise VenueUnavailable(f"{self.market.feed.venue} market data has not refreshed for over a minute")
            self.health.up()
        except (VenueUnavailable, VenueTimeout) as e:
            self.health.down(str(e))
            down_s = self.health.down_seconds()
            if down_s > VENUE_DOWN_LIMIT_S and self.store.get_meta("close_all_when_reachable") is None:
                self.store.set_meta("close_all_when_reachable", repr(self.events.now()))
                self.events.alert("critical", "venue_unreachable", f"{self.venue.name} unreachable for {down_s / 60:.0f} min: no "
                                  "entries; every position will be closed when it is reachable",
                                  {"venue": self.venue.name, "down_seconds": round(down_s, 1)})
            if getattr(self.venue, "multi", False):  # the primary is down: legs on the other venues are still kept safe
                cut_off = {self.venue.primary_venue: str(e)}
                lim = self.risk.watchdog_limits()
                for row in self.book.positions(("open", "closing")):
                    legs_down = self.legs_on(row["id"], cut_off)
                    if legs_down and len(legs_down) < len(self.book.legs(row["id"])):
                        try:
                            actions += await self.one_venue_down(row, lim, legs_down, cut_off)
                        except (VenueError, VenueTimeout):
                            pass  # that venue failed too: nothing more can be done this tick
            return actions
        try:
            await self.recovery.recover_all()
        except (VenueUnavailable, VenueTimeout):
            if not down:
                raise  # one venue of several down: what needs it waits; the rest is still watched
        close_all = self.store.get_meta("close_all_when_reachable") is not None
        equity = self.book.equity_usd()
        dd = drawdown(equity, self.book.capital_usd)
        if dd > self.settings.max_drawdown and self.risk.trading_state()[0] == "ACTIVE":
            self.risk.set_trading_state("REDUCING", f"drawdown {dd * 100:.2f}% of capital > {self.settings.max_drawdown * 100:g}% limit",
                                        {"equity_usd": round(equity, 2), "capital_usd": self.book.capital_usd})
        lim = self.risk.watchdog_limits()
        now = self.events.now()
        for row in self.book.positions(("open", "closing")):
            try:
                cut_off = self.legs_on(row["id"], down)
                if cut_off:
                    actions += await self.one_venue_down(row, lim, cut_off, down)
                    continue
                if self.store.get_meta(f"close_when_reachable:{row['id']}") is not None and row["status"] == "open":
                    actions += await self.venue_back(row)
                    continue
                actions += await self.position(row, lim, close_all, now)
            except (VenueError, VenueTimeout):
                raise
            except Exception as e:  # noqa: BLE001 - one position's failure must not blind the watchdog to the others
                self.events.note_once(f"watchdog_error:{row['id']}", "critical", "watchdog_error",
                                      f"position {row['id']} {row['symbol']}: the watchdog could not check it ({type(e).__name__}: "
                                      f"{str(e)[:200]}); the other positions are still watched", {"position_id": row["id"]})
                self.events.audit("watchdog", "position_check_failed", {"position_id": row["id"], "error": type(e).__name__},
                                  "error", str(e)[:500])
        if close_all and not self.book.has_open():
            self.store.x("DELETE FROM meta WHERE key = 'close_all_when_reachable'")
        if not down:  # the books cannot be compared while a venue cannot be read
            await self.reconcile.check_ledger()
        return actions

    # ------------------------------------------------------------------ one venue of several down

    def other_venues_health(self, reach: dict[str, str | None]) -> None:
        """A venue other than the primary one not answering: an alert naming it (entries that need it are refused
        by the per-venue checks), and after VENUE_DOWN_LIMIT_S every position with a leg there is marked to be
        closed once it answers. Back: the alert clears."""
        now = self.events.now()
        for venue, why in reach.items():
            key = f"venue_down_since:{venue}"
            since = self.store.get_meta(key)
            if why is None:
                if since is not None:
                    self.store.x("DELETE FROM meta WHERE key = ?", (key,))
                    self.events.clear_note(f"venue_down:{venue}")
                    self.events.alert("info", "venue_reachable", f"{venue} answers again", {"venue": venue})
                continue
            if since is None:
                self.store.set_meta(key, repr(now))
                since = repr(now)
            down_s = now - float(since)
            self.events.note_once(f"venue_down:{venue}", "critical", "venue_unreachable",
                                  f"{venue} is unreachable ({why[:200]}): no entries on it; positions with a leg there keep the "
                                  "other legs' margin safe and are closed once it has been back after "
                                  f"{VENUE_DOWN_LIMIT_S / 60:.0f} min down", {"venue": venue, "since": iso(float(since))})
            if down_s > VENUE_DOWN_LIMIT_S:
                for row in self.book.positions(("open",)):
                    if self.legs_on(row["id"], {venue: why}):
                        mark = f"close_when_reachable:{row['id']}"
                        if self.store.get_meta(mark) is None:
                            self.store.set_meta(mark, venue)

    def legs_on(self, pid: int, venues: dict[str, Any]) -> list[Any]:
        """The position's legs on any of ``venues`` (short names)."""
        if not venues:
            return []
        return [leg for leg in self.book.legs(pid) if (venue_of(leg.symbol) or self.venue.primary_venue) in venues]

    async def one_venue_down(self, row: Any, lim: Any, cut_off: list[Any], down: dict[str, str]) -> list[dict[str, Any]]:
        """A position with a leg on an unreachable venue: nothing can be closed as a whole, so the legs that can
        still be reached are kept safe: margin is added to any of them whose margin ratio or liquidation distance
        falls below the add threshold (on its own venue). A close the rules would want waits for the venue."""
        pid = row["id"]
        out: list[dict[str, Any]] = []
        for leg in self.book.legs(pid):
            if leg in cut_off or not leg.leveraged:
                continue
            risk = await self.risk.leg_risk(leg, lim)
            if risk is None:
                continue
            low_ratio = risk.margin_ratio is not None and risk.margin_ratio < lim.margin_add_ratio
            near = risk.liquidation_distance_pct is not None and risk.liquidation_distance_pct < lim.liquidation_distance_add_pct
            if not (low_ratio or near):
                continue
            want = max(risk.margin_needed_usd, risk.margin_for_distance_usd)
            free = await self.risk.free_cash(leg.symbol)
            amount = min(want, max(free, 0.0))
            data = {"position_id": pid, "symbol": row["symbol"], "leg": leg.role, "rule": "margin_while_venue_down",
                    "venues_down": sorted(down), "margin_ratio": risk.margin_ratio,
                    "liquidation_distance_pct": risk.liquidation_distance_pct, "wanted_usd": round(want, 2)}
            self.events.audit("watchdog", "margin_while_venue_down", data, "triggered",
                              f"{leg.role} margin falling while {', '.join(sorted(down))} is unreachable")
            if amount >= 1.0:
                try:
                    await self.venue.add_margin(leg.symbol, amount, market=leg.market) if leg.market != "perp" else \
                        await self.venue.add_margin(leg.symbol, amount)
                except (VenueError, VenueTimeout) as e:
                    amount = 0.0
                    data["error"] = str(e)
            self.events.alert("critical", "margin_while_venue_down",
                              f"position {pid} {row['symbol']}: the {leg.role} leg's margin is falling while "
                              f"{', '.join(sorted(down))} (the other leg's venue) is unreachable; added ${amount:,.2f} of the "
                              f"${want:,.2f} wanted on its own venue", {**data, "added_usd": round(amount, 2)})
            out.append({**data, "action": "add_margin", "added_usd": amount})
        return out

    def data_end(self, pid: int) -> float | None:
        """Replay: the earliest end of a venue's data among the position's legs (a second venue's shipped funding
        history is shorter than the primary data), None when no leg's market ends."""
        ends = None
        for leg in self.book.legs(pid):
            if venue_of(leg.symbol) is None:
                continue
            feed, bare = self.market.feed_of(leg.symbol)
            span = getattr(feed, "span", {}).get(bare)
            if span is not None:
                ends = span[1] if ends is None else min(ends, span[1])
        return ends

    async def venue_back(self, row: Any) -> list[dict[str, Any]]:
        """The venue a leg of this position sat on was down past the limit and answers again: close it."""
        venue = self.store.get_meta(f"close_when_reachable:{row['id']}")
        self.store.x("DELETE FROM meta WHERE key = ?", (f"close_when_reachable:{row['id']}",))
        msg = f"{venue} was unreachable > {VENUE_DOWN_LIMIT_S / 60:.0f} min: closing now that it answers"
        data = {"position_id": row["id"], "symbol": row["symbol"], "rule": "venue_was_unreachable", "venue": venue}
        self.events.audit("watchdog", "venue_was_unreachable", data, "triggered", msg)
        return [await self.close(row, "venue_was_unreachable", msg, data)]

    async def position(self, row: Any, lim: Any, close_all: bool, now: float) -> list[dict[str, Any]]:
        """The rules for one position this tick; returns the actions taken."""
        actions: list[dict[str, Any]] = []
        if self.orders.unresolved(row["id"]):
            return actions  # its fills are not known yet: acting on them could trade twice; recovery chases it
        if row["status"] == "open" and row["opened_at"] >= now:
            return actions  # it filled on this very tick: judged from the next one (as the backtest does)
        if row["status"] == "closing":
            # an exit the watchdog is finishing may hold a hedged remainder for a while: keep its margin safe
            readings = await self.readings(row)
            for act in watchdog_actions(readings, lim) if readings is not None else []:
                if act.kind == "add_margin":
                    actions.append(await self.apply(row, act, readings))
            return actions
        ends = self.data_end(row["id"])
        if ends is not None and row["status"] == "open":
            delay = self.settings.fill_delay_seconds if self.market.clock.simulated else 0.0
            if now + delay + 3600.0 >= ends:  # the last tick that can still close it: the replay data of a venue ends
                msg = f"the replay data of one of its venues ends {iso(ends)}: closing while there is a market"
                data = {"position_id": row["id"], "symbol": row["symbol"], "rule": "venue_data_ends", "data_ends": iso(ends)}
                self.events.audit("watchdog", "venue_data_ends", data, "triggered", msg)
                actions.append(await self.close(row, "venue_data_ends", msg, data))
                return actions
        if close_all:
            msg = "venue was unreachable > 10 min: closing now that it answers"
            data = {"position_id": row["id"], "symbol": row["symbol"], "rule": "venue_was_unreachable",
                    "unreachable_since": self.store.get_meta("close_all_when_reachable")}
            self.events.audit("watchdog", "venue_was_unreachable", data, "triggered", msg)
            actions.append(await self.close(row, "venue_was_unreachable", msg, data))
            return actions
        readings = await self.readings(row)
        if readings is None:
            return actions
        for act in watchdog_actions(readings, lim):
            if act.kind == "close" and not act.emergency and defer_planned_exit(readings, lim):
                self.note_deferral(row["id"], act.rule, readings)
                continue
            actions.append(await self.apply(row, act, readings))
            if act.kind == "close":
                break
        return actions

    async def readings(self, row: Any) -> PositionReadings | None:
        """What the rules read on one position now, or None while any of its prices is stale or missing."""
        pid = row["id"]
        strategy = self.book.strategy(row)
        legs = self.book.legs(pid)
        snaps = {}
        for sym in dict.fromkeys([row["symbol"], *(leg.symbol for leg in legs)]):
            try:
                feed, bare = self.market.feed_of(sym)
                snap = feed.snapshot(bare)
            except MarketDataUnavailable:
                return None
            if snap.data_age_seconds > self.market.stale_limit():
                self.events.note_once(f"stale:{sym}", "warning", "market_data_stale",
                                      f"{sym} market data is {snap.data_age_seconds:.0f}s old: the watchdog will not act on stale prices",
                                      {"symbol": sym, "data_age_seconds": snap.data_age_seconds})
                return None
            self.events.clear_note(f"stale:{sym}")
            snaps[sym] = snap
        held = self.book.held(pid)
        held_abs = self.book.held_abs(legs, held)
        lim = self.risk.watchdog_limits()
        margins = []
        next_funding = 0.0
        for leg in legs:
            if not leg.leveraged:
                continue
            risk = await self.risk.leg_risk(leg, lim)
            if risk is not None:
                margins.append(risk)
            if leg.market == "perp":  # a short receives positive funding
                s = snaps[leg.symbol]
                next_funding += -held.get(leg.id, 0.0) * s.mark * s.funding_rate
        snap = snaps[row["symbol"]]
        dated_leg = next((leg for leg in legs if leg.market == "future"), None)
        return PositionReadings(
            position_id=pid,
            symbol=row["symbol"],
            status=row["status"],
            entry_basis_pct=strategy.direction * (row["entry_basis_pct"] or 0.0),
            signals=(self.market.signals_for(strategy, row["symbol"], snap, dated_leg.symbol if dated_leg else None)
                     if strategy.basis_legs is not None else None),
            held={leg.role: held.get(leg.id, 0.0) for leg in legs},
            imbalance_pct=imbalance_pct([max(q, 0.0) for q in held_abs], [leg.ratio for leg in legs]),
            rebalance_possible=any(c > 0 for c in self.orders.cuts(legs, held_abs)),
            held_seconds=self.events.now() - row["opened_at"],
            seconds_to_funding=min(s.seconds_to_funding for s in snaps.values()),
            next_funding_usd=next_funding,
            margins=tuple(margins),
            playbook=row["playbook"],
            borrow_apr_pct=self.market.borrow_apr_pct(row["symbol"])[0] if self.market.borrows(strategy) else None,
            seconds_to_expiry=None if dated_leg is None or dated_leg.expiry is None else dated_leg.expiry - self.events.now(),
            contract=None if dated_leg is None else dated_leg.symbol,
        )

    async def apply(self, row: Any, act: Action, r: PositionReadings) -> dict[str, Any]:
        pid, sym = row["id"], row["symbol"]
        data = {"position_id": pid, "symbol": sym, "rule": act.rule, **act.numbers}
        self.events.audit("watchdog", act.rule, data, "triggered", act.message)
        if act.kind == "close":
            return await self.close(row, act.rule, act.message, data)
        if act.kind == "add_margin":
            leg = next(leg for leg in self.book.legs(pid) if leg.role == act.leg)
            free = await self.risk.free_cash(leg.symbol)  # the leg's own venue: collateral does not move between exchanges
            amount = min(act.amount_usd, max(free, 0.0))
            if amount >= 1.0:
                try:
                    if leg.market == "perp":
                        await self.venue.add_margin(leg.symbol, amount)
                    else:
                        await self.venue.add_margin(leg.symbol, amount, market=leg.market)
                except (VenueError, VenueTimeout) as e:
                    amount = 0.0
                    data["error"] = str(e)
            if amount >= act.amount_usd - 0.01:
                self.events.alert("warning", act.rule, f"position {pid} {sym}: {act.message}", {**data, "added_usd": round(amount, 2)})
                return {**data, "action": "add_margin", "added_usd": amount}
            if row["status"] == "closing":  # already being closed: say so, the exit retries on its own
                self.events.note_once(f"margin:{pid}", "critical", act.rule,
                                      f"position {pid} {sym} (closing): {act.message}; could add only ${amount:,.2f}", data)
                return {**data, "action": "add_margin_failed", "added_usd": amount}
            # not enough free capital: reduce instead (close; half-measures leave the same ratio)
            return await self.close(row, act.rule, f"{act.message}; not enough free capital (${free:,.2f}): closing", data)
        # rebalance: trim every leg down to the smallest
        key = f"wd{pid}-{int(self.events.now())}"
        legs = self.book.legs(pid)
        try:
            held_abs = self.book.held_abs(legs, self.book.held(pid))
            for leg, cut in zip(legs, self.orders.cuts(legs, held_abs), strict=True):
                if cut > 0:
                    await self.orders.fill_leg(leg, key, leg.order_side(opening=False), cut, "rebalance", True)
        except (VenueUnavailable, VenueTimeout) as e:  # unknown outcome: looked up next tick before anything else is sent
            self.events.alert("warning", act.rule, f"position {pid} {sym}: rebalance did not complete ({e}); retried next tick",
                              {**data, "error": str(e)})
            return {**data, "action": "rebalance_failed", "error": str(e)}
        held = self.book.held(pid)
        held_abs = self.book.held_abs(legs, held)
        with self.store.tx():
            self.store.x("UPDATE positions SET quantity = ? WHERE id = ?",
                         (max(min(q / leg.ratio for leg, q in zip(legs, held_abs, strict=True)), 0.0), pid))
        now_held = {f"{leg.role}_quantity": held.get(leg.id, 0.0) for leg in legs}
        self.events.alert("warning", act.rule, f"position {pid} {sym}: {act.message}; now "
                          + " / ".join(f"{held.get(leg.id, 0.0):g} {leg.role}" for leg in legs), {**data, **now_held})
        return {**data, "action": "rebalance"}

    async def close(self, row: Any, rule: str, message: str, data: dict[str, Any]) -> dict[str, Any]:
        pid, sym = row["id"], row["symbol"]
        key = f"wd{pid}-{rule}"[:64]
        try:
            fill_at = self.market.fill_time(*dict.fromkeys(leg.symbol for leg in self.book.legs(pid))) if row["status"] == "open" else None
        except Rejected:  # no price that late (the data ends): close at once
            fill_at = None
        with self.store.tx():
            self.store.x("UPDATE positions SET status = 'closing', close_reason = ?, execute_at = ? WHERE id = ? AND status = 'open'",
                         (f"watchdog: {rule}", fill_at, pid))
            self.execution.write_close_intents(pid, key)
        if fill_at is not None:  # replay with a fill delay: the close orders rest until their fill time
            self.events.alert("warning", rule, f"position {pid} {sym}: the watchdog closes it ({message}); the orders fill at "
                              f"{iso(fill_at)}", {**data, "fills_at": iso(fill_at)})
            return {**data, "action": "close_scheduled", "fills_at": iso(fill_at)}
        try:
            out = await self.execution.execute_exit(pid, "", f"watchdog: {rule}", emergency=True)
            realized = out.realized.total_usd if out.realized else 0.0
            self.events.alert("critical" if rule in CRITICAL_RULES else "warning", rule,
                              f"position {pid} {sym} closed by the watchdog: {message}", {**data, "realized_pnl_usd": round(realized, 2)})
            return {**data, "action": "close", "realized_pnl_usd": realized}
        except Rejected as e:
            return {**data, "action": "close_failed", "error": str(e)}

    def note_deferral(self, pid: int, rule: str, r: PositionReadings) -> None:
        self.events.note_once(f"defer:{pid}:{rule}", "info", "exit_deferred",
                              f"position {pid}: planned exit ({rule}) waits {r.seconds_to_funding / 60:.0f} min for a settlement "
                              f"worth ${r.next_funding_usd:,.2f}",
                              {"position_id": pid, "rule": rule, "seconds_to_funding": r.seconds_to_funding,
                               "next_funding_usd": round(r.next_funding_usd, 4)})
