"""LiveFeed on Bybit and OKX, offline: recorded v5 payloads served by a local HTTP server.

``make_exchange(..., base_url=...)`` points the real ccxt client at an aiohttp server on 127.0.0.1
that answers exactly the public paths ccxt calls (anything else is a 404 and fails the test), with
payloads in each venue's wire format (``tests/payloads/<venue>/*.json``, recorded around the
2025-01-15 08:00 UTC settlement). Expected values are read from the raw payloads, not from ccxt.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from basis_mcp.feed import Settlement
from basis_mcp.live.exchanges import make_exchange
from basis_mcp.live.feed import LiveFeed, VenueClock
from basis_mcp.venue.base import VenueUnavailable

pytestmark = pytest.mark.anyio

PAYLOADS = Path(__file__).parent / "payloads"
SETTLE_0800 = 1736928000.0  # 2025-01-15 08:00 UTC, the settlement between the two recordings
RECORDED_MS = 1736928035789  # venue time of the second recording (08:00:35.789)
LISTED = ["BTC", "ENA", "ETH"]  # USDT spot + USDT linear perpetual, live, on both venues
NOT_LISTED = ["1000PEPE", "PEPE", "USDC", "MOODENG", "NEWT", "X", ""]  # one leg only, pre-open, broken


def load(venue: str, name: str) -> Any:
    return json.loads((PAYLOADS / venue / f"{name}.json").read_text())


# ---------------------------------------------------------------------------------------- fake venues


class FakeVenue:
    """Answers a venue's public REST paths from recorded payloads; records every request."""

    def __init__(self, name: str, routes: dict[str, Any], data: dict[str, Any]):
        self.name = name
        self.routes = routes
        self.data = data  # endpoint key -> payload currently served
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.misses: list[tuple[str, dict[str, str]]] = []
        self.fail_status: int | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.calls.append((request.path, query))
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, content_type="text/html",
                                text="<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>")
        route = self.routes.get(request.path)
        body = route(self, query) if route else None
        if body is None:
            self.misses.append((request.path, query))
            return web.json_response({"msg": "no such endpoint in the recording"}, status=404)
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def paths(self) -> Counter:
        return Counter(p for p, _ in self.calls)

    def serve(self, phase: int) -> None:
        """Switch the tickers/funding payloads to recording ``phase`` (1: 07:59:30, 2: 08:00:35)."""
        for key in PHASED[self.name]:
            self.data[key] = load(self.name, f"{key}_{phase}")


PHASED = {"bybit": ["tickers_spot", "tickers_linear"], "okx": ["funding_rate", "tickers_spot", "tickers_swap"]}


def _bybit_empty(category: str | None) -> dict:
    return {"retCode": 0, "retMsg": "OK", "result": {"category": category or "", "list": [], "nextPageCursor": ""},
            "retExtInfo": {}, "time": 1736927968302}


def _bybit_instruments(v: FakeVenue, q: dict) -> dict | None:
    cat = q.get("category")
    if cat == "spot":
        return v.data["instruments_spot"]
    if cat == "linear" and q.get("status") != "PreLaunch":
        return v.data["instruments_linear"]
    if cat in ("linear", "inverse", "option"):  # no pre-market, inverse or option markets in this recording
        return _bybit_empty(cat)
    return None


def _bybit_tickers(v: FakeVenue, q: dict) -> dict | None:
    return v.data.get(f"tickers_{q.get('category')}")


def _okx_empty() -> dict:
    return {"code": "0", "data": [], "msg": ""}


def _okx_instruments(v: FakeVenue, q: dict) -> dict | None:
    kind = q.get("instType")
    if kind in ("SPOT", "SWAP", "FUTURES"):
        return v.data[f"instruments_{kind.lower()}"]
    if kind == "OPTION":
        return _okx_empty()
    return None


def _okx_funding_rate(v: FakeVenue, q: dict) -> dict | None:
    return v.data["funding_rate"] if q.get("instId") == "ANY" else None


def _okx_tickers(v: FakeVenue, q: dict) -> dict | None:
    kind = (q.get("instType") or "").lower()
    return v.data.get(f"tickers_{kind}") or (_okx_empty() if kind == "futures" else None)  # no futures tickers recorded


