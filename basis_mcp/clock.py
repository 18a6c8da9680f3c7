"""One clock abstraction so replay, backtest and the watchdog are deterministic."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    simulated: bool

    def now(self) -> float: ...


class WallClock:
    simulated = False

    def now(self) -> float:
        return time.time()


class SimClock:
    """A clock that only moves when told to (replay)."""

    simulated = True

    def __init__(self, t: float):
        self._t = float(t)

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError("simulated time cannot go backwards")
        self._t = float(t)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


def parse_time(s: str) -> float:
    """ISO date or datetime (UTC if no zone) → epoch seconds."""
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
