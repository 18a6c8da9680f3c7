"""Cross-exchange basis with real orders, offline: the Binance simulator and the Bybit V5 simulator on
127.0.0.1 at the same simulated start, a real ``basis-mcp serve --market live --live --venue binance,bybit``
over stdio, ccxt talking to both exactly as it would to the exchanges. Bybit's funding is its own shipped
history (``funding="bybit-shipped"``), so the two venues pay different rates. Then a Bybit refusal of the
second leg (the first is unwound on Binance), and `LiveVenue` on Bybit alone, in process: the unified
account's balance, orders read back until final, lookup by ``orderLinkId``, the position's wallet without
unrealised P&L, add-margin, partial fills, a lost answer, and funding paged past Bybit's limits with its sign."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from mcp import Client

from basis_mcp.config import Settings
from basis_mcp.live.exchanges import Credentials, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.live.venue import LiveVenue
from basis_mcp.server.app import ServeOptions, build_server
from basis_mcp.sim.binance import SimServer, running_sim
from basis_mcp.sim.bybit import running_bybit_sim
from basis_mcp.sim.instruments import parse_time
from basis_mcp.venue.base import OrderRequest, VenueTimeout
from tests.conftest import call, call_error, db_rows, stdio_params

pytestmark = pytest.mark.anyio

# short keys: the server builds its secret-scrubbing pattern from every encoding of each key, which takes
# seconds per long key at start-up (basis_mcp.redact.register_secret)
BN_KEY, BN_SECRET = "bnk4c1d7", "bns93ab2"
BB_KEY, BB_SECRET = "bbk81f0a", "bbs5e6d7"
START = "2021-03-01T00:00:00Z"  # inside Bybit's shipped funding span (2021-2023)
SETTLE = parse_time("2021-03-01T08:00:00Z")
NOTIONAL = 3000


@contextlib.contextmanager
def two_sims(**bybit) -> Iterator[tuple[SimServer, SimServer]]:
    with running_sim(start=START, api_key=BN_KEY, secret=BN_SECRET) as bn, \
            running_bybit_sim(start=START, api_key=BB_KEY, secret=BB_SECRET, funding="bybit-shipped", **bybit) as bb:
        yield bn, bb


@pytest.fixture
def sims():
    with two_sims() as pair:
        yield pair


def env_of(bn, bb) -> dict[str, str]:
    return {"BASIS_MCP_VENUE_URL": f"binance={bn.url},bybit={bb.url}", "BINANCE_API_KEY": BN_KEY,
            "BINANCE_API_SECRET": BN_SECRET, "BYBIT_API_KEY": BB_KEY, "BYBIT_API_SECRET": BB_SECRET}


def serve(db: Path, bn, bb) -> Client:
    return Client(stdio_params(db, "--market", "live", "--live", "--venue", "binance,bybit", "--symbols", "BTC",
                               env=env_of(bn, bb)))


def admin(sim, path: str, body: dict | None = None) -> dict:
    r = httpx.post(sim.url + path, json=body) if body is not None else httpx.get(sim.url + path)
    r.raise_for_status()
    return r.json()


async def confirmed(client: Client, tool: str, args: dict) -> dict:
    """Live mode: the first call returns a confirmation token and sends nothing; the second sends."""
    first = await call(client, tool, args)
    assert first.get("position") is None and first["confirmation"]["token"], first
    return await call(client, tool, {**args, "confirmation_token": first["confirmation"]["token"]})


async def wait_for(pred, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.1)


async def test_cross_exchange_live_on_two_simulated_venues_end_to_end(db: Path, sims) -> None:
    bn, bb = sims
    bn_w0, bb_w0 = bn.state.total_usdt(), bb.state.total_usdt()
    async with serve(db, bn, bb) as client:
        scan = await call(client, "scan_basis", {"symbols": ["BTC"]})
        venues = {s["venue"] for s in scan["snapshots"] if s["symbol"] == "BTC"}
        assert venues == {"binance", "bybit"}, scan["snapshots"]
        btc = next(s for s in scan["snapshots"] if s["venue"] == "binance" and s["symbol"] == "BTC")
        rich, cheap = btc["cross_short_venue"], btc["cross_long_venue"]
        assert {rich, cheap} == {"binance", "bybit"}
        rates = {s["venue"]: s["funding_rate_pct"] for s in scan["snapshots"] if s["symbol"] == "BTC"}
        assert rates["binance"] != rates["bybit"]  # Bybit's own history, not a copy of Binance's
        args = {"symbol": "BTC", "notional_usd": NOTIONAL, "strategy": "cross_exchange", "short_venue": rich,
                "long_venue": cheap, "idempotency_key": "xl-1"}
        first = await call(client, "enter_trade", args)
        assert first["position"] is None and bn.state.orders == [] and bb.state.orders == []
        assert "LIVE" in first["confirmation"]["summary"]
        pos = (await call(client, "enter_trade", {**args, "confirmation_token": first["confirmation"]["token"]}))["position"]
        assert pos["status"] == "open"
        short, long_ = pos["legs"]
        assert (short["venue"], short["side"], long_["venue"], long_["side"]) == (f"live:{rich}", "short", f"live:{cheap}", "long")
        q = long_["held_quantity"]
        assert q > 0 and short["held_quantity"] == pytest.approx(-q)

        # each leg is on its own venue's books, filled, isolated
        books = {"binance": admin(bn, "/_sim/state"), "bybit": admin(bb, "/_sim/state")}
        signed = {rich: -q, cheap: q}
        for venue, book in books.items():
            positions = book["futures"]["positions"] if venue == "binance" else book["positions"]
            assert positions["BTCUSDT"]["amt"] == pytest.approx(signed[venue]), (venue, positions)
            (order,) = book["orders"]
            assert order["status" if venue == "binance" else "orderStatus"] in ("FILLED", "Filled")
        assert books["bybit"]["margin_mode"] == "ISOLATED_MARGIN"
        assert books["binance"]["futures"]["margin_type"]["BTCUSDT"] == "ISOLATED"
        assert books["binance"]["spot"].get("BTC", 0.0) == 0 and books["bybit"]["coins"] == {}  # perps only

        # both venues cross the 08:00 settlement, Bybit first: the desk reads Bybit's payment while Binance has
        # not settled yet, and must still come back for Binance's (not only at its 5-minute backstop); the
        # desk books each venue's payment on its own leg
        expected = {}
        for n, (venue, sim) in enumerate((("bybit", bb), ("binance", bn)), start=1):
            settled = admin(sim, "/_sim/time", {"t": SETTLE + 30})["funding"]
            (row,) = [r for r in settled if r["symbol"] == "BTCUSDT"]
            expected[venue] = float(row["income"])
            await wait_for(lambda n=n: db_rows(db, "SELECT COUNT(*) AS n FROM funding_payments")[0]["n"] == n, timeout=60)
        assert expected[rich] and expected[cheap]
        pays = {r["venue"]: r for r in db_rows(db, "SELECT l.venue, l.role, p.* FROM funding_payments p JOIN legs l ON l.id = p.leg_id")}
        assert set(pays) == {"live:binance", "live:bybit"}
        for venue, sim in (("binance", bn), ("bybit", bb)):
            p = pays[f"live:{venue}"]
            inst = sim.state.instruments["BTCUSDT"]
            assert p["amount_usd"] == pytest.approx(expected[venue], abs=1e-8), venue  # the venue's own sign
            assert p["ts"] == SETTLE and p["rate"] == pytest.approx(inst.funding_rate(SETTLE), abs=1e-12)
            if venue == "bybit":  # its execution row carries the settlement's size and mark
                assert p["quantity"] == pytest.approx(signed[venue], abs=1e-12)
                assert p["mark_price"] == pytest.approx(inst.mark(SETTLE), rel=1e-9)
            else:  # Binance's income row has neither: the desk uses the last mark it saw (here 8 h old: the sims jumped)
                assert p["quantity"] == pytest.approx(signed[venue], rel=0.05)
            assert p["role"] == ("short_perp" if venue == rich else "long_perp")
            assert p["symbol"] == ("BTC" if venue == "binance" else "BTC@bybit")
            # the short receives a positive rate, the long pays it
            assert p["amount_usd"] == pytest.approx(-p["quantity"] * p["mark_price"] * p["rate"], rel=1e-6)
            assert (p["amount_usd"] > 0) == (signed[venue] * p["rate"] < 0)

        out = await confirmed(client, "exit_trade", {"position_id": pos["position_id"], "idempotency_key": "xl-1-x"})
        assert out["position"]["status"] == "closed"
        assert out["realized"]["funding_usd"] == pytest.approx(sum(expected.values()), abs=0.005 * (len(expected) + 1))
        risk = await call(client, "risk_status", {})
        assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
    for book in (admin(bn, "/_sim/state")["futures"]["positions"], admin(bb, "/_sim/state")["positions"]):
        assert all(p["amt"] == 0 for p in book.values()), book
    assert len(bn.state.orders) == len(bb.state.orders) == 2

    # the money: realized = Σ fills − fees + funding per leg; each venue's wallet moved by exactly its legs' flows
    fills = db_rows(db, "SELECT l.venue, f.side, f.quantity, f.price, f.fee_usd FROM fills f JOIN legs l ON l.id = f.leg_id")
    assert len(fills) == 4
    flows = {"live:binance": 0.0, "live:bybit": 0.0}
    for f in fills:
        flows[f["venue"]] += (1 if f["side"] == "sell" else -1) * f["quantity"] * f["price"] - f["fee_usd"]
    for p in pays.values():
        flows[p["venue"]] += p["amount_usd"]
    assert out["realized"]["total_usd"] == pytest.approx(sum(flows.values()), abs=0.005)  # the tool shows cents
    assert bn.state.total_usdt() - bn_w0 == pytest.approx(flows["live:binance"], abs=1e-6)
    assert bb.state.total_usdt() - bb_w0 == pytest.approx(flows["live:bybit"], abs=1e-6)


async def test_bybit_refusing_the_second_leg_unwinds_the_first_on_binance(db: Path) -> None:
    """The short goes first: Bybit's funding is set low (−0.03 % / 8 h around the start) so Binance is the rich
    venue by any measure and its short is the first leg; Bybit then refuses the long."""
    t0 = parse_time(START)
    low = np.arange(t0 - 40 * 86_400, t0 + 10 * 86_400, 8 * 3600)
    creds = {"binance": Credentials(BN_KEY, BN_SECRET), "bybit": Credentials(BB_KEY, BB_SECRET)}
    with two_sims(funding_overrides={"BTC": (low, np.full(low.size, -0.0003))}) as (bn, bb):
        opts = ServeOptions(settings=Settings(poll_seconds=1.0), db_path=db, mode="live", venues=["binance", "bybit"],
                            universe=["BTC"], venue_url={"binance": bn.url, "bybit": bb.url}, credentials=creds)
        async with Client(build_server(opts)) as client:  # in process this time: the same desk, a faster start
            admin(bb, "/_sim/faults", {"reject_next": 1})  # the next Bybit order: "ab not enough for new order"
            args = {"symbol": "BTC", "notional_usd": NOTIONAL, "strategy": "cross_exchange", "short_venue": "binance",
                    "long_venue": "bybit", "idempotency_key": "xl-fail"}
            token = (await call(client, "enter_trade", args))["confirmation"]["token"]
            text = await call_error(client, "enter_trade", {**args, "confirmation_token": token})
            assert "bybit" in text and "InsufficientFunds" in text, text
            risk = await call(client, "risk_status", {})
            assert risk["trading_state"] == "ACTIVE", risk["trading_state_reason"]
            assert (await call(client, "portfolio_status", {}))["open_positions"] == []
        # Binance: shorted, then bought back reduce-only; Bybit: nothing on its books
        assert [(o.side, o.reduce_only) for o in bn.state.orders] == [("SELL", False), ("BUY", True)]
        assert bn.state.positions["BTCUSDT"].amt == 0
        assert bb.state.orders == [] and not any(p.amt for p in bb.state.positions.values())
    assert [r["status"] for r in db_rows(db, "SELECT status FROM positions")] == ["failed"]


# ----------------------------------------------------------------------------- LiveVenue on Bybit, in process


@contextlib.asynccontextmanager
async def bybit_venue(sim) -> AsyncIterator[LiveVenue]:
    ex = make_exchange("bybit", Credentials(BB_KEY, BB_SECRET), base_url=sim.url)
    clock = VenueClock()
    feed = LiveFeed("bybit", ex, clock, ["BTC", "ETH"])
    try:
        await feed.start()
        venue = LiveVenue("bybit", ex, feed, Settings(), clock)
        await venue.verify_credentials()
        yield venue
    finally:
        await feed.close()


async def test_live_venue_reads_the_bybit_unified_account_as_it_is() -> None:
    with running_bybit_sim(start=START, api_key=BB_KEY, secret=BB_SECRET, funding="bybit-shipped") as bb:
        st = bb.state
        async with bybit_venue(bb) as v:
            assert await v.fetch_balances() == {"USDT": pytest.approx(st.total_usdt())}  # one wallet, counted once
            await v.set_leverage("BTC", 2)
            v._configured.clear()
            await v.set_leverage("BTC", 2)  # 110043 "not modified": already so, not an error
            res = await v.place_order(OrderRequest("bb-1", "BTC", "perp", "sell", 0.05, False))
            (o,) = st.orders
            assert (res.status, res.filled_qty, res.venue_order_id) == ("filled", 0.05, admin(bb, "/_sim/state")["orders"][0]["orderId"])
            assert res.avg_price == pytest.approx(o.avg_price) and res.fee_usd == pytest.approx(o.commission)
            assert await v.fetch_order("bb-1", "BTC", "perp") == res  # by orderLinkId
            assert await v.fetch_order("never-sent", "BTC", "perp") is None
            admin(bb, "/_sim/time", {"advance_s": 3600})  # the mark moves: unrealised P&L is not margin
            pos = await v.fetch_perp_position("BTC")
            iso = st.positions["BTCUSDT"].iso_wallet
            assert (pos.quantity, pos.leverage) == (-0.05, 2) and pos.isolated_wallet_usd == pytest.approx(iso, abs=1e-8)
            v._invalidate()
            assert (await v.fetch_balances())["USDT"] + iso == pytest.approx(st.total_usdt(), abs=1e-6)
            await v.add_margin("BTC", 25)
            assert (await v.fetch_perp_position("BTC")).isolated_wallet_usd == pytest.approx(iso + 25, abs=1e-8)
            assert (await v.fetch_balances())["USDT"] + iso + 25 == pytest.approx(st.total_usdt(), abs=1e-6)

            admin(bb, "/_sim/faults", {"partial_fill_next": 1, "partial_fraction": 0.5})
            part = await v.place_order(OrderRequest("bb-2", "BTC", "perp", "sell", 0.04, False))
            assert (part.status, part.filled_qty) == ("partially_filled", 0.02)  # Bybit: PartiallyFilledCanceled
            v.ex.timeout = 500
            admin(bb, "/_sim/faults", {"timeout_after_execute_next": 1, "timeout_delay_s": 1.5})
            with pytest.raises(VenueTimeout):
                await v.place_order(OrderRequest("bb-3", "BTC", "perp", "buy", 0.01, True))
            v.ex.timeout = 10_000
            found = await v.fetch_order("bb-3", "BTC", "perp")  # executed: the desk finds it by its client id
            assert (found.status, found.filled_qty, found.side) == ("filled", 0.01, "buy")
            assert len(st.orders) == 3


async def test_bybit_funding_pages_past_100_rows_and_7_days_with_the_accounts_sign() -> None:
    """Hourly BTC funding for 9 days: 216 settlements, more than one 7-day window and more than one
    100-row page; every one comes back once, + received / − paid, on the short's quantity."""
    t0 = parse_time(START)
    times = [t0 + 3600 * k for k in range(1, 24 * 9 + 1)]
    rates = [0.0001 if k % 3 else -0.00005 for k in range(len(times))]  # the short receives, and now and then pays
    with running_bybit_sim(start=START, api_key=BB_KEY, secret=BB_SECRET, funding_intervals={"BTC": 1},
                           funding_overrides={"BTC": (times, rates)}) as bb:
        async with bybit_venue(bb) as v:
            await v.set_leverage("BTC", 2)
            await v.place_order(OrderRequest("bb-f", "BTC", "perp", "sell", 0.05, False))
            for _ in range(9):
                admin(bb, "/_sim/time", {"advance_s": 86_400})
            await v.feed.refresh()  # the desk's clock follows the venue's
            paid = {r["time"] / 1000: float(r["income"]) for r in bb.state.income if r["incomeType"] == "FUNDING_FEE"}
            assert len(paid) == 216 and any(x < 0 for x in paid.values()) and any(x > 0 for x in paid.values())
            bb.state.reset_counts()
            events = await v.funding_history(t0)
            assert [e.time for e in events] == sorted(paid) and {e.symbol for e in events} == {"BTC"}
            assert [e.amount_usd for e in events] == pytest.approx([paid[e.time] for e in events], abs=1e-9)
            assert all(e.quantity == pytest.approx(-0.05) for e in events)
            inst = bb.state.instruments["BTCUSDT"]
            assert [e.rate for e in events] == pytest.approx(rates, abs=1e-12)
            assert all(e.mark_price == pytest.approx(inst.mark(int(e.time)), rel=1e-9) for e in events)
            assert bb.state.requests["GET /v5/execution/list"] == 3  # two windows: 100 + 68 rows, then 48
            later = await v.funding_history(events[99].time)
            assert later == events[100:]
