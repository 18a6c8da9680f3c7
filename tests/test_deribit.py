"""Deribit through ccxt, offline: the local Deribit simulator lists the inverse BTC / ETH perpetuals and quarterlies,
the live feed quotes the quarterlies (their basis over the index is what the calendar signal reads), and
`LiveVenue` refuses every order there with nothing sent (inverse contracts, a USD-linear ledger).

Expected prices come from the paper desk's own model (`basis_mcp.feed.ReplayFeed` over the shipped data), the
calendar from `basis_mcp.dated`, contract sizes from Deribit's published specifications (10 USD a BTC contract,
1 USD an ETH one): not from the simulator.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import ccxt.async_support as ccxt
import httpx
import numpy as np
import pytest

from basis_mcp.clock import SimClock
from basis_mcp.config import Settings
from basis_mcp.dated import contract_code, listed_expiries
from basis_mcp.feed import MarketDataUnavailable, ReplayFeed
from basis_mcp.history import load_extract
from basis_mcp.live.exchanges import SUPPORTED, make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.live.venue import LiveVenue
from basis_mcp.sim.binance import running_sim
from basis_mcp.sim.deribit import running_deribit_sim
from basis_mcp.sim.instruments import parse_time
from basis_mcp.venue.base import OrderRequest, VenueError

pytestmark = pytest.mark.anyio

START = "2024-03-15T00:00:00Z"
T0 = parse_time(START)
E1, E2 = (int(e) for e in listed_expiries(T0))  # 2024-03-29 08:00 and 2024-06-28 08:00 UTC
E3 = int(listed_expiries(E1)[1])  # 2024-09-27 08:00: listed once E1 has delivered
BTC1, BTC2, BTC3 = (contract_code("BTC", e) for e in (E1, E2, E3))  # BTC-240329, BTC-240628, BTC-240927
ETH1, ETH2 = (contract_code("ETH", e) for e in (E1, E2))
SYM1, SYM2 = "BTC/USD:BTC-240329", "BTC/USD:BTC-240628"  # ccxt: quoted in USD, settled in BTC
PERP = "BTC/USD:BTC"
CONTRACT_USD = {"BTC": 10.0, "ETH": 1.0}  # Deribit's contract sizes
DATA = load_extract()


def paper(t: float) -> ReplayFeed:
    return ReplayFeed(DATA, SimClock(t))


def data_rate(T: int) -> float:
    """The shipped 8-hour funding rate settling at ``T``."""
    h = DATA["BTC"]
    return float(h.funding_rate[np.searchsorted(h.funding_time, T)])


@pytest.fixture
def sim():
    with running_deribit_sim(start=START) as s:
        yield s


@contextlib.asynccontextmanager
async def client(sim) -> AsyncIterator:
    ex = make_exchange("deribit", base_url=sim.url)
    ex.enableRateLimit = False
    try:
        yield ex
    finally:
        await ex.close()


@contextlib.asynccontextmanager
async def started_feed(sim, universe: tuple[str, ...] = ("BTC", "ETH", "SOL")) -> AsyncIterator[LiveFeed]:
    async with client(sim) as ex:
        feed = LiveFeed("deribit", ex, VenueClock(), list(universe))
        await feed.start()
        yield feed


def admin_time(sim, t: int) -> None:
    httpx.post(sim.url + "/_sim/time", json={"t": t}).raise_for_status()


# --------------------------------------------------------------------------- ccxt against the simulator


async def test_instruments_are_inverse_quarterlies_with_deribits_contract_sizes(sim):
    assert "deribit" in SUPPORTED
    async with client(sim) as ex:
        markets = await ex.load_markets()
        assert set(markets) == {PERP, SYM1, SYM2, "ETH/USD:ETH", "ETH/USD:ETH-240329", "ETH/USD:ETH-240628"}
        for base in ("BTC", "ETH"):
            perp = markets[f"{base}/USD:{base}"]
            assert (perp["id"], perp["type"], perp["swap"], perp["inverse"], perp["linear"]) == (
                f"{base}-PERPETUAL", "swap", True, True, False)
            assert perp["info"]["settlement_period"] == "perpetual" and perp["contractSize"] == CONTRACT_USD[base]
            for expiry, name in ((E1, "29MAR24"), (E2, "28JUN24")):
                m = markets[f"{base}/USD:{base}-{datetime.fromtimestamp(expiry, UTC):%y%m%d}"]
                assert (m["id"], m["type"], m["future"], m["inverse"], m["linear"]) == (f"{base}-{name}", "future", True, True, False)
                assert (m["quote"], m["settle"], m["contractSize"], m["active"]) == ("USD", base, CONTRACT_USD[base], True)
                assert m["expiry"] == expiry * 1000 == m["info"]["expiration_timestamp"]
                assert datetime.fromtimestamp(expiry, UTC).strftime("%a %H:%M") == "Fri 08:00"  # last Friday, 08:00 UTC
                assert (m["info"]["kind"], m["info"]["settlement_period"], m["info"]["instrument_type"]) == (
                    "future", "month", "reversed")
                assert m["limits"]["amount"]["min"] == CONTRACT_USD[base]  # amounts in USD
        async with httpx.AsyncClient(base_url=sim.url) as http:
            eth = (await http.get("/api/v2/public/get_instruments", params={"currency": "ETH", "kind": "future"})).json()
            assert [r["instrument_name"] for r in eth["result"]] == ["ETH-PERPETUAL", "ETH-29MAR24", "ETH-28JUN24"]
            assert eth["jsonrpc"] == "2.0" and eth["usOut"] == T0 * 1_000_000  # the venue's (simulated) time
            options = (await http.get("/api/v2/public/get_instruments", params={"currency": "BTC", "kind": "option"})).json()
            assert options["result"] == []
        assert await ex.fetch_time() == T0 * 1000


async def test_ticker_mark_and_index_are_the_paper_desks_model(sim):
    want1, want2 = paper(T0).dated_snapshot(BTC1), paper(T0).dated_snapshot(BTC2)
    perp = paper(T0).snapshot("BTC")
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as http:
        await ex.load_markets()
        for sym, want in ((SYM1, want1), (SYM2, want2)):
            t = await ex.fetch_ticker(sym)
            assert t["markPrice"] == pytest.approx(want.perp, rel=1e-10) and t["last"] == pytest.approx(want.perp, rel=1e-10)
            assert t["indexPrice"] == pytest.approx(want.spot, rel=1e-10)
            assert t["bid"] < t["markPrice"] < t["ask"] and t["timestamp"] == T0 * 1000
            assert "current_funding" not in t["info"]  # a delivery contract pays no funding
        assert want2.perp > want1.perp > want1.spot  # contango: the longer contract carries more

        t = await ex.fetch_ticker(PERP)
        assert t["markPrice"] == pytest.approx(perp.mark, rel=1e-10) and t["last"] == pytest.approx(perp.perp, rel=1e-10)
        assert t["info"]["current_funding"] == pytest.approx(data_rate(T0 + 8 * 3600), rel=1e-12)

        summary = await ex.fetch_tickers(params={"code": "BTC", "kind": "future"})
        assert set(summary) == {PERP, SYM1, SYM2}
        assert summary[SYM1]["markPrice"] == pytest.approx(want1.perp, rel=1e-10)
        assert summary[SYM1]["info"]["estimated_delivery_price"] == pytest.approx(want1.spot, rel=1e-10)
        index = (await http.get("/api/v2/public/get_index_price", params={"index_name": "btc_usd"})).json()["result"]
        assert index["index_price"] == pytest.approx(want1.spot, rel=1e-10)


async def test_unknown_instrument_answers_deribits_error_envelope(sim):
    async with client(sim) as ex, httpx.AsyncClient(base_url=sim.url) as http:
        await ex.load_markets()
        with pytest.raises(ccxt.BadRequest, match="instrument not found"):
            await ex.public_get_ticker({"instrument_name": "BTC-27DEC24"})  # not listed (yet)
        r = await http.get("/api/v2/public/ticker", params={"instrument_name": "BTC-1JAN99"})
        body = r.json()
        assert r.status_code == 400 and body["jsonrpc"] == "2.0" and "result" not in body
        assert body["error"] == {"message": "Invalid params", "code": -32602,
                                 "data": {"reason": "instrument not found", "param": "instrument_name"}}
        bad = (await http.get("/api/v2/public/get_book_summary_by_currency", params={"currency": "NOPE"})).json()
        assert bad["error"]["data"]["reason"] == "invalid currency"
        nope = await http.get("/api/v2/public/nope")
        assert nope.status_code == 400 and nope.json()["error"] == {"message": "Method not found", "code": -32601}


# --------------------------------------------------------------------------- the live feed


async def test_live_feed_quotes_deribits_quarterlies_over_the_index(sim):
    async with started_feed(sim) as feed:
        assert feed.listed == ["BTC", "ETH"]  # the inverse perpetuals' coins: no SOL
        assert feed.dated_contracts == [BTC1, BTC2, ETH1, ETH2]
        assert feed.dated[BTC1] == SYM1 == feed.future_symbol(BTC1) and feed.perp_symbol("BTC") == PERP
        assert feed.spot_source == "index"

        for code in (BTC1, BTC2, ETH1):
            want = paper(T0).dated_snapshot(code)
            snap = feed.dated_snapshot(code)
            assert snap.symbol == code and snap.venue == "deribit" and snap.now == pytest.approx(T0, abs=5)
            assert snap.perp == snap.mark == pytest.approx(want.perp, rel=1e-10)
            assert snap.spot == pytest.approx(want.spot, rel=1e-10)  # the index: the data's spot
            assert snap.basis_pct == pytest.approx(want.basis_pct, rel=1e-9)  # what the calendar signal reads
            assert (snap.funding_rate, snap.funding_rate_source, snap.last_settled_rate) == (0.0, "none (dated future)", None)
            assert (snap.spot_bid, snap.spot_ask) == (None, None)  # an index is not a touch
            assert snap.perp_bid < snap.perp < snap.perp_ask
        assert feed.snapshot(BTC1, T0) == feed.dated_snapshot(BTC1, T0)

        perp, want = feed.snapshot("BTC"), paper(T0).snapshot("BTC")
        assert perp.mark == pytest.approx(want.mark, rel=1e-10) and perp.perp == pytest.approx(want.perp, rel=1e-10)
        assert perp.funding_rate == pytest.approx(data_rate(T0 + 8 * 3600), rel=1e-12)
        assert (perp.funding_interval_hours, perp.next_funding_time) == (8.0, T0 + 8 * 3600)

        sim.state.reset_counts()
        await feed.refresh()
        assert dict(sim.state.requests) == {"GET /api/v2/public/get_book_summary_by_currency": 2}  # one a coin


async def test_live_feed_reloads_the_markets_when_a_quarterly_expires(sim):
    async with started_feed(sim, ("BTC",)) as feed:
        admin_time(sim, E1 + 3600)
        sim.state.reset_counts()
        await feed.refresh()
        assert feed.dated_contracts == [BTC2, BTC3]
        assert sim.state.requests["GET /api/v2/public/get_instruments"] == 1  # one reload
        with pytest.raises(MarketDataUnavailable, match="expired"):
            feed.dated_snapshot(BTC1)
        assert feed.dated_snapshot(BTC3).perp == pytest.approx(paper(E1 + 3600).dated_snapshot(BTC3).perp, rel=1e-10)


async def test_book_slippage_reads_deribits_usd_amounts_as_coins(sim):
    """Deribit's inverse books count USD: walked in coins they cost what the same book costs on Binance."""
    async with started_feed(sim, ("BTC",)) as feed:
        deribit = await feed.book_slippage("BTC", "perp", 200_000)
    with running_sim(start=START) as binance:
        ex = make_exchange("binance", base_url=binance.url)
        ex.enableRateLimit = False
        try:
            bfeed = LiveFeed("binance", ex, VenueClock(), ["BTC"])
            await bfeed.start()
            want = await bfeed.book_slippage("BTC", "perp", 200_000)
        finally:
            await ex.close()
    assert deribit is not None and want is not None
    assert deribit == pytest.approx(want, rel=2e-3)


