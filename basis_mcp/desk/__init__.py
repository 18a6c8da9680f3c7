"""The desk: one per process, composed of engines with one-way dependencies.

Each module owns one thing and may call only the modules above it in this list (the import
graph has no cycles; `tests/test_layout.py` checks it):

- `events`     alerts for the agent, audit rows, whether the venue answers.
- `market`     the feeds, snapshots, basis samples and the signals the playbooks read.
- `book`       positions and their legs as recorded, their P&L and views. (A new report goes here.)
- `requests`   idempotency keys and live confirmation tokens.
- `risk`       trading state, limits, margin readings, the pre-trade readings. (A new guardrail
               goes here, its rule in `basis_mcp.guardrails`.)
- `orders`     intents, sends, lookups, fills: one leg at a time.
- `execution`  entries and exits of any number of legs; unwinds; no naked leg.
- `recovery`   positions caught mid-flight, venue funding and liquidations.
- `reconcile`  the ledger against the venue's balances.
- `watchdog`   the per-tick position rules (`basis_mcp.guardrails.watchdog_actions`).
- `clockwork`  replay and live ticks, orders resting until their fill time.
- `research`, `monitor`  what the read-only tools return.
- `facade`     `Desk`: wires the engines, holds the lock, opens replay and live desks.

A new strategy is a declaration in `basis_mcp.strategies`; a new venue is a `basis_mcp.venue`
implementation (paper) and a ccxt exchange (`basis_mcp.live`).
"""

from basis_mcp.desk.facade import DEFAULT_REPLAY_START, SHIPPED_EXTRACT_PREDECESSORS, Desk

__all__ = ["DEFAULT_REPLAY_START", "SHIPPED_EXTRACT_PREDECESSORS", "Desk"]
