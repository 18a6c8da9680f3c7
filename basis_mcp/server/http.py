"""Streamable HTTP transport, with a bearer token and safe defaults.

- Set ``BASIS_MCP_HTTP_TOKEN`` and every request must carry ``Authorization: Bearer <token>``.
- Binding beyond loopback (``--host 0.0.0.0``, a LAN address) without a token refuses to
  start; live trading over HTTP needs a token even on loopback (`check_http_safety`).
- A request without the right token gets a 401 whose body is a JSON-RPC error saying what
  to send. MCP clients that speak OAuth treat a bare ``WWW-Authenticate: Bearer`` 401 as
  the start of an OAuth flow and hide the body (the Inspector does); so the challenge
  carries ``error="invalid_token"`` with a description, the body is a JSON-RPC error (the
  Python SDK surfaces its message as the error), and the OAuth discovery URLs answer 404
  with the same explanation instead of a login page that does not exist.
- Request bodies above 256 KiB are refused with 413 before they are read whole; a body
  that is not JSON is audited as a rejected call before the SDK answers it.
- ``/dashboard`` is the operator's read-only dashboard of the book (`basis_mcp.dashboard`): same
  token, which a browser gives once as ``?token=`` (then a session cookie); GET only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from basis_mcp.dashboard.sources import Boards
from basis_mcp.dashboard.web import dashboard_app, is_dashboard_path
from basis_mcp.redact import register_secret, scrub

TOKEN_ENV = "BASIS_MCP_HTTP_TOKEN"
MAX_BODY_BYTES = 256 * 1024
MIN_TOKEN_CHARS = 16


class UnsafeHttp(Exception):
    """The HTTP settings would expose the book without authentication."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost: assume it is reachable from elsewhere


def check_http_safety(host: str, token: str | None, mode: str) -> None:
    """Refuse settings that would serve the book without authentication where others can reach it."""
    if token is not None and (len(token) < MIN_TOKEN_CHARS or len(set(token)) < 8 or token != token.strip()
                              or any(c.isspace() for c in token) or not token.isprintable()):
        raise UnsafeHttp(f"{TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} random printable characters with no spaces "
                         "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if token:
        return
    if not is_loopback(host):
        raise UnsafeHttp(f"--host {host} is reachable from other machines and no {TOKEN_ENV} is set: anyone who can "
                         f"reach the port could trade this book. Set {TOKEN_ENV} (clients then send "
                         "'Authorization: Bearer <token>'), or bind to 127.0.0.1.")
    if mode == "live":
        raise UnsafeHttp(f"live trading over HTTP always needs a token: set {TOKEN_ENV} (clients send "
                         "'Authorization: Bearer <token>'), or serve over stdio.")


def _json_response(status: int, body: dict[str, Any], extra_headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra_headers or [])]
    return [{"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": data}]


HOW_TO_AUTH = ("basis-mcp needs the header 'Authorization: Bearer <token>', where <token> is the value of "
               f"{TOKEN_ENV} in the server's environment. This server does not use OAuth: configure the header in "
               "your MCP client (see mcp.json in the basis-mcp README).")


class BearerToken:
    """Every HTTP request must carry the token; constant-time comparison."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if path.startswith("/.well-known/oauth") or path.startswith("/.well-known/openid"):
                for m in _json_response(404, {"error": "not_found", "error_description": HOW_TO_AUTH}):
                    await send(m)
                return
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                why = "missing" if not got else "wrong"
                body = {"jsonrpc": "2.0", "id": None,
                        "error": {"code": -32001, "message": f"Unauthorized: the bearer token is {why}. {HOW_TO_AUTH}"}}
                challenge = (f'Bearer realm="basis-mcp", error="invalid_token", error_description="bearer token {why}: '
                             f'send Authorization: Bearer <{TOKEN_ENV}>"').encode()
                for m in _json_response(401, body, [(b"www-authenticate", challenge)]):
                    await send(m)
                return
        await self.app(scope, receive, send)


class AuditMalformed:
    """POST bodies that are not JSON, and every request the SDK refuses with a 4xx, are audited as
    rejected (size and a hash, never the body: it may carry a secret); the SDK's error text, which
    can quote the request, is scrubbed of credentials before it goes back."""

    def __init__(self, app: ASGIApp, auditor: Any):
        self.app = app
        self.auditor = auditor

    def _reject(self, name: str, detail: str, raw: bytes, size: int) -> None:
        if self.auditor is not None:
            self.auditor.rejected(name, {"bytes": size, "sha256": hashlib.sha256(raw).hexdigest()}, detail, size,
                                  kind="transport")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > MAX_BODY_BYTES:
                for m in _json_response(413, {"jsonrpc": "2.0", "id": None, "error": {
                        "code": -32600, "message": f"request body larger than {MAX_BODY_BYTES} bytes; nothing was done"}}):
                    await send(m)
                self._reject("(http request)", "request body too large", b"".join(chunks)[:4096], size)
                return
            chunks.append(body)
            if not msg.get("more_body"):
                break
        raw = b"".join(chunks)
        parsed = True
        try:
            json.loads(raw)
        except ValueError:
            parsed = False
            self._reject("(unparseable message)", "the HTTP body is not JSON", raw, len(raw))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        status = 0
        held: list[Message] = []
        pieces: list[bytes] = []

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status >= 400:
                    held.append(message)  # the body follows: scrub it first
                    return
            elif message["type"] == "http.response.body" and status >= 400:
                pieces.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = scrub(b"".join(pieces).decode("utf-8", "replace")).encode()
                start = held.pop() if held else None
                if start is not None:
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({**message, "body": body, "more_body": False})
                if parsed:
                    self._reject("(http request)", f"refused by the MCP transport with HTTP {status}", raw, len(raw))
                return
            await send(message)

        await self.app(scope, replay, guarded_send)


class WithDashboard:
    """``/dashboard`` and below go to the dashboard (its own gate: the same token, or its session cookie);
    everything else, lifespan included, to the MCP app."""

    def __init__(self, mcp_app: ASGIApp, dashboard: ASGIApp):
        self.mcp_app = mcp_app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_dashboard_path(scope.get("path", "")):
            await self.dashboard(scope, receive, send)
            return
        await self.mcp_app(scope, receive, send)


def http_app(server: MCPServer, host: str, token: str | None = None) -> ASGIApp:
    app: ASGIApp = server.streamable_http_app(host=host, max_request_body_size=MAX_BODY_BYTES)
    auditor = getattr(server, "auditor", None)
    app = AuditMalformed(app, auditor)
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token:
        register_secret(token)
        app = BearerToken(app, token)
    boards = Boards(desk_of=lambda: getattr(auditor, "desk", None))  # the desk the MCP lifespan opened
    return WithDashboard(app, dashboard_app(boards, token or None, host=host))


def run_http(server: MCPServer, host: str, port: int, token: str | None = None) -> None:
    app = http_app(server, host, token)
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    how = f"open it once with ?token=<${TOKEN_ENV}>" if token else "no token"
    print(f"basis-mcp: read-only dashboard at http://{host}:{port}/dashboard ({how})", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
