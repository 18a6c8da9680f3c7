"""One venue interface over several exchanges: the primary one and the others a cross-exchange
position trades on.

The desk keeps talking to one venue. Instruments on the primary venue are named as before
(``BTC``); those on another venue carry it (``BTC@bybit``, see `basis_mcp.venues`). The router
sends each call to the exchange the instrument lives on with the exchange's own name for it, and
names everything that comes back (orders, positions, funding, liquidations) the desk's way. Calls
about the whole account are asked of every exchange: balances are summed per asset (the desk's
cash identity is over all of its collateral) and kept per venue in `balances_by_venue`; events are
merged in time order.

Each exchange is its own failure domain: `reachable` says which ones answered, so the watchdog can
tell one venue being down from all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from basis_mcp.venue.base import (
    BorrowEvent,
    FundingEvent,
    LiquidationEvent,
    OrderRequest,
    OrderResult,
    PerpPosition,
    TickReport,
    VenueError,
)
from basis_mcp.venues import qualify, split


class VenueRouter:
    def __init__(self, primary: Any, others: dict[str, Any] | None = None):
        self.primary = primary
        self.others: dict[str, Any] = dict(others or {})
        self.name = primary.name
        self.remote = getattr(primary, "remote", False)
        self.markets = primary.markets if hasattr(primary, "markets") else frozenset({"spot", "perp"})
        self.faults = getattr(primary, "faults", None)

    # ------------------------------------------------------------------ routing

    @property
    def multi(self) -> bool:
        return bool(self.others)

    def venue_names(self) -> list[str]:
        """Every venue's short name, the primary first (``binance``, ``bybit``)."""
        return [self.primary_venue, *self.others]

    @property
    def primary_venue(self) -> str:
        return self.name.split(":", 1)[-1]

    def exchange(self, venue: str | None) -> Any:
        if venue is None or venue == self.primary_venue:
            return self.primary
        ex = self.others.get(venue)
        if ex is None:
            raise VenueError(f"no venue {venue!r} on this desk (venues: {', '.join(self.venue_names())})", "no_venue")
        return ex

    def _route(self, instrument: str) -> tuple[Any, str, str | None]:
        sym, venue = split(instrument)
        if venue == self.primary_venue:
            venue = None
        return self.exchange(venue), sym, venue

    def leg_venue(self, instrument: str) -> str:
        """The name of the venue an instrument trades on (``paper:bybit``), as a leg records it."""
        return self._route(instrument)[0].name

    def markets_of(self, venue: str | None) -> frozenset[str]:
        ex = self.exchange(venue)
        return getattr(ex, "markets", frozenset({"spot", "perp"}))

    def __getattr__(self, name: str) -> Any:  # anything venue-specific the desk asks of the primary (feeds, options)
        return getattr(self.primary, name)

    # ------------------------------------------------------------------ instrument calls

    async def place_order(self, req: OrderRequest) -> OrderResult:
        ex, sym, venue = self._route(req.symbol)
        if venue is None:
            return await ex.place_order(req)
        res = await ex.place_order(dataclasses.replace(req, symbol=sym))
        return dataclasses.replace(res, symbol=req.symbol)

    async def fetch_order(self, client_order_id: str, symbol: str, market: Any) -> OrderResult | None:
        ex, sym, venue = self._route(symbol)
        res = await ex.fetch_order(client_order_id, sym, market)
        return res if res is None or venue is None else dataclasses.replace(res, symbol=symbol)

    async def fetch_perp_position(self, symbol: str) -> PerpPosition | None:
        ex, sym, venue = self._route(symbol)
        p = await ex.fetch_perp_position(sym)
        return p if p is None or venue is None else dataclasses.replace(p, symbol=symbol)

    async def fetch_position(self, market: str, symbol: str) -> PerpPosition | None:
        ex, sym, venue = self._route(symbol)
        p = await ex.fetch_position(market, sym) if hasattr(ex, "fetch_position") else (
            await ex.fetch_perp_position(sym) if market == "perp" else None)
        return p if p is None or venue is None else dataclasses.replace(p, symbol=symbol)

    async def set_leverage(self, symbol: str, leverage: float) -> None:
        ex, sym, _ = self._route(symbol)
        await ex.set_leverage(sym, leverage)

    async def add_margin(self, symbol: str, amount_usd: float, market: str = "perp") -> None:
        ex, sym, _ = self._route(symbol)
        if market == "perp":
            await ex.add_margin(sym, amount_usd)
        else:
            await ex.add_margin(sym, amount_usd, market=market)

    def dust_qty(self, symbol: str) -> float:
        ex, sym, _ = self._route(symbol)
        fn = getattr(ex, "dust_qty", None)
        return fn(sym) if fn else 1e-12

    async def held_instruments(self, market: str) -> list[str]:
        out: list[str] = []
        for venue, ex in self._all():
            if market in getattr(ex, "markets", ()) and hasattr(ex, "held_instruments"):
                out += [qualify(s, venue) for s in await ex.held_instruments(market)]
        return out

    # ------------------------------------------------------------------ account calls

    def _all(self) -> list[tuple[str | None, Any]]:
        return [(None, self.primary), *self.others.items()]

    async def fetch_balances(self) -> dict[str, float]:
        """Every venue's balances summed per asset (the desk's collateral, wherever it sits)."""
        total: dict[str, float] = {}
        for bal in (await self.balances_by_venue()).values():
            for asset, q in bal.items():
                total[asset] = total.get(asset, 0.0) + q
        return total

    async def balances_by_venue(self) -> dict[str, dict[str, float]]:
        """Balances per venue short name (``binance``: {...}, ``bybit``: {...})."""
        return {venue or self.primary_venue: await ex.fetch_balances() for venue, ex in self._all()}

    async def reachable(self) -> dict[str, str | None]:
        """Per venue: None when it answered a balance read, else why not."""
        out: dict[str, str | None] = {}
        for venue, ex in self._all():
            try:
                await ex.fetch_balances()
                out[venue or self.primary_venue] = None
            except Exception as e:  # noqa: BLE001 - any failure to answer is the venue being unreachable
                out[venue or self.primary_venue] = f"{type(e).__name__}: {e}"
        return out

    async def funding_history(self, since: float) -> list[FundingEvent]:
        out: list[FundingEvent] = []
        for venue, ex in self._all():
            evs = await ex.funding_history(since)
            out += evs if venue is None else [dataclasses.replace(e, symbol=qualify(e.symbol, venue)) for e in evs]
        return sorted(out, key=lambda e: (e.time, e.symbol))

    async def liquidations(self, since: float, symbols: list[str] | None = None) -> list[LiquidationEvent]:
        out: list[LiquidationEvent] = []
        for venue, ex in self._all():
            mine = None if symbols is None else [split(s)[0] for s in symbols if (split(s)[1] or None) == venue]
            if symbols is not None and not mine:
                continue
            evs = await ex.liquidations(since, mine)
            out += evs if venue is None else [dataclasses.replace(e, symbol=qualify(e.symbol, venue)) for e in evs]
        return sorted(out, key=lambda e: e.time)

    async def borrow_history(self, since: float) -> list[BorrowEvent]:
        fn = getattr(self.primary, "borrow_history", None)
        return await fn(since) if fn else []

    def on_tick(self, t: float) -> TickReport:
        report = self.primary.on_tick(t)
        for venue, ex in self.others.items():
            r = ex.on_tick(t)
            report.funding.extend(dataclasses.replace(e, symbol=qualify(e.symbol, venue)) for e in r.funding)
            report.liquidations.extend(dataclasses.replace(e, symbol=qualify(e.symbol, venue)) for e in r.liquidations)
        return report

    def flat(self) -> bool:
        """No isolated position on any venue (False from a venue that cannot say)."""
        return all(getattr(ex, "flat", lambda: False)() for _, ex in self._all())

    def exchanges(self) -> list[Any]:
        """Every venue's exchange object, the primary first."""
        return [ex for _, ex in self._all()]

    def close(self) -> None:
        for _, ex in self._all():
            ex.close()
