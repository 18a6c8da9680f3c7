"""Output schemas that every client validates quickly: the same constraints, written flat.

An MCP client validates each structured result against the tool's published ``outputSchema`` (the
Python SDK does it on every call with ``jsonschema``). Pydantic writes nested models as ``$ref`` into
``$defs`` and optional values as ``anyOf: [{type: number}, {type: null}]``; a reference is resolved on
every use and an ``anyOf`` builds an error object for every branch that fails, which made
``risk_status``' result (about twenty limit readings) cost more to validate than to compute.
`flat_schema` writes the same schema without either: references inlined, and an ``anyOf`` whose
branches are bare types folded into one ``type`` list (``["number", "null"]``). What validates is
unchanged (tests/test_units.py checks every tool's result against the flat schema through the SDK).
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 32  # a self-referencing model cannot be inlined: deeper than this, a reference is kept


def _fold_any_of(node: dict[str, Any]) -> dict[str, Any]:
    branches = node.get("anyOf")
    if not isinstance(branches, list) or not branches:
        return node
    if not all(isinstance(b, dict) and set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
        return node
    types: list[str] = []
    for b in branches:
        if b["type"] not in types:
            types.append(b["type"])
    out = {k: v for k, v in node.items() if k != "anyOf"}
    out["type"] = types[0] if len(types) == 1 else types
    return out


def flat_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$ref``s inlined (siblings such as ``description`` kept) and
    ``anyOf`` of bare types folded into a ``type`` list. ``$defs`` is dropped once nothing refers to it."""
    defs = schema.get("$defs", {})
    kept_refs = False

    def walk(node: Any, depth: int) -> Any:
        nonlocal kept_refs
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref.split("/")[-1] in defs:
            if depth >= MAX_DEPTH:
                kept_refs = True
                return node
            target = walk(defs[ref.split("/")[-1]], depth + 1)
            siblings = {k: walk(v, depth) for k, v in node.items() if k != "$ref"}
            return _fold_any_of({**target, **siblings})
        out = {k: walk(v, depth) for k, v in node.items() if k != "$defs"}
        return _fold_any_of(out)

    flat = walk(schema, 0)
    if kept_refs:
        flat["$defs"] = defs
    return flat
