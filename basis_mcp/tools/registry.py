"""Turn (input model, output model, handler) triples into MCP tools.

Each tool's MCP signature is generated from its pydantic input model, so the published
input schema, the validation and the handler's argument all come from one definition.
"""

from __future__ import annotations

import base64
import contextvars
import inspect
import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, ValidationError

from basis_mcp.errors import Rejected, Verbatim, Violation
from basis_mcp.history import DataError
from basis_mcp.models import InputModel, ToolOutput
from basis_mcp.redact import MASK, bound_text, looks_like_credential, scrub
from basis_mcp.store import DatabaseBusy
from basis_mcp.tools.schema import flat_schema
from basis_mcp.venue.base import VenueError, VenueTimeout

BUSY_TEXT = ("{tool}: the book's database is locked by another process right now (an operator command, a backup or a "
             "database browser holding a write lock); nothing was done. Retry in a few seconds (a trade: with the same "
             "idempotency_key).")

Handler = Callable[[Any, Any, Context], Awaitable["ToolOutput | WithImages"]]


@dataclass(frozen=True)
class WithImages:
    """A handler's result plus PNG images: sent as image content next to the structured output."""

    output: ToolOutput
    pngs: list[bytes]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_model: type[InputModel]
    output_model: type[ToolOutput]
    handler: Handler
    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool = False
    modes: tuple[str, ...] = ("replay", "paper", "live", "readonly")
    computes: bool = False  # read-only but long (a backtest, a chart): not run inside one read cache

    @property
    def reads_once(self) -> bool:
        """A quick read of the book: each distinct query inside the call is asked of SQLite once."""
        return self.read_only and not self.computes


RAW_ARGS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("basis_mcp_raw_args", default=None)


def as_sent(v: Any, limit: int = 80) -> str:
    """A value the way the client sent it (JSON), control and non-ASCII characters escaped."""
    try:
        s = json.dumps(v, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def format_validation_error(tool: str, model: type[BaseModel], err: ValidationError) -> str:
    """One line per problem, naming the argument, the value as sent (masked if the name looks like a
    credential) and the rule."""
    allowed = ", ".join(model.model_fields)
    lines = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        value = e.get("input")
        if any(looks_like_credential(p) for p in e["loc"] if isinstance(p, str)):
            shown = MASK
        elif isinstance(value, dict | list):  # never echo a compound value: it may carry anything
            shown = f"<{'an object with' if isinstance(value, dict) else 'an array of'} {len(value)} item(s)>"
        else:
            shown = scrub(as_sent(value))
        kind = e["type"]
        if kind == "extra_forbidden":
            if looks_like_credential(loc):
                loc = bound_text(loc, 40)
            lines.append(
                f"unknown argument {loc!r}: {tool} accepts only [{allowed}]. Risk limits and configuration are "
                "set by the operator and cannot be changed through a tool."
            )
        elif kind == "missing":
            lines.append(f"missing required argument {loc!r}")
        else:
            lines.append(f"invalid argument {loc}={shown}: {_rule(e)}")
    return f"{tool}: " + "; ".join(lines)


def _rule(e: Any) -> str:
    kind, msg = e["type"], e["msg"]
    if kind in ("float_type", "int_type", "bool_type", "float_parsing", "int_parsing", "int_from_float"):
        want = {"float_type": "a JSON number", "float_parsing": "a JSON number", "int_type": "a whole JSON number",
                "int_parsing": "a whole JSON number", "int_from_float": "a whole JSON number", "bool_type": "true or false"}[kind]
        return f"must be {want}, not {_json_type(e.get('input'))} ({msg})"
    return msg


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int) and abs(v) >= 2**53:
        return "a whole number too large for it"
    if isinstance(v, str):
        return "a string"
    if v is None:
        return "null"
    if isinstance(v, float):
        return "a fraction"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def violation_text(tool: str, e: Rejected) -> str:
    """A desk refusal, with each field's value quoted as the client sent it."""
    raw = RAW_ARGS.get() or {}
    vs = []
    for v in e.violations:
        if looks_like_credential(v.field):
            vs.append(Violation(v.field, MASK, v.rule))
        elif v.field in raw:
            vs.append(Violation(v.field, Verbatim(as_sent(raw[v.field])), v.rule))
        else:
            vs.append(v)
    return scrub(f"{tool} {Rejected(violations=vs)}")


