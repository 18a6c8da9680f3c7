"""Fault injection for the paper venue and the desk's crash checkpoints.

Tests switch faults on to prove the guardrails against a venue that fails: reject the Nth
order, fill only part of it, time out after the venue has executed, answer 5xx or
rate-limit, stall market data, or pause the process at a named step so a test can
SIGKILL it there. In a subprocess they come from the ``BASIS_MCP_FAULTS`` environment
variable (JSON with the field names below); the paper venue is the only thing they touch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import anyio

ENV = "BASIS_MCP_FAULTS"


@dataclass
class FaultPlan:
    reject_nth: set[int] = field(default_factory=set)
    partial_nth: dict[int, float] = field(default_factory=dict)  # order number -> filled fraction
    timeout_after_execute_nth: set[int] = field(default_factory=set)
    timeout_before_execute_nth: set[int] = field(default_factory=set)  # no answer, and the order never arrived
    lookups_fail: int = 0  # this many order lookups (fetch_order) answer 503 before they work again
    unavailable_nth: set[int] = field(default_factory=set)  # 5xx before executing
    rate_limited_nth: set[int] = field(default_factory=set)  # 429 before executing
    unavailable_always: bool = False
    stall_market_data: bool = False
    reject_add_margin: bool = False
    pause_at: str | None = None  # checkpoint name; the process stops there until killed
    pause_dir: str | None = None  # where the "paused" marker file is written
    orders_seen: int = 0

    @classmethod
    def from_env(cls) -> FaultPlan:
        raw = os.environ.get(ENV)
        if not raw:
            return cls()
        d = json.loads(raw)
        return cls(
            reject_nth=set(d.get("reject_nth", [])),
            partial_nth={int(k): float(v) for k, v in d.get("partial_nth", {}).items()},
            timeout_after_execute_nth=set(d.get("timeout_after_execute_nth", [])),
            timeout_before_execute_nth=set(d.get("timeout_before_execute_nth", [])),
            lookups_fail=int(d.get("lookups_fail", 0)),
            unavailable_nth=set(d.get("unavailable_nth", [])),
            rate_limited_nth=set(d.get("rate_limited_nth", [])),
            unavailable_always=bool(d.get("unavailable_always", False)),
            stall_market_data=bool(d.get("stall_market_data", False)),
            reject_add_margin=bool(d.get("reject_add_margin", False)),
            pause_at=d.get("pause_at"),
            pause_dir=d.get("pause_dir"),
        )

    async def checkpoint(self, name: str) -> None:
        """Stop here (forever) if told to: a test waits for the marker and kills the process."""
        if self.pause_at != name:
            return
        if self.pause_dir:
            Path(self.pause_dir, f"paused-{name}").write_text(str(os.getpid()))
        while True:
            await anyio.sleep(3600)
