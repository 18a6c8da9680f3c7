"""Build ccxt exchange clients for the venues the desk supports.

``base_url`` (tests, benches, a local simulator) rewrites every entry of
``exchange.urls['api']`` to the same host, keeping each entry's path, so one local server can
answer spot (/api, /sapi) and USD-M futures (/fapi) requests exactly as Binance would.

Hyperliquid (perpetuals only, hourly funding, USDC-settled: ccxt names its perps ``BTC/USDC:USDC``)
signs every action with a wallet key instead of an API key: ``Credentials(api_key=<wallet address>,
secret=<private key of that wallet or of an API wallet approved for it>)`` become ccxt's
``walletAddress`` and ``privateKey``. Its markets load from ``POST /info`` (``spotMeta`` for the
currencies, ``metaAndAssetCtxs`` for the perps; no spot or HIP-3 markets).

Deribit is market data only (`basis_mcp.live.deribit`: its BTC / ETH futures are inverse): its markets load
from one ``get_instruments`` (every kind) and ``get_currencies``; no credentials are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async

SUPPORTED = ("binance", "bybit", "okx", "hyperliquid", "deribit")


@dataclass(frozen=True)
class Credentials:
    api_key: str
    secret: str
    password: str | None = None  # OKX passphrase

    def __repr__(self) -> str:  # never print a secret, even by accident
        return "Credentials(api_key=***, secret=***)"


def _rewrite(urls: Any, base_url: str) -> Any:
    base = base_url.rstrip("/")
    if isinstance(urls, dict):
        return {k: _rewrite(v, base) for k, v in urls.items()}
    if isinstance(urls, str) and urls.startswith("http"):
        parts = urlsplit(urls)
        return base + parts.path
    return urls


def make_exchange(
    venue: str,
    credentials: Credentials | None = None,
    base_url: str | None = None,
    timeout_ms: int = 10_000,
    **options: Any,
) -> Any:
    """A ccxt async client with the rate limiter on and, for Binance, no wallet call at load."""
    if venue not in SUPPORTED:
        raise ValueError(f"unknown venue {venue!r}; supported: {', '.join(SUPPORTED)}")
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "enableLastJsonResponse": True,  # the feed reads venue timestamps ccxt does not parse
        "timeout": timeout_ms,
        "options": {"fetchCurrencies": False, **options},
    }
    if venue == "binance":
        config["options"].setdefault("fetchMarkets", {"types": ["spot", "linear"]})
    if venue == "bybit":
        # on a unified account ccxt's fetch_order refuses to run (ArgumentsRequired) unless told that
        # /v5/order/realtime only reaches the last 500 orders
        config["options"].setdefault("fetchOrder", {"acknowledged": True})
    if venue == "hyperliquid":
        config["options"].setdefault("fetchMarkets", {"types": ["swap"]})  # perps only: no spot, no HIP-3 dexes
        config["options"].setdefault("builderFee", False)  # ccxt's own builder fee: 0 % on the desk's orders
        config["options"].setdefault("refSet", True)  # and no setReferrer action sent from the desk's wallet
        if credentials is not None:  # a wallet signs (EIP-712); there is no API key / secret pair
            config["walletAddress"] = credentials.api_key
            config["privateKey"] = credentials.secret
            credentials = None
    if credentials is not None:
        config["apiKey"] = credentials.api_key
        config["secret"] = credentials.secret
        if credentials.password:
            config["password"] = credentials.password
    ex = getattr(ccxt_async, venue)(config)
    if venue == "binance":
        ex.options.setdefault("setMarginMode", {})["throwMarginModeAlreadySet"] = False
    if venue == "okx":  # ccxt's okx reads /asset/currencies (a funding-account permission) at load whatever the
        ex.has["fetchCurrencies"] = False  # option says: currencies come from the markets instead, as elsewhere
    if base_url:
        ex.urls["api"] = _rewrite(ex.urls["api"], base_url)
        if venue == "binance":
            _errors_by_path(ex)
    return ex


def _errors_by_path(ex: Any) -> None:
    """ccxt picks Binance's per-market error table by matching the host (fapi.binance.com...);
    behind a rewritten base URL, classify by path instead so -2019, -2022, -4116, -4164 keep
    their real exception classes (InsufficientFunds, InvalidOrder)."""

    def by_path(url: str, exact_or_broad: str) -> dict:
        path = urlsplit(url or "").path
        kind = "linear" if path.startswith("/fapi/") else "spot" if path.startswith(("/api/", "/sapi/")) else None
        return ex.safe_dict(ex.safe_dict(ex.exceptions, kind, {}), exact_or_broad, {}) if kind else {}

    ex.get_exceptions_by_url = by_path
