"""Every tool refuses bad input with a ToolError naming the field, the value and the rule,
and a refused call leaves nothing half-done in the database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.desk import Desk
from basis_mcp.errors import Rejected
from tests.conftest import REPO, call, call_error, db_rows

pytestmark = pytest.mark.anyio


def trading_rows(db: Path) -> tuple[int, int, int, int]:
    return tuple(  # type: ignore[return-value]
        db_rows(db, f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in ("positions", "orders", "fills", "idempotency")
    )


@pytest.mark.parametrize(
    ("tool", "args", "must_mention"),
    [
        ("scan_basis", {"symbols": ["DOGEX"]}, ["symbols", "DOGEX", "unknown symbol", "BTC"]),
        ("compute_zscore", {"symbol": "XRP"}, ["symbol", "XRP", "unknown symbol"]),
        ("compute_zscore", {"symbol": "BTC", "window": 5}, ["window", "5", "greater than or equal to 30"]),
        ("estimate_net_apy", {"symbol": "BTC", "notional_usd": -5, "hold_days": 7}, ["notional_usd", "-5", "greater than 0"]),
        ("estimate_net_apy", {"symbol": "BTC", "notional_usd": 5000, "hold_days": 0}, ["hold_days", "0", "greater than or equal to 0.04"]),
        ("estimate_net_apy", {"symbol": "BTC", "notional_usd": "inf", "hold_days": 7}, ["notional_usd", '"inf"', "JSON number"]),
        ("size_position", {"symbol": "BTC", "leverage": 4}, ["leverage", "4", "cap of 3x"]),
        ("enter_trade", {"symbol": "NOPE", "notional_usd": 1000, "idempotency_key": "a"}, ["symbol", "NOPE", "unknown symbol"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 0, "idempotency_key": "a"}, ["notional_usd", "0", "greater than 0"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": -100, "idempotency_key": "a"}, ["notional_usd", "-100"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": "nan", "idempotency_key": "a"}, ["notional_usd", '"nan"', "JSON number"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": float("inf"), "idempotency_key": "a"}, ["notional_usd"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": float("nan"), "idempotency_key": "a"}, ["notional_usd"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 1e12, "idempotency_key": "a"}, ["notional_usd", "max_position_notional", "5,000"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "a", "leverage": 4}, ["leverage", "4", "cap of 3x"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "a", "leverage": 50}, ["leverage", "50", "hard ceiling of 5x"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "a", "max_leverage": 10}, ["unknown argument 'max_leverage'", "operator"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 1000}, ["missing required argument 'idempotency_key'"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "has space"}, ["idempotency_key", "pattern"]),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 10, "idempotency_key": "a"}, ["notional_usd", "10", "venue minimum"]),
        ("exit_trade", {"position_id": 99, "idempotency_key": "x"}, ["position_id", "99", "no such position"]),
        ("exit_trade", {"position_id": -1, "idempotency_key": "x"}, ["position_id", "-1"]),
        ("check_delta", {"position_id": 7}, ["position_id", "7", "no such position"]),
        ("seconds_to_funding", {"symbol": ""}, ["symbol", "at least 1 character"]),
        ("advance_time", {"hours": -3}, ["hours", "-3", "greater than 0"]),
        ("advance_time", {"hours": 0}, ["hours", "0", "greater than 0"]),
        ("advance_time", {"hours": 2000}, ["hours", "2000", "replay data ends at 2026-05-16T11:00:00Z"]),
        ("portfolio_status", {"include_closed": "many"}, ["include_closed", "many", "integer"]),
    ],
)
async def test_rejections_name_field_value_and_rule(make_server, db: Path, tool: str, args: dict, must_mention: list[str]) -> None:
    start = "2026-04-01" if tool == "advance_time" else "2024-03-01"
    async with Client(make_server(start=start)) as client:
        before = trading_rows(db)
        text = await call_error(client, tool, args)
        after = trading_rows(db)
    for word in must_mention:
        assert word in text, f"{word!r} not in {text!r}"
    assert "Traceback" not in text
    assert before == after, "a rejected call left rows behind"
    audit = db_rows(db, "SELECT outcome, detail FROM audit WHERE kind = 'tool' AND name = ? ORDER BY id DESC LIMIT 1", (tool,))
    assert audit and audit[0]["outcome"] in ("rejected", "error")


async def test_exit_of_a_closed_position_is_refused(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        pos = (await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 1000, "idempotency_key": "c1"}))["position"]
        await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "c1-x"})
        n = trading_rows(db)
        text = await call_error(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "c1-x2"})
        assert "position_id" in text and "closed" in text
        assert trading_rows(db) == n
        # the original exit key still answers with the first result
        again = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "c1-x"})
        assert again["replayed"]


async def test_idempotency_key_reused_for_other_arguments_is_refused(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "k"})
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "k"})
        assert "idempotency_key" in text and "different request" in text
        assert db_rows(db, "SELECT COUNT(*) AS n FROM positions")[0]["n"] == 1


async def test_second_position_in_same_symbol_is_refused(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "k1"})
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "k2"})
        assert "already open" in text


def test_start_time_outside_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Rejected, match="start.*outside the data"):
        Desk.open_replay(Settings(), tmp_path / "x.db", start="2030-01-01")
    proc = subprocess.run(
        [sys.executable, "-m", "basis_mcp", "serve", "--db", str(tmp_path / "y.db"), "--start", "2015-01-01"],
        capture_output=True, text=True, cwd=REPO, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "outside the data" in proc.stderr and "Traceback" not in proc.stderr


def test_invalid_operator_config_stops_the_server(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_leverage = 10\n")
    proc = subprocess.run(
        [sys.executable, "-m", "basis_mcp", "serve", "--db", str(tmp_path / "z.db"), "--config", str(cfg)],
        capture_output=True, text=True, cwd=REPO, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "max_leverage" in proc.stderr and "hard ceiling" in proc.stderr
