"""Deribit through ccxt: market data only (its quarterlies are quoted for the calendar spread), and why the desk
does not trade there. `basis_mcp.live.feed.LiveFeed` and `basis_mcp.live.venue.LiveVenue` call these (``deribit`` hooks).

- Instruments: Deribit's BTC and ETH perpetuals and dated futures are INVERSE (coin-margined): quoted in USD,
  sized in USD (``contract_size`` 10 USD a BTC contract, 1 USD an ETH one), margined and settled in the coin, so
  their P&L is in the coin. ccxt names them ``BTC/USD:BTC`` (``BTC-PERPETUAL``) and ``BTC/USD:BTC-260327``
  (``BTC-27MAR26``), ``inverse`` True. The feed lists the coins with such a perpetual, quotes the perpetual (the
  coin's snapshot) and the QUARTERLIES among the dated futures (desk code ``BTC-260327``: `basis_mcp.dated`;
  weeklies and monthlies are not quoted), reloading the markets when one expires, as on Binance and OKX.
- Quotes: one ``get_book_summary_by_currency`` (``kind=future``; ccxt's ``fetch_tickers`` with ``code``) per coin
  of the universe: every future's ``mark_price``, ``last``, ``bid_price`` / ``ask_price`` and
  ``estimated_delivery_price`` (the index, until delivery), the perpetual's ``current_funding``. The venue's time
  is each answer's ``usOut``. A snapshot's ``spot`` is the index (there is no spot book: ``spot_source``
  "index", spot bid / ask None); a quarterly's ``perp`` and ``mark`` are its mark, so its ``basis_pct`` is its
  premium over the index (the desk's calendar premium over the perp reads the perpetual's snapshot). Funding accrues every millisecond on Deribit; ``current_funding`` (an 8-hour
  rate) stands for the rate of an 8-hourly settlement.
- Orders: none. The desk's ledger is USD-linear (a position is a quantity of coins, its P&L and margin in USD); an
  inverse contract's P&L is in the coin and its coin exposure moves with the price, so a leg there would be booked
  wrong. Every order, leverage, margin or live-trading start-up on Deribit is refused (`refusal`, ``bad_market``)
  before anything is sent; the desk holds nothing there (no balances, positions, funding, liquidations).
- Deribit also lists linear USDC-settled contracts (``BTC_USDC-PERPETUAL``, ccxt ``BTC/USDC:USDC``, and dated
  USDC futures, ``BTC/USDC:USDC-<yymmdd>``): linear, but neither quoted nor traded here.
"""

from __future__ import annotations

import re
from typing import Any

from basis_mcp.dated import contract_code, parse_contract
from basis_mcp.venue.base import VenueError

VENUE = "deribit"
QUOTE = "USD"  # what its coin-margined contracts are quoted (and sized) in
SPOT_SOURCE = "index"
FUNDING_INTERVAL_H = 8.0
_INTERVAL_MS = int(FUNDING_INTERVAL_H * 3_600_000)
_NAME = re.compile(r"^([A-Z0-9]{2,20})-(\d{1,2})([A-Z]{3})(\d{2})$")  # BTC-27MAR26, BTC-5AUG16
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def refusal(what: str) -> VenueError:
    """Why nothing is sent to Deribit (``bad_market``)."""
    return VenueError(f"{VENUE}: {what} refused, nothing was sent: Deribit's BTC and ETH futures are inverse "
                      "(coin-margined: sized in USD, P&L and margin in the coin) and the desk's ledger is USD-linear; "
                      "Deribit is market data only (its quarterlies are quoted, not traded)", "bad_market")


def perp_symbol(base: str) -> str:
    """ccxt's symbol of the coin's inverse perpetual: ``BTC`` → ``BTC/USD:BTC``."""
    return f"{base}/{QUOTE}:{base}"


def inverse(m: dict[str, Any]) -> bool:
    """A coin-margined contract: quoted in USD, settled in its own coin."""
    return bool(m.get("inverse") and m.get("quote") == QUOTE and m.get("settle") == m.get("base"))


def desk_code(name: str) -> str | None:
    """The desk code of a quarterly Deribit names ``BTC-27SEP24`` (``BTC-240927``); None for anything else."""
    m = _NAME.match(name or "")
    if not m or m.group(3) not in MONTHS:
        return None
    try:
        base, expiry = parse_contract(f"{m.group(1)}-{m.group(4)}{MONTHS.index(m.group(3)) + 1:02d}{int(m.group(2)):02d}")
    except ValueError:
        return None
    return contract_code(base, expiry)


def listed(markets: dict[str, Any]) -> list[str]:
    """The coins with an active inverse perpetual."""
    return sorted({m["base"] for m in markets.values()
                   if m.get("swap") and inverse(m) and m.get("active", True) is not False})


async def refresh(feed: Any) -> dict[str, Any]:
    """The futures summaries (perpetual and dated) of every listed coin of the universe: one request a coin. A
    quarterly listed since the markets loaded (ccxt keys it by Deribit's name) is keyed by its desk code, which
    makes the feed reload the markets."""
    rows: dict[str, Any] = {}
    for base in (b for b in feed.universe if b in feed.listed):
        got = await feed._call(f"{base} futures summary", feed.ex.fetch_tickers(params={"code": base, "kind": "future"}))
        rows |= {(k if k in feed.ex.markets else desk_code(k) or k): t for k, t in got.items()}
    return rows


def take(feed: Any, tickers: dict[str, Any]) -> None:
    """The perpetual's mark, last, touch, funding and index (the coin's quote), and each listed quarterly's mark
    and touch, from ccxt's tickers of ``get_book_summary_by_currency``."""
    for key, t in tickers.items():
        m = feed.ex.markets.get(feed.dated.get(key, key)) or {}  # a desk code: a quarterly new to the markets
        base = m.get("base")
        if not inverse(m) or base not in feed.listed:
            continue
        ts = int(t.get("timestamp") or feed._payload_ms or feed.clock.now() * 1000.0)
        if m.get("future") and m.get("expiry"):
            code = contract_code(base, m["expiry"] / 1000.0)
            if code in feed.dated:
                feed._take_dated(code, {"markPrice": t.get("markPrice"), "timestamp": ts})
                if code in feed.fq:
                    feed.fq[code].perp_bid, feed.fq[code].perp_ask = t.get("bid"), t.get("ask")
            continue
        if not m.get("swap"):
            continue
        info = t.get("info") or {}
        q = feed._quote(base)
        mark = float(t["markPrice"]) if t.get("markPrice") else None
        rate = float(info["current_funding"]) if info.get("current_funding") is not None else None
        feed._observe_funding(base, q, rate, (ts // _INTERVAL_MS + 1) * _INTERVAL_MS, mark)
        q.interval_h = FUNDING_INTERVAL_H
        q.mark = mark or q.mark
        q.perp = float(t["last"]) if t.get("last") else q.mark
        q.perp_bid, q.perp_ask = t.get("bid"), t.get("ask")
        q.perp_time = q.spot_time = ts / 1000.0
        if info.get("estimated_delivery_price"):
            q.spot_bid = q.spot_ask = float(info["estimated_delivery_price"])
        if q.mark:
            q.marks.append((q.perp_time, q.mark))
