"""Prompt templates served as MCP prompts."""

from __future__ import annotations

import importlib.resources

from mcp.server.mcpserver import MCPServer


def load(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")


def register_prompts(server: MCPServer) -> None:
    @server.prompt(
        name="basis_trading_loop",
        title="How to run the basis book",
        description="Teaches the scan → z-score → net APY → size → enter → monitor → exit loop and every field's meaning.",
    )
    def basis_trading_loop(symbol: str = "") -> str:
        focus = f"Focus on {symbol.strip().upper()} for now." if symbol.strip() else ""
        return load("trading_loop").replace("{focus}", focus)
