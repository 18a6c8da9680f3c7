"""Reconciliation: the desk's ledger against what the venue holds.

Every leg's fills sum to a holding per instrument; the venue must hold exactly that (paper)
or at least that (live, where the account may hold coins of its own), and the venue's cash
must equal what the fills, fees, funding and borrow interest imply. A difference puts the
desk in REDUCING (fail closed). Calls the venue (read only), `Book`, `Risk` (trading state),
`MarketData` and `Events`.
"""

from __future__ import annotations

import json
from typing import Any

from basis_mcp.dated import is_contract, parse_contract
from basis_mcp.desk.book import Book
from basis_mcp.desk.events import Events
from basis_mcp.desk.market import MarketData
from basis_mcp.desk.orders import Orders
from basis_mcp.desk.risk import Risk
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.readcache import Reads
from basis_mcp.store import Store
from basis_mcp.venues import venue_of

LEDGER_TOLERANCE_USD = 0.01


class Reconcile:
    def __init__(self, store: Store, venue: Any, events: Events, market: MarketData, book: Book, orders: Orders, risk: Risk,
                 mode: str):
        self.store = store
        self.venue = venue
        self.events = events
        self.market = market
        self.book = book
        self.orders = orders
        self.risk = risk
        self.mode = mode
        self._quiet: Reads | None = None  # the last check, while it stands (`check_ledger`)

    async def venue_holdings(self) -> tuple[dict[str, float], dict[tuple[str, str], Any]]:
        """(balances per asset, isolated position per (market, symbol): perps, and borrowed spot where
        the venue trades it) at the venue."""
        balances = await self.venue.fetch_balances()
        isolated: dict[tuple[str, str], Any] = {}
        held = getattr(self.venue, "held_instruments", None)
        for market in sorted(set(getattr(self.venue, "markets", {"perp"})) - {"spot"}):
            # every leg is on a symbol the trading feed carries; dated contracts are listed by the venue
            syms = await held(market) if market == "future" and held is not None else list(self.market.symbols)
            if getattr(self.venue, "multi", False) and market == "perp":  # other venues' perps: what they hold
                syms += [s for s in await self.venue.held_instruments(market) if venue_of(s) is not None]
            for sym in syms:
                p = await self.risk.position(market, sym)
                if p is not None:
                    isolated[(market, sym)] = p
        return balances, isolated

    def ledger_discrepancies(self, balances: dict[str, float], isolated: dict[tuple[str, str], Any],
                             holdings: dict[tuple[str, str], float]) -> list[str]:
        """Differences between what the desk recorded (``holdings``, from `Book.holdings`) and what the venue holds."""
        out: list[str] = []
        desk_spot = {sym: q for (market, sym), q in holdings.items() if market == "spot"}
        exact = self.mode != "live"  # a live account may hold other spot coins; the desk's must be there
        for sym in set(desk_spot) | ({a for a in balances if a != "USDT"} if exact else set()):
            venue_q = balances.get(sym, 0.0)
            want = desk_spot.get(sym, 0.0)
            if (exact and abs(venue_q - want) > 1e-8) or (not exact and venue_q + 1e-8 < want):
                out.append(f"{sym} spot: venue holds {venue_q:g}, desk ledger says {want:g}")
        desk_isolated = {k: q for k, q in holdings.items() if k[0] != "spot"}
        now = self.market.now()
        for market, sym in sorted(set(desk_isolated) | set(isolated)):
            if market == "future" and is_contract(sym.partition("@")[0]) and parse_contract(sym.partition("@")[0])[1] <= now:
                continue  # delivered (or about to be) at expiry: the venue's delivery is booked by the next event sync
            venue_q = isolated[(market, sym)].quantity if (market, sym) in isolated else 0.0
            want = desk_isolated.get((market, sym), 0.0)
            if abs(venue_q - want) > 1e-8:
                out.append(f"{sym} {market}: venue position {venue_q:g}, desk ledger says {want:g}")
        return out

    async def account_equity_usd(self) -> float:
        """Everything in the venue account at mid/mark: USDT, spot coins, isolated margin and
        unrealised perp P&L. On paper it equals `Book.equity_usd`; live the account may hold more."""
        balances, perps = await self.venue_holdings()
        equity = balances.get("USDT", 0.0)
        for asset, qty in balances.items():
            if asset != "USDT" and abs(qty) > 1e-12:
                try:
                    equity += qty * self.market.mid("spot", asset)
                except (MarketDataUnavailable, KeyError):
                    pass
        for (market, sym), p in perps.items():
            equity += p.isolated_wallet_usd + p.quantity * (self.market.mark(market, sym) - p.entry_price)
        return equity

    async def cash_discrepancy_usd(self, holdings: tuple[dict[str, float], dict[tuple[str, str], Any]] | None = None) -> float:
        """(venue USDT + isolated wallets) − what the desk's fills, funding and borrow imply.

        Identity: USDT + Σ wallets = capital + Σ fill cash flows − fees + funding + borrow
        + Σ over open isolated positions (perps, borrowed spot) of (signed quantity × venue entry price).
        """
        balances, perps = holdings if holdings is not None else await self.venue_holdings()
        venue_side = balances.get("USDT", 0.0) + sum(p.isolated_wallet_usd for p in perps.values())
        flows = self.store.one(
            "SELECT COALESCE(SUM(CASE WHEN side = 'sell' THEN quantity * price ELSE -quantity * price END), 0) AS cash,"
            " COALESCE(SUM(fee_usd), 0) AS fees FROM fills")
        funding = float(self.store.one("SELECT COALESCE(SUM(amount_usd), 0) AS s FROM funding_payments")["s"])
        borrow = float(self.store.one("SELECT COALESCE(SUM(amount_usd), 0) AS s FROM borrow_payments")["s"])
        open_perp = sum(p.quantity * p.entry_price for p in perps.values())
        desk_side = self.book.capital_usd + flows["cash"] - flows["fees"] + funding + borrow + open_perp
        return venue_side - desk_side

    async def check_ledger(self) -> None:
        """Fail closed when the desk's records and the venue disagree (paper venue: exact).
        Skipped while an order's outcome is still unknown: the books cannot agree until the venue
        says what happened to it, and recovery is already chasing that. Under a replay's read cache, a
        check that wrote nothing is not repeated while nothing it read has been written since (with
        no dated contract held: whether one is past its expiry depends on the clock too)."""
        if self._quiet is not None and self._quiet.unchanged():
            return
        with Reads.recording() as reads:
            timed = await self._check_ledger()
        self._quiet = reads if reads.quiet and not timed else None

    async def _check_ledger(self) -> bool:
        """The check; True when a dated contract is held."""
        if self.store.one("SELECT 1 FROM orders WHERE status IN ('sent','unknown') LIMIT 1") is not None:
            return False
        venue = await self.venue_holdings()  # one read of the venue for both checks
        balances, perps = venue
        holdings = self.book.holdings()  # one pass over the fills for both checks
        problems = self.ledger_discrepancies(balances, perps, holdings)
        if self.mode == "live":
            self.check_spot_baseline(balances, {sym: q for (m, sym), q in holdings.items() if m == "spot"})
        cash_gap = 0.0 if self.mode == "live" else await self.cash_discrepancy_usd(venue)  # live fees may be paid in BNB
        if abs(cash_gap) > LEDGER_TOLERANCE_USD:
            problems.append(f"cash: venue USDT + margin differs from the ledger by ${cash_gap:,.4f}")
        if problems and self.risk.trading_state()[0] == "ACTIVE":
            self.risk.set_trading_state("REDUCING", "ledger does not reconcile with the venue: " + "; ".join(problems),
                                        {"problems": problems})
        return any(market == "future" for market, _ in (*holdings, *perps))

    def check_spot_baseline(self, balances: dict[str, float], desk_spot: dict[str, float]) -> None:
        """A live account may hold coins of its own. The first reconciliation records them
        (venue balance − what the desk's fills account for) as the baseline; afterwards the venue
        must hold baseline + the desk's coins. Less means coins moved outside the desk (a manual
        sale, a withdrawal): a warning, not REDUCING — the owner may trade their own coins — and
        the reason to give the desk an account (or sub-account) of its own."""
        raw = self.store.get_meta("spot_baseline_json")
        if raw is None:
            baseline = {sym: max(balances.get(sym, 0.0) - desk_spot.get(sym, 0.0), 0.0) for sym in self.market.symbols}
            with self.store.tx():
                self.store.set_meta("spot_baseline_json", json.dumps(baseline))
            self.events.audit("watchdog", "spot_baseline", baseline, "ok", "coins in the account the desk does not manage")
            return
        baseline = json.loads(raw)
        for sym in self.market.symbols:
            want = baseline.get(sym, 0.0) + desk_spot.get(sym, 0.0)
            have = balances.get(sym, 0.0)
            tag = f"baseline:{sym}"
            if have + max(self.orders.dust(sym), 1e-8) < want:
                self.events.note_once(tag, "warning", "spot_moved_outside_desk",
                                      f"{sym} spot at the venue is {have:g}, below the {baseline.get(sym, 0.0):g} the account held "
                                      f"before the desk + the desk's {desk_spot.get(sym, 0.0):g}: coins were sold or moved outside "
                                      "the desk", {"symbol": sym, "venue_quantity": have, "baseline_quantity": baseline.get(sym, 0.0),
                                                   "desk_quantity": desk_spot.get(sym, 0.0)})
            else:
                self.events.clear_note(tag)
