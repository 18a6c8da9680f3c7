"""The operator's read-only dashboard, in a real headless browser (Debian's chromium driven by Playwright).

Against a real `basis-mcp serve --transport http` subprocess with a token (a replay book, paper
trading on the shipped data, a position opened through the MCP tools), and the standalone
`basis-mcp dashboard --db` beside a stdio server that holds the book.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from basis_mcp.dashboard.chain import ChainWatch
from basis_mcp.store import Store
from tests.conftest import REPO, call, stdio_params

pytestmark = pytest.mark.anyio
TOKEN = "dash-token-0123456789abcdef"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"CI=1 but {CHROMIUM} is missing: .ci/run installs Debian's chromium before the tests")
    pytest.skip(f"browser test: {CHROMIUM} is missing (apt-get install -y --no-install-recommends chromium)")


@pytest.fixture
async def browser():
    _need_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path, port: int) -> tuple[subprocess.Popen, object]:
    errf = open(log, "w")  # noqa: SIM115 - closed by _stop
    proc = subprocess.Popen([sys.executable, "-m", "basis_mcp", *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=errf)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, errf
        except OSError:
            if proc.poll() is not None:
                errf.close()
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start: " + log.read_text())


def _stop(proc: subprocess.Popen, errf) -> None:
    proc.terminate()
    proc.wait(timeout=15)
    errf.close()


@pytest.fixture
def http_book(tmp_path: Path):
    """(base URL, database) of a replay book served over HTTP with a token."""
    port = free_port()
    env = {**os.environ, "BASIS_MCP_HTTP_TOKEN": TOKEN}
    log = tmp_path / "http.log"
    db = tmp_path / "book.db"
    proc, errf = _start(["serve", "--transport", "http", "--port", str(port), "--db", str(db), "--start", "2024-03-01"],
                        env, log, port)
    try:
        yield f"http://127.0.0.1:{port}", db
    finally:
        _stop(proc, errf)
        text = log.read_text()
        assert f"dashboard at http://127.0.0.1:{port}/dashboard" in text, text
        assert TOKEN not in text  # never logged (nor the ?token= URLs the browser opened)


def mcp_client(base: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    return Client(streamable_http_client(base + "/mcp", http_client=http))


async def until(page, testid: str, text: str, equal: bool = True) -> None:
    """Wait until the element's text is ``text`` (``equal=False``: is no longer ``text``), without reloading."""
    await page.wait_for_function(
        "([id, text, equal]) => { const e = document.querySelector(`[data-testid=${id}]`);"
        " return !!e && (e.textContent === text) === equal; }", arg=[testid, text, equal], timeout=WAIT_MS)


def _errors(page) -> list[str]:
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: found.append(str(e)))
    return found


async def test_the_dashboard_refuses_without_the_token_and_never_shows_it(http_book, browser) -> None:
    base, _ = http_book
    dash = base + "/dashboard"
    for url, headers in ((dash, {}), (dash + "?token=wrong-token-0123456789", {}), (dash, {"Authorization": "Bearer nope"}),
                         (dash + "/api/state", {}), (dash + "/fragment", {}), (dash + "/chart/BTC.png", {})):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, url
        assert "paper:binance" not in r.text and "equity" not in r.text.lower() and "capital" not in r.text.lower()
    # read-only: every other method is refused, token or not, before anything is read
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            r = httpx.request(method, dash, headers=headers)
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = httpx.get(dash + "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["state"]["state"] == "ACTIVE"
    # DNS rebinding: a foreign name for this address is refused, as the SDK's /mcp refuses it
    r = httpx.get(dash + "/api/state", headers={"Authorization": f"Bearer {TOKEN}", "Host": "rebind.attacker.example"})
    assert r.status_code == 421 and "ACTIVE" not in r.text

    context = await browser.new_context()
    page = await context.new_page()
    errors = _errors(page)
    resp = await page.goto(dash)
    assert resp.status == 401
    assert "needs the server's token" in await page.inner_text("body")
    errors.clear()  # (the browser logs the 401 itself)
    resp = await page.goto(f"{dash}?token={TOKEN}")
    assert resp.status == 200 and resp.request.redirected_from is not None  # a 303 to the clean URL
    assert resp.request.redirected_from.response is not None
    assert (await resp.request.redirected_from.response()).status == 303
    assert page.url == dash and TOKEN not in await page.content()
    cookies = await context.cookies()
    assert len(cookies) == 1, cookies
    c = cookies[0]
    assert c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/dashboard" and TOKEN not in c["value"]
    assert 0 < c["expires"] - time.time() <= 12 * 3600 + 60  # a session that expires, not a forever cookie
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    resp = await page.goto(dash)  # the cookie alone opens it from now on
    assert resp.status == 200
    assert await page.inner_text("[data-testid=trading-state]") == "ACTIVE"
    assert errors == [], errors  # no script error, no CSP violation
    # the dashboard's cookie opens the dashboard, never the MCP endpoint
    r = httpx.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={"Cookie": f"{c['name']}={c['value']}"})
    assert r.status_code == 401
    await context.close()


