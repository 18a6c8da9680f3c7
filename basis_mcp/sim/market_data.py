"""Public market data: exchange info, tickers, order books, premium index, funding, klines,
quarterly delivery prices. The futures endpoints serve the listed quarterlies (`Quarterly`,
SIMULATED price) beside the perps, in Binance's format for delivery contracts (premium index
without funding: ``lastFundingRate`` "" and ``nextFundingTime`` 0)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from basis_mcp.dated import quarterly_expiries
from basis_mcp.history import HOUR
from basis_mcp.sim.instruments import (
    KLINE_SECONDS,
    QUOTE,
    TICK,
    BinanceError,
    Instrument,
    PriceAt,
    Quarterly,
    _need,
    _s8,
    hourly_price,
    last_closed_open,
    select_candles,
)
from basis_mcp.sim.state import SimState

PERPETUAL_DELIVERY_MS = 4133404800000

# wire fields that never change in this simulator (Binance sends them on every row)
SPOT_SYMBOL_STATIC: dict[str, Any] = {
    "baseAssetPrecision": 8,
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "baseCommissionPrecision": 8,
    "quoteCommissionPrecision": 8,
    "orderTypes": ["MARKET"],  # the only type simulated; ccxt refuses others client-side
    "icebergAllowed": False,
    "ocoAllowed": False,
    "quoteOrderQtyMarketAllowed": True,
    "allowTrailingStop": False,
    "cancelReplaceAllowed": False,
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": False,
    "permissions": [],
    "permissionSets": [["SPOT"]],
    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
}
PERP_SYMBOL_STATIC: dict[str, Any] = {
    "contractType": "PERPETUAL",
    "deliveryDate": PERPETUAL_DELIVERY_MS,
    "maintMarginPercent": "2.5000",
    "requiredMarginPercent": "5.0000",
    "quoteAsset": QUOTE,
    "marginAsset": QUOTE,
    "pricePrecision": 2,
    "baseAssetPrecision": 8,
    "quotePrecision": 8,
    "underlyingType": "COIN",
    "underlyingSubType": [],
    "triggerProtect": "0.0500",
    "liquidationFee": "0.012500",
    "marketTakeBound": "0.05",
    "maxMoveOrderLimit": 10000,
    "orderTypes": ["MARKET"],
    "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
}


class MarketDataApi:
    """Binance's public market-data endpoints (spot and USD-M), read from a `SimState`."""

    def __init__(self, state: SimState):
        self.state = state

    def exchange_info(self, market: str) -> dict[str, Any]:
        with self.state.lock:
            syms = []
            for inst in self.state.instruments.values():
                step, mn = inst.step(market), inst.spec.min_notional_usd
                status = "TRADING" if inst.has_data(self.state.t) else "BREAK"
                q = inst.dec(market)
                if market == "spot":
                    row = {"symbol": inst.id, "status": status, "baseAsset": inst.base, "quoteAsset": QUOTE}
                    row |= SPOT_SYMBOL_STATIC
                    row["filters"] = [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": _s8(TICK),
                            "maxPrice": "1000000.00000000",
                            "tickSize": _s8(TICK),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": _s8(step),
                            "maxQty": "9000.00000000",
                            "stepSize": _s8(step),
                        },
                        {
                            "filterType": "MARKET_LOT_SIZE",
                            "minQty": "0.00000000",
                            "maxQty": "100.00000000",
                            "stepSize": "0.00000000",
                        },
                        {
                            "filterType": "NOTIONAL",
                            "minNotional": _s8(mn),
                            "applyMinToMarket": True,
                            "maxNotional": "9000000.00000000",
                            "applyMaxToMarket": False,
                            "avgPriceMins": 5,
                        },
                    ]
                else:
                    row = self._futures_row(inst, status)
                syms.append(row)
            if market == "perp":
                for q in self.state.listed_quarterlies().values():
                    row = self._futures_row(q, "TRADING" if q.has_data(self.state.t) else "PENDING_TRADING")
                    row |= {"contractType": self.state.contract_type(q), "deliveryDate": q.expiry * 1000,
                            "onboardDate": q.onboard * 1000}
                    syms.append(row)
            out: dict[str, Any] = {
                "timezone": "UTC",
                "serverTime": self.state.ms,
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 2400,
                    },
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                ],
                "exchangeFilters": [],
                "symbols": syms,
            }
            if market == "perp":
                out["futuresType"] = "U_MARGINED"
                out["assets"] = [{"asset": QUOTE, "marginAvailable": True, "autoAssetExchange": "-10000"}]
            return out

    @staticmethod
    def _futures_row(inst: Instrument | Quarterly, status: str) -> dict[str, Any]:
        """A USD-M ``exchangeInfo`` symbol: a perpetual's row (a quarterly's caller sets its contract
        type, delivery and onboard dates)."""
        step, mn, q = inst.step("perp"), inst.spec.min_notional_usd, inst.dec("perp")
        pair = inst.pair if isinstance(inst, Quarterly) else inst.id
        row = {"symbol": inst.id, "pair": pair, "status": status, "baseAsset": inst.base}
        onboard = inst.onboard if isinstance(inst, Quarterly) else inst.series.t0
        row |= PERP_SYMBOL_STATIC | {"onboardDate": onboard * 1000, "quantityPrecision": q}
        lot = {"minQty": f"{step:.{q}f}", "stepSize": f"{step:.{q}f}"}
        row["filters"] = [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.01",
                "maxPrice": "1000000",
                "tickSize": "0.01",
            },
            {"filterType": "LOT_SIZE", "maxQty": "1000"} | lot,
            {"filterType": "MARKET_LOT_SIZE", "maxQty": "120"} | lot,
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": f"{mn:g}"},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ]
        return row

    def book_ticker(self, market: str, symbol: str | None = None, symbols: str | None = None) -> Any:
        with self.state.lock:
            rows = []
            for inst in self.state.live(symbol, symbols, market):
                bid, mid, ask = inst.quote(market, self.state.t)
                depth = 250_000 / mid
                row = {
                    "symbol": inst.id,
                    "bidPrice": _s8(bid),
                    "bidQty": f"{depth:.{inst.qdec}f}",
                    "askPrice": _s8(ask),
                    "askQty": f"{depth:.{inst.qdec}f}",
                }
                if market == "perp":
                    row |= {"time": self.state.ms, "lastUpdateId": self.state.t}
                rows.append(row)
            return rows[0] if symbol else rows

    def ticker_24h(self, market: str, symbol: str | None = None, symbols: str | None = None) -> Any:
        with self.state.lock:
            rows = []
            for inst in self.state.live(symbol, symbols, market):
                bid, last, ask = inst.quote(market, self.state.t)
                w = inst.window("spot" if market == "spot" else "perp", self.state.t)
                opn = float(w[0])
                row = {
                    "symbol": inst.id,
                    "priceChange": _s8(last - opn),
                    "priceChangePercent": f"{(last / opn - 1) * 100:.3f}",
                    "weightedAvgPrice": _s8(float(np.mean(w))),
                    "lastPrice": _s8(last),
                    "lastQty": "0.00000000",
                    "openPrice": _s8(opn),
                    "highPrice": _s8(float(np.max(w))),
                    "lowPrice": _s8(float(np.min(w))),
                    "volume": "0.00000000",
                    "quoteVolume": "0.00000000",
                    "openTime": self.state.ms - 86_400_000,
                    "closeTime": self.state.ms,
                    "firstId": 0,
                    "lastId": 0,
                    "count": 0,
                }
                if market == "spot":
                    row |= {
                        "prevClosePrice": _s8(opn),
                        "bidPrice": _s8(bid),
                        "bidQty": "1.00000000",
                        "askPrice": _s8(ask),
                        "askQty": "1.00000000",
                    }
                rows.append(row)
            return rows[0] if symbol else rows

    def depth(self, market: str, symbol: str, limit: int | None = None) -> dict[str, Any]:
        """A book whose walk reproduces the cost model: level k's price is the marginal
        price of the square-root impact curve at the notional ahead of it."""
        with self.state.lock:
            inst = self.state.inst(symbol, market)
            limit = min(int(limit or (100 if market == "spot" else 500)), 1000)
            bid, mid, ask = inst.quote(market, self.state.t)
            leg, step, q = inst.leg(market), inst.step(market), inst.dec(market)
            bids, asks, prev = [], [], 0.0
            for k in range(limit):
                cum = 5_000.0 * (k + 1) ** 2
                slip = 1.5 * leg.impact_bps_per_sqrt_musd * math.sqrt(prev / 1e6) / 1e4
                pa = max(ask + TICK * k, round(ask + mid * slip, 2))
                pb = min(bid - TICK * k, round(bid - mid * slip, 2))
                size = max(step, math.floor((cum - prev) / mid / step) * step)
                asks.append([f"{pa:.2f}", f"{size:.{q}f}"])
                if pb > 0:
                    bids.append([f"{pb:.2f}", f"{size:.{q}f}"])
                prev = cum
            out: dict[str, Any] = {"lastUpdateId": self.state.t, "bids": bids, "asks": asks}
            if market == "perp":
                out |= {"E": self.state.ms, "T": self.state.ms}
            return out

    def premium_index(self, symbol: str | None = None) -> Any:
        with self.state.lock:
            rows = []
            for inst in self.state.live(symbol, None, "perp"):
                if isinstance(inst, Quarterly):  # a delivery contract: no funding, Binance sends empty fields
                    rows.append(self._quarterly_premium(inst))
                    continue
                nxt = inst.next_funding(self.state.t)
                rate = inst.funding_rate(nxt)
                rows.append(
                    {
                        "symbol": inst.id,
                        "markPrice": _s8(inst.mark(self.state.t)),
                        "indexPrice": _s8(inst.spot(self.state.t)),
                        "estimatedSettlePrice": _s8(inst.mark(self.state.t)),
                        "lastFundingRate": _s8(rate or 0.0),
                        "interestRate": "0.00010000",
                        "nextFundingTime": nxt * 1000,
                        "time": self.state.ms,
                    }
                )
            return rows[0] if symbol else rows

    def _quarterly_premium(self, q: Quarterly) -> dict[str, Any]:
        index = q.spot(self.state.t)
        return {
            "symbol": q.id,
            "markPrice": _s8(q.mark(self.state.t)),
            "indexPrice": _s8(index),
            "estimatedSettlePrice": _s8(index),
            "lastFundingRate": "",
            "interestRate": "",
            "nextFundingTime": 0,
            "time": self.state.ms,
        }

    def delivery_prices(self, pair: str) -> list[dict[str, Any]]:
        """``GET /futures/data/delivery-price?pair=BTCUSDT``: every quarterly delivered so far (since
        the pair's data starts), newest first, at the index (the coin's spot at delivery)."""
        with self.state.lock:
            inst = self.state.inst(pair)
            if inst.base not in self.state.quarterly_bases:
                return []
            rows = []
            for e in quarterly_expiries(inst.series.t0, self.state.t):
                rows.append({"deliveryTime": int(e) * 1000, "deliveryPrice": round(inst.spot(e), 8)})
            return rows[::-1]

    def funding_info(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [
                {
                    "symbol": i.id,
                    "adjustedFundingRateCap": "0.02000000",
                    "adjustedFundingRateFloor": "-0.02000000",
                    "fundingIntervalHours": i.interval_h,
                    "disclaimer": False,
                }
                for i in self.state.instruments.values()
                if i.interval_h != 8
            ]

    def klines(self, market: str, p: dict[str, str], price: str = "last") -> list[list[Any]]:
        """``/api/v3/klines`` and ``/fapi/v1/klines`` (``price`` "last"), ``/fapi/v1/markPriceKlines``
        ("mark"): ``interval`` 1m ... 1d (`KLINE_SECONDS`), closed candles only, oldest first, at most
        ``limit`` (default 500; spot at most 1000, futures 1500, as on Binance). With ``startTime`` the
        first ``limit`` opening at or after it, else the last ``limit`` up to ``endTime`` (default: now).

        Built from the hourly data by `path_candles`: a candle opened at T opens at the price observed at
        T and closes at the price observed at its close (T + its length), high / low the extremes of the
        hourly prices between; a sub-hour candle (1m ... 30m) is SIMULATED on the straight line between the
        hour's two prices and is served once its hour has closed. Volume is "0" (there is no trade tape).
        """
        with self.state.lock:
            length = KLINE_SECONDS.get(p.get("interval") or "")
            if length is None:
                raise BinanceError(-1120, "Invalid interval.")
            inst = self.state.inst(_need(p, "symbol"), market)
            limit = max(1, min(int(p.get("limit") or 500), 1000 if market == "spot" else 1500))
            at, first = self._kline_price(inst, market, price)
            hi = last_closed_open(self.state.t, length)
            if p.get("endTime"):
                hi = min(hi, int(p["endTime"]) // 1000 // length * length)
            start = int(p["startTime"]) // 1000 if p.get("startTime") else None
            opens, ohlc = select_candles(at, length, first, hi, start, limit)
            return [[t * 1000, _s8(o), _s8(h), _s8(lo), _s8(c), "0", (t + length) * 1000 - 1, "0", 0, "0", "0", "0"]
                    for t, (o, h, lo, c) in zip(opens.tolist(), ohlc.tolist(), strict=True)]

    def mark_klines(self, p: dict[str, str]) -> list[list[Any]]:
        """``/fapi/v1/markPriceKlines``: the mark's candles, as `klines` builds them (futures limits)."""
        return self.klines("perp", p, "mark")

    @staticmethod
    def _kline_price(inst: Instrument | Quarterly, market: str, price: str) -> tuple[PriceAt, int]:
        """The price at whole hours a kline is built from, and the first hour it exists."""
        if isinstance(inst, Quarterly):
            coin = inst.coin
            perp = hourly_price(coin.series.perp, coin.series.t0, coin.scale)

            def simulated(t: np.ndarray) -> np.ndarray:
                t = np.asarray(t, dtype=np.int64)
                px = inst.price_at(perp(t), t) if t.size else np.zeros(0)
                return np.where((t >= inst.onboard) & (t < inst.expiry), px, np.nan)

            return simulated, max(inst.onboard, coin.series.t0)
        arr = inst.series.mark if price == "mark" else inst.series.spot if market == "spot" else inst.series.perp
        return hourly_price(arr, inst.series.t0, inst.scale), inst.series.t0

    def funding_rate_history(self, p: dict[str, str]) -> list[dict[str, Any]]:
        with self.state.lock:
            limit = min(int(p.get("limit") or 100), 1000)
            end = int(p.get("endTime") or self.state.ms) // 1000
            start = int(p["startTime"]) // 1000 - 1 if p.get("startTime") else None
            rows = []
            for inst in self.state.live(p.get("symbol")):
                lo = start if start is not None else end - limit * inst.interval_h * HOUR
                for T in inst.settlements(lo, min(end, self.state.t)):
                    rows.append(
                        {
                            "symbol": inst.id,
                            "fundingTime": T * 1000,
                            "fundingRate": _s8(inst.funding_rate(T) or 0.0),
                            "markPrice": _s8(inst.mark(T)),
                        }
                    )
            rows.sort(key=lambda r: r["fundingTime"])
            return rows[:limit] if start is not None else rows[-limit:]
