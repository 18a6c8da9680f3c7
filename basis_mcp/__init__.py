"""basis-mcp: an MCP server for a crypto basis-convergence book with server-side risk limits."""

__version__ = "0.1.0"
