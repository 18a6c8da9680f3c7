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
from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.prompts import register_prompts
from basis_mcp.tools.definitions import TOOLS
from basis_mcp.tools.registry import ToolSpec, register, validate_input
from basis_mcp.venue.faults import FaultPlan

log = logging.getLogger("basis_mcp")

INSTRUCTIONS = """\
basis-mcp runs a crypto basis (cash-and-carry) book: long spot + short perpetual in equal
quantity, earning the basis as it converges plus the funding paid to shorts. The server
enforces risk limits you cannot change. Loop: scan_basis → compute_zscore → estimate_net_apy
→ size_position → enter_trade (with a fresh idempotency_key); then monitor with check_delta,
seconds_to_funding and portfolio_status, and exit_trade when the edge is gone. Read the
`alerts` field of every response: a server-side watchdog may act on its own. risk_status shows
every limit; halt_trading is your kill switch (only the operator resumes). Units: *_pct is percent, *_usd is dollars. The prompt
`basis_trading_loop` explains the loop and every field in detail."""

SECRET_HINTS = ("secret", "password", "api_key", "apikey", "private_key", "passphrase")


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
    venue_url: str | None = None  # dev/test: point ccxt at a local simulator
    credentials: Any = None  # live.exchanges.Credentials; never logged
    faults: FaultPlan | None = None  # tests: a fault plan they can flip while the server runs
    live_loop: bool = True  # live modes: the background market tick / watchdog


async def open_desk(options: ServeOptions, start: bool = True) -> Desk:
    """Open the desk (and, for live trading, check the API keys); ``start`` also reconciles it."""
    if options.mode == "replay":
        desk = Desk.open_replay(options.settings, options.db_path, options.data_path, options.start, options.faults)
    else:
        desk = await Desk.open_live(options.settings, options.db_path, options.venues, options.mode, options.credentials,
                                    options.venue_url, options.universe, options.faults)
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


def _redact(args: Any) -> Any:
    if isinstance(args, dict):
        return {
            k: ("***" if any(h in str(k).lower() for h in SECRET_HINTS) else _redact(v)) for k, v in list(args.items())[:50]
        }
    if isinstance(args, list):
        return [_redact(v) for v in args[:50]]
    if isinstance(args, str) and len(args) > 500:
        return args[:500] + "…"
    return args


class AuditMiddleware:
    """Sees every tools/call: validates arguments strictly, then audits the call and its outcome."""

    def __init__(self, specs: dict[str, ToolSpec]):
        self.specs = specs

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = ctx.params or {}
        name = str(params.get("name", ""))
        args = params.get("arguments")
        state: AppState | None = getattr(ctx, "lifespan_context", None)
        t0 = time.perf_counter()
        spec = self.specs.get(name)
        if spec is not None:
            try:
                validate_input(spec, args)
            except ToolError as e:
                self._audit(state, name, args, "rejected", str(e), t0)
                return CallToolResult(content=[TextContent(type="text", text=str(e))], is_error=True)
        try:
            result = await call_next(ctx)
        except BaseException as e:
            self._audit(state, name, args, "error", type(e).__name__, t0)
            raise
        if isinstance(result, dict):
            is_error = bool(result.get("isError"))
            content = result.get("content") or []
            text = content[0].get("text") if content and isinstance(content[0], dict) else None
        else:
            is_error = bool(getattr(result, "is_error", False))
            content = getattr(result, "content", None) or []
            text = getattr(content[0], "text", None) if content else None
        self._audit(state, name, args, "error" if is_error else "ok", text if is_error else None, t0)
        return result

    @staticmethod
    def _audit(state: AppState | None, name: str, args: Any, outcome: str, detail: str | None, t0: float) -> None:
        if state is None or not isinstance(state, AppState):
            return
        try:
            desk = state.desk
            desk.store.append_audit(
                ts=time.time(),
                market_ts=desk.now(),
                kind="tool",
                name=name[:100],
                args=_redact(args if isinstance(args, dict) else {"_raw": args}),
                outcome=outcome,
                detail=detail[:4000] if detail else None,
                duration_ms=(time.perf_counter() - t0) * 1000.0,
            )
        except Exception:  # the audit must never turn a good answer into a crash
            log.exception("audit write failed")


def build_server(options: ServeOptions) -> MCPServer:
    @asynccontextmanager
    async def lifespan(app: MCPServer) -> AsyncIterator[AppState]:
        desk = await open_desk(options)
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
    server.middleware.append(AuditMiddleware(specs))
    register_prompts(server)

    @server.resource("basis://limits", name="limits", title="Risk limits", mime_type="application/json",
                     description="The operator's risk limits and the hard ceilings in code (read-only).")
    def limits() -> str:
        from basis_mcp.config import HARD

        return json.dumps({"settings": options.settings.model_dump(mode="json"), "hard_ceilings": HARD.__dict__}, indent=2, default=str)

    return server
