"""Streamable HTTP transport: a real `basis-mcp serve --transport http` subprocess, bearer token enforced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import REPO, call, db_rows

pytestmark = pytest.mark.anyio
TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "BASIS_MCP_HTTP_TOKEN": TOKEN}
    stderr_path = tmp_path / "http.log"
    errf = open(stderr_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "basis_mcp", "serve", "--transport", "http", "--port", str(port), "--db", str(tmp_path / "h.db")],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(stderr_path.read_text()) from None
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        errf.close()
        started = stderr_path.read_text()
        assert f"serving MCP at http://127.0.0.1:{port}/mcp" in started and "bearer token is required" in started, started
        assert TOKEN not in started


async def test_http_requires_the_token_and_serves_tools(http_server: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    r = httpx.post(http_server, json=body)
    assert r.status_code == 401
    r = httpx.post(http_server, json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with Client(streamable_http_client(http_server, http_client=http)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "enter_trade" in names
            scan = await call(client, "scan_basis", {"symbols": ["BTC"]})
            assert scan["snapshots"][0]["symbol"] == "BTC"


async def test_a_client_without_the_token_is_told_which_header_to_send(http_server: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    r = httpx.post(http_server, json=body)
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert "Authorization: Bearer <token>" in err["message"] and "BASIS_MCP_HTTP_TOKEN" in err["message"]
    assert "OAuth" in err["message"]
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge and "resource_metadata" not in challenge
    # an OAuth-minded client probing for metadata is told the same thing, not sent to a login page
    meta = httpx.get(http_server.replace("/mcp", "/.well-known/oauth-protected-resource"))
    assert meta.status_code == 404 and "Authorization: Bearer" in meta.json()["error_description"]
    # the SDK's own client surfaces the message as the error
    with pytest.raises(Exception) as info:  # noqa: PT011 - the SDK raises its own error type
        async with Client(streamable_http_client(http_server)) as client:
            await client.list_tools()
    text = repr(info.value) + "".join(repr(e) for e in getattr(info.value, "exceptions", []))
    assert "Authorization: Bearer" in text, text


async def test_http_bodies_that_are_not_json_are_audited(http_server: str, tmp_path: Path) -> None:
    r = httpx.post(http_server, content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}",
                                                              "content-type": "application/json",
                                                              "accept": "application/json, text/event-stream"})
    assert r.status_code >= 400
    r = httpx.post(http_server, content=b"x" * 300_000, headers={"Authorization": f"Bearer {TOKEN}",
                                                                "content-type": "application/json"})
    assert r.status_code == 413
    rows = db_rows(tmp_path / "h.db", "SELECT kind, name, outcome FROM audit WHERE kind = 'transport'")
    assert [tuple(x) for x in rows] == [("transport", "(unparseable message)", "rejected"),
                                        ("transport", "(http request)", "rejected")]


async def test_requests_the_transport_refuses_are_audited_and_never_echo_a_secret(http_server: str, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    for body in ({"hello": 1}, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}],
                 {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": {"api_key": "hunter2SECRETvalue"}, "capabilities": {},
                             "clientInfo": {"name": "x", "version": "1"}}}):
        r = httpx.post(http_server, json=body, headers=headers)
        assert r.status_code >= 400 or '"error"' in r.text
        assert "hunter2SECRETvalue" not in r.text
    rows = db_rows(tmp_path / "h.db", "SELECT name, outcome, args_json, detail FROM audit WHERE kind = 'transport'")
    assert len(rows) >= 2 and all(r["outcome"] == "rejected" for r in rows)
    assert "hunter2SECRETvalue" not in "".join(str(tuple(r)) for r in rows)