def _recorded(v: FakeVenue, name: str) -> Any:
    path = PAYLOADS / v.name / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _bybit_funding_history(v: FakeVenue, q: dict) -> Any:
    return _recorded(v, f"funding_history_{q.get('symbol')}") if q.get("category") == "linear" else None


def _bybit_kline(v: FakeVenue, q: dict) -> Any:
    return _recorded(v, f"kline_{q.get('category')}_{q.get('symbol')}") if q.get("interval") == "60" else None


def _bybit_orderbook(v: FakeVenue, q: dict) -> Any:
    return _recorded(v, f"orderbook_{q.get('category')}_{q.get('symbol')}")


def _okx_funding_history(v: FakeVenue, q: dict) -> Any:
    return _recorded(v, f"funding_rate_history_{q.get('instId')}")


def _okx_candles(v: FakeVenue, q: dict) -> Any:
    return _recorded(v, f"candles_{q.get('instId')}") if q.get("bar") == "1H" else None


def _okx_books(v: FakeVenue, q: dict) -> Any:
    return _recorded(v, f"books_{q.get('instId')}")


ROUTES = {
    "bybit": {
        "/v5/market/instruments-info": _bybit_instruments,
        "/v5/market/tickers": _bybit_tickers,
        "/v5/market/funding/history": _bybit_funding_history,
        "/v5/market/kline": _bybit_kline,
        "/v5/market/orderbook": _bybit_orderbook,
    },
    "okx": {
        "/api/v5/public/instruments": _okx_instruments,
        "/api/v5/public/funding-rate": _okx_funding_rate,
        "/api/v5/market/tickers": _okx_tickers,
        "/api/v5/public/funding-rate-history": _okx_funding_history,
        "/api/v5/market/candles": _okx_candles,
        "/api/v5/market/history-candles": _okx_candles,  # ccxt picks this one for `since` > 60 days ago
        "/api/v5/market/books": _okx_books,
    },
}
STATIC = {
    "bybit": ["instruments_spot", "instruments_linear"],
    "okx": ["instruments_spot", "instruments_swap", "instruments_futures"],
}


@contextlib.asynccontextmanager
async def serving(name: str):
    v = FakeVenue(name, ROUTES[name], {k: load(name, k) for k in STATIC[name]})
    v.serve(1)
    await v.start()
    try:
        yield v
    finally:
        await v.stop()


@pytest.fixture(params=["bybit", "okx"])
async def venue(request):
    async with serving(request.param) as v:
        yield v


@pytest.fixture
async def bybit():
    async with serving("bybit") as v:
        yield v


@pytest.fixture
async def okx():
    async with serving("okx") as v:
        yield v


def exchange(v: FakeVenue, throttle: bool = False) -> Any:
    """The production client. Its rate limiter (~1 s per start here) is off unless asked for: the
    requests are the same either way, and counted on the server."""
    ex = make_exchange(v.name, base_url=v.url)
    ex.enableRateLimit = throttle
    return ex


@contextlib.asynccontextmanager
async def live_feed(v: FakeVenue, universe: tuple[str, ...] = ("BTC", "ETH"), throttle: bool = False):
    feed = LiveFeed(v.name, exchange(v, throttle), VenueClock(), list(universe))
    try:
        await feed.start()
        yield feed
    finally:
        await feed.close()


# ---------------------------------------------------------------------------------------- expectations


def _row(rows: list[dict], key: str, value: str) -> dict:
    found = [r for r in rows if r.get(key) == value]
    assert len(found) == 1, f"{value} not exactly once in the payload"
    return found[0]