def validate_input(spec: ToolSpec, arguments: Any) -> InputModel:
    """Validate raw tool arguments; raise ToolError with a readable message."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolError(f"{spec.name}: arguments must be an object, got {type(arguments).__name__}")
    try:
        return spec.input_model.model_validate(arguments)
    except ValidationError as e:
        raise ToolError(format_validation_error(spec.name, spec.input_model, e)) from None


def _make_fn(spec: ToolSpec, get_desk: Callable[[Context], Any]) -> Callable[..., Awaitable[ToolOutput]]:
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if f.is_required() else f.default,
            annotation=Annotated[f.annotation, f],
        )
        for name, f in spec.input_model.model_fields.items()
    ]
    params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))

    async def tool_fn(**kwargs: Any) -> ToolOutput | CallToolResult:
        ctx: Context = kwargs.pop("ctx")
        inp = validate_input(spec, kwargs)
        desk = get_desk(ctx)
        try:
            # a read tool asks the same few questions several times (the open positions, their legs and fills
            # for equity, P&L and tier usage): inside one call each is asked once; any write drops the answers
            with desk.store.read_cache(call=True) if spec.reads_once else nullcontext():
                out = await spec.handler(desk, inp, ctx)
        except Rejected as e:
            raise ToolError(violation_text(spec.name, e)) from None
        except DatabaseBusy:
            raise ToolError(BUSY_TEXT.format(tool=spec.name)) from None
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            raise ToolError(f"{spec.name}: the book's database stayed locked by another process for minutes while this "
                            "call was changing the book; what was sent to the venue is in the orders table and the "
                            "watchdog reconciles it. Check portfolio_status before retrying.") from None
        except DataError as e:
            raise ToolError(f"{spec.name}: {scrub(str(e))}") from None
        except (VenueError, VenueTimeout) as e:
            # trading paths catch venue errors themselves and say what executed; this is a read that failed
            raise ToolError(f"{spec.name}: the venue did not answer usefully ({scrub(str(e)) or type(e).__name__}); "
                            "retry shortly, and check portfolio_status for the book's state") from None
        if isinstance(out, WithImages):
            out.output.alerts = desk.pop_alerts()
            data = out.output.model_dump(mode="json")
            content = [TextContent(type="text", text=json.dumps(data))]
            content += [ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png") for png in out.pngs]
            return CallToolResult(content=content, structured_content=data)
        out.alerts = desk.pop_alerts()
        # serialised once (numbers rounded once: `basis_mcp.models.rounding`), for both the structured result and
        # its text copy; the SDK still validates the structured part against the output model
        data = out.model_dump(mode="json")
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(data))], structured_content=data)

    tool_fn.__name__ = spec.name
    tool_fn.__doc__ = spec.description
    tool_fn.__signature__ = inspect.Signature(params, return_annotation=spec.output_model)  # type: ignore[attr-defined]
    tool_fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": spec.output_model}
    return tool_fn


def register(server: MCPServer, specs: list[ToolSpec], mode: str, get_desk: Callable[[Context], Any]) -> dict[str, ToolSpec]:
    registered: dict[str, ToolSpec] = {}
    for spec in specs:
        if mode not in spec.modes:
            continue
        server.tool(
            name=spec.name,
            title=spec.title,
            description=spec.description,
            annotations=ToolAnnotations(
                title=spec.title,
                read_only_hint=spec.read_only,
                destructive_hint=spec.destructive,
                idempotent_hint=spec.idempotent,
                open_world_hint=spec.open_world,
            ),
        )(_make_fn(spec, get_desk))
        _publish_flat_output_schema(server, spec.name)
        registered[spec.name] = spec
    return registered


def _publish_flat_output_schema(server: MCPServer, name: str) -> None:
    """Publish the tool's output schema written flat (`basis_mcp.tools.schema`): the same constraints, cheaper
    for every client to check. The SDK reads ``fn_metadata.output_schema`` live (its documented behaviour);
    results are still validated against the pydantic model on the server."""
    manager = getattr(server, "_tool_manager", None)
    tool = manager.get_tool(name) if manager is not None else None
    meta = getattr(tool, "fn_metadata", None)
    if meta is not None and meta.output_schema:
        meta.output_schema = flat_schema(meta.output_schema)
