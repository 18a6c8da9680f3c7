"""MCP wiring: lifespan (one desk per process), audit middleware, tools, prompts, resources."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent

from basis_mcp import __version__
from basis_mcp.audit import AuditPaths
from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.prompts import register_prompts
from basis_mcp.redact import MAX_REQUEST_ARGS_BYTES, bound_text, looks_like_credential, scrub
from basis_mcp.store import DatabaseBusy
from basis_mcp.tools.definitions import TOOLS
from basis_mcp.tools.registry import BUSY_TEXT, RAW_ARGS, ToolSpec, register, validate_input
from basis_mcp.venue.faults import FaultPlan

log = logging.getLogger("basis_mcp")

INSTRUCTIONS = """\
basis-mcp runs a crypto basis book. cash_and_carry (long spot + short perpetual in equal
quantity) earns a positive basis as it converges plus the funding paid to shorts;
reverse_cash_and_carry (short borrowed spot + long perpetual) earns a negative basis and the
funding paid to longs, less hourly borrow interest; calendar_spread (long perpetual + short
quarterly future) earns the quarterly's premium as it rolls down to expiry, less the funding the
long perp pays, and is closed before expiry; cross_exchange (short perp on the venue paying the
most funding, long perp on the one paying the least; desks with two venues) earns the funding
differential. scan_basis says which one each basis points to;
pass `strategy` to estimate_net_apy and enter_trade. The server
enforces risk limits you cannot change. Loop: scan_basis → compute_zscore → estimate_net_apy
→ size_position → enter_trade (with a fresh idempotency_key); then monitor with check_delta,
seconds_to_funding and portfolio_status, and exit_trade when the edge is gone. Read the
`alerts` field of every response: a server-side watchdog may act on its own. risk_status shows
every limit; halt_trading is your kill switch (only the operator resumes). Units: *_pct is percent, *_usd is dollars. The prompt
`basis_trading_loop` explains the loop and every field in detail."""



@dataclass
class ServeOptions:
    """How the server runs. ``mode``: replay (paper on shipped history, the default), paper (paper
    fills on live prices), readonly (live prices, no trading tools) or live (real orders)."""

    settings: Settings = field(default_factory=Settings)
    db_path: Path = Path("basis-mcp.db")
    data_path: Path | None = None
    start: str | None = None
    mode: str = "replay"
    venues: list[str] = field(default_factory=lambda: ["binance"])
    universe: list[str] | None = None
    venue_url: str | dict[str, str] | None = None  # dev/test: point ccxt at a local simulator (per venue: a map)
    credentials: Any = None  # live.exchanges.Credentials; never logged
    faults: FaultPlan | None = None  # tests: a fault plan they can flip while the server runs
    live_loop: bool = True  # live modes: the background market tick / watchdog
    audit_paths: AuditPaths | None = None  # audit key and journal (default: beside the database)


async def open_desk(options: ServeOptions, start: bool = True) -> Desk:
    """Open the desk (and, for live trading, check the API keys); ``start`` also reconciles it."""
    if options.mode == "replay":
        desk = Desk.open_replay(options.settings, options.db_path, options.data_path, options.start, options.faults,
                                options.audit_paths)
    else:
        desk = await Desk.open_live(options.settings, options.db_path, options.venues, options.mode, options.credentials,
                                    options.venue_url, options.universe, options.faults, options.audit_paths)
    if not start:
        return desk
    try:
        await desk.start()
    except BaseException:
        await desk.aclose()
        raise
    return desk


@dataclass
class AppState:
    desk: Desk
    options: ServeOptions


def _desk(ctx: Context) -> Desk:
    return ctx.request_context.lifespan_context.desk


def _error_result(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _largest(args: Any, known: frozenset[str] = frozenset()) -> str:
    """', the largest being <name> (N bytes)' for an oversized argument object. The tool's own field
    names (``known``) are shown as they are; any other name is bounded, masked when it looks like a
    credential, and said to be an argument the tool does not take."""
    if not isinstance(args, dict) or not args:
        return ""
    sizes = {k: len(json.dumps(v, default=str)) + len(str(k)) for k, v in args.items()}
    name = max(sizes, key=sizes.__getitem__)
    if name in known:
        return f"; the largest is argument {name!r} ({sizes[name]:,} bytes)"
    shown = "***" if looks_like_credential(name) else bound_text(name, 40)
    return f"; the largest is an unknown argument {shown!r} ({sizes[name]:,} bytes), which this tool does not take"


class CallAuditor:
    """Writes the audit rows of tool calls: a ``started`` row before the call runs and an outcome
    row (``ok``/``error``, pointing at the start row) when it ends, so a call killed mid-way still
    leaves its trace; a call refused before it runs (bad arguments, too large, malformed) gets one
    ``rejected`` row. The desk's store is attached when the lifespan opens it.

    A read-only call changes nothing, so its two rows are written together when it ends, in one
    transaction (the start row keeps the time the call started): a read killed mid-way leaves no
    row, as it left no change and gave no answer.

    Only the start row may refuse a call (a book locked by another process: nothing is done).
    Outcome and refusal rows never wait on the event loop for a lock: if the book is busy they
    queue in memory, in order, and land with the next row that can be written (or at shutdown)."""

    def __init__(self) -> None:
        self.desk: Desk | None = None
        self._pending: list[tuple[dict[str, Any], dict[str, Any] | None]] = []  # (row, its outcome row: a read's pair)

    def _store(self):
        return None if self.desk is None else self.desk.store

    def _market_ts(self) -> float | None:
        try:
            return None if self.desk is None else self.desk.now()
        except Exception:  # noqa: BLE001 - an audit row never fails on the clock
            return None

    def _flush(self, store) -> bool:
        """Write the queued rows in order. A queued pair (a read's start row and its outcome) is written in one
        transaction, the outcome pointing at the start row's id."""
        while self._pending:
            row, outcome = self._pending[0]
            try:
                if outcome is None:
                    store.append_audit(**row)
                else:
                    with store.relaxed(), store.tx():
                        store.append_audit(**{**outcome, "args": {"call": store.append_audit(**row)}})
            except DatabaseBusy:
                return False
            self._pending.pop(0)
        return True

    def _write(self, row: dict[str, Any]) -> None:
        store = self._store()
        if store is None:
            return
        try:
            with store.brief():
                if self._flush(store):
                    store.append_audit(**row)
                    return
            self._pending.append((row, None))
        except DatabaseBusy:
            self._pending.append((row, None))
            log.warning("audit row queued: the book's database is locked by another process")
        except Exception:  # the audit must never turn an answer into a crash
            log.exception("audit write failed")

    def drain(self) -> None:
        """At shutdown: whatever is queued lands (waiting for the lock this time)."""
        store = self._store()
        if store is not None and self._pending:
            with store.patient():
                try:
                    self._flush(store)
                except Exception:
                    log.exception("audit rows lost at shutdown: %d", len(self._pending))

    def rejected(self, name: str, args: Any, detail: str, size: int | None = None, kind: str = "tool") -> None:
        self._write(dict(ts=time.time(), market_ts=self._market_ts(), kind=kind, name=bound_text(name, 100),
                         args=args if isinstance(args, dict) else {"_raw": args}, args_size=size, outcome="rejected",
                         detail=scrub(detail)[:4000]))

    def started(self, name: str, args: Any, durable: bool = True) -> int | dict[str, Any] | None:
        """The start row; raises DatabaseBusy (nothing done) if the book is locked by another process.
        ``durable=False`` for a read-only tool: the row is held until `ended` writes it with the outcome
        (`Store.append_audit` with no wait for the disk)."""
        store = self._store()
        if store is None:
            return None
        if not durable:
            return dict(ts=time.time(), market_ts=self._market_ts(), kind="tool", name=name,
                        args=args if isinstance(args, dict) else {"_raw": args}, outcome="started", durable=False)
        if not self._flush(store):
            raise DatabaseBusy(f"the book's database {store.path} is locked by another process")
        return store.append_audit(ts=time.time(), market_ts=self._market_ts(), kind="tool", name=name,
                                  args=args if isinstance(args, dict) else {"_raw": args}, outcome="started", durable=durable)

    def ended(self, call_id: int | dict[str, Any] | None, name: str, outcome: str, detail: str | None, t0: float,
              durable: bool = True) -> None:
        row = dict(ts=time.time(), market_ts=self._market_ts(), kind="tool", name=name, args={"call": call_id},
                   outcome=outcome, detail=scrub(detail)[:4000] if detail else None,
                   duration_ms=(time.perf_counter() - t0) * 1000.0, durable=durable)
        if not isinstance(call_id, dict):
            self._write(row)
            return
        store = self._store()  # a read's held start row and its outcome: one transaction, or queued in order
        if store is None:
            return
        self._pending.append((call_id, row))
        try:
            with store.brief():
                if not self._flush(store):
                    log.warning("audit rows queued: the book's database is locked by another process")
        except DatabaseBusy:
            log.warning("audit rows queued: the book's database is locked by another process")
        except Exception:  # the audit must never turn an answer into a crash
            log.exception("audit write failed")


class AuditMiddleware:
    """Sees every tools/call: refuses malformed, oversized and invalid calls (audited as rejected),
    validates arguments strictly, then audits the call's start and its outcome."""

    def __init__(self, specs: dict[str, ToolSpec], auditor: CallAuditor):
        self.specs = specs
        self.auditor = auditor

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = ctx.params
        t0 = time.perf_counter()
        if getattr(ctx, "request_id", None) is None:  # a notification: the SDK never runs it, so say so
            got = params.get("name") if isinstance(params, dict) else None
            self.auditor.rejected(got if isinstance(got, str) and got else "(no tool name)",
                                  params if isinstance(params, dict) else {"_params": repr(params)[:200]},
                                  "tools/call sent as a notification (no request id): the server does not run it")
            return await call_next(ctx)
        if not isinstance(params, dict) or not isinstance(params.get("name"), str) or not params.get("name"):
            got = params.get("name") if isinstance(params, dict) else None
            shown = "(no tool name)" if got is None else "(a tool name that is not a string)"
            self.auditor.rejected(shown, {"_params": params if isinstance(params, dict) else repr(params)[:200]},
                                  "malformed tools/call: params.name must be a non-empty string")
            return await call_next(ctx)  # the SDK answers with its protocol error
        name = params["name"]
        args = params.get("arguments")
        try:
            size = len(json.dumps(args, default=str))
        except (TypeError, ValueError):
            size = 0
        shown_name = bound_text(name, 64)
        if size > MAX_REQUEST_ARGS_BYTES:
            spec0 = self.specs.get(name)
            known = frozenset(spec0.input_model.model_fields) if spec0 is not None else frozenset()
            text = (f"{shown_name}: the arguments are {size:,} bytes of JSON; at most {MAX_REQUEST_ARGS_BYTES:,} are "
                    f"accepted{_largest(args, known)}. Nothing was done.")
            self.auditor.rejected(name, args, text, size)
            return _error_result(text)
        spec = self.specs.get(name)
        if spec is None:
            self.auditor.rejected(name, args, f"unknown tool {shown_name!r}")
            return await call_next(ctx)  # the SDK answers 'unknown tool'
        try:
            validate_input(spec, args)
        except ToolError as e:
            self.auditor.rejected(name, args, str(e))
            return _error_result(str(e))
        durable = not spec.read_only  # a read changes nothing: its audit rows need not wait for the disk
        try:
            call_id = self.auditor.started(name, args, durable)
        except DatabaseBusy:
            return _error_result(BUSY_TEXT.format(tool=name))
        token = RAW_ARGS.set(args if isinstance(args, dict) else {})
        try:
            result = await call_next(ctx)
        except BaseException as e:
            self.auditor.ended(call_id, name, "error", type(e).__name__, t0, durable)
            raise
        finally:
            RAW_ARGS.reset(token)
        if isinstance(result, dict):
            is_error = bool(result.get("isError"))
            content = result.get("content") or []
            text = content[0].get("text") if content and isinstance(content[0], dict) else None
        else:
            is_error = bool(getattr(result, "is_error", False))
            content = getattr(result, "content", None) or []
            text = getattr(content[0], "text", None) if content else None
        self.auditor.ended(call_id, name, "error" if is_error else "ok", text if is_error else None, t0, durable)
        return result


def build_server(options: ServeOptions, auditor: CallAuditor | None = None) -> MCPServer:
    auditor = auditor or CallAuditor()

    @asynccontextmanager
    async def lifespan(app: MCPServer) -> AsyncIterator[AppState]:
        desk = await open_desk(options)
        auditor.desk = desk
        try:
            if options.mode != "replay" and options.live_loop:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(desk.run_live_loop, options.settings.poll_seconds)
                    try:
                        yield AppState(desk=desk, options=options)
                    finally:
                        tg.cancel_scope.cancel()
            else:
                yield AppState(desk=desk, options=options)
        finally:
            auditor.drain()
            auditor.desk = None
            await desk.aclose()

    server: MCPServer = MCPServer(
        "basis-mcp",
        title="basis-mcp: crypto basis-convergence desk",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )
    specs = register(server, TOOLS, options.mode, _desk)
    server.middleware.append(AuditMiddleware(specs, auditor))
    server.auditor = auditor  # type: ignore[attr-defined]  # the transports audit malformed messages through it
    register_prompts(server)

    @server.resource("basis://limits", name="limits", title="Risk limits", mime_type="application/json",
                     description="The operator's risk limits and the hard ceilings in code (read-only).")
    def limits() -> str:
        from basis_mcp.config import limits_view

        return json.dumps(limits_view(options.settings), indent=2, default=str)

    return server