# --------------------------------------------------------------------------- no trading


async def test_live_venue_on_deribit_refuses_every_order_with_nothing_sent(sim):
    async with started_feed(sim) as feed:
        venue = LiveVenue("deribit", feed.ex, feed, Settings(), feed.clock)
        sim.state.reset_counts()
        orders = [OrderRequest("bm-1-fu-1", BTC1, "future", "sell", 0.01, False),
                  OrderRequest("bm-1-pe-1", "BTC", "perp", "buy", 0.01, False),
                  OrderRequest("bm-1-sp-1", "ETH", "spot", "buy", 0.1, False)]
        for req in orders:
            with pytest.raises(VenueError) as e:
                await venue.place_order(req)
            assert e.value.code == "bad_market"
            assert "inverse" in str(e.value) and "USD-linear" in str(e.value) and "nothing was sent" in str(e.value)
        for call in (venue.set_leverage(BTC1, 2), venue.set_leverage("BTC", 2), venue.add_margin(BTC1, 100.0, "future"),
                     venue.verify_credentials()):
            with pytest.raises(VenueError, match="market data only") as e:
                await call
            assert e.value.code == "bad_market"
        assert await venue.fetch_balances() == {} and await venue.fetch_position("future", BTC1) is None
        assert await venue.held_instruments("future") == [] and await venue.fetch_perp_position("BTC") is None
        assert await venue.funding_history(T0 - 86_400) == [] and await venue.liquidations(T0 - 86_400, [BTC1]) == []
        assert await venue.fetch_order("bm-1-fu-1", BTC1, "future") is None
        assert dict(sim.state.requests) == {} and sim.state.unknown_paths == []  # nothing reached the venue
        assert feed.dated_snapshot(BTC1).perp > 0  # market data still flows


async def test_a_paper_desk_on_deribit_prices_books_nothing_there(sim, tmp_path):
    """Paper trading on Deribit's prices: the contracts are inverse, so no leg is booked there as if it were
    linear; the refusal says why and nothing is written."""
    from basis_mcp.desk.facade import Desk
    from basis_mcp.errors import Rejected

    desk = await Desk.open_live(Settings(), tmp_path / "d.db", ["deribit"], "paper", base_url=sim.url, universe=["BTC"])
    try:
        code = contract_code("BTC", int(listed_expiries(T0)[1]))
        assert code in desk.feed.dated  # the prices are there to read
        with pytest.raises(Rejected, match="inverse .coin-margined.*nothing was sent"):
            await desk.enter("BTC", 3000, None, "k1", "calendar_spread", expected_hold_days=30, contract=code)
        with pytest.raises(Rejected, match="does not trade"):
            await desk.enter("BTC", 3000, None, "k2", "cash_and_carry")
        assert not desk.store.q("SELECT id FROM orders") and not desk.store.q("SELECT id FROM fills")
    finally:
        await desk.aclose()
