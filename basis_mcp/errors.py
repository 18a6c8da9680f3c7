"""Errors the agent must read. The tool layer turns them into MCP ``ToolError``s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Violation:
    field: str
    value: Any
    rule: str

    def __str__(self) -> str:
        return f"{self.field}={_fmt(self.value)}: {self.rule}"


class Verbatim(str):
    """A value already rendered the way the client sent it."""


def _fmt(v: Any) -> str:
    if isinstance(v, Verbatim):
        return str(v)
    s = repr(v)  # floats keep every digit: 5.0000001 is not 5
    return s if len(s) <= 80 else s[:77] + "..."


class Rejected(Exception):
    """A request refused before anything was executed (or, when said, after unwinding)."""

    def __init__(self, field: str | None = None, value: Any = None, rule: str = "", *, violations: list[Violation] | None = None):
        self.violations = violations if violations is not None else [Violation(field or "request", value, rule)]
        super().__init__(str(self))

    def __str__(self) -> str:
        if len(self.violations) == 1:
            return f"rejected: {self.violations[0]}"
        return f"rejected, {len(self.violations)} rules violated:\n" + "\n".join(f"- {v}" for v in self.violations)