def expected(v: FakeVenue, base: str) -> dict[str, float]:
    """What a snapshot must show, read straight from the payloads being served."""
    if v.name == "bybit":
        spot = _row(v.data["tickers_spot"]["result"]["list"], "symbol", f"{base}USDT")
        perp = _row(v.data["tickers_linear"]["result"]["list"], "symbol", f"{base}USDT")
        inst = _row(v.data["instruments_linear"]["result"]["list"], "symbol", f"{base}USDT")
        return {
            "spot": (float(spot["bid1Price"]) + float(spot["ask1Price"])) / 2,
            "perp": float(perp["lastPrice"]),
            "mark": float(perp["markPrice"]),
            "rate": float(perp["fundingRate"]),
            "next": int(perp["nextFundingTime"]) / 1000,
            "interval": inst["fundingInterval"] / 60,
            "time": v.data["tickers_linear"]["time"] / 1000,
        }
    spot = _row(v.data["tickers_spot"]["data"], "instId", f"{base}-USDT")
    perp = _row(v.data["tickers_swap"]["data"], "instId", f"{base}-USDT-SWAP")
    fr = _row(v.data["funding_rate"]["data"], "instId", f"{base}-USDT-SWAP")
    return {
        "spot": (float(spot["bidPx"]) + float(spot["askPx"])) / 2,
        "perp": float(perp["last"]),
        "mark": float(perp["last"]),  # OKX's tickers and funding-rate payloads carry no mark price
        "rate": float(fr["fundingRate"]),
        "next": int(fr["fundingTime"]) / 1000,  # OKX: fundingTime is the upcoming settlement
        "interval": (int(fr["nextFundingTime"]) - int(fr["fundingTime"])) / 3_600_000,
        "time": int(fr["ts"]) / 1000,
    }


REFRESH_CALLS = {
    "bybit": [("/v5/market/tickers", {"category": "linear"}), ("/v5/market/tickers", {"category": "spot"})],
    "okx": [
        ("/api/v5/public/funding-rate", {"instId": "ANY"}),
        ("/api/v5/market/tickers", {"instType": "SWAP"}),
        ("/api/v5/market/tickers", {"instType": "SPOT"}),
        ("/api/v5/market/tickers", {"instType": "FUTURES"}),  # the quarterlies (none quoted in this recording)
    ],
}


# ---------------------------------------------------------------------------------------- tests


async def test_start_calls_only_recorded_endpoints(venue):
    async with live_feed(venue, throttle=True) as feed:  # as configured in production
        assert venue.misses == []
        paths = venue.paths()
    if venue.name == "bybit":
        # load_markets: spot, linear (+ PreLaunch), inverse (+ PreLaunch), options for 6 coins; then one refresh
        assert paths == Counter({"/v5/market/instruments-info": 11, "/v5/market/tickers": 2})
    else:
        # load_markets: SPOT, FUTURES, SWAP, OPTION for BTC-USD and ETH-USD; then one refresh
        assert paths == Counter({"/api/v5/public/instruments": 5, "/api/v5/public/funding-rate": 1,
                                 "/api/v5/market/tickers": 3})  # SWAP, SPOT and FUTURES
    assert feed.requests == len(REFRESH_CALLS[venue.name])


async def test_listed_needs_usdt_spot_and_usdt_linear_perp(venue):
    async with live_feed(venue) as feed:
        assert feed.listed == LISTED
        assert feed.symbols == ["BTC", "ETH"]  # the universe, among what is listed and quoted
        for base in NOT_LISTED:
            assert base not in feed.listed
            assert base not in feed.q
        assert set(feed.q) == set(LISTED)


@pytest.mark.parametrize("base", LISTED)
async def test_snapshot_matches_payload(venue, base):
    async with live_feed(venue) as feed:
        exp = expected(venue, base)
        s = feed.snapshot(base)
    assert s.symbol == base and s.venue == venue.name
    assert s.spot == pytest.approx(exp["spot"], rel=1e-12)
    assert s.perp == pytest.approx(exp["perp"], rel=1e-12)
    assert s.mark == pytest.approx(exp["mark"], rel=1e-12)
    assert s.funding_rate == pytest.approx(exp["rate"], rel=1e-12)
    assert s.funding_rate_source == "venue_predicted"
    assert s.next_funding_time == exp["next"] == SETTLE_0800
    assert s.funding_interval_hours == exp["interval"] == (4.0 if base == "ENA" else 8.0)
    assert s.basis_pct == pytest.approx((exp["perp"] - exp["spot"]) / exp["spot"] * 100, rel=1e-9)
    assert s.basis_usd == pytest.approx(exp["perp"] - exp["spot"], rel=1e-9)
    assert s.last_settled_rate is None


