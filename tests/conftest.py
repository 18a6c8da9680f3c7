"""Shared test helpers: real SQLite files, the SDK client, real subprocesses."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from basis_mcp.config import Settings
from basis_mcp.server.app import ServeOptions, build_server


def pytest_configure(config: pytest.Config) -> None:
    """With xdist: compile the backtest's numba core once, here in the controller, before the workers start.
    It is cached on disk (``cache=True``); otherwise every worker compiles it at once on a fresh checkout
    (about 20 s of CPU each)."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    from basis_mcp.backtest.params import BacktestParams
    from basis_mcp.backtest.runner import load_markets, run
    from basis_mcp.history import load_extract

    btc = load_extract(symbols=["BTC"])
    for strategy in ("cash_and_carry", "reverse_cash_and_carry"):
        for playbook in ("convergence", "carry"):
            p = BacktestParams(strategy=strategy, playbook=playbook)
            run(load_markets(btc, ["BTC"], "2024-01-01", "2024-03-01", p), p)

REPO = Path(__file__).resolve().parents[1]
START = "2024-03-01T00:00:00Z"


class ToolFailed(AssertionError):
    pass


async def call(client: Client, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call a tool; return its structured content or raise ToolFailed with the error text."""
    r = await client.call_tool(name, args or {})
    if r.is_error:
        raise ToolFailed(r.content[0].text if r.content else "(no text)")
    assert r.structured_content is not None, f"{name} returned no structured content"
    return r.structured_content


async def call_error(client: Client, name: str, args: dict[str, Any] | None = None) -> str:
    r = await client.call_tool(name, args or {})
    assert r.is_error, f"{name}({args}) unexpectedly succeeded: {r.structured_content}"
    return r.content[0].text


def stdio_params(db: Path, *extra: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "basis_mcp", "serve", "--db", str(db), *extra],
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=str(REPO),
    )


def server_pids(db: Path) -> list[int]:
    """PIDs of `basis_mcp serve` processes started by this test process for ``db``."""
    me = os.getpid()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"basis_mcp" in cmd and str(db).encode() in cmd:
            out.append(int(d.name))
    return out


def kill9(db: Path) -> None:
    pids = server_pids(db)
    assert pids, "server process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def db_rows(db: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "desk.db"


@pytest.fixture
def make_server(db: Path):
    def make(settings: Settings | None = None, start: str = START, **kw: Any):
        return build_server(ServeOptions(settings=settings or Settings(), db_path=db, start=start, **kw))

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
