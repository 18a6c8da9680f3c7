"""Map ccxt exceptions to the desk's venue errors, with nothing secret in the message.

ccxt messages can carry request URLs (with signatures) and response bodies. Everything the
agent or the audit log sees goes through `basis_mcp.redact.scrub`: query strings are dropped,
and any registered secret (API key, secret, passphrase), in any common encoding, is replaced
by ``***``.
"""

from __future__ import annotations

import ccxt

from basis_mcp.redact import register_secret
from basis_mcp.redact import scrub as _scrub
from basis_mcp.venue.base import VenueError, VenueTimeout, VenueUnavailable

__all__ = ["register_secret", "scrub", "venue_error"]


def scrub(text: str) -> str:
    return _scrub(text, 600)


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
