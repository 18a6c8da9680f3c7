"""Operator configuration may only tighten the ceilings in code; start-up fails closed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mcp import Client

from basis_mcp.config import HARD, TIGHTEN_ONLY, ConfigError, Settings, load_settings
from tests.conftest import call, call_error, db_rows

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", sorted(TIGHTEN_ONLY))
def test_every_loosening_value_is_refused_from_file_and_env(name: str, tmp_path: Path) -> None:
    ceiling, kind = TIGHTEN_ONLY[name]
    loose = ceiling * 2 if kind == "max" else ceiling / 2
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{name} = {loose}\n")
    with pytest.raises(ConfigError, match=f"{name}.*hard ceiling"):
        load_settings(cfg, env={})
    with pytest.raises(ValueError, match=name):  # the model itself refuses it too (pydantic ValidationError)
        Settings.model_validate({name: loose})


def test_tightening_is_accepted_and_env_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_leverage = 2.0\ndefault_leverage = 1.5\nmax_drawdown = 0.05\n[tier_allocation]\nanchor = 0.2\n")
    s = load_settings(cfg, env={"BASIS_MCP_MAX_LEVERAGE": "1.5", "BASIS_MCP_SYMBOL_ALLOWLIST": "btc, eth"})
    assert s.max_leverage == 1.5 and s.max_drawdown == 0.05 and s.symbol_allowlist == ["BTC", "ETH"]
    assert s.tier_allocation == {"anchor": 0.2, "mid": 0.35, "speculative": 0.15}
    with pytest.raises(ConfigError, match="tier_allocation"):
        load_settings(_write(tmp_path, "[tier_allocation]\nanchor = 0.9\n"), env={})
    with pytest.raises(ConfigError, match="unknown"):
        cfg.write_text("max_levrage = 2\n")
        load_settings(cfg, env={})
    assert HARD.max_leverage == 5.0


async def test_allowlist_restricts_entries(make_server) -> None:
    async with Client(make_server(settings=Settings(symbol_allowlist=["ETH"]))) as client:
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 2000, "idempotency_key": "a"})
        assert "allowlist" in text
        await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 2000, "idempotency_key": "b"})


async def test_a_venue_that_disagrees_with_the_ledger_fails_closed_at_start(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "a"})
    # while the server is down, the venue's books change behind the desk's back
    conn = sqlite3.connect(db)
    conn.execute("UPDATE paper_balances SET free = free - 0.01 WHERE asset = 'BTC'")
    conn.commit()
    conn.close()
    async with Client(make_server()) as client:
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "REDUCING"
        assert "ledger does not reconcile" in risk["trading_state_reason"] and "BTC spot" in risk["trading_state_reason"]
        assert any(a["rule"] == "state_reducing" for a in risk["alerts"])
        text = await call_error(client, "enter_trade", {"symbol": "ETH", "notional_usd": 2000, "idempotency_key": "b"})
        assert "REDUCING" in text
    assert db_rows(db, "SELECT COUNT(*) AS n FROM audit WHERE name = 'state_reducing'")[0]["n"] == 1


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "t.toml"
    p.write_text(text)
    return p
