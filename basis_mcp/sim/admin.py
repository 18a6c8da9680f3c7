"""The ``/_sim/*`` admin endpoints every local venue server shares: state, clock, faults and request counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from basis_mcp.sim.state import SimState


def admin_routes(state: SimState, snapshot: Callable[[], dict[str, Any]] | None = None) -> list[Route]:
    """``/_sim/state`` (GET: ``snapshot()``, the venue's books, if given), ``/_sim/time`` (GET; POST ``{"t": ...}``
    or ``{"advance_s": ...}``, answers the funding settled on the way), ``/_sim/faults`` (GET, POST) and
    ``/_sim/requests`` (GET, DELETE)."""

    def requests_snapshot() -> dict[str, Any]:
        with state.lock:
            return {"total": sum(state.requests.values()), "by_path": dict(state.requests),
                    "unknown": list(state.unknown_paths)}

    async def admin_state(request: Request) -> Response:
        if snapshot is not None:
            return JSONResponse(snapshot())
        with state.lock:
            t = state.t
        return JSONResponse({"t": t, "time": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
                             "faults": asdict(state.faults), "requests": requests_snapshot()})

    async def admin_time(request: Request) -> Response:
        if request.method == "POST":
            d = await request.json()
            try:
                settled = state.advance(d["advance_s"]) if "advance_s" in d else state.set_time(d["t"])
            except (KeyError, ValueError, TypeError) as e:
                return JSONResponse({"error": f"give 't' (epoch s or ISO) or 'advance_s': {e}"}, 400)
            return JSONResponse({"t": state.t, "funding": settled})
        return JSONResponse({"t": state.t})

    async def admin_faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                with state.lock:
                    state.faults.update(await request.json())
            except (ValueError, TypeError) as e:
                return JSONResponse({"error": str(e)}, 400)
        return JSONResponse(asdict(state.faults))

    async def admin_requests(request: Request) -> Response:
        if request.method == "DELETE":
            state.reset_counts()
        return JSONResponse(requests_snapshot())

    return [
        Route("/_sim/state", admin_state),
        Route("/_sim/time", admin_time, methods=["GET", "POST"]),
        Route("/_sim/faults", admin_faults, methods=["GET", "POST"]),
        Route("/_sim/requests", admin_requests, methods=["GET", "DELETE"]),
    ]