async def test_snapshot_btc_literal_values(venue):
    """The same, against hand-read numbers: a sign/scale mistake in `expected` cannot hide one in the feed."""
    async with live_feed(venue) as feed:
        s = feed.snapshot("BTC")
    if venue.name == "bybit":
        assert (s.spot, s.perp, s.mark, s.funding_rate) == pytest.approx((96998.95, 97041.2, 97040.15, 0.0001))
        assert (s.spot_bid, s.spot_ask, s.perp_bid, s.perp_ask) == pytest.approx((96998.9, 96999.0, 97041.1, 97041.2))
    else:
        assert (s.spot, s.perp, s.mark, s.funding_rate) == pytest.approx((97003.15, 97045.3, 97045.3, 0.0000914))
        assert (s.spot_bid, s.spot_ask, s.perp_bid, s.perp_ask) == pytest.approx((97003.1, 97003.2, 97045.2, 97045.3))
        assert s.spot_time == 1736927970.118 and s.perp_time == 1736927970.390  # the rows' `ts`
    assert s.next_funding_time == 1736928000.0 and s.funding_interval_hours == 8.0
    assert 0.04 < s.basis_pct < 0.05


async def test_one_refresh_is_two_or_three_bulk_requests(venue):
    async with live_feed(venue) as feed:
        venue.calls.clear()
        before = feed.requests
        await feed.refresh()
        assert venue.calls == REFRESH_CALLS[venue.name]
        assert feed.requests - before == len(REFRESH_CALLS[venue.name])
        assert venue.misses == []


async def test_settlement_recorded_when_next_funding_time_moves(venue):
    async with live_feed(venue, universe=("BTC", "ETH", "ENA")) as feed:
        before = {b: expected(venue, b) for b in LISTED}
        assert feed.settlements_between(0, 2e9) == []
        venue.serve(2)  # 35 s after 08:00: next funding time one interval later, new predicted rates
        after = {b: expected(venue, b) for b in LISTED}
        await feed.refresh()

        got = feed.settlements_between(SETTLE_0800 - 1, SETTLE_0800)
        assert [(x.symbol, x.time) for x in got] == [("BTC", SETTLE_0800), ("ENA", SETTLE_0800), ("ETH", SETTLE_0800)]
        for x in got:
            assert x.rate == pytest.approx(before[x.symbol]["rate"], rel=1e-12)  # predicted before the move
            assert x.mark == pytest.approx(before[x.symbol]["mark"], rel=1e-12)
        for base in LISTED:
            s = feed.snapshot(base)
            assert after[base]["rate"] != before[base]["rate"]
            assert s.funding_rate == pytest.approx(after[base]["rate"], rel=1e-12)
            assert s.last_settled_rate == pytest.approx(before[base]["rate"], rel=1e-12)
            assert s.next_funding_time == after[base]["next"] == SETTLE_0800 + after[base]["interval"] * 3600
            assert s.funding_interval_hours == (4.0 if base == "ENA" else 8.0)
            assert s.spot == pytest.approx(after[base]["spot"], rel=1e-12)
            assert s.perp == pytest.approx(after[base]["perp"], rel=1e-12)
        assert feed.mean_funding_rate("BTC", SETTLE_0800 - 1, SETTLE_0800) == pytest.approx(before["BTC"]["rate"])

        await feed.refresh()  # the same payload again: nothing new settles, nothing is counted twice
        assert feed.settlements_between(0, 2e9) == got
        assert all(isinstance(x, Settlement) for x in got)


async def test_a_503_is_venue_unavailable_and_the_feed_recovers(venue):
    async with live_feed(venue) as feed:
        venue.fail_status = 503
        with pytest.raises(VenueUnavailable) as err:
            await feed.refresh()
        assert err.value.code == "unavailable"
        assert str(err.value).startswith(f"{venue.name} ") and "ExchangeNotAvailable" in str(err.value)
        venue.fail_status = None
        await feed.refresh()
        assert feed.snapshot("BTC").perp == pytest.approx(expected(venue, "BTC")["perp"])


async def test_a_503_at_start_is_venue_unavailable(venue):
    venue.fail_status = 503
    feed = LiveFeed(venue.name, exchange(venue), VenueClock(), ["BTC"])
    try:
        with pytest.raises(VenueUnavailable):
            await feed.start()
    finally:
        await feed.close()


async def test_bybit_dated_future_is_not_listed(bybit):
    """A USDT-settled dated future (BTCUSDT-28MAR25) shares base and quote with the perpetual."""
    bybit.data["instruments_linear"]["result"]["list"].append(load("bybit", "instruments_linear_future"))
    async with live_feed(bybit) as feed:
        assert feed.listed == LISTED
        assert "BTC/USDT:USDT-250328" in feed.ex.markets


