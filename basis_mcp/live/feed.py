"""Live market feed over ccxt: the market as the venue shows it now.

One refresh of a venue costs one or two requests, whatever the number of symbols:
- Binance: ``fetch_funding_rates`` (``/fapi/v1/premiumIndex``: mark, predicted rate and next
  settlement for every contract) + spot ``fetch_bids_asks`` (``/api/v3/ticker/bookTicker``);
  funding intervals (``/fapi/v1/fundingInfo``) are cached and refreshed hourly;
- Bybit: linear ``fetch_tickers`` (``/v5/market/tickers``: last, bid/ask, mark, rate, next
  settlement) + spot ``fetch_bids_asks``; the interval comes from the instrument info;
- OKX: ``fetch_funding_rates`` (``instId=ANY``) + swap, spot and futures ``fetch_tickers`` (four);
- Hyperliquid (perps only, USDC-settled, hourly funding): ``fetch_time`` (``POST /info
  exchangeStatus``: the venue time, which no market payload carries) + ``fetch_funding_rates``
  (``metaAndAssetCtxs``: mark, oracle, mid, impact prices and the current ``funding`` of every perp).
  With no spot market the desk uses there, a snapshot's ``spot`` is the venue's oracle price
  (``oraclePx``, its index: see `LiveFeed.spot_source`) and carries no spot touch.
- Deribit (market data only: inverse BTC / ETH perpetuals and quarterlies, `basis_mcp.live.deribit`): one
  ``get_book_summary_by_currency`` (``kind=future``) per coin; a snapshot's ``spot`` is the index.

Binance USD-M quarterlies (``BTC/USDT:USDT-260327``, desk code ``BTC-260327``, see `basis_mcp.dated`)
come in the same ``premiumIndex`` request: its rows for delivery contracts carry the mark (no last
price, no funding). ``snapshot("BTC-260327")`` is the contract as `ReplayFeed.dated_snapshot` shows
it: ``perp`` and ``mark`` its mark, ``spot`` its coin's spot, funding 0, source
"none (dated future)"; unavailable from its expiry on. The markets are reloaded when a listed
contract expires or ``premiumIndex`` names one the markets do not have (after each delivery).
OKX's USDT-margined quarterlies (``BTC-USDT-260327``, the same desk code and ccxt symbol) come from the
FUTURES ``fetch_tickers``: last and touch (OKX's tickers carry no mark: the last stands for it, as for
its swaps); the same reloads.

The clock follows the venue: every payload timestamp re-syncs a `VenueClock`, so the desk's
"now", data ages and settlement times are in the venue's time (a local simulator can move it).
Settlements are recorded as they are observed: the rate the venue predicted for a settlement
time, last seen before that time, is the rate that settles.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import ccxt.async_support as ccxt_async

from basis_mcp.dated import contract_code, is_contract, iso_day, parse_contract
from basis_mcp.feed import MarketDataUnavailable, Settlement, Snapshot
from basis_mcp.live import deribit
from basis_mcp.live.errors import venue_error
from basis_mcp.venue.base import VenueError

HOUR = 3600.0
INTERVALS_TTL_S = 3600.0
# venues whose perps the desk trades with no spot market beside them -> the perps' settlement currency.
# The desk names coins (``BTC``); its USDT-quoted symbols map by base to ``BTC/USDC:USDC`` there.
PERPS_ONLY = {"hyperliquid": "USDC", deribit.VENUE: deribit.QUOTE}  # Deribit: inverse, market data only
HL_FUNDING_PAGE = 500  # Hyperliquid's fundingHistory answers at most this many rows a call
DATED_VENUES = ("binance", "okx", deribit.VENUE)  # venues whose quarterlies the feed quotes (Deribit's: inverse)
DATED_SOURCE = "none (dated future)"


class VenueClock:
    """Wall clock shifted to the venue's time, re-synced from every payload timestamp."""

    simulated = False

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def observe(self, venue_ms: float | None) -> None:
        if venue_ms:
            self.offset = venue_ms / 1000.0 - time.time()


