"""What the desk tells the world: audit rows, alerts for the agent, and whether the venue answers.

Every engine reports through `Events`; none of them writes the ``alerts`` or ``audit`` tables
itself. `VenueHealth` remembers since when the venue has stopped answering (the pre-trade
check refuses entries, the watchdog closes everything after 10 minutes).
"""

from __future__ import annotations

import json
import time
from typing import Any

from basis_mcp.clock import Clock, iso
from basis_mcp.models import Alert
from basis_mcp.redact import scrub, scrub_value
from basis_mcp.store import DatabaseBusy, Store


class Events:
    def __init__(self, store: Store, clock: Clock):
        self.store = store
        self.clock = clock
        self._notes: set[str] = set()

    def now(self) -> float:
        return self.clock.now()

    def audit(self, kind: str, name: str, args: dict[str, Any], outcome: str, detail: str | None = None) -> None:
        self.store.append_audit(ts=time.time(), market_ts=self.now(), kind=kind, name=name, args=args, outcome=outcome,
                                detail=detail)

    def alert(self, severity: str, rule: str, message: str, data: dict[str, Any] | None = None) -> None:
        """An alert for the agent's next response (and its audit row), in one transaction."""
        data = scrub_value(data or {})
        message = scrub(message)
        with self.store.tx():
            self.store.x(
                "INSERT INTO alerts(ts, market_ts, severity, rule, message, data_json) VALUES (?,?,?,?,?,?)",
                (time.time(), self.now(), severity, rule, message, json.dumps(data, default=str)),
            )
            self.audit("alert", rule, data, severity, message)

    def note_once(self, tag: str, severity: str, rule: str, message: str, data: dict[str, Any]) -> None:
        """An alert raised once until `clear_note` (a condition the watchdog keeps seeing every tick)."""
        if tag in self._notes:
            return
        self._notes.add(tag)
        self.alert(severity, rule, message, data)

    def clear_note(self, tag: str) -> None:
        self._notes.discard(tag)

    def pop_alerts(self) -> list[Alert]:
        """Alerts not yet delivered, oldest first; each is delivered once."""
        failed = self.store.journal_failed
        if failed and "journal_failed" not in self._notes:
            self._notes.add("journal_failed")
            self.alert("critical", "audit_journal_failed", f"{failed}: audit rows are still written to the database, but "
                       "without checkpoints outside it until this is fixed (free the disk, fix the permissions)",
                       {"journal": str(self.store.audit_paths.journal)})
        pending = "SELECT * FROM alerts WHERE delivered = 0 ORDER BY id"
        rows = self.store.q(pending)  # most calls have none: no write lock taken for them
        if rows:
            try:
                with self.store.brief(), self.store.tx():
                    rows = self.store.q(pending)
                    if rows:
                        self.store.x("UPDATE alerts SET delivered = 1 WHERE id <= ? AND delivered = 0", (rows[-1]["id"],))
            except DatabaseBusy:  # another process holds the book: the answer goes out now, the alerts with the next one
                return []
        return [
            Alert(id=r["id"], time=iso(r["ts"]) or "", market_time=iso(r["market_ts"]) or "", severity=r["severity"],
                  rule=r["rule"], message=r["message"], data=json.loads(r["data_json"]))
            for r in rows
        ]


class VenueHealth:
    """Since when the venue has not answered (market time), or None while it does."""

    def __init__(self, events: Events):
        self.events = events
        self._down_since: float | None = None

    def down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = self.events.now()
            self.events.audit("watchdog", "venue_unreachable", {"reason": why}, "warning")

    def up(self) -> None:
        if self._down_since is not None:
            down = self.events.now() - self._down_since
            self._down_since = None
            self.events.audit("watchdog", "venue_reachable", {"down_seconds": down}, "ok")

    def down_seconds(self) -> float:
        return 0.0 if self._down_since is None else self.events.now() - self._down_since

    @property
    def reachable(self) -> bool:
        return self._down_since is None