async def test_bybit_dated_future_does_not_overwrite_the_perp(bybit):
    bybit.data["instruments_linear"]["result"]["list"].append(load("bybit", "instruments_linear_future"))
    bybit.data["tickers_linear"]["result"]["list"].insert(1, load("bybit", "tickers_linear_future"))
    async with live_feed(bybit) as feed:
        s = feed.snapshot("BTC")
    assert (s.perp, s.mark) == pytest.approx((97041.2, 97040.15))  # BTCUSDT, not BTCUSDT-28MAR25 (98455.5)


async def test_clock_follows_payload_time(venue):
    async with live_feed(venue) as feed:
        t1 = expected(venue, "BTC")["time"]  # 2025-01-15 07:59:30, far from the wall clock
        assert feed.clock.now() == pytest.approx(t1, abs=60)
        venue.serve(2)
        await feed.refresh()
        assert feed.clock.now() == pytest.approx(expected(venue, "BTC")["time"], abs=60)
        assert feed.snapshot("BTC").seconds_to_funding > 0


async def test_okx_mark_follows_the_perp_price(okx):
    async with live_feed(okx) as feed:
        okx.serve(2)
        await feed.refresh()
        s = feed.snapshot("BTC")
    assert s.perp == pytest.approx(97108.8)
    assert s.mark == pytest.approx(97108.8)  # no mark in OKX's payloads: the perp price stands for it


# ---------------------------------------------------------------------------------------- on demand


def _settled_history(v: FakeVenue) -> dict[float, float]:
    if v.name == "bybit":
        rows = _recorded(v, "funding_history_BTCUSDT")["result"]["list"]
        return {int(r["fundingRateTimestamp"]) / 1000: float(r["fundingRate"]) for r in rows}
    rows = _recorded(v, "funding_rate_history_BTC-USDT-SWAP")["data"]
    return {int(r["fundingTime"]) / 1000: float(r["realizedRate"]) for r in rows}


async def test_funding_history_preload_merges_with_observed_settlements(venue):
    async with live_feed(venue) as feed:
        before = expected(venue, "BTC")
        venue.serve(2)
        await feed.refresh()  # the 08:00 settlement, observed live
        feed.clock.observe(RECORDED_MS)  # pin venue time (LiveFeed does not: test_clock_follows_payload_time)
        venue.calls.clear()
        await feed.preload_funding_history(["BTC"])
        await feed.preload_funding_history(["BTC"])  # twice: nothing is duplicated

        assert [p for p, _ in venue.calls] == [
            "/v5/market/funding/history" if venue.name == "bybit" else "/api/v5/public/funding-rate-history"
        ] * 2
        query = venue.calls[0][1]
        assert query.get("symbol", query.get("instId")) == ("BTCUSDT" if venue.name == "bybit" else "BTC-USDT-SWAP")
        raw = _settled_history(venue)
        btc = [x for x in feed.settlements_between(0, 2e9) if x.symbol == "BTC"]
        assert [x.time for x in btc] == sorted(raw) and len(raw) == 9
        for x in btc:
            if x.time == SETTLE_0800:  # observed before the history arrived: the predicted rate and its mark stay
                assert (x.rate, x.mark) == pytest.approx((before["rate"], before["mark"]))
            else:
                assert x.rate == pytest.approx(raw[x.time], rel=1e-12)
        window = (SETTLE_0800 - 3 * 86400, SETTLE_0800)
        rates = [raw[t] if t != SETTLE_0800 else before["rate"] for t in raw if window[0] < t <= window[1]]
        assert feed.mean_funding_rate("BTC", *window) == pytest.approx(sum(rates) / len(rates))


def _closes(v: FakeVenue, name: str) -> dict[int, float]:
    data = _recorded(v, name)
    rows = data["result"]["list"] if v.name == "bybit" else data["data"]
    return {int(r[0]): float(r[4]) for r in rows}