@dataclass
class _Quote:
    spot_bid: float | None = None
    spot_ask: float | None = None
    spot_time: float = 0.0
    perp: float | None = None
    perp_bid: float | None = None
    perp_ask: float | None = None
    mark: float | None = None
    perp_time: float = 0.0
    rate: float | None = None
    next_funding: float | None = None
    interval_h: float = 8.0
    marks: deque = field(default_factory=lambda: deque(maxlen=2000))  # (t, mark) over the last hour+


class LiveFeed:
    """Snapshots for one venue from its bulk endpoints. `refresh()` is the only I/O."""

    def __init__(self, venue: str, exchange: Any, clock: VenueClock, universe: list[str], quote: str | None = None):
        self.venue = venue
        self.ex = exchange
        self.clock = clock
        self.perps_only = venue in PERPS_ONLY
        self.quote = quote or PERPS_ONLY.get(venue, "USDT")  # USDT, or a perps-only venue's settlement currency
        self.universe = [s.upper() for s in universe]
        self.listed: list[str] = []
        self.q: dict[str, _Quote] = {}
        self._intervals_at = 0.0
        self._intervals: dict[str, float] = {}
        self.settled: dict[str, list[tuple[float, float, float]]] = {}  # symbol -> [(time, rate, mark)]
        self.last_refresh: float | None = None
        self.requests = 0
        self.frozen_at: float | None = None
        self._payload_ms = 0
        self.borrow: dict[str, tuple[float, float]] = {}  # asset -> (apr percent, venue time ms) last read
        self._borrow_read_at = -1e18
        self.dated: dict[str, str] = {}  # listed quarterly: desk code (BTC-260327) -> ccxt symbol
        self.fq: dict[str, _Quote] = {}  # desk code -> the quarterly's quote
        self._dated_trigger: frozenset[str] = frozenset()  # what caused the last markets reload

    # ------------------------------------------------------------------ symbols

    def spot_symbol(self, base: str) -> str:
        return f"{base}/{self.quote}"

    def perp_symbol(self, base: str) -> str:
        return deribit.perp_symbol(base) if self.venue == deribit.VENUE else f"{base}/{self.quote}:{self.quote}"

    def future_symbol(self, code: str) -> str:
        """ccxt's symbol of a dated contract: ``BTC-260327`` → ``BTC/USDT:USDT-260327`` (ValueError if
        ``code`` is not a quarterly contract)."""
        base, expiry = parse_contract(code)
        return f"{self.perp_symbol(base)}-{contract_code(base, expiry).rsplit('-', 1)[1]}"

    @property
    def symbols(self) -> list[str]:
        return [s for s in self.universe if s in self.q]

    @property
    def dated_contracts(self) -> list[str]:
        """The quarterlies of the universe the venue lists and the feed quotes, unexpired at the venue's
        time, by coin then expiry (``BTC-260327``)."""
        now = self.clock.now()
        live = [parse_contract(c) + (c,) for c in self.dated if c in self.fq]
        return [c for b, e, c in sorted(live) if b in self.universe and e > now]

    @property
    def spot_source(self) -> str:
        """What a snapshot's ``spot`` is: the spot book's mid, or on a perps-only venue (Hyperliquid)
        the venue's oracle / index price (no book: the snapshot's spot bid / ask are None)."""
        if self.venue == deribit.VENUE:
            return deribit.SPOT_SOURCE
        return "oracle" if self.perps_only else "spot_book"

    async def start(self) -> None:
        try:
            await self.ex.load_markets()
        except Exception as e:  # noqa: BLE001 - mapped to a venue error with no secrets in it
            raise venue_error(e, self.venue, "load markets") from None
        bases = set()
        for m in self.ex.markets.values():
            if m.get("quote") == self.quote and m.get("active", True) is not False:
                if m.get("spot") or (m.get("swap") and m.get("linear")):
                    bases.add((m["base"], "spot" if m.get("spot") else "perp"))
        spot = {b for b, k in bases if k == "spot"}
        perp = {b for b, k in bases if k == "perp"}
        self.listed = deribit.listed(self.ex.markets) if self.venue == deribit.VENUE else sorted(
            perp if self.perps_only else spot & perp)
        self._index_dated()
        await self.refresh()

    def _index_dated(self) -> None:
        """The quarterlies the loaded markets list (active linear futures of a listed coin; Deribit's inverse ones)."""
        self.dated = {}
        if self.venue not in DATED_VENUES:
            return
        for unified, m in self.ex.markets.items():
            kind = deribit.inverse(m) if self.venue == deribit.VENUE else m.get("linear")
            if not (m.get("future") and kind and m.get("expiry") and m.get("quote") == self.quote):
                continue
            if m.get("active", True) is False or m.get("base") not in self.listed:
                continue
            try:
                base, expiry = parse_contract(contract_code(m["base"], m["expiry"] / 1000.0))
            except ValueError:
                continue  # not a quarterly (a bi-quarterly or other dated contract): not quoted
            self.dated[contract_code(base, expiry)] = unified
        self.fq = {c: q for c, q in self.fq.items() if c in self.dated}

    def _dated_code(self, key: str) -> str | None:
        """The desk code of a ``premiumIndex`` row's key: ccxt's symbol, or the raw Binance id of a
        contract the loaded markets do not have yet (``BTCUSDT_260925``)."""
        if "_" not in key and "-" not in key:
            return None
        try:
            base, expiry = parse_contract(key)
        except ValueError:
            return None
        return contract_code(base, expiry) if base in self.listed else None

    async def _reload_if_dated_changed(self, rates: dict[str, Any]) -> None:
        """Reload the markets once a listed quarterly has expired (venue time of ``rates``) or the venue
        quotes one the markets do not list; the same change never triggers a second reload."""
        if self.venue not in DATED_VENUES:
            return
        now_ms = (max((r.get("timestamp") or 0 for r in rates.values()), default=0) or self._payload_ms
                  or self.clock.now() * 1000.0)  # the venue's time: this refresh's payloads before the local clock
        trigger = {c for c, u in self.dated.items() if (self.ex.markets.get(u) or {}).get("expiry", 0) <= now_ms}
        trigger |= {c for k in rates if k not in self.ex.markets and (c := self._dated_code(k)) and c not in self.dated}
        if not trigger or frozenset(trigger) == self._dated_trigger:
            return
        self._dated_trigger = frozenset(trigger)
        await self._call("reload markets", self.ex.load_markets(True))
        self._index_dated()

    # ------------------------------------------------------------------ refresh (the only I/O)

    async def _call(self, what: str, coro) -> Any:
        self.requests += 1
        try:
            out = await coro
        except Exception as e:  # noqa: BLE001
            raise venue_error(e, self.venue, what) from None
        self._note_payload_time(getattr(self.ex, "last_json_response", None))
        return out

    def _note_payload_time(self, resp: Any) -> None:
        """Sync the clock from the raw response: Bybit puts the time at the top level, OKX in each
        row's ``ts``, Binance's premiumIndex in each row's ``time`` (ccxt drops some of these)."""
        ms = None
        if isinstance(resp, dict):
            if str(resp.get("time", "")).isdigit():
                ms = int(resp["time"])
            if str(resp.get("usOut", "")).isdigit():  # Deribit: the answer's time, in µs
                ms = int(resp["usOut"]) // 1000
            rows = resp.get("data") if isinstance(resp.get("data"), list) else None
            if rows:
                stamps = [int(r["ts"]) for r in rows if isinstance(r, dict) and str(r.get("ts", "")).isdigit()]
                ms = max(stamps) if stamps else ms
        elif isinstance(resp, list) and resp and isinstance(resp[0], dict) and "time" in resp[0] and "lastFundingRate" in resp[0]:
            ms = max(int(r.get("time") or 0) for r in resp)
        if ms:
            self._payload_ms = max(self._payload_ms, ms)

    BORROW_EVERY_S = 3600.0

    async def refresh_borrow_rates(self, force: bool = False) -> dict[str, tuple[float, float]]:
        """The venue's cross-margin borrow rate of every coin the desk watches (percent a year, and the
        venue's time of it), read through ccxt's ``fetch_cross_borrow_rate`` at most once an hour. Needs
        credentials (Binance serves it only to signed requests) and a venue that has it; otherwise
        nothing is read and the desk uses the MODELLED series. Returns what was newly read."""
        if not (self.ex.apiKey and self.ex.has.get("fetchCrossBorrowRate")):
            return {}
        if not force and self.clock.now() - self._borrow_read_at < self.BORROW_EVERY_S:
            return {}
        self._borrow_read_at = self.clock.now()
        out = {}
        for base in self.symbols:
            try:
                row = await self._call(f"{base} borrow rate", self.ex.fetch_cross_borrow_rate(base))
            except VenueError:
                continue  # a coin the venue does not lend: the model stays in place for it
            rate, period = row.get("rate"), row.get("period") or 86_400_000
            if rate is None:
                continue
            apr = float(rate) * (365.0 * 86_400_000 / float(period)) * 100.0
            out[base] = (apr, self.clock.now() * 1000.0)  # when it was read: a daily rate is stamped at 00:00
        self.borrow.update(out)
        return out

    async def refresh(self) -> None:
        """Re-read the venue; the clock syncs once, to the newest payload time seen in this refresh."""
        self._payload_ms = 0
        try:
            await self._refresh()
        finally:
            if self._payload_ms:
                self.clock.observe(self._payload_ms)
        self.last_refresh = self.clock.now()

    async def _refresh(self) -> None:
        if self.venue == "binance":
            await self._refresh_intervals()
            rates = await self._call("funding rates", self.ex.fetch_funding_rates())
            await self._reload_if_dated_changed(rates)
            spot = await self._call("spot tickers", self.ex.fetch_bids_asks(params={"type": "spot"}))
            self._take_rates(rates)
        elif self.venue == "bybit":
            perps = await self._call("linear tickers", self.ex.fetch_tickers(params={"type": "swap", "subType": "linear"}))
            spot = await self._call("spot tickers", self.ex.fetch_bids_asks(params={"type": "spot"}))
            self._take_bybit(perps)
        elif self.venue == "okx":
            rates = await self._call("funding rates", self.ex.fetch_funding_rates())
            perps = await self._call("swap tickers", self.ex.fetch_tickers(params={"type": "swap"}))
            spot = await self._call("spot tickers", self.ex.fetch_tickers(params={"type": "spot"}))
            futs = await self._call("futures tickers", self.ex.fetch_tickers(params={"type": "future"}))
            await self._reload_if_dated_changed(futs)
            self._take_rates(rates)
            self._take_perp_tickers(perps)
            self._take_future_tickers(futs)
        elif self.venue == deribit.VENUE:
            futs = await deribit.refresh(self)
            await self._reload_if_dated_changed(futs)
            deribit.take(self, futs)
            spot = {}
        elif self.venue == "hyperliquid":
            await self._call("venue time", self.ex.fetch_time())
            rates = await self._call("funding rates", self.ex.fetch_funding_rates())
            self._take_hyperliquid(rates)
            spot = {}
        else:
            raise VenueError(f"unsupported venue {self.venue}")
        self._take_spot(spot)

    async def _refresh_intervals(self) -> None:
        if time.time() - self._intervals_at < INTERVALS_TTL_S:
            return
        rows = await self._call("funding intervals", self.ex.fetch_funding_intervals())
        self._intervals = {}
        for sym, r in rows.items():
            iv = r.get("interval")
            if iv and str(iv).endswith("h"):
                self._intervals[sym] = float(str(iv)[:-1])
        self._intervals_at = time.time()

    def _base(self, unified: str) -> str | None:
        m = self.ex.markets.get(unified)
        if m is None or m.get("quote") != self.quote:
            return None
        return m["base"]

    def _perp_base(self, unified: str) -> str | None:
        """Base of a USDT-margined perpetual swap (not a dated future, not inverse)."""
        m = self.ex.markets.get(unified)
        if m is None or m.get("quote") != self.quote or not m.get("swap") or not m.get("linear"):
            return None
        return m["base"]

    def _quote(self, base: str) -> _Quote:
        if base not in self.q:
            self.q[base] = _Quote()
        return self.q[base]

    def _observe_funding(self, base: str, q: _Quote, rate: float | None, next_ms: float | None, mark: float | None) -> None:
        """Record a settlement when the venue's next funding time moves past one we were tracking."""
        nxt = next_ms / 1000.0 if next_ms else None
        if q.next_funding is not None and nxt is not None and nxt > q.next_funding and q.rate is not None:
            hist = self.settled.setdefault(base, [])
            if not hist or hist[-1][0] < q.next_funding:
                hist.append((q.next_funding, q.rate, q.mark or mark or 0.0))
                del hist[:-500]
        if rate is not None:
            q.rate = rate
        if nxt is not None:
            q.next_funding = nxt

    def _take_rates(self, rates: dict[str, Any]) -> None:
        latest = 0.0
        for unified, r in rates.items():
            if self.dated and (code := self._dated_code(unified)) is not None:
                if code in self.dated:
                    self._take_dated(code, r)
                continue
            base = self._perp_base(unified)  # not a dated future's row: it would overwrite the perp
            if base is None or base not in self.listed:
                continue
            q = self._quote(base)
            ts = r.get("timestamp") or 0
            latest = max(latest, ts)
            mark = r.get("markPrice")
            self._observe_funding(base, q, r.get("fundingRate"), r.get("fundingTimestamp"), mark)
            if mark:
                q.mark = float(mark)
                if self.venue == "binance":  # premiumIndex has no last price: the mark stands for the perp
                    q.perp = q.mark
                q.perp_time = (ts / 1000.0) if ts else self.clock.now()
                q.marks.append((q.perp_time, q.mark))
            iv = r.get("interval")
            if iv and str(iv).endswith("h"):
                q.interval_h = float(str(iv)[:-1])
            elif self.venue == "binance":
                q.interval_h = self._intervals.get(unified, 8.0)
            elif self.venue == "okx" and r.get("nextFundingTimestamp") and r.get("fundingTimestamp"):
                q.interval_h = (r["nextFundingTimestamp"] - r["fundingTimestamp"]) / 3_600_000.0
        if latest:
            self._payload_ms = max(self._payload_ms, int(latest))

    def _take_dated(self, code: str, r: dict[str, Any]) -> None:
        """A quarterly's ``premiumIndex`` row: its mark stands for its price (no last price, no funding)."""
        mark = r.get("markPrice")
        if not mark:
            return
        q = self.fq.setdefault(code, _Quote())
        ts = r.get("timestamp") or 0
        q.mark = q.perp = float(mark)
        q.perp_time = (ts / 1000.0) if ts else self.clock.now()
        q.marks.append((q.perp_time, q.mark))
        if ts:
            self._payload_ms = max(self._payload_ms, int(ts))

    def _take_future_tickers(self, tickers: dict[str, Any]) -> None:
        """OKX futures tickers: a listed quarterly's last (standing for its mark) and touch."""
        for key, t in tickers.items():
            code = self._dated_code(key)
            if code not in self.dated or not t.get("last"):
                continue
            q = self.fq.setdefault(code, _Quote())
            q.perp = q.mark = float(t["last"])
            q.perp_bid, q.perp_ask = t.get("bid"), t.get("ask")
            q.perp_time = t["timestamp"] / 1000.0 if t.get("timestamp") else self.clock.now()
            q.marks.append((q.perp_time, q.mark))

    def _take_bybit(self, tickers: dict[str, Any]) -> None:
        latest = 0.0
        for unified, t in tickers.items():
            base = self._perp_base(unified)
            if base is None or base not in self.listed:
                continue
            info = t.get("info") or {}
            q = self._quote(base)
            ts = t.get("timestamp") or 0
            latest = max(latest, ts)
            mark = float(info["markPrice"]) if info.get("markPrice") else None
            rate = float(info["fundingRate"]) if info.get("fundingRate") not in (None, "") else None
            nxt = float(info["nextFundingTime"]) if info.get("nextFundingTime") else None
            self._observe_funding(base, q, rate, nxt, mark)
            q.mark = mark or t.get("last")
            q.perp = t.get("last") or q.mark
            q.perp_bid, q.perp_ask = t.get("bid"), t.get("ask")
            q.perp_time = ts / 1000.0 if ts else self.clock.now()
            if q.mark:
                q.marks.append((q.perp_time, q.mark))
            m = self.ex.markets.get(unified) or {}
            minutes = (m.get("info") or {}).get("fundingInterval")
            if minutes:
                q.interval_h = float(minutes) / 60.0
        if latest:
            self._payload_ms = max(self._payload_ms, int(latest))

    def _take_hyperliquid(self, rates: dict[str, Any]) -> None:
        """Hyperliquid's asset contexts: ``funding`` accrues over the current hour and settles at its end
        (the predicted rate), ``markPx`` the mark, ``midPx`` the perp, ``impactPxs`` the perp bid / ask
        (the prices an impact-sized order fills at: at or outside the touch), ``oraclePx`` the spot
        stand-in. ccxt stamps the next settlement from the local clock: the venue time is used here."""
        now_ms = self._payload_ms or self.clock.now() * 1000.0
        nxt = (math.floor(now_ms / 3_600_000) + 1) * 3_600_000
        for unified, r in rates.items():
            base = self._perp_base(unified)
            if base is None or base not in self.listed:
                continue
            info = r.get("info") or {}
            q = self._quote(base)
            mark = float(r["markPrice"]) if r.get("markPrice") else None
            rate = float(r["fundingRate"]) if r.get("fundingRate") is not None else None
            self._observe_funding(base, q, rate, nxt, mark)
            q.interval_h = 1.0
            q.mark = mark or q.mark
            q.perp = float(info["midPx"]) if info.get("midPx") else q.mark
            impact = info.get("impactPxs") or [None, None]
            q.perp_bid, q.perp_ask = (float(impact[0]), float(impact[1])) if all(impact[:2]) else (None, None)
            q.perp_time = q.spot_time = now_ms / 1000.0
            if r.get("indexPrice"):
                q.spot_bid = q.spot_ask = float(r["indexPrice"])
            if q.mark:
                q.marks.append((q.perp_time, q.mark))

    def _take_perp_tickers(self, tickers: dict[str, Any]) -> None:
        """OKX swap tickers: the perp quote, and (no mark in these payloads) the mark too."""
        for unified, t in tickers.items():
            base = self._perp_base(unified)
            if base is None or base not in self.listed:
                continue
            q = self._quote(base)
            q.perp = t.get("last") or q.perp
            q.perp_bid, q.perp_ask = t.get("bid"), t.get("ask")
            q.perp_time = t["timestamp"] / 1000.0 if t.get("timestamp") else self.clock.now()
            q.mark = q.perp
            if q.mark:
                q.marks.append((q.perp_time, q.mark))

    def _take_spot(self, tickers: dict[str, Any]) -> None:
        # book tickers carry no time: received now, in venue time (the clock syncs at the end of this refresh)
        fallback_t = max(self.clock.now(), self._payload_ms / 1000.0)
        for unified, t in tickers.items():
            base = self._base(unified)
            if base is None or base not in self.listed or not (self.ex.markets.get(unified) or {}).get("spot"):
                continue
            q = self._quote(base)
            bid, ask = t.get("bid"), t.get("ask")
            if not bid or not ask:
                continue
            q.spot_bid, q.spot_ask = float(bid), float(ask)
            q.spot_time = t["timestamp"] / 1000.0 if t.get("timestamp") else fallback_t

    # ------------------------------------------------------------------ what the desk reads

    def snapshot(self, symbol: str, at: float | None = None) -> Snapshot:
        if is_contract(symbol):
            return self.dated_snapshot(symbol, at)
        q = self.q.get(symbol)
        if q is None or q.spot_bid is None or q.perp is None or q.mark is None:
            raise MarketDataUnavailable(f"{symbol}: no live quote from {self.venue} yet")
        now = self.clock.now() if at is None else at
        spot = (q.spot_bid + q.spot_ask) / 2.0
        hour, prev = self._mark_range(q, now)
        next_t = q.next_funding or (math.floor(now / (q.interval_h * HOUR)) + 1) * q.interval_h * HOUR
        settled = self.settled.get(symbol) or []
        return Snapshot(
            symbol=symbol,
            venue=self.venue,
            now=now,
            spot=spot,
            perp=q.perp,
            mark=q.mark,
            mark_high=max(hour) if hour else q.mark,
            mark_low=min(hour) if hour else q.mark,
            spot_time=min(q.spot_time, now),
            perp_time=min(q.perp_time, now),
            funding_rate=q.rate or 0.0,
            funding_rate_source="venue_predicted",
            last_settled_rate=settled[-1][1] if settled else None,
            funding_interval_hours=q.interval_h,
            next_funding_time=next_t,
            prev_perp=prev[-1] if prev else None,
            spot_bid=None if self.perps_only else q.spot_bid,  # an oracle price is not a touch
            spot_ask=None if self.perps_only else q.spot_ask,
            perp_bid=q.perp_bid,
            perp_ask=q.perp_ask,
        )

    @staticmethod
    def _mark_range(q: _Quote, now: float) -> tuple[list[float], list[float]]:
        """(marks over the last hour, marks from an hour ago or before)."""
        return [m for t, m in q.marks if t >= now - HOUR], [m for t, m in q.marks if t <= now - HOUR + 60]

    def dated_snapshot(self, code: str, at: float | None = None) -> Snapshot:
        """A listed quarterly as the paper desk shows one (`ReplayFeed.dated_snapshot`): ``perp`` and
        ``mark`` its venue mark, ``spot`` its coin's spot, no funding (the schedule fields are its
        coin's perp's). `MarketDataUnavailable` from its expiry on, or if the venue does not list it."""
        try:
            base, expiry = parse_contract(code)
        except ValueError as e:
            raise MarketDataUnavailable(str(e)) from None
        now = self.clock.now() if at is None else at
        if now >= expiry:
            raise MarketDataUnavailable(f"{code} expired at {iso_day(expiry)}")
        fq = self.fq.get(code)
        if code not in self.dated or fq is None or fq.mark is None or fq.perp is None:
            raise MarketDataUnavailable(f"{code}: {self.venue} does not list it (no live quote)")
        snap = self.snapshot(base, at)
        hour, prev = self._mark_range(fq, now)
        return replace(snap, symbol=code, perp=fq.perp, mark=fq.mark, mark_high=max(hour) if hour else fq.mark,
                       mark_low=min(hour) if hour else fq.mark, perp_time=min(fq.perp_time, now),
                       funding_rate=0.0, funding_rate_source=DATED_SOURCE, last_settled_rate=None,
                       prev_perp=prev[-1] if prev else None, perp_bid=fq.perp_bid, perp_ask=fq.perp_ask)

    def settlements_between(self, t_from: float, t_to: float) -> list[Settlement]:
        out = [
            Settlement(sym, t, rate, mark)
            for sym, hist in self.settled.items()
            for t, rate, mark in hist
            if t_from < t <= t_to
        ]
        out.sort(key=lambda s: (s.time, s.symbol))
        return out

    def mean_funding_rate(self, symbol: str, since: float, until: float) -> float | None:
        rates = [r for t, r, _ in self.settled.get(symbol, []) if since < t <= until]
        return sum(rates) / len(rates) if rates else None

    def healthy(self, max_age_s: float = 60.0) -> bool:
        return self.last_refresh is not None and self.clock.now() - self.last_refresh <= max_age_s

    # ------------------------------------------------------------------ on demand

    async def preload_funding_history(self, symbols: list[str], days: int = 30) -> None:
        """Past settlements (one request per symbol, at start) for the 30-day funding mean."""
        since = int((self.clock.now() - days * 86400) * 1000)
        for sym in symbols:
            try:
                rows = await self._funding_rows(sym, since)
            except VenueError:
                continue
            hist = self.settled.setdefault(sym, [])
            known = {t for t, _, _ in hist}
            now_mark = self.q[sym].mark if sym in self.q else None
            for r in rows:
                t = r["timestamp"] / 1000.0
                if self.perps_only:  # Hyperliquid stamps hourly settlements a few ms past the hour
                    t = round(t / HOUR) * HOUR
                if t not in known:  # venues without a mark in the history: today's mark stands in
                    mark = float((r.get("info") or {}).get("markPrice") or 0.0) or float(now_mark or 0.0)
                    hist.append((t, float(r["fundingRate"]), mark))
            hist.sort()

    async def _funding_rows(self, sym: str, since: int) -> list[dict[str, Any]]:
        """Settled rates since ``since`` (ms): one request, or on Hyperliquid (500 rows a call, 24 a
        day) pages from ``since`` on, each starting 1 ms after the last row seen."""
        fetch = self.ex.fetch_funding_rate_history
        if not self.perps_only:
            return await self._call("funding history", fetch(self.perp_symbol(sym), since))
        rows: list[dict[str, Any]] = []
        for _ in range(100):
            page = await self._call("funding history", fetch(self.perp_symbol(sym), since))
            rows += page
            if len(page) < HL_FUNDING_PAGE:
                break
            since = int(page[-1]["timestamp"]) + 1
        return rows

    async def basis_history(self, symbol: str, hours: int) -> list[tuple[int, float, float]]:
        """Hourly (time, spot close, perp close) for z-score warm-up: two kline requests."""
        if self.perps_only:
            raise VenueError(f"{self.venue} has no spot market (its oracle price has no candles): no basis history",
                             "no_spot_market")
        since = int((self.clock.now() - hours * HOUR) * 1000)
        limit = min(hours, 1000)
        spot = await self._call("spot klines", self.ex.fetch_ohlcv(self.spot_symbol(symbol), "1h", since, limit))
        perp = await self._call("perp klines", self.ex.fetch_ohlcv(self.perp_symbol(symbol), "1h", since, limit))
        perp_by_t = {int(c[0] / 1000) + 3600: c[4] for c in perp}
        out = []
        for c in spot:
            t = int(c[0] / 1000) + 3600  # a candle's close is observed at open + 1 h
            if t in perp_by_t and t <= self.clock.now():
                out.append((t, float(c[4]), float(perp_by_t[t])))
        return out

    async def book_slippage(self, symbol: str, market: str, notional_usd: float) -> tuple[float, float] | None:
        """(buy, sell) fractions paid versus mid to take ``notional_usd`` from the live book (one request)."""
        if market == "spot" and self.perps_only:
            raise VenueError(f"{self.venue} has no spot market: no spot book", "no_spot_market")
        if market == "future":
            if symbol not in self.dated:
                raise VenueError(f"{symbol} is not listed on {self.venue}", "bad_symbol")
            sym = self.dated[symbol]
        else:
            sym = self.spot_symbol(symbol) if market == "spot" else self.perp_symbol(symbol)
        book = await self._call("order book", self.ex.fetch_order_book(sym, 100))
        if not book["bids"] or not book["asks"]:
            return None
        mid = (book["bids"][0][0] + book["asks"][0][0]) / 2.0
        # swap books on some venues (OKX) count contracts, inverse ones (Deribit) USD: convert to base units
        contract = float((self.ex.markets.get(sym) or {}).get("contractSize") or 1.0) if market != "spot" else 1.0
        usd_sized = market != "spot" and bool((self.ex.markets.get(sym) or {}).get("inverse"))

        def walk(levels: list) -> float | None:
            left, cost, qty = notional_usd, 0.0, 0.0
            for level in levels:  # [price, size] or [price, size, orders]
                price, size = float(level[0]), float(level[1]) / float(level[0]) if usd_sized else float(level[1]) * contract
                take = min(size, left / price)
                cost += take * price
                qty += take
                left -= take * price
                if left <= 1e-9:
                    return abs(cost / qty - mid) / mid
            return None  # deeper than the book we fetched

        buy, sell = walk(book["asks"]), walk(book["bids"])
        return None if buy is None or sell is None else (buy, sell)

    async def close(self) -> None:
        try:
            await self.ex.close()
        except Exception:  # noqa: BLE001
            pass


_ = ccxt_async  # the exchange objects passed in are ccxt.async_support clients
