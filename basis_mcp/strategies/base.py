"""What a strategy is: legs plus the rules it trades under. Declarations only, no I/O.

A position is a strategy applied to a symbol: one leg per `LegSpec`, each an instrument
(market kind, venue, symbol, expiry where it has one), a side and a quantity. The desk's
engines read these declarations and nothing else about a trade's shape:

- execution sends the legs in ``entry_order`` (the thinner or riskier leg first), sizes each
  later leg to what the earlier ones filled, unwinds filled legs if a later one fails, and
  closes in ``exit_order``, keeping later legs on while they still hedge an earlier leg that
  did not close;
- the ledger keeps orders, fills, funding and margin per leg, and P&L sums over legs;
- the watchdog reads every leveraged leg's margin and the legs' balance, and applies the
  playbook's exit rules when the strategy has a basis (``basis_legs``) to read them on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Market = Literal["spot", "margin_spot", "perp", "future"]
MARKETS: tuple[str, ...] = ("spot", "margin_spot", "perp", "future")
LEVERAGED: frozenset[str] = frozenset({"margin_spot", "perp", "future"})
SPOT_LIKE: frozenset[str] = frozenset({"spot", "margin_spot"})  # priced, charged and stepped as spot (owned or borrowed)
LegSide = Literal["long", "short"]


@dataclass(frozen=True)
class LegSpec:
    """One leg of a strategy.

    ``symbol``: the base asset, or None for the symbol the agent names at entry.
    ``sizing``: ``quantity`` matches the first leg's base quantity × ``ratio``; ``notional``
    matches its dollar value at entry mid prices × ``ratio`` (legs on different coins).
    """

    role: str
    market: Market
    side: LegSide
    symbol: str | None = None
    sizing: Literal["quantity", "notional"] = "quantity"
    ratio: float = 1.0
    venue_slot: Literal["rich", "cheap"] | None = None  # cross-exchange: the venue paying the most / least funding,
    # chosen at entry (or named by the agent); None: the desk's primary venue

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise ValueError(f"leg {self.role!r}: market {self.market!r} is not one of {', '.join(MARKETS)}")
        if self.side not in ("long", "short"):
            raise ValueError(f"leg {self.role!r}: side must be long or short, not {self.side!r}")
        if not self.ratio > 0:
            raise ValueError(f"leg {self.role!r}: ratio must be positive")
        if self.market == "spot" and self.side == "short":
            raise ValueError(f"leg {self.role!r}: spot cannot be held short; a short spot leg is margin_spot (borrowed)")

    @property
    def sign(self) -> int:
        """+1 for a long leg, −1 for a short one (the sign of its held quantity)."""
        return 1 if self.side == "long" else -1

    def order_side(self, opening: bool) -> Literal["buy", "sell"]:
        """The order side that opens (``opening``) or reduces this leg."""
        buys = (self.side == "long") == opening
        return "buy" if buys else "sell"


@dataclass(frozen=True)
class StrategySpec:
    """A trade shape: its legs and how they are traded.

    ``basis_legs`` = (reference, other): the position's basis is (other − reference) /
    reference × 100 at mid prices, the number the playbooks' basis rules read (for
    cash-and-carry, spot and perp). None: the strategy has no basis the rules can read,
    and only the risk rules (margin, liquidation distance, leg balance) apply to it.
    ``direction``: +1 when the position is short the rich leg (earns as a positive basis falls
    and from positive funding); −1 for the mirror image (earns as a negative basis rises and
    from negative funding): the rules read mirrored signals.
    """

    name: str
    title: str
    summary: str
    legs: tuple[LegSpec, ...]
    entry_order: tuple[int, ...] = ()
    exit_order: tuple[int, ...] = ()
    playbooks: tuple[str, ...] = ("convergence", "carry")
    basis_legs: tuple[int, int] | None = None
    risks: tuple[str, ...] = field(default_factory=tuple)
    direction: int = 1  # +1: earns as the basis falls and from positive funding; −1: the mirror (see Signals.seen_by)
    funding_direction: int | None = None  # the sign of the funding the position receives per unit of rate (None: direction)

    def __post_init__(self) -> None:
        n = len(self.legs)
        if n < 2:
            raise ValueError(f"strategy {self.name!r}: a hedged position needs at least two legs")
        roles = [leg.role for leg in self.legs]
        if len(set(roles)) != n:
            raise ValueError(f"strategy {self.name!r}: leg roles must be unique ({roles})")
        if self.legs[0].sizing != "quantity" or self.legs[0].ratio != 1.0:
            raise ValueError(f"strategy {self.name!r}: the first leg is the reference (quantity sizing, ratio 1)")
        if not self.entry_order:
            object.__setattr__(self, "entry_order", tuple(range(n)))
        if not self.exit_order:
            object.__setattr__(self, "exit_order", tuple(reversed(self.entry_order)))
        for label, order in (("entry_order", self.entry_order), ("exit_order", self.exit_order)):
            if sorted(order) != list(range(n)):
                raise ValueError(f"strategy {self.name!r}: {label} {order} is not an order of the {n} legs")
        if self.direction not in (1, -1):
            raise ValueError(f"strategy {self.name!r}: direction must be +1 or -1")
        if self.funding_direction is None:
            object.__setattr__(self, "funding_direction", self.direction)
        if self.funding_direction not in (1, -1):
            raise ValueError(f"strategy {self.name!r}: funding_direction must be +1 or -1")
        if self.basis_legs is not None and (len(set(self.basis_legs)) != 2 or not all(0 <= i < n for i in self.basis_legs)):
            raise ValueError(f"strategy {self.name!r}: basis_legs {self.basis_legs} must name two different legs")

    def leg(self, role: str) -> LegSpec:
        for leg in self.legs:
            if leg.role == role:
                return leg
        raise KeyError(role)

    @property
    def cross_venue(self) -> bool:
        """Its legs sit on different venues, chosen at entry (see `LegSpec.venue_slot`)."""
        return any(leg.venue_slot is not None for leg in self.legs)

    @property
    def dated(self) -> bool:
        """It has a dated-future leg: an expiry to choose at entry and to leave before."""
        return any(leg.market == "future" for leg in self.legs)

    @property
    def markets(self) -> frozenset[str]:
        return frozenset(leg.market for leg in self.legs)


_REGISTRY: dict[str, StrategySpec] = {}


def register(spec: StrategySpec, replace: bool = False) -> StrategySpec:
    """Make a strategy available to the desk by name (a test may register its own)."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] != spec:
        raise ValueError(f"a different strategy named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> StrategySpec:
    """The registered strategy called ``name`` (KeyError if none)."""
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)
