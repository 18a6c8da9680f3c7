"""Streamable HTTP transport, with an optional bearer token.

Set ``BASIS_MCP_HTTP_TOKEN`` and every request must carry ``Authorization: Bearer <token>``;
without it the server only listens where you tell it (127.0.0.1 by default).
"""

from __future__ import annotations

import hmac
import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "BASIS_MCP_HTTP_TOKEN"


class BearerToken:
    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b'{"error":"missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer, host: str) -> ASGIApp:
    app: ASGIApp = server.streamable_http_app(host=host)
    token = os.environ.get(TOKEN_ENV)
    return BearerToken(app, token) if token else app


def run_http(server: MCPServer, host: str, port: int) -> None:
    uvicorn.run(http_app(server, host), host=host, port=port, log_level="warning")
