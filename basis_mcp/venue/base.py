"""What the desk needs from a venue, paper or live. All methods are async."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from basis_mcp.costs import Market, Side

OrderStatus = Literal["filled", "partially_filled", "rejected", "new", "canceled"]


class VenueError(Exception):
    """The venue answered and refused: nothing was executed."""

    def __init__(self, message: str, code: str = "rejected"):
        super().__init__(message)
        self.code = code


class VenueUnavailable(VenueError):
    """Transient: 5xx, rate limit, connection refused. Nothing was executed; retry later."""

    def __init__(self, message: str, code: str = "unavailable"):
        super().__init__(message, code)


class VenueTimeout(Exception):
    """No answer in time: the order may or may not have executed. Look it up, never resend."""


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    market: Market
    side: Side
    quantity: float
    reduce_only: bool


@dataclass(frozen=True)
class OrderResult:
    client_order_id: str
    venue_order_id: str
    symbol: str
    market: Market
    side: Side
    status: OrderStatus
    requested_qty: float
    filled_qty: float
    avg_price: float
    fee_usd: float
    mid_price: float
    ts: float
    reason: str | None = None


@dataclass(frozen=True)
class PerpPosition:
    symbol: str
    quantity: float  # signed: negative = short
    entry_price: float
    isolated_wallet_usd: float
    leverage: float


@dataclass(frozen=True)
class FundingEvent:
    symbol: str
    time: float
    rate: float
    mark_price: float
    quantity: float  # signed perp position at settlement
    amount_usd: float  # + received, − paid


@dataclass(frozen=True)
class LiquidationEvent:
    symbol: str
    time: float
    quantity: float
    price: float
    loss_usd: float
    client_order_id: str
    market: str = "perp"
    kind: str = "liquidation"  # or "delivery": a dated future settled in cash at expiry (loss_usd 0, price = the index)


@dataclass(frozen=True)
class BorrowEvent:
    """Interest charged on a borrowed-spot position for one hour."""

    symbol: str
    time: float
    rate: float  # per hour, a fraction of the borrowed value
    price: float
    quantity: float  # signed borrowed position (negative)
    amount_usd: float  # − paid
    source: str  # where the rate came from: the venue, or "modelled:<scenario>"


@dataclass(frozen=True)
class TickReport:
    time: float
    funding: list[FundingEvent]
    liquidations: list[LiquidationEvent]
    borrow: list[BorrowEvent] = field(default_factory=list)


class Venue(Protocol):
    name: str

    async def place_order(self, req: OrderRequest) -> OrderResult: ...

    async def fetch_order(self, client_order_id: str, symbol: str, market: Market) -> OrderResult | None: ...

    async def fetch_perp_position(self, symbol: str) -> PerpPosition | None: ...

    async def fetch_balances(self) -> dict[str, float]: ...

    async def set_leverage(self, symbol: str, leverage: float) -> None: ...

    async def add_margin(self, symbol: str, amount_usd: float) -> None: ...

    async def funding_history(self, since: float) -> list[FundingEvent]: ...

    async def liquidations(self, since: float, symbols: list[str] | None = None) -> list[LiquidationEvent]: ...
