"""The command line a new user meets (issue 13, item 4): help text and metavars on every flag, the
trading state in `status`, backtest output in a documented place, a ready client entry with absolute
paths that really starts the server, and a stdio server that says it is waiting for a client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from basis_mcp.cli import main
from tests.conftest import REPO, call

pytestmark = pytest.mark.anyio

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "basis_mcp", *args], capture_output=True, text=True, cwd=REPO,
                          env={**ENV, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("command", ["serve", "backtest", "status", "halt", "resume", "dashboard", "client-config",
                                     "data download", "audit verify"])
def test_every_flag_has_help_and_a_readable_metavar(command: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert not re.search(r"\bP_[A-Z_]+\b", text), "a flag shows its internal dest as metavar"
    flags = re.findall(r"^  (--[a-z0-9-]+)(?: ([A-Z][A-Z0-9_,\[\].=-]*|\{[^}]*\}))?\n?\s*(.*)$", text, flags=re.M)
    assert flags, text
    for flag, _, help_text in flags:
        block = text.split(flag, 1)[1].split("\n  -", 1)[0]
        assert len(block.strip().split()) > 1 or help_text.strip(), f"{command} {flag} has no help text"


async def test_status_shows_the_trading_state_and_why(db: Path, make_server):
    async with Client(make_server()) as client:  # a book with a market time
        await call(client, "seconds_to_funding", {"symbol": "BTC"})
    out = cli("status", "--db", str(db))
    assert out.returncode == 0 and "trading    ACTIVE (entries allowed)" in out.stdout, out.stdout + out.stderr
    assert cli("halt", "--db", str(db), "--reason", "lunch break").returncode == 0
    out = cli("status", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "trading    HALTED: lunch break" in out.stdout, out.stdout


async def test_the_client_config_entry_starts_the_server_as_pasted(tmp_path: Path):
    db = tmp_path / "client.db"
    out = cli("client-config", "--db", str(db), "--", "--start", "2025-06-01")
    assert out.returncode == 0, out.stderr
    entry = json.loads(out.stdout)["mcpServers"]["basis-mcp"]
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    assert str(db) in entry["args"] and entry["args"][-2:] == ["--start", "2025-06-01"]
    # as a client would run it: from another directory, with nothing but the entry
    params = StdioServerParameters(command=entry["command"], args=entry["args"], cwd=str(tmp_path))
    async with Client(params) as client:
        snap = await call(client, "seconds_to_funding", {"symbol": "BTC"})
        assert snap["next_funding_time"].startswith("2025-06-01T08")


def test_client_config_for_http_carries_the_token_header(tmp_path: Path):
    out = cli("client-config", "--client", "claude-code", "--transport", "http", "--port", "9999")
    assert out.returncode == 0, out.stderr
    assert "claude mcp add --transport http basis-mcp http://127.0.0.1:9999/mcp" in out.stdout
    assert '--header "Authorization: Bearer $BASIS_MCP_HTTP_TOKEN"' in out.stdout  # the shell fills it in, unseen
    assert '"Authorization": "Bearer ${BASIS_MCP_HTTP_TOKEN}"' in out.stdout  # .mcp.json: Claude Code expands it
    v6 = cli("client-config", "--client", "inspector", "--transport", "http", "--host", "::1")
    assert "http://[::1]:8765/mcp" in v6.stdout and "<the value of $BASIS_MCP_HTTP_TOKEN>" in v6.stdout
    token = "Tk-" + "x1y2z3w4v5u6t7s8"
    shown = cli("client-config", "--client", "inspector", "--transport", "http", "--show-token",
                env={"BASIS_MCP_HTTP_TOKEN": token})
    assert shown.returncode == 0 and f"Bearer {token}" in shown.stdout and "contains the HTTP token" in shown.stderr
    refused = cli("client-config", "--transport", "http", "--show-token", env={"BASIS_MCP_HTTP_TOKEN": ""})
    assert refused.returncode == 2 and "is not set" in refused.stderr


def test_client_config_names_the_book_the_serve_flags_pick(tmp_path):
    live = json.loads(cli("client-config", "--", "--market", "live", "--live", "--venue", "bybit").stdout)
    args = live["mcpServers"]["basis-mcp"]["args"]
    assert args[args.index("--db") + 1].endswith("basis-mcp-live-bybit.db") and args[-1] == "bybit"
    own = json.loads(cli("client-config", "--", "--db", str(tmp_path / "mine.db")).stdout)["mcpServers"]["basis-mcp"]["args"]
    assert own.count("--db") == 1 and own[-1] == str(tmp_path / "mine.db")


def test_backtest_output_goes_to_the_documented_place(tmp_path: Path):
    where = tmp_path / "results"
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    out = subprocess.run([sys.executable, "-m", "basis_mcp", "backtest", "--symbols", "BTC", "--start", "2024-01-01",
                          "--end", "2024-02-01", "--no-chart"], capture_output=True, text=True, cwd=run_dir,
                         env={**ENV, "BASIS_MCP_BACKTEST_DIR": str(where)}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not list(run_dir.iterdir()), "the backtest wrote into the current directory"
    written = list(where.glob("backtest_BTC_*.json"))
    assert written and f"json: {written[0]}" in out.stdout


def test_the_stdio_server_says_it_is_waiting_for_a_client(tmp_path: Path):
    p = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--db", str(tmp_path / "w.db")], cwd=REPO, env=ENV,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in p.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "waiting for an MCP client" in line:
                break
        assert any("waiting for an MCP client on stdin/stdout" in x for x in lines), lines
    finally:
        p.stdin.close()  # type: ignore[union-attr]
        p.wait(timeout=30)