async def test_the_dashboard_shows_a_position_and_follows_the_book_without_reloading(http_book, browser) -> None:
    base, _ = http_book
    async with mcp_client(base) as client:
        entry = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "dash-1"})
        pos = entry["position"]
        pid = pos["position_id"]
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors = _errors(page)
        await page.goto(f"{base}/dashboard?token={TOKEN}")
        card = page.locator(f"[data-testid=position-{pid}]")
        await card.wait_for(timeout=WAIT_MS)
        text = await card.inner_text()
        assert "BTC" in text and "cash_and_carry" in text
        legs = page.locator(f"[data-testid=position-{pid}] [data-testid=leg]")
        assert await legs.count() == 2
        spot, perp = await legs.nth(0).inner_text(), await legs.nth(1).inner_text()
        assert "spot" in spot and "long" in spot and "paper:binance" in spot and f"{pos['entry_spot_price']:,.2f}" in spot
        assert "perp" in perp and "short" in perp and f"{pos['entry_perp_price']:,.2f}" in perp
        assert (await page.inner_text("[data-testid=margin-ratio]")).endswith("%")
        assert (await page.inner_text("[data-testid=liq-distance]")).endswith("%")
        assert await page.inner_text("[data-testid=market-time]") == "2024-03-01 00:00:00"
        assert await page.inner_text("[data-testid=funding-total]") == "$0.00"
        assert await page.locator("[data-testid=chart-BTC]").count() == 1
        await until(page, "chain-status", "ok")

        await page.evaluate("window.__not_reloaded = 42")
        adv = await call(client, "advance_time", {"hours": 30})
        received = sum(f["amount_usd"] for f in adv["funding"] if f["position_id"] == pid)
        assert received != 0
        await until(page, "market-time", "2024-03-02 06:00:00")
        await until(page, "funding-total", "$0.00", equal=False)
        assert await page.evaluate("window.__not_reloaded") == 42  # swapped in place, not reloaded
        shown = await page.inner_text("[data-testid=funding-total]")
        assert shown == ("+" if received > 0 else "−") + f"${abs(received):,.2f}"
        assert await page.inner_text("[data-testid=position-funding]") == shown
        chart = page.locator("[data-testid=chart-BTC]")
        await chart.scroll_into_view_if_needed()
        await page.wait_for_function("img => img.complete && img.naturalWidth > 400", arg=await chart.element_handle(),
                                     timeout=WAIT_MS)  # the basis/funding PNG, drawn by the server

        # the same money as portfolio_status and check_delta (the desk's own figures)
        book = await call(client, "portfolio_status", {})
        delta = (await call(client, "check_delta", {"position_id": pid}))["positions"][0]
        state = httpx.get(base + "/dashboard/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert state["money"]["equity_usd"] == pytest.approx(book["equity_usd"], abs=0.01)
        assert state["money"]["funding_received_usd"] == pytest.approx(book["funding_received_usd"], abs=0.005)
        assert state["money"]["fees_paid_usd"] == pytest.approx(book["fees_paid_usd"], abs=0.005)
        shown_pos = state["positions"][0]
        assert shown_pos["margin_ratio_pct"] == pytest.approx(delta["margin_ratio_pct"], abs=0.1)
        assert shown_pos["distance_to_liquidation_pct"] == pytest.approx(delta["distance_to_liquidation_pct"], abs=0.01)
        assert state["equity_curve"][-1][1] == pytest.approx(book["equity_usd"], abs=0.01)
        assert state["chain"]["state"] == "ok"
        assert any(r["name"] == "advance_time" for r in state["audit_tail"])

        await call(client, "halt_trading", {"reason": "operator looks at the dashboard"})
        await until(page, "trading-state", "HALTED")
        assert "operator looks at the dashboard" in await page.inner_text("[data-testid=state-reason]")
        assert "state_halted" in await page.inner_text("[data-testid=alerts]")
        assert errors == [], errors


async def test_the_standalone_dashboard_reads_a_stdio_servers_book(tmp_path: Path, browser) -> None:
    db = tmp_path / "stdio.db"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BASIS_MCP_HTTP_TOKEN"}
    async with Client(stdio_params(db, "--start", "2024-03-01")) as client:
        entry = await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 3000, "idempotency_key": "dash-stdio"})
        pid = entry["position"]["position_id"]
        proc, errf = _start(["dashboard", "--db", str(db), "--port", str(port)], env, tmp_path / "dash.log", port)
        try:
            page = await browser.new_page()
            errors = _errors(page)
            resp = await page.goto(f"http://127.0.0.1:{port}/")  # the root leads to the dashboard
            assert resp.status == 200 and page.url.endswith("/dashboard")
            card = page.locator(f"[data-testid=position-{pid}]")
            await card.wait_for(timeout=WAIT_MS)
            assert "ETH" in await card.inner_text()
            assert await page.locator(f"[data-testid=position-{pid}] [data-testid=leg]").count() == 2
            assert (await page.inner_text("[data-testid=margin-ratio]")).endswith("%")  # from the paper venue's book
            await page.evaluate("window.__not_reloaded = 7")
            await call(client, "advance_time", {"hours": 10})  # the server still holds the book and writes to it
            await until(page, "market-time", "2024-03-01 10:00:00")
            await until(page, "funding-total", "$0.00", equal=False)
            assert await page.evaluate("window.__not_reloaded") == 7
            r = httpx.post(f"http://127.0.0.1:{port}/dashboard")
            assert r.status_code == 405
            book = await call(client, "portfolio_status", {})
            state = httpx.get(f"http://127.0.0.1:{port}/dashboard/api/state").json()
            assert state["money"]["funding_received_usd"] == pytest.approx(book["funding_received_usd"], abs=0.005)
            assert state["book"]["source"].startswith("the book's database file")
            assert errors == [], errors
        finally:
            _stop(proc, errf)
    assert "read-only dashboard of" in (tmp_path / "dash.log").read_text()


