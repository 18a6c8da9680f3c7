"""Venues as the desk names them, and instruments that live on a venue other than the primary one.

Pure: no I/O. A desk trades on one *primary* venue (the paper simulator of the shipped Binance
data, or the live account it was started with); a cross-exchange position also holds a perp on a
second venue. An instrument on the primary venue is named by its coin (``BTC``, or a dated
contract's code); one on another venue carries the venue after an ``@``: ``BTC@bybit``. This is the
industry's instrument id (NautilusTrader writes ``BTCUSDT-PERP.BYBIT``): every key the desk
keeps per instrument (holdings, positions, fills, funding) is then per venue without a new column,
and a coin's tier and lot step still come from the coin.
"""

from __future__ import annotations

import re

VENUE_SEP = "@"
# Perp taker fees at VIP 0 (fractions of notional): Binance 0.05 %, Bybit 0.055 %, Gate 0.05 %, dYdX 0.05 %,
# Hyperliquid 0.045 % (its base tier), OKX 0.05 %.
PERP_TAKER_FEE = {"binance": 0.0005, "bybit": 0.00055, "gate": 0.0005, "dydx": 0.0005, "hyperliquid": 0.00045, "okx": 0.0005}
VENUE_CAP = 0.40  # with more than one venue, no venue holds more than this share of capital in open positions
# venues whose prices the desk reads but whose contracts it cannot book, and why (paper and live refuse every leg there)
MARKET_DATA_ONLY = {"deribit": "Deribit's perpetuals and dated futures are inverse (coin-margined) and the desk's ledger "
                               "is USD-linear: market data only, nothing is traded there"}
_NAME = re.compile(r"^[a-z][a-z0-9]{1,19}$")


def qualify(symbol: str, venue: str | None) -> str:
    """The desk's instrument name for ``symbol`` on ``venue`` (None: the primary venue, the bare name)."""
    if venue is None:
        return symbol
    if not _NAME.match(venue):
        raise ValueError(f"{venue!r} is not a venue name (lower-case letters and digits)")
    return f"{symbol}{VENUE_SEP}{venue}"


def split(instrument: str) -> tuple[str, str | None]:
    """(symbol on its venue, venue or None for the primary one)."""
    base, sep, venue = instrument.partition(VENUE_SEP)
    return (base, venue) if sep else (instrument, None)


def venue_of(instrument: str) -> str | None:
    return split(instrument)[1]


def bare(instrument: str) -> str:
    """The instrument without its venue: ``BTC@bybit`` → ``BTC``."""
    return split(instrument)[0]


def venue_name(raw: str) -> str:
    """A venue as the desk names it (``paper:bybit`` and ``Bybit`` → ``bybit``)."""
    v = raw.strip().lower().removeprefix("paper:")
    if not _NAME.match(v):
        raise ValueError(f"{raw!r} is not a venue name")
    return v


def funding_differential_usd(notional_usd: float, short_rate_per_hour: float, long_rate_per_hour: float,
                             hold_hours: float) -> float:
    """Funding a cross-exchange position earns over ``hold_hours``: the short leg receives its venue's rate, the
    long leg pays the other's (each a fraction per hour: the venue's rate over its own interval), on
    ``notional_usd`` per leg. Positive when the short venue's funding is the richer."""
    return notional_usd * (short_rate_per_hour - long_rate_per_hour) * hold_hours
