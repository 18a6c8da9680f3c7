"""Turn (input model, output model, handler) triples into MCP tools.

Each tool's MCP signature is generated from its pydantic input model, so the published
input schema, the validation and the handler's argument all come from one definition.
"""

from __future__ import annotations

import base64
import inspect
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, ValidationError

from basis_mcp.errors import Rejected
from basis_mcp.history import DataError
from basis_mcp.models import InputModel, ToolOutput
from basis_mcp.venue.base import VenueError, VenueTimeout

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


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def format_validation_error(tool: str, model: type[BaseModel], err: ValidationError) -> str:
    """One line per problem, naming the argument, the value and the rule."""
    allowed = ", ".join(model.model_fields)
    lines = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        kind = e["type"]
        if kind == "extra_forbidden":
            lines.append(
                f"unknown argument {loc!r}: {tool} accepts only [{allowed}]. Risk limits and configuration are "
                "set by the operator and cannot be changed through a tool."
            )
        elif kind == "missing":
            lines.append(f"missing required argument {loc!r}")
        else:
            lines.append(f"invalid argument {loc}={_fmt_value(e.get('input'))}: {e['msg']}")
    return f"{tool}: " + "; ".join(lines)


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
            out = await spec.handler(desk, inp, ctx)
        except Rejected as e:
            raise ToolError(f"{spec.name} {e}") from None
        except DataError as e:
            raise ToolError(f"{spec.name}: {e}") from None
        except (VenueError, VenueTimeout) as e:
            # trading paths catch venue errors themselves and say what executed; this is a read that failed
            raise ToolError(f"{spec.name}: the venue did not answer usefully ({e or type(e).__name__}); "
                            "retry shortly, and check portfolio_status for the book's state") from None
        if isinstance(out, WithImages):
            out.output.alerts = desk.pop_alerts()
            data = out.output.model_dump(mode="json")
            content = [TextContent(type="text", text=json.dumps(data))]
            content += [ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png") for png in out.pngs]
            return CallToolResult(content=content, structured_content=data)
        out.alerts = desk.pop_alerts()
        return out

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
        registered[spec.name] = spec
    return registered
