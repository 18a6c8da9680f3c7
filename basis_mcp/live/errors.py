"""Map ccxt exceptions to the desk's venue errors, with nothing secret in the message.

ccxt messages can carry request URLs (with signatures) and response bodies. Everything the
agent or the audit log sees goes through `scrub`: query strings are dropped, and any
registered secret (API key, secret, passphrase) is replaced by ``***``.
"""

from __future__ import annotations

import re

import ccxt

from basis_mcp.venue.base import VenueError, VenueTimeout, VenueUnavailable

_SECRETS: set[str] = set()
_QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")


def register_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    out = _QUERY.sub(r"\1?…", text)
    for s in sorted(_SECRETS, key=len, reverse=True):
        out = out.replace(s, "***")
    return out[:600]


def venue_error(e: BaseException, venue: str, what: str) -> Exception:
    """A desk-level exception for a ccxt failure while doing ``what`` on ``venue``."""
    msg = scrub(f"{venue} {what}: {type(e).__name__}: {e}")
    if isinstance(e, ccxt.RequestTimeout):
        return VenueTimeout(msg)
    if isinstance(e, ccxt.AuthenticationError | ccxt.PermissionDenied | ccxt.AccountSuspended):
        return VenueError(scrub(f"{venue} rejected the API credentials while doing {what} ({type(e).__name__})"), "auth")
    if isinstance(e, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return VenueUnavailable(msg, "rate_limited")
    if isinstance(e, ccxt.NetworkError):  # ExchangeNotAvailable (5xx), OnMaintenance, connection errors
        return VenueUnavailable(msg)
    if isinstance(e, ccxt.InsufficientFunds):
        return VenueError(msg, "insufficient_balance")
    if isinstance(e, ccxt.OrderNotFound):
        return VenueError(msg, "order_not_found")
    if isinstance(e, ccxt.InvalidOrder):
        return VenueError(msg, "invalid_order")
    if isinstance(e, ccxt.BadSymbol):
        return VenueError(msg, "bad_symbol")
    if isinstance(e, ccxt.BaseError):
        return VenueError(msg, "exchange_error")
    return VenueError(scrub(f"{venue} {what}: unexpected {type(e).__name__}"), "unexpected")
