"""Requests that change the book: idempotency keys and live confirmation tokens.

Owns the ``idempotency`` and ``confirmations`` tables. A key's stored outcome answers a
repeated call; a key whose trade is still unsettled refuses a second one; a confirmation
token is single-use, short-lived and bound to the exact arguments it was issued for.
Calls the store and `Events`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from basis_mcp.clock import iso
from basis_mcp.config import Settings
from basis_mcp.desk.book import OPEN_STATES
from basis_mcp.desk.events import Events
from basis_mcp.errors import Rejected
from basis_mcp.models import ConfirmationRequest
from basis_mcp.store import Store


class Requests:
    def __init__(self, settings: Settings, store: Store, events: Events, mode: str):
        self.settings = settings
        self.store = store
        self.events = events
        self.mode = mode

    # ------------------------------------------------------------------ idempotency

    @staticmethod
    def args_hash(tool: str, args: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([tool, args], sort_keys=True, default=str).encode()).hexdigest()

    def outcome(self, key: str, tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of an earlier call with this key (None: a new key)."""
        row = self.store.one("SELECT * FROM idempotency WHERE key = ?", (key,))
        if row is None:
            return None
        if row["tool"] != tool or row["args_hash"] != self.args_hash(tool, args):
            raise Rejected("idempotency_key", key, f"already used for a different request ({row['tool']}); use a new key for a new trade")
        result = json.loads(row["result_json"])
        if "error" in result:
            raise Rejected(violations=[
                *Rejected("idempotency_key", key, "this key's earlier request failed; use a new key to try again").violations,
                *Rejected("previous_error", result["error"], "stored outcome").violations,
            ])
        return result

    def refuse_in_flight(self, key: str) -> None:
        """A key whose trade has started but has no filed outcome yet (a leg's outcome is unknown,
        or an exit is still being completed) must not start a second trade."""
        row = self.store.one("SELECT id, status FROM positions WHERE entry_key = ? OR exit_key = ?", (key, key))
        if row is not None:
            pending = row["status"] in OPEN_STATES
            raise Rejected("idempotency_key", key, f"already used by position {row['id']} ({row['status']})"
                           + (", whose outcome is not settled yet; check portfolio_status" if pending else "")
                           + "; use a new key for a new trade")

    def remember(self, key: str, tool: str, args: dict[str, Any], result: dict[str, Any]) -> None:
        """File a key's outcome (inside the caller's transaction)."""
        self.store.x("INSERT INTO idempotency(key, tool, args_hash, result_json, created_at) VALUES (?,?,?,?,?)",
                     (key, tool, self.args_hash(tool, args), json.dumps(result, default=str), time.time()))

    def remember_once(self, key: str, tool: str, args: dict[str, Any], result: dict[str, Any]) -> None:
        if key and self.store.one("SELECT 1 FROM idempotency WHERE key = ?", (key,)) is None:
            self.remember(key, tool, args, result)

    # ------------------------------------------------------------------ live confirmations

    @property
    def confirmations_required(self) -> bool:
        return self.mode == "live" and self.settings.live_confirmation

    def issue_confirmation(self, tool: str, args: dict[str, Any], summary: str, orders: list[dict[str, Any]]) -> ConfirmationRequest:
        token = secrets.token_urlsafe(24)
        now = self.events.now()
        ttl = self.settings.confirmation_ttl_seconds
        with self.store.tx():
            self.store.x("INSERT INTO confirmations(token_hash, tool, args_hash, created_at, expires_at) VALUES (?,?,?,?,?)",
                         (hashlib.sha256(token.encode()).hexdigest(), tool, self.args_hash(tool, args), now, now + ttl))
        self.events.audit("desk", "confirmation_issued", {"tool": tool, **args}, "ok")
        return ConfirmationRequest(token=token, expires_at=iso(now + ttl) or "", expires_in_seconds=ttl, summary=summary, orders=orders)

    def consume_confirmation(self, token: str, tool: str, args: dict[str, Any]) -> None:
        """Check a token against these exact arguments and spend it (inside the caller's transaction)."""
        h = hashlib.sha256(token.encode()).hexdigest()
        row = self.store.one("SELECT * FROM confirmations WHERE token_hash = ?", (h,))
        shown = "***"  # a credential: never echoed, not even in part
        now = self.events.now()
        if row is None:
            raise Rejected("confirmation_token", shown, "unknown token: call without a token first to get one; nothing was sent")
        if row["used_at"] is not None:
            raise Rejected("confirmation_token", shown, f"already used at {iso(row['used_at'])}: tokens are single use; nothing was sent")
        if now > row["expires_at"]:
            raise Rejected("confirmation_token", shown, f"expired at {iso(row['expires_at'])}; ask for a new one; nothing was sent")
        if row["tool"] != tool or row["args_hash"] != self.args_hash(tool, args):
            raise Rejected("confirmation_token", shown, "issued for different arguments: repeat the exact call it was issued for; nothing was sent")
        cur = self.store.x("UPDATE confirmations SET used_at = ? WHERE token_hash = ? AND used_at IS NULL", (now, h))
        if cur.rowcount != 1:
            raise Rejected("confirmation_token", shown, "already used: tokens are single use; nothing was sent")
