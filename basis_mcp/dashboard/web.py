"""The dashboard as a Starlette app: server-rendered HTML, a fragment the page polls, a JSON state.

Routes (GET and HEAD only; any other method answers 405 before anything is read):

- ``/dashboard``                 the page (the board inside it is ``/dashboard/fragment``)
- ``/dashboard/fragment``        the board alone, with an ETag: the page's script asks for it every
                                 `POLL_SECONDS` with If-None-Match and swaps it in when it changed
- ``/dashboard/api/state``       the board as JSON
- ``/dashboard/chart/SYM.png``   the basis/funding chart of a symbol
- ``/dashboard/static/…``        the page's CSS and script (no CDN, no build step)

The gate (`Gate`) first refuses, token or not, a Host header that is not this server's (421: DNS
rebinding) and a cross-site request (``Sec-Fetch-Site`` other than same-origin/none, or a foreign
``Origin``: 403). Then, when the server has a token: ``Authorization: Bearer <token>``, or the
token once as ``?token=`` (answered by a 303 to the same URL without it, setting an HttpOnly,
SameSite=Strict cookie holding a random session id kept in memory for `SESSION_TTL`: never the
token, and a restart signs everyone out), or that cookie. Every comparison is constant-time; a
request without any of them gets a 401 page that shows nothing of the book. The token is never
rendered, and never logged.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
SESSION_TTL = 12 * 3600.0  # a session cookie's lifetime (Max-Age), seconds
MAX_SESSIONS = 256
SYMBOL = re.compile(r"^[A-Za-z0-9._@-]{1,40}$")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]


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

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def _host_name(host: str) -> str:
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port or None) of a Host header; None when it does not parse."""
    value = value.strip().lower()
    m = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?", value)
    if m is None:
        return None
    return m.group(1), int(m.group(2)) if m.group(2) else None


class Gate:
    """Method check, then the Host/Origin check (DNS rebinding and cross-site requests), then the token (see module
    docstring), then the app; security headers on every answer.

    ``host``: the address the server was told to bind. Host headers naming 127.0.0.1, localhost or [::1] are
    accepted; the configured host too when it is not loopback and a token is set (any name when it is a wildcard
    such as 0.0.0.0: the token is then what guards the book). A Host port must be the bound port."""

    def __init__(self, app: ASGIApp, token: str | None, host: str | None = None, session_ttl: float = SESSION_TTL):
        self.app = app
        self.token = token
        self.session_ttl = session_ttl
        self.sessions: dict[str, float] = {}  # session id -> expiry (monotonic); in memory: a restart drops them all
        name = _host_name(host or "127.0.0.1")
        self.names = set(LOOPBACK_NAMES)
        self.any_name = False
        if token and name not in LOOPBACK_NAMES:
            if name in WILDCARD_HOSTS:
                self.any_name = True
            else:
                self.names.add(name)

    # ------------------------------------------------------------------ sessions

    def new_session(self) -> str:
        now = time.monotonic()
        for sid, until in list(self.sessions.items()):
            if until <= now:
                del self.sessions[sid]
        if len(self.sessions) >= MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = now + self.session_ttl
        return sid

    def valid_session(self, sid: str) -> bool:
        if not sid:
            return False
        ok = False
        for known, until in list(self.sessions.items()):  # constant-time per comparison
            if hmac.compare_digest(known.encode(), sid.encode()):
                ok = until > time.monotonic()
                if not ok:
                    del self.sessions[known]
        return ok

    # ------------------------------------------------------------------ Host and Origin

    def _foreign(self, scope: Scope, request: Request) -> str | None:
        """Why this request is refused before anything else (a foreign Host or a cross-site request), or None."""
        raw = request.headers.get("host")
        parsed = _split_host(raw) if raw is not None else None
        if parsed is None:
            return "a missing or malformed Host header"
        name, port = parsed
        if not self.any_name and name not in self.names:
            return "a Host header that is not this server's"
        server = scope.get("server")
        if port is not None and server and server[1] is not None and port != int(server[1]):
            return "a Host header with another port"
        site = request.headers.get("sec-fetch-site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return "a request from another site"
        origin = request.headers.get("origin")
        if origin is not None:
            scheme = scope.get("scheme", "http")
            if origin.lower() != f"{scheme}://{raw.strip().lower()}":
                return "a request from another origin"
        return None

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
        request = Request(scope)
        why = self._foreign(scope, request)
        if why is not None:
            status = 421 if "Host" in why else 403
            await Response(f"refused: {why}\n", status, media_type="text/plain")(scope, receive, send_with_headers)
            return
        if self.token is None or scope.get("path", "").startswith(PREFIX + "/static/"):  # the package's CSS and script
            await self.app(scope, receive, send_with_headers)
            return
        offered = request.query_params.get("token")
        if offered is not None:
            if hmac.compare_digest(offered.encode(), self.token.encode()):
                await self._sign_in(scope, request, receive, send_with_headers)
                return
            await self._denied(scope, receive, send_with_headers, "the token in the address is wrong")
            return
        bearer = request.headers.get("authorization", "")
        if hmac.compare_digest(bearer.encode(), f"Bearer {self.token}".encode()) or \
                self.valid_session(request.cookies.get(COOKIE, "")):
            await self.app(scope, receive, send_with_headers)
            return
        cookie = request.cookies.get(COOKIE, "")
        await self._denied(scope, receive, send_with_headers,
                           "no token" if not (bearer or cookie) else
                           "the session expired (or the server restarted)" if cookie and not bearer else "the token is wrong")

    async def _sign_in(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        """The token once in the address: a fresh session cookie and a 303 to the same URL without the token, so
        the token-bearing URL is never the page's history entry."""
        query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        target = scope.get("path", PREFIX) + (f"?{query}" if query else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = (f"{COOKIE}={self.new_session()}; Max-Age={int(self.session_ttl)}; HttpOnly; SameSite=Strict;"
                  f" Path={PREFIX}{secure}")
        resp = Response(status_code=303, headers={"location": target, "set-cookie": cookie, "referrer-policy": "no-referrer"})
        await resp(scope, receive, send)

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


def dashboard_app(boards: Boards, token: str | None, *, root_redirect: bool = False, host: str | None = None) -> ASGIApp:
    async def unavailable(e: Exception) -> Response:
        return HTMLResponse(render("denied.html", why=None, unavailable=str(e)), 503)

    async def page(request: Request) -> Response:
        try:
            etag, board = await boards.board()
        except NotReady as e:
            return await unavailable(e)
        return HTMLResponse(render("page.html", b=board, etag=etag))

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
    return Gate(Starlette(routes=routes), token, host)
