"""The book: positions and their legs as the store records them, and what they are worth.

Owns reading ``positions``, ``legs``, ``fills``, ``funding_payments`` and ``borrow_payments``,
the P&L of each position (`basis_mcp.ledger`, per leg, summed) and of the whole book, and
the position views the tools return. Writes nothing but what execution asks it to
(`add_legs`). Calls the store and `MarketData` (marks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from basis_mcp import strategies
from basis_mcp.clock import iso
from basis_mcp.config import Settings
from basis_mcp.dated import parse_contract, underlying
from basis_mcp.desk.market import MarketData
from basis_mcp.feed import MarketDataUnavailable
from basis_mcp.ledger import PnL, held_by_leg, pnl
from basis_mcp.legs import PlannedLeg
from basis_mcp.models import FillOut, LegOut, PnLBreakdown, PositionOut
from basis_mcp.store import Store
from basis_mcp.strategies.base import LegSpec, StrategySpec

OPEN_STATES = ("opening", "open", "closing")
FINISHED_STATES = ("closed", "liquidated", "failed")


def _r(x: float | None, nd: int = 10) -> float | None:  # (shared by the read-only views)
    return None if x is None else round(float(x), nd)


@dataclass(frozen=True)
class Leg:
    """One leg of a position as recorded."""

    id: int
    position_id: int
    idx: int
    role: str
    market: str
    venue: str
    symbol: str
    expiry: float | None
    side: str
    ratio: float
    quantity: float
    entry_price: float | None
    exit_price: float | None
    margin_usd: float | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Leg:
        return cls(**{k: r[k] for k in cls.__dataclass_fields__})

    @property
    def sign(self) -> int:
        return 1 if self.side == "long" else -1

    def order_side(self, opening: bool) -> str:
        return "buy" if (self.side == "long") == opening else "sell"

    @property
    def leveraged(self) -> bool:
        return self.market in strategies.LEVERAGED


class Book:
    def __init__(self, settings: Settings, store: Store, market: MarketData):
        self.settings = settings
        self.store = store
        self.market = market

    @property
    def capital_usd(self) -> float:
        return float(self.store.get_meta("capital_usd") or self.settings.capital_usd)

    # ------------------------------------------------------------------ positions and legs

    def position(self, pid: int) -> sqlite3.Row | None:
        return self.store.one("SELECT * FROM positions WHERE id = ?", (pid,))

    def positions(self, statuses: tuple[str, ...] = OPEN_STATES) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(statuses))
        return self.store.q(f"SELECT * FROM positions WHERE status IN ({marks}) ORDER BY id", statuses)

    def has_open(self) -> bool:
        return self.store.one("SELECT 1 FROM positions WHERE status IN ('opening','open','closing') LIMIT 1") is not None

    def strategy(self, row: sqlite3.Row) -> StrategySpec:
        """The position's strategy; one this process does not know (a plugin not loaded, a renamed
        strategy) is rebuilt from its recorded legs, so it can still be watched and closed: entered
        in leg order, closed in reverse, no basis for the playbooks to read."""
        try:
            return strategies.get(row["strategy"])
        except KeyError:
            legs = self.legs(row["id"])
            return StrategySpec(
                name=row["strategy"], title=row["strategy"], summary="not registered here: managed from its recorded legs",
                legs=tuple(LegSpec(role=leg.role, market=leg.market, side=leg.side, symbol=leg.symbol) for leg in legs),  # type: ignore[arg-type]
                playbooks=(), basis_legs=None)

    def legs(self, pid: int) -> list[Leg]:
        return [Leg.from_row(r) for r in self.store.q("SELECT * FROM legs WHERE position_id = ? ORDER BY idx", (pid,))]

    def leg(self, leg_id: int) -> Leg:
        return Leg.from_row(self.store.one("SELECT * FROM legs WHERE id = ?", (leg_id,)))

    def add_legs(self, pid: int, venue: str | Callable[[str], str], planned: list[PlannedLeg]) -> list[int]:
        """Record a new position's legs (inside the caller's transaction); ``venue``: the venue's name, or
        a function naming the venue of a leg's instrument (cross-exchange legs sit on different venues)."""
        ids = []
        for p in planned:
            expiry = parse_contract(p.symbol)[1] if p.spec.market == "future" else None
            cur = self.store.x(
                "INSERT INTO legs(position_id, idx, role, market, venue, symbol, expiry, side, ratio, quantity)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (pid, p.idx, p.spec.role, p.spec.market, venue(p.symbol) if callable(venue) else venue, p.symbol, expiry,
                 p.spec.side, p.ratio, p.quantity))
            ids.append(int(cur.lastrowid))
        return ids

    def venue_usage(self, price: Callable[[str, str], float], statuses: tuple[str, ...] = OPEN_STATES,
                    unfilled_only: bool = False) -> dict[str, float]:
        """Capital the positions in ``statuses`` commit per venue (by the venue's name): each leg's margin (leveraged
        legs: quantity × entry price ÷ the position's leverage) or cost (owned spot), at its entry price, or at
        ``price(market, symbol)`` while it has none yet (``unfilled_only``: only those legs, an entry waiting to fill)."""
        out: dict[str, float] = {}
        marks = ",".join("?" * len(statuses))
        for r in self.store.q(
                f"SELECT l.venue, l.market, l.symbol, l.quantity, l.entry_price, p.leverage FROM legs l"
                f" JOIN positions p ON p.id = l.position_id WHERE p.status IN ({marks})"
                + (" AND l.entry_price IS NULL" if unfilled_only else ""), statuses):
            try:
                px = r["entry_price"] or price(r["market"], r["symbol"])
            except (MarketDataUnavailable, KeyError):
                continue
            usd = r["quantity"] * px * (1.0 if r["market"] == "spot" else 1.0 / max(r["leverage"], 1.0))
            out[r["venue"]] = out.get(r["venue"], 0.0) + usd
        return out

    def position_on(self, market: str, symbol: str, statuses: tuple[str, ...] = OPEN_STATES) -> sqlite3.Row | None:
        """The newest position in ``statuses`` with a leg on this instrument (an instrument is in one open position at a time)."""
        marks = ",".join("?" * len(statuses))
        return self.store.one(
            f"SELECT p.* FROM positions p JOIN legs l ON l.position_id = p.id WHERE l.market = ? AND l.symbol = ?"
            f" AND p.status IN ({marks}) ORDER BY p.id DESC LIMIT 1", (market, symbol, *statuses))

    def position_for_symbol(self, symbol: str) -> sqlite3.Row | None:
        """The newest open position with any leg on ``symbol``."""
        return self.store.one(
            "SELECT p.* FROM positions p WHERE p.status IN ('opening','open','closing') AND (p.symbol = ? OR EXISTS"
            " (SELECT 1 FROM legs l WHERE l.position_id = p.id AND l.symbol = ?)) ORDER BY p.id DESC LIMIT 1", (symbol, symbol))

    def exposure_by_symbol(self, row: sqlite3.Row) -> dict[str, float]:
        """A position's notional per coin its legs trade (the largest leg on each coin): the position's
        own notional on its symbol, a leg on another coin at its quantity × entry price (its plan before it filled).
        A dated contract is its coin's exposure (a calendar spread is one BTC position, not BTC and BTC-240329)."""
        out: dict[str, float] = {row["symbol"]: float(row["notional_usd"])}
        for r in self.store.q("SELECT symbol, quantity, entry_price FROM legs WHERE position_id = ?", (row["id"],)):
            if underlying(r["symbol"]) == row["symbol"]:
                continue
            price = r["entry_price"]
            if price is None:
                try:
                    price = self.market.mid("perp", r["symbol"])
                except (MarketDataUnavailable, KeyError):
                    price = 0.0
            coin = underlying(r["symbol"])
            out[coin] = max(out.get(coin, 0.0), float(r["quantity"]) * price)
        return out

    def tier_usage(self) -> dict[str, float]:
        """Notional per tier over every open position, each leg's coin counted in its own tier (one read of the book)."""
        out: dict[str, float] = {}
        for r in self.positions():
            for sym, notional in self.exposure_by_symbol(r).items():
                tier = self.settings.tier_of(sym)
                out[tier] = out.get(tier, 0.0) + notional
        return out

    def tier_in_use(self, tier: str) -> float:
        return self.tier_usage().get(tier, 0.0)

    # ------------------------------------------------------------------ the ledger of one position

    def fills(self, pid: int) -> list[dict[str, Any]]:
        rows = self.store.q(
            "SELECT f.*, o.client_order_id, o.purpose, l.role FROM fills f JOIN orders o ON o.id = f.order_id"
            " JOIN legs l ON l.id = f.leg_id WHERE f.position_id = ? ORDER BY f.id", (pid,))
        return [dict(r) for r in rows]

    def funding_amounts(self, pid: int) -> list[float]:
        return [r["amount_usd"] for r in self.store.q("SELECT amount_usd FROM funding_payments WHERE position_id = ?", (pid,))]

    def borrow_amounts(self, pid: int) -> list[float]:
        return [r["amount_usd"] for r in self.store.q("SELECT amount_usd FROM borrow_payments WHERE position_id = ?", (pid,))]

    def held(self, pid: int, fills: list[dict[str, Any]] | None = None) -> dict[Hashable, float]:
        """Signed base quantity per leg id, from the fills."""
        return held_by_leg(self.fills(pid) if fills is None else fills)

    def held_abs(self, legs: list[Leg], held: dict[Hashable, float]) -> list[float]:
        """Each leg's quantity in its own direction (a long leg's +, a short leg's −; negative = wrong way)."""
        return [leg.sign * held.get(leg.id, 0.0) for leg in legs]

    def marks(self, pid: int, legs: list[Leg] | None = None, fills: list[dict[str, Any]] | None = None) -> dict[Hashable, float]:
        """The price each leg of an open position is valued at: the market's mark, or its last fill without market data."""
        legs = self.legs(pid) if legs is None else legs
        out: dict[Hashable, float] = {}
        last: dict[Hashable, float] | None = None
        for leg in legs:
            try:
                out[leg.id] = self.market.mark(leg.market, leg.symbol)
            except (MarketDataUnavailable, KeyError):
                if last is None:
                    last = {f["leg_id"]: f["price"] for f in (self.fills(pid) if fills is None else fills)}
                out[leg.id] = last.get(leg.id, 0.0)
        return out

    def position_pnl(self, pid: int, mark_to_market: bool = False) -> PnL:
        fills = self.fills(pid)
        marks = self.marks(pid, fills=fills) if mark_to_market else None
        return pnl(fills, self.funding_amounts(pid), marks, self.borrow_amounts(pid))

    def book_pnl(self) -> tuple[float, list[PnL]]:
        """(realized P&L of finished positions, the mark-to-market P&L of each open one), from the
        desk's own ledger: fills, fees, funding and borrow. This — not the account's total value —
        is what the drawdown limit is measured on, so assets in the account that the desk does not
        manage (or deposits and withdrawals) never move it."""
        realized = float(self.store.one(
            "SELECT COALESCE(SUM(realized_pnl_usd), 0) AS s FROM positions WHERE status IN ('closed','liquidated','failed')")["s"])
        opens = [self.position_pnl(r["id"], mark_to_market=True) for r in self.positions()]
        return realized, opens

    def equity_usd(self) -> float:
        """Capital plus everything the desk has made or lost on it (realized + open mark-to-market)."""
        realized, opens = self.book_pnl()
        return self.capital_usd + realized + sum(p.total_usd for p in opens)

    def holdings(self) -> dict[tuple[str, str], float]:
        """Signed quantity per (market, symbol), summed over every fill the desk recorded."""
        out: dict[tuple[str, str], float] = {}
        for r in self.store.q("SELECT l.market, l.symbol, f.side, f.quantity FROM fills f JOIN legs l ON l.id = f.leg_id"):
            k = (r["market"], r["symbol"])
            out[k] = out.get(k, 0.0) + (r["quantity"] if r["side"] == "buy" else -r["quantity"])
        return out

    # ------------------------------------------------------------------ views

    def position_out(self, row: sqlite3.Row, with_fills: bool = True) -> PositionOut:
        pid = row["id"]
        fills = self.fills(pid)
        legs = self.legs(pid)
        held = self.held(pid, fills)
        p = pnl(fills, self.funding_amounts(pid), None, self.borrow_amounts(pid))
        first: dict[str, Leg] = {}
        for leg in legs:  # the first spot-like leg (owned or borrowed) and the first perp
            first.setdefault("spot" if leg.market in strategies.SPOT_LIKE else leg.market, leg)
        spot, perp = first.get("spot"), first.get("perp")
        return PositionOut(
            position_id=pid,
            symbol=row["symbol"],
            strategy=row["strategy"],
            playbook=row["playbook"],
            status=row["status"],
            quantity=row["quantity"],
            leverage=row["leverage"],
            notional_usd=_r(row["notional_usd"], 6) or 0.0,
            entry_spot_price=spot.entry_price if spot else None,
            entry_perp_price=perp.entry_price if perp else None,
            entry_basis_pct=_r(row["entry_basis_pct"], 8),
            exit_spot_price=spot.exit_price if spot else None,
            exit_perp_price=perp.exit_price if perp else None,
            exit_basis_pct=_r(row["exit_basis_pct"], 8),
            margin_usd=_r(row["margin_usd"], 8),
            opened_at=iso(row["opened_at"]) or "",
            closed_at=iso(row["closed_at"]),
            close_reason=row["close_reason"],
            pnl=self.pnl_out(p) if row["status"] in FINISHED_STATES else PnLBreakdown(
                basis_pnl_usd=0.0,
                funding_usd=_r(p.funding_usd, 8) or 0.0,
                fees_usd=_r(p.fees_usd, 8) or 0.0,
                slippage_usd=_r(p.slippage_usd, 8) or 0.0,
                borrow_usd=_r(p.borrow_usd, 8) or 0.0,
                total_usd=_r(p.funding_usd + p.borrow_usd - p.fees_usd - p.slippage_usd, 8) or 0.0,
            ),
            legs=[LegOut(leg_id=leg.id, role=leg.role, market=leg.market, venue=leg.venue, symbol=leg.symbol, side=leg.side,
                         quantity=leg.quantity, held_quantity=_r(held.get(leg.id, 0.0), 12) or 0.0,
                         entry_price=leg.entry_price, exit_price=leg.exit_price, margin_usd=_r(leg.margin_usd, 8),
                         expiry=iso(leg.expiry)) for leg in legs],
            fill_count=len(fills),
            fills=[] if not with_fills else [
                FillOut(order_id=f["order_id"], client_order_id=f["client_order_id"], purpose=f["purpose"], leg_id=f["leg_id"],
                        role=f["role"], market=f["market"], side=f["side"], quantity=f["quantity"], price=f["price"],
                        mid_price=f["mid_price"], fee_usd=f["fee_usd"], time=iso(f["ts"]) or "")
                for f in fills
            ],
        )

    @staticmethod
    def pnl_out(p: PnL) -> PnLBreakdown:
        return PnLBreakdown(
            basis_pnl_usd=_r(p.basis_pnl_usd, 8) or 0.0,
            funding_usd=_r(p.funding_usd, 8) or 0.0,
            fees_usd=_r(p.fees_usd, 8) or 0.0,
            slippage_usd=_r(p.slippage_usd, 8) or 0.0,
            borrow_usd=_r(p.borrow_usd, 8) or 0.0,
            total_usd=_r(p.total_usd, 8) or 0.0,
        )