async def test_the_token_url_is_only_a_redirect_in_the_browsers_history(tmp_path: Path) -> None:
    """The ``?token=`` URL is answered by a 303 to the clean URL: in Chromium's own History database (a persistent
    profile) it is only the start of a server-redirect chain, never a page that was shown (back/forward and session
    restore hold the clean URL). Chromium still records the URL the user typed: the README says so."""
    _need_chromium()
    from playwright.async_api import async_playwright

    db = tmp_path / "h.db"
    Store(db).close()
    port = free_port()
    proc, errf = _start(["dashboard", "--db", str(db), "--port", str(port)], {**os.environ, "BASIS_MCP_HTTP_TOKEN": TOKEN},
                        tmp_path / "dash.log", port)
    try:
        async with async_playwright() as p:
            ctx = await p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                             args=CHROMIUM_ARGS)
            page = await ctx.new_page()
            resp = await page.goto(f"http://127.0.0.1:{port}/dashboard?token={TOKEN}")
            assert resp.status == 200 and page.url == f"http://127.0.0.1:{port}/dashboard"
            await page.inner_text("[data-testid=trading-state]")
            await page.goto(f"http://127.0.0.1:{port}/dashboard/api/state")
            await page.go_back()
            assert page.url == f"http://127.0.0.1:{port}/dashboard"  # the back entry is the clean URL
            await page.wait_for_timeout(500)
            await ctx.close()
    finally:
        _stop(proc, errf)
    hist = sqlite3.connect(tmp_path / "profile" / "Default" / "History")
    try:
        visits = hist.execute("SELECT u.url, v.transition FROM urls u JOIN visits v ON v.url = u.id").fetchall()
    finally:
        hist.close()
    chain_end, server_redirect = 0x20000000, 0x80000000
    token_visits = [t for u, t in visits if TOKEN in u]
    assert token_visits and all(not t & chain_end for t in token_visits), visits  # redirected away, never shown
    assert any(u.endswith("/dashboard") and t & server_redirect and t & chain_end for u, t in visits), visits



