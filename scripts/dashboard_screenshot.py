"""Take docs/dashboard.png: a replay book served over HTTP, two positions opened through the MCP
tools, five days replayed, the dashboard photographed by headless chromium (Playwright).

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


async def shoot(base: str, token: str, out: Path) -> None:
    from playwright.async_api import async_playwright

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
        for sym, usd in (("BTC", 5000), ("ETH", 3500)):
            r = await client.call_tool("enter_trade", {"symbol": sym, "notional_usd": usd, "idempotency_key": f"shot-{sym}"})
            assert not r.is_error, r.content
        r = await client.call_tool("advance_time", {"hours": 120})
        assert not r.is_error, r.content
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 1500})
        await page.goto(f"{base}/dashboard?token={token}")
        await page.wait_for_function("() => document.querySelectorAll('img').length > 0 && "
                                     "[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
        await page.screenshot(path=str(out), full_page=False)
        await browser.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = ap.parse_args()
    token = secrets.token_urlsafe(24)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BASIS_MCP_HTTP_TOKEN": token}
        proc = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--transport", "http", "--port", str(port),
                                 "--db", str(Path(tmp) / "book.db"), "--start", "2024-03-01"], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            anyio.run(shoot, f"http://127.0.0.1:{port}", token, args.out)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