async def test_basis_history_joins_hourly_closes(venue):
    async with live_feed(venue) as feed:
        feed.clock.observe(RECORDED_MS)  # pin venue time at 08:00:35
        venue.calls.clear()
        rows = await feed.basis_history("BTC", 6)
        now = feed.clock.now()
    assert len(venue.calls) == 2 and venue.misses == []
    if venue.name == "bybit":
        assert [(p, q["category"], q["symbol"]) for p, q in venue.calls] == [
            ("/v5/market/kline", "spot", "BTCUSDT"),
            ("/v5/market/kline", "linear", "BTCUSDT"),
        ]
        spot, perp = _closes(venue, "kline_spot_BTCUSDT"), _closes(venue, "kline_linear_BTCUSDT")
    else:
        assert [q["instId"] for _, q in venue.calls] == ["BTC-USDT", "BTC-USDT-SWAP"]
        spot, perp = _closes(venue, "candles_BTC-USDT"), _closes(venue, "candles_BTC-USDT-SWAP")
    since_ms = (now - 6 * 3600) * 1000
    want = [(t // 1000 + 3600, spot[t], perp[t]) for t in sorted(spot) if t >= since_ms and t // 1000 + 3600 <= now]
    assert rows == want
    # candles opened 03:00..07:00, each observed at its close; the 08:00 candle is still open
    assert [t for t, _, _ in rows] == [int(SETTLE_0800) - 3600 * k for k in range(4, -1, -1)]
    assert rows[-1][1:] == ((96999.0, 97041.2) if venue.name == "bybit" else (97003.1, 97045.3))


def _book(v: FakeVenue, market: str) -> tuple[list, list]:
    """(asks, bids) as [price, BTC] levels, straight from the recorded payload."""
    if v.name == "bybit":
        r = _recorded(v, f"orderbook_{'spot' if market == 'spot' else 'linear'}_BTCUSDT")["result"]
        asks, bids, unit = r["a"], r["b"], 1.0
    else:
        inst = "BTC-USDT" if market == "spot" else "BTC-USDT-SWAP"
        r = _recorded(v, f"books_{inst}")["data"][0]
        asks, bids, unit = r["asks"], r["bids"], 1.0
        if market == "perp":  # OKX swap books count contracts of ctVal BTC each
            unit = float(_row(v.data["instruments_swap"]["data"], "instId", inst)["ctVal"])
    return [[float(x[0]), float(x[1]) * unit] for x in asks], [[float(x[0]), float(x[1]) * unit] for x in bids]


def _vwap_cost(levels: list, notional: float, mid: float) -> float:
    left, cost, qty = notional, 0.0, 0.0
    for price, size in levels:
        take = min(size, left / price)
        cost, qty, left = cost + take * price, qty + take, left - take * price
        if left <= 1e-9:
            break
    assert left <= 1e-9, "the recorded book must be deep enough"
    return abs(cost / qty - mid) / mid


async def _slippage_case(v: FakeVenue, market: str, notional: float) -> None:
    async with live_feed(v) as feed:
        v.calls.clear()
        got = await feed.book_slippage("BTC", market, notional)
    assert len(v.calls) == 1 and v.misses == []
    asks, bids = _book(v, market)
    mid = (asks[0][0] + bids[0][0]) / 2
    want = (_vwap_cost(asks, notional, mid), _vwap_cost(bids, notional, mid))
    assert got == pytest.approx(want, rel=1e-9)
    assert 0 < got[0] < 1e-4 and 0 < got[1] < 1e-4


BOOK_REQUEST = {
    ("bybit", "spot"): ("/v5/market/orderbook", {"category": "spot", "symbol": "BTCUSDT", "limit": "100"}),
    ("bybit", "perp"): ("/v5/market/orderbook", {"category": "linear", "symbol": "BTCUSDT", "limit": "100"}),
    ("okx", "spot"): ("/api/v5/market/books", {"instId": "BTC-USDT", "sz": "100"}),
    ("okx", "perp"): ("/api/v5/market/books", {"instId": "BTC-USDT-SWAP", "sz": "100"}),
}
@pytest.mark.parametrize(
    "name, market",
    # OKX book levels are [price, size, orders]; its swap sizes count contracts (0.01 BTC each)
    [("bybit", "spot"), ("bybit", "perp"), ("okx", "spot"), ("okx", "perp")],
)
async def test_book_slippage_walks_the_live_book(name, market):
    async with serving(name) as v:
        try:
            await _slippage_case(v, market, 150_000.0)
        finally:
            assert v.calls[-1:] == [BOOK_REQUEST[name, market]]
