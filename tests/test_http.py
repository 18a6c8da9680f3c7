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

from tests.conftest import REPO, call

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
    proc = subprocess.Popen(
        [sys.executable, "-m", "basis_mcp", "serve", "--transport", "http", "--port", str(port), "--db", str(tmp_path / "h.db")],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()) from None
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
