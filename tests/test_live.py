"""Live markets end to end, offline: a local server speaking Binance's wire format
(`basis_mcp.sim.binance`, driven by the shipped real data) stands in for the exchange, and
ccxt talks to it exactly as it would to Binance."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.live.exchanges import Credentials
from basis_mcp.server.app import ServeOptions, build_server
from basis_mcp.sim.binance import running_sim
from tests.conftest import REPO, call, call_error, db_rows, kill9, stdio_params

pytestmark = pytest.mark.anyio

KEY, SECRET = "sim-key-7f3a9c2e41", "sim-secret-b8d04e6a15c2"
START = "2024-03-15T01:00:00Z"  # BTC/ETH in contango with rich funding: entries pass the return check
ENTRY = {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": "live-1"}


@pytest.fixture
def sim():
    with running_sim(start=START, api_key=KEY, secret=SECRET) as s:
        yield s


def server(db: Path, sim, mode: str, **settings) -> object:
    creds = Credentials(KEY, SECRET) if mode == "live" else None
    opts = ServeOptions(settings=Settings(poll_seconds=1.0, **settings), db_path=db, mode=mode, venue_url=sim.url,
                        credentials=creds)
    return build_server(opts)


def sim_requests(sim) -> dict[str, int]:
    return dict(sim.state.requests)


async def wait_for(pred, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.05)


# ----------------------------------------------------------------------------- market data


async def test_scan_on_the_local_binance_server_costs_two_requests(db: Path, sim, tmp_path: Path) -> None:
    cfg = tmp_path / "slow.toml"
    cfg.write_text("poll_seconds = 60\n")  # no background tick during the measurement
    async with Client(stdio_params(db, "--market", "live", "--venue", "binance", "--readonly", "--config", str(cfg),
                                   env={"BASIS_MCP_VENUE_URL": sim.url})) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "scan_basis" in names and not names & {"enter_trade", "exit_trade", "halt_trading", "advance_time"}
        await anyio.sleep(1.2)  # older than the 1 s freshness window: the scan must refresh
        before = sim_requests(sim)
        scan = await call(client, "scan_basis", {})
        after = sim_requests(sim)
    new = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    # every symbol in one go: premiumIndex (mark, rate, next settlement) + spot bookTicker
    assert new == {"GET /fapi/v1/premiumIndex": 1, "GET /api/v3/ticker/bookTicker": 1}, new
    btc = next(s for s in scan["snapshots"] if s["symbol"] == "BTC")
    st = sim.state
    inst = st.instruments["BTCUSDT"]
    bid, _, ask = inst.quote("spot", st.t)
    assert btc["spot_price"] == pytest.approx((bid + ask) / 2)
    assert btc["mark_price"] == pytest.approx(inst.mark(st.t))
    assert btc["funding_rate_source"] == "venue_predicted"
    assert btc["funding_rate_pct"] == pytest.approx(inst.funding_rate(inst.next_funding(st.t)) * 100, abs=1e-9)
    assert btc["next_funding_time"] == "2024-03-15T08:00:00Z" and btc["funding_interval_hours"] == 8
    assert btc["market_time"].startswith("2024-03-15T01:00")  # the venue's clock, not the wall clock
    assert btc["zscore"] is not None  # warmed up from the venue's klines
    assert btc["data_age_seconds"] < 5


async def test_symbol_not_listed_and_unknown_venue_are_clear_errors(db: Path, sim) -> None:
    async with Client(server(db, sim, "readonly")) as client:
        text = await call_error(client, "scan_basis", {"symbols": ["DOGE"]})
        assert "DOGE" in text and "unknown symbol on binance" in text
        text = await call_error(client, "scan_basis", {"venues": ["kraken"]})
        assert "kraken" in text and "not a venue" in text
    out = subprocess.run([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db.with_suffix(".2")), "--market", "live",
                          "--venue", "kraken"], capture_output=True, text=True, cwd=REPO, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "unknown venue 'kraken'" in out.stderr


# ----------------------------------------------------------------------------- paper on live prices


async def test_paper_trade_on_live_prices_across_a_funding_settlement(db: Path, sim) -> None:
    async with Client(server(db, sim, "paper"), mode="legacy") as client:
        entry = await call(client, "enter_trade", ENTRY)
        pos = entry["position"]
        q = pos["quantity"]
        spot_fill = pos["fills"][0]
        bid, _, ask = sim.state.instruments["BTCUSDT"].quote("spot", sim.state.t)
        assert spot_fill["price"] > ask > spot_fill["mid_price"] > bid  # paid the real ask plus impact
        assert sim.state.orders == []  # paper: nothing went to the venue
        inst = sim.state.instruments["BTCUSDT"]
        rate, mark = inst.funding_rate(inst.next_funding(sim.state.t)), inst.mark(sim.state.t)
        sim.state.set_time("2024-03-15T08:30:00Z")  # the venue's clock passes the 08:00 settlement
        await wait_for(lambda: db_rows(db, "SELECT COUNT(*) AS n FROM funding_payments")[0]["n"] == 1)
        f = db_rows(db, "SELECT * FROM funding_payments")[0]
        assert f["ts"] == 1710489600  # 08:00
        assert f["rate"] == pytest.approx(rate) and f["amount_usd"] == pytest.approx(q * mark * rate, rel=1e-9)
        out = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "live-1-x"})
        assert out["realized"]["funding_usd"] == pytest.approx(f["amount_usd"], abs=0.005)
    fills = db_rows(db, "SELECT * FROM fills")
    cash = sum((1 if x["side"] == "sell" else -1) * x["quantity"] * x["price"] for x in fills)
    assert out["realized"]["total_usd"] == pytest.approx(cash - sum(x["fee_usd"] for x in fills) + f["amount_usd"], abs=0.01)


# ----------------------------------------------------------------------------- real orders


async def test_live_trade_needs_a_confirmation_token_and_every_bad_token_sends_nothing(db: Path, sim) -> None:
    async with Client(server(db, sim, "live", confirmation_ttl_seconds=30)) as client:
        first = await call(client, "enter_trade", ENTRY)
        assert first["position"] is None and sim.state.orders == []
        conf = first["confirmation"]
        assert "LIVE on binance" in conf["summary"] and [o["market"] for o in conf["orders"]] == ["spot", "perp"]
        token = conf["token"]

        bad = [
            ({**ENTRY, "confirmation_token": "x" * 24}, "unknown token"),
            ({**ENTRY, "notional_usd": 3000, "confirmation_token": token}, "different arguments"),
            ({**ENTRY, "idempotency_key": "live-other", "confirmation_token": token}, "different arguments"),
        ]
        for args, why in bad:
            text = await call_error(client, "enter_trade", args)
            assert "confirmation_token" in text and why in text and "nothing was sent" in text
            assert token not in text
        assert sim.state.orders == []

        done = await call(client, "enter_trade", {**ENTRY, "confirmation_token": token})
        pos = done["position"]
        assert pos["status"] == "open" and len(sim.state.orders) == 2
        spot_o, perp_o = sim.state.orders
        assert spot_o.client_order_id == pos["fills"][0]["client_order_id"] and spot_o.market == "spot"
        assert perp_o.client_order_id == pos["fills"][1]["client_order_id"] and perp_o.market == "perp"
        assert sim.state.margin_type["BTCUSDT"] == "ISOLATED" and sim.state.leverage["BTCUSDT"] == 2
        assert sim.state.positions["BTCUSDT"].amt == pytest.approx(-pos["quantity"])
        # Binance takes the spot buy's fee in BTC: the desk bought a fee more, so it holds at least the hedge
        assert sim.state.spot_bal["BTC"] == pytest.approx(pos["fills"][0]["quantity"])
        assert pos["fills"][0]["quantity"] >= pos["quantity"]
        assert pos["fills"][1]["fee_usd"] > 0  # the perp fee, read from the venue's trades

        # the same call again is a retry: the first result, nothing sent
        again = await call(client, "enter_trade", {**ENTRY, "confirmation_token": token})
        assert again["replayed"] and len(sim.state.orders) == 2
        # the spent token for another trade: refused
        text = await call_error(client, "enter_trade", {**ENTRY, "symbol": "ETH", "idempotency_key": "e2", "confirmation_token": token})
        assert "already used" in text and len(sim.state.orders) == 2

        # exit: a token that expires
        x = {"position_id": pos["position_id"], "idempotency_key": "live-1-x"}
        stale = (await call(client, "exit_trade", x))["confirmation"]["token"]
        sim.state.advance(45)  # the venue's clock moves past the 30 s expiry...
        await anyio.sleep(1.5)  # ...and the desk's clock follows it on its next tick
        text = await call_error(client, "exit_trade", {**x, "confirmation_token": stale})
        assert "expired" in text and len(sim.state.orders) == 2
        fresh = (await call(client, "exit_trade", x))["confirmation"]["token"]
        out = await call(client, "exit_trade", {**x, "confirmation_token": fresh})
        assert out["position"]["status"] == "closed" and len(sim.state.orders) == 4
        assert sim.state.orders[2].reduce_only and sim.state.orders[2].market == "perp"
    assert "BTCUSDT" not in sim.state.positions or sim.state.positions["BTCUSDT"].amt == 0
    assert sim.state.spot_bal.get("BTC", 0.0) < 0.00001 + 1e-12  # at most dust below the spot lot step


async def test_operator_can_turn_confirmation_off_and_the_watchdog_never_needs_it(db: Path, sim) -> None:
    async with Client(server(db, sim, "live", live_confirmation=False)) as client:
        pos = (await call(client, "enter_trade", ENTRY))["position"]
        assert pos["status"] == "open" and len(sim.state.orders) == 2
        await call(client, "halt_trading", {"reason": "done for today"})
        # an emergency (a rally takes the mark to 0.1 % below the short's liquidation price: margin ratio
        # ~125 % < 130 %) closes at once, without any token
        d = (await call(client, "check_delta", {}))["positions"][0]
        factor = d["liquidation_price"] * 0.999 / d["mark_price"]
        inst = sim.state.instruments["BTCUSDT"]
        inst.scale = 1.0
        i = inst._i(sim.state.t)
        for series in (inst.series.perp, inst.series.mark, inst.series.spot):
            series[i:] *= factor
        await wait_for(lambda: db_rows(db, "SELECT status FROM positions")[0]["status"] == "closed", timeout=30)
        assert db_rows(db, "SELECT close_reason FROM positions")[0]["close_reason"] == "watchdog: margin_ratio_below_130"
        assert len(sim.state.orders) == 4


async def test_coins_of_the_owner_are_a_baseline_and_a_sale_outside_the_desk_is_reported(db: Path, sim) -> None:
    sim.state.spot_bal["BTC"] = 0.5  # the owner's own coins, there before the desk started
    async with Client(server(db, sim, "live", live_confirmation=False)) as client:
        pos = (await call(client, "enter_trade", ENTRY))["position"]
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
        book = await call(client, "portfolio_status", {"include_fills": True})
        # the desk's equity is its own book; the account also holds the owner's 0.5 BTC
        assert book["account_equity_usd"] - book["equity_usd"] > 0.45 * pos["entry_spot_price"]
        assert risk["drawdown_pct"] < 1.0
        sim.state.spot_bal["BTC"] -= 0.3  # someone sells coins in the account by hand
        seen: list[dict] = []

        async def alerted() -> bool:
            seen.extend((await call(client, "risk_status", {}))["alerts"])
            return any(a["rule"] == "spot_moved_outside_desk" for a in seen)

        with anyio.fail_after(40):  # balances are cached 10 s between reads of a real venue
            while not await alerted():
                await anyio.sleep(0.2)
        # the desk's own coins are still there (0.2 + its 0.04): a warning, not a broken ledger
        assert (await call(client, "risk_status", {}))["trading_state"] == "ACTIVE"


async def test_rate_limit_is_retried_and_a_5xx_order_is_looked_up_not_resent(db: Path, sim) -> None:
    async with Client(server(db, sim, "live", live_confirmation=False, venue_timeout_ms=2000)) as client:
        sim.state.faults.rate_limit_next = 1  # the spot order gets a 429 first
        pos = (await call(client, "enter_trade", ENTRY))["position"]
        assert pos["status"] == "open" and len(sim.state.orders) == 2
        sim.state.faults.timeout_after_execute_next = 1  # the perp buy-back executes, the answer never comes
        sim.state.faults.timeout_delay_s = 3.0  # longer than the 2 s request timeout
        out = await call(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "x"})
        assert out["position"]["status"] == "closed"
    assert len(sim.state.orders) == 4  # looked up by client order id, never sent twice


# ----------------------------------------------------------------------------- crash in live mode


@pytest.mark.parametrize("step", ["entry.leg1_filled", "entry.all_filled"])
async def test_kill9_between_legs_in_live_mode_recovers_from_the_venue(db: Path, sim, tmp_path: Path, step: str) -> None:
    env = {"BASIS_MCP_VENUE_URL": sim.url, "BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": SECRET,
           "BASIS_MCP_FAULTS": json.dumps({"pause_at": step, "pause_dir": str(tmp_path)})}
    args = ("--market", "live", "--live")
    client = Client(stdio_params(db, *args, env=env))
    await client.__aenter__()
    try:
        token = (await call(client, "enter_trade", ENTRY))["confirmation"]["token"]
        async with anyio.create_task_group() as tg:

            async def fire() -> None:
                with contextlib.suppress(Exception):
                    await client.call_tool("enter_trade", {**ENTRY, "confirmation_token": token})

            tg.start_soon(fire)
            await wait_for(lambda: (tmp_path / f"paused-{step}").exists(), 30)
            kill9(db)
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(BaseException):
            await client.__aexit__(None, None, None)
    sent_before_restart = len(sim.state.orders)
    env.pop("BASIS_MCP_FAULTS")
    async with Client(stdio_params(db, *args, env=env)) as client:
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
        assert any(a["rule"] == "recovered" for a in risk["alerts"])
        book = await call(client, "portfolio_status", {"include_closed": 3, "include_fills": True})
    p = db_rows(db, "SELECT * FROM positions")[0]
    venue_perp = sim.state.positions.get("BTCUSDT")
    venue_perp_amt = venue_perp.amt if venue_perp else 0.0
    if step == "entry.leg1_filled":  # spot bought, perp never sent: the spot leg was sold back
        assert sent_before_restart == 1 and p["status"] == "failed"
        assert venue_perp_amt == 0 and sim.state.spot_bal.get("BTC", 0.0) < 0.00001 + 1e-12
        assert [o.side for o in sim.state.orders] == ["BUY", "SELL"]
    else:  # both legs filled before the crash: the entry was completed, nothing resent
        assert sent_before_restart == 2 and p["status"] == "open" and book["open_positions"]
        assert venue_perp_amt == pytest.approx(-p["quantity"]) and len(sim.state.orders) == 2
    # every venue order is in the desk's ledger with its fill
    coids = {r["client_order_id"]: r for r in db_rows(db, "SELECT o.client_order_id, f.quantity FROM orders o JOIN fills f ON f.order_id = o.id")}
    assert {o.client_order_id for o in sim.state.orders} == set(coids)


# ----------------------------------------------------------------------------- keys


def _serve(db: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **env})


async def test_live_without_keys_or_with_rejected_keys_refuses_to_start_and_sends_nothing(db: Path, sim) -> None:
    base = {"BASIS_MCP_VENUE_URL": sim.url}
    out = _serve(db, base, "--market", "live", "--live")
    assert out.returncode == 2 and "needs API keys" in out.stderr and "BINANCE_API_KEY" in out.stderr
    out = _serve(db, {**base, "BINANCE_API_KEY": "wrong-key-1234", "BINANCE_API_SECRET": SECRET}, "--market", "live", "--live")
    assert out.returncode == 2 and "rejected the API credentials" in out.stderr
    assert "wrong-key-1234" not in out.stderr + out.stdout and SECRET not in out.stderr + out.stdout
    out = _serve(db, {**base, "BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": "wrong-secret-5678"}, "--market", "live", "--live")
    assert out.returncode == 2 and "rejected the API credentials" in out.stderr and "wrong-secret-5678" not in out.stderr
    assert sim.state.orders == []
    out = _serve(db, base, "--live")
    assert out.returncode == 2 and "--market live" in out.stderr


async def test_keys_never_appear_in_outputs_errors_logs_or_the_audit_log(db: Path, sim, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"BASIS_MCP_VENUE_URL": sim.url, "BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": SECRET}
    seen: list[str] = []
    with open(log, "w") as errlog:
        from mcp.client.stdio import stdio_client

        params = stdio_params(db, "--market", "live", "--live", env=env)
        async with Client(stdio_client(params, errlog=errlog)) as client:
            for name, args in [
                ("scan_basis", {}), ("risk_status", {}), ("enter_trade", ENTRY),
                ("enter_trade", {**ENTRY, "api_key": KEY, "secret": SECRET}),  # an agent pasting keys: refused
                ("enter_trade", {**ENTRY, "confirmation_token": "not-a-real-token"}),
                ("portfolio_status", {"include_fills": True}), ("estimate_net_apy", {"symbol": "BTC", "notional_usd": 3000, "hold_days": 5}),
            ]:
                r = await client.call_tool(name, args)
                seen.append(json.dumps(r.model_dump(mode="json")))
            sim.state.faults.http_5xx_next = 50  # and errors from the venue
            r = await client.call_tool("scan_basis", {})
            seen.append(json.dumps(r.model_dump(mode="json")))
            sim.state.faults.http_5xx_next = 0
    export = subprocess.run([sys.executable, "-m", "basis_mcp", "audit", "export", "--db", str(db)], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    blobs = {
        "tool outputs and errors": "\n".join(seen),
        "server stderr log": log.read_text(),
        "audit export": export.stdout,
        "database file": b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*")).decode("latin-1"),
    }
    assert len(blobs["tool outputs and errors"]) > 1000 and export.stdout.count("\n") > 5
    for where, text in blobs.items():
        assert KEY not in text, f"API key leaked into the {where}"
        assert SECRET not in text, f"API secret leaked into the {where}"


async def test_live_mode_reads_the_venues_borrow_rates_and_keeps_every_one_it_reads(db: Path, sim) -> None:
    """Binance serves cross-margin borrow rates only to signed requests: with keys the desk reads them through
    ccxt (fetch_cross_borrow_rate, /sapi/v1/margin/interestRateHistory) at start and hourly, uses them instead of
    the model, and keeps each in borrow_rates with its source, so a real history accumulates in the book."""
    sim.state.lend_rates = {"BTC": 0.0001, "ETH": 0.0002}
    async with Client(server(db, sim, "live"), mode="legacy") as client:
        await call(client, "risk_status", {})
    rows = {r["asset"]: r for r in db_rows(db, "SELECT * FROM borrow_rates")}
    assert set(rows) == {"BTC", "ETH"} and {r["source"] for r in rows.values()} == {"binance:cross_margin"}
    assert rows["BTC"]["rate"] == pytest.approx(0.0001 * 365 / 8760, rel=1e-9)  # per hour, from the daily rate
    assert rows["ETH"]["rate"] == pytest.approx(0.0002 * 365 / 8760, rel=1e-9)
    assert sim_requests(sim).get("GET /sapi/v1/margin/interestRateHistory", 0) == 2
    # the desk's borrow rate is the venue's now, labelled with its source (the model only without a fresh read)
    from basis_mcp.desk import Desk

    desk = await Desk.open_live(Settings(poll_seconds=1.0), db.with_name("b2.db"), ["binance"], "live", Credentials(KEY, SECRET),
                                base_url=sim.url)
    try:
        await desk.start()
        apr, source = desk.market.borrow_apr_pct("BTC")
        assert source == "binance:cross_margin" and apr == pytest.approx(0.0001 * 365 * 100)
        desk.feed.borrow["BTC"] = (apr, (desk.market.now() - 3 * 3600) * 1000.0)  # three hours old: stale
        assert desk.market.borrow_apr_pct("BTC")[1] == "modelled:calm"
    finally:
        await desk.aclose()


async def test_without_keys_no_borrow_rate_is_read_and_the_model_is_labelled(db: Path, sim) -> None:
    async with Client(server(db, sim, "paper"), mode="legacy") as client:
        est = await call(client, "estimate_net_apy", {"symbol": "BTC", "notional_usd": 4000, "hold_days": 7,
                                                      "strategy": "reverse_cash_and_carry"})
        assert est["borrow_rate_source"] == "modelled:calm"
    assert db_rows(db, "SELECT COUNT(*) AS n FROM borrow_rates")[0]["n"] == 0
    assert sim_requests(sim).get("GET /sapi/v1/margin/interestRateHistory", 0) == 0
