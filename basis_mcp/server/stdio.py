"""stdio transport: the SDK's, plus an audit row for every line that is not a JSON-RPC message.

The SDK drops an unparseable line after logging it at debug level; a book's audit log must
show that something tried to talk to the server and failed, so the read stream is wrapped.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server


class AuditingReadStream:
    """Passes every item through; an exception item (a line that failed to parse) is audited first."""

    def __init__(self, inner: Any, auditor: Any):
        self._inner = inner
        self._auditor = auditor

    async def __aenter__(self) -> AuditingReadStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)

    def __aiter__(self) -> AuditingReadStream:
        return self

    async def __anext__(self) -> Any:
        item = await self._inner.__anext__()
        if isinstance(item, Exception) and self._auditor is not None:
            # the parser's message may quote the line (a secret included): keep only what kind of failure it was
            self._auditor.rejected("(unparseable message)", {"error": type(item).__name__},
                                   f"a stdin line is not a JSON-RPC message ({type(item).__name__})", kind="transport")
        return item

    async def receive(self) -> Any:
        return await self.__anext__()

    def __getattr__(self, name: str) -> Any:  # last_context and whatever else the dispatcher reads
        return getattr(self._inner, name)


async def run_stdio(server: MCPServer) -> None:
    lowlevel = server._lowlevel_server  # noqa: SLF001 - the SDK's own run_stdio_async does exactly this
    async with stdio_server() as (read_stream, write_stream):
        await lowlevel.run(AuditingReadStream(read_stream, getattr(server, "auditor", None)), write_stream,
                           lowlevel.create_initialization_options())
