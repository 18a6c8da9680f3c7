"""The dashboard as a Starlette app: server-rendered HTML, a fragment the page polls, a JSON state.

Routes (GET and HEAD only; any other method answers 405 before anything is read):

- ``/dashboard``                 the page (the board inside it is ``/dashboard/fragment``)
- ``/dashboard/fragment``        the board alone, with an ETag: the page's script asks for it every
                                 `POLL_SECONDS` with If-None-Match and swaps it in when it changed
- ``/dashboard/api/state``       the board as JSON
- ``/dashboard/chart/SYM.png``   the basis/funding chart of a symbol
- ``/dashboard/static/…``        the page's CSS and script (no CDN, no build step)

The token gate (`Gate`), when the server has a token: ``Authorization: Bearer <token>``, or the
token once as ``?token=`` (the answer sets an HttpOnly, SameSite=Strict cookie holding an HMAC
of the token, never the token itself, and the page's script drops the query from the address
bar), or that cookie. Every comparison is constant-time; a request without any of them gets a
401 page that shows nothing of the book. The token is never rendered, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from basis_mcp.dashboard.sources import Boards, NotReady

PREFIX = "/dashboard"
COOKIE = "basis_mcp_dashboard"
POLL_SECONDS = 2.0
SYMBOL = re.compile(r"^[A-Za-z0-9._@-]{1,40}$")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]


def session_value(token: str) -> str:
    """What the cookie holds: an HMAC of the token (the cookie opens the dashboard, never the MCP endpoint)."""
    return hmac.new(token.encode(), b"basis-mcp dashboard session v1", hashlib.sha256).hexdigest()


def is_dashboard_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


# ---------------------------------------------------------------------------- rendering


def _money(x: Any, signed: bool = False) -> str:
    if x is None:
        return "—"
    sign = "+" if signed and x > 0 else ("−" if x < 0 else "")
    return f"{sign}${abs(x):,.2f}"


def _num(x: Any, nd: int = 4) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def _qty(x: Any) -> str:
    return "—" if x is None else f"{x:,.8g}"


def _pct(x: Any, nd: int = 2) -> str:
    return "—" if x is None else f"{x:,.{nd}f}%"


def _time(t: Any) -> str:
    return "—" if not t else str(t).replace("T", " ").replace("Z", "")[:19]


_ENV = Environment(loader=PackageLoader("basis_mcp.dashboard", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_ENV.filters.update(money=_money, num=_num, qty=_qty, pct=_pct, when=_time)


def render(name: str, **ctx: Any) -> str:
    return _ENV.get_template(name).render(prefix=PREFIX, poll_ms=int(POLL_SECONDS * 1000), **ctx)


# ---------------------------------------------------------------------------- the gate


class Gate:
    """Method check, then the token (see module docstring), then the app; security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + extra}
            await send(message)

        if scope["method"] not in ("GET", "HEAD"):
            await Response("the dashboard is read-only: GET only\n", 405, headers={"allow": "GET, HEAD"},
                           media_type="text/plain")(scope, receive, send_with_headers)
            return
        if self.token is None or scope.get("path", "").startswith(PREFIX + "/static/"):  # the package's CSS and script
            await self.app(scope, receive, send_with_headers)
            return
        request = Request(scope)
        offered = request.query_params.get("token")
        if offered is not None:
            if hmac.compare_digest(offered.encode(), self.token.encode()):
                scope = {**scope, "basis_mcp.sign_in": True}

                async def send_cookie(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        secure = "; Secure" if scope.get("scheme") == "https" else ""
                        cookie = f"{COOKIE}={self.session}; HttpOnly; SameSite=Strict; Path={PREFIX}{secure}"
                        message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
                    await send_with_headers(message)

                await self.app(scope, receive, send_cookie)
                return
            await self._denied(scope, receive, send_with_headers, "the token in the address is wrong")
            return
        bearer = request.headers.get("authorization", "")
        cookie = request.cookies.get(COOKIE, "")
        assert self.session is not None
        if hmac.compare_digest(bearer.encode(), f"Bearer {self.token}".encode()) or \
                hmac.compare_digest(cookie.encode(), self.session.encode()):
            await self.app(scope, receive, send_with_headers)
            return
        await self._denied(scope, receive, send_with_headers, "no token" if not (bearer or cookie) else "the token is wrong")

    @staticmethod
    async def _denied(scope: Scope, receive: Receive, send: Send, why: str) -> None:
        path = scope.get("path", "")
        if path.startswith(PREFIX + "/api/") or path.startswith(PREFIX + "/fragment"):
            resp: Response = JSONResponse({"error": f"unauthorized: {why}; open {PREFIX}?token=<BASIS_MCP_HTTP_TOKEN>"}, 401)
        else:
            resp = HTMLResponse(render("denied.html", why=why), 401)
        resp.headers["www-authenticate"] = 'Bearer realm="basis-mcp dashboard"'
        await resp(scope, receive, send)


# ---------------------------------------------------------------------------- routes


def dashboard_app(boards: Boards, token: str | None, *, root_redirect: bool = False) -> ASGIApp:
    async def unavailable(e: Exception) -> Response:
        return HTMLResponse(render("denied.html", why=None, unavailable=str(e)), 503)

    async def page(request: Request) -> Response:
        try:
            etag, board = await boards.board()
        except NotReady as e:
            return await unavailable(e)
        return HTMLResponse(render("page.html", b=board, etag=etag, signed_in=bool(request.scope.get("basis_mcp.sign_in"))))

    async def fragment(request: Request) -> Response:
        try:
            etag, board = await boards.board()
        except NotReady as e:
            return await unavailable(e)
        quoted = f'"{etag}"'
        if request.headers.get("if-none-match") == quoted:
            return Response(status_code=304, headers={"etag": quoted})
        return HTMLResponse(render("board.html", b=board), headers={"etag": quoted})

    async def state(request: Request) -> Response:
        try:
            etag, board = await boards.board()
        except NotReady as e:
            return JSONResponse({"error": str(e)}, 503)
        data = {k: v for k, v in board.items() if k != "equity_svg"}
        return Response(json.dumps(data, default=str), media_type="application/json", headers={"etag": f'"{etag}"'})

    async def chart(request: Request) -> Response:
        sym = request.path_params["symbol"]
        if not SYMBOL.match(sym):
            return Response("no such symbol\n", 404, media_type="text/plain")
        try:
            png = await boards.chart(sym)
        except NotReady as e:
            return await unavailable(e)
        if png is None:
            return Response("no basis samples for this symbol\n", 404, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    routes = [
        Route(PREFIX, page, methods=["GET"]),
        Route(PREFIX + "/", lambda r: RedirectResponse(PREFIX, 307), methods=["GET"]),
        Route(PREFIX + "/fragment", fragment, methods=["GET"]),
        Route(PREFIX + "/api/state", state, methods=["GET"]),
        Route(PREFIX + "/chart/{symbol}.png", chart, methods=["GET"]),
        Mount(PREFIX + "/static", StaticFiles(directory=Path(__file__).with_name("static")), name="static"),
    ]
    if root_redirect:
        routes.append(Route("/", lambda r: RedirectResponse(PREFIX, 307), methods=["GET"]))
    return Gate(Starlette(routes=routes), token)