def test_the_standalone_dashboard_refuses_unsafe_settings(tmp_path: Path, monkeypatch, capsys) -> None:
    from basis_mcp.cli import main

    monkeypatch.delenv("BASIS_MCP_HTTP_TOKEN", raising=False)
    db = tmp_path / "none.db"
    assert main(["dashboard", "--db", str(db), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to start the dashboard" in err and "BASIS_MCP_HTTP_TOKEN" in err
    assert main(["dashboard", "--db", str(db)]) == 1
    assert "no database at" in capsys.readouterr().err
    assert not db.exists()  # nothing created
    monkeypatch.setenv("BASIS_MCP_HTTP_TOKEN", "short")
    assert main(["dashboard", "--db", str(db)]) == 2  # a weak token is refused as for serve


def test_the_chain_status_is_checked_incrementally_and_catches_an_edit(tmp_path: Path, monkeypatch) -> None:
    db = tmp_path / "a.db"
    store = Store(db)
    for i in range(5):
        store.append_audit(ts=float(i), market_ts=None, kind="system", name=f"row{i}", args={"i": i}, outcome="ok")
    full = []
    real_verify = ChainWatch._verify  # audit.verify's check over the dashboard's own read-only connection
    monkeypatch.setattr(ChainWatch, "_verify", lambda self: full.append(1) or real_verify(self))
    watch = ChainWatch(db, store.audit_paths, full_every=3600.0)
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    s = watch.status(conn)
    assert s["state"] == "ok" and s["rows"] == 5 and len(full) == 1
    for i in range(3):
        store.append_audit(ts=10.0 + i, market_ts=None, kind="system", name="more", args={}, outcome="ok")
    s = watch.status(conn)
    assert s["state"] == "ok" and s["rows"] == 8 and "3 added since" in s["summary"]
    assert len(full) == 1  # the new rows were hashed one by one, the chain was not walked again
    store.x("UPDATE audit SET outcome = 'edited' WHERE id = 8")  # the last verified row
    s = watch.status(conn)
    assert s["state"] in ("suspect", "checking") and "no longer matches" in s["summary"]
    s = watch.status(conn)  # the full check has the last word
    assert s["state"] == "tampered" and "row 8" in s["summary"] and len(full) >= 2
    conn.close()
    store.close()


async def test_the_gate_and_the_fragments_etag_in_process(tmp_path: Path) -> None:
    from basis_mcp.dashboard.sources import Boards
    from basis_mcp.dashboard.web import COOKIE, dashboard_app

    db = tmp_path / "g.db"
    Store(db).close()
    for token in (None, TOKEN):
        app = dashboard_app(Boards(db=db), token)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            r = await http.get("/dashboard")
            assert r.status_code == (200 if token is None else 401)  # no token configured (loopback): open like /mcp
            assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert (await http.post("/dashboard/fragment")).status_code == 405
            assert (await http.get("/dashboard/static/dashboard.js")).status_code == 200  # the package's own files
            if token is not None:
                r = await http.get(f"/dashboard?token={token}&x=1")
                assert r.status_code == 303 and r.headers["location"] == "/dashboard?x=1"  # the token URL leaves history
                cookie = r.headers["set-cookie"]
                sid = cookie.split(";")[0].split("=", 1)[1]
                assert len(sid) >= 40 and token not in cookie and "Max-Age=43200" in cookie and "HttpOnly" in cookie
                assert "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
                http.cookies.set(COOKIE, "forged-" + sid[7:])
                assert (await http.get("/dashboard/fragment")).status_code == 401
                again = (await http.get(f"/dashboard?token={token}")).headers["set-cookie"].split(";")[0].split("=", 1)[1]
                assert again != sid  # a fresh random id per sign-in, not a function of the token
                http.cookies.set(COOKIE, sid)
            r = await http.get("/dashboard/fragment")
            assert r.status_code == 200 and "trading-state" in r.text
            again = await http.get("/dashboard/fragment", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304  # nothing changed: nothing re-rendered, nothing sent
            assert (await http.head("/dashboard")).status_code == 200


async def test_the_gate_refuses_dns_rebinding_and_cross_site_requests(tmp_path: Path) -> None:
    """A page at http://rebind.attacker.example:PORT resolving to 127.0.0.1 must not read a tokenless dashboard."""
    from basis_mcp.dashboard.sources import Boards
    from basis_mcp.dashboard.web import dashboard_app

    db = tmp_path / "r.db"
    Store(db).close()
    app = dashboard_app(Boards(db=db), None, root_redirect=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rebind.attacker.example:8765") as http:
        for path in ("/dashboard", "/dashboard/api/state", "/dashboard/fragment", "/dashboard/chart/BTC.png"):
            r = await http.get(path)
            assert r.status_code == 421 and "equity" not in r.text.lower()
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
        assert (await http.get("/dashboard/api/state", headers={"Host": "localhost:8765"})).status_code == 200
        assert (await http.get("/dashboard/api/state", headers={"Host": "[::1]:8765"})).status_code == 200
        assert (await http.get("/dashboard/api/state", headers={"Host": "127.0.0.1:9999"})).status_code == 421
        assert (await http.get("/dashboard/api/state", headers={"Sec-Fetch-Site": "cross-site"})).status_code == 403
        assert (await http.get("/dashboard/api/state", headers={"Sec-Fetch-Site": "same-site"})).status_code == 403
        assert (await http.get("/dashboard/api/state", headers={"Origin": "http://127.0.0.1:18934"})).status_code == 403
        ok = await http.get("/dashboard/api/state", headers={"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"})
        assert ok.status_code == 200 and "money" in ok.json()
    # a non-loopback bind with a token also accepts its own name, and nothing else
    app = dashboard_app(Boards(db=db), TOKEN, host="dash.internal")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash.internal",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.get("/dashboard/api/state")).status_code == 200
        assert (await http.get("/dashboard/api/state", headers={"Host": "evil.example"})).status_code == 421



async def test_a_closed_book_is_read_without_sidecars_and_broken_chains_are_labelled(tmp_path: Path) -> None:
    """No server holds the book: it is opened immutable (no -wal/-shm created). A dropped audit table shows as
    tampered (not a 500), a missing key as unverifiable."""
    import shutil

    from basis_mcp.dashboard.reader import server_holds
    from basis_mcp.dashboard.sources import Boards
    from basis_mcp.dashboard.web import dashboard_app
    from basis_mcp.lease import BookLease

    db = tmp_path / "c.db"
    Store(db).close()
    for p in tmp_path.glob("c.db-*"):
        p.unlink()

    async def state(book: Path) -> dict:
        app = dashboard_app(Boards(db=book), None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            r = await http.get("/dashboard/api/state")
            assert r.status_code == 200, r.text
            assert (await http.get("/dashboard")).status_code == 200
            return r.json()

    assert (await state(db))["chain"]["state"] == "tampered"  # (a book never served: no start row, no journal)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.db-")) == []
    assert not server_holds(db)
    with BookLease.acquire(db):
        assert server_holds(db)

    for suffix in ("", ".audit-key", ".audit-journal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", tmp_path / f"nokey.db{suffix}")
    (tmp_path / "nokey.db.audit-key").unlink()
    s = (await state(tmp_path / "nokey.db"))["chain"]
    assert s["state"] == "unverifiable" and "TAMPERED" not in s["summary"] and s["summary"].startswith("UNVERIFIABLE")

    for suffix in ("", ".audit-key", ".audit-journal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", tmp_path / f"noaudit.db{suffix}")
    conn = sqlite3.connect(tmp_path / "noaudit.db")
    conn.execute("DROP TABLE audit")
    conn.commit()
    conn.close()
    s = (await state(tmp_path / "noaudit.db"))["chain"]
    assert s["state"] == "tampered" and "dropped" in s["summary"]
