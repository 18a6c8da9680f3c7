"""OKX V5 market data beyond `basis_mcp.sim.okx_api`: USDT-margined quarterly FUTURES, tickers, mark and index
prices, order books, and ``/public/funding-rate`` for every swap at once (``instId=ANY``, what ccxt's
``fetch_funding_rates`` sends).

FUTURES: with ``SimState(quarterlies=[...])`` (or True), the current and the next quarterly of each of those
coins are listed: the very contracts the Binance simulator lists (`basis_mcp.sim.instruments.Quarterly`: same
calendar, the last Friday of March / June / September / December at 08:00 UTC, and the same SIMULATED price,
the paper desk's model `basis_mcp.feed.ReplayFeed.dated_snapshot`), so the paper desk and this venue agree.
OKX names them ``BTC-USDT-240329``: instType FUTURES, ``instFamily`` / ``uly`` ``BTC-USDT``, ``ctType`` linear,
``settleCcy`` USDT, ``ctVal`` the coin's swap ``ctVal`` (0.01 BTC), ``lotSz`` / ``minSz`` 0.1 contracts (as OKX
lists BTC-USDT-250328), ``expTime`` the delivery in ms, ``alias`` ``quarter`` / ``next_quarter`` (OKX's own
spelling for the current and the next quarter). A delivered contract leaves the list (its orders stay readable).

Tickers (``/market/tickers?instType=``, ``/market/ticker?instId=``): ``last`` the mid, ``bidPx`` / ``askPx`` the
touch (the perp's half-spread for swaps and futures), sizes in coins for SPOT and in contracts otherwise,
24 h open / high / low from the hourly data. ``/public/mark-price`` (SWAP, FUTURES), ``/market/index-tickers``
(the coin's spot) and ``/market/books`` (the Binance simulator's impact-curve book, derivative sizes in
contracts) complete the set. Weekly and bi-weekly futures, options and inverse contracts are not listed."""

from __future__ import annotations

from typing import Any

from basis_mcp.sim.instruments import QUOTE, BinanceError, Instrument, Quarterly
from basis_mcp.sim.market_data import MarketDataApi
from basis_mcp.sim.okx_api import OkxApi, OkxError, _s, spec_of
from basis_mcp.sim.state import SimState

FUTURES_LOT = "0.1"  # OKX's lotSz / minSz for its USDT-margined BTC / ETH quarterlies (contracts)
NO_INSTRUMENT = "Instrument ID, Instrument ID code, or Spread ID doesn't exist."


def okx_id(inst: Instrument | Quarterly, kind: str) -> str:
    """OKX's instId: ``BTC-USDT`` (SPOT), ``BTC-USDT-SWAP``, ``BTC-USDT-240329`` (FUTURES)."""
    if kind == "FUTURES":
        return f"{inst.base}-{QUOTE}-{inst.id.rsplit('_', 1)[1]}"
    return f"{inst.base}-{QUOTE}" + ("-SWAP" if kind == "SWAP" else "")


def ct_val(inst: Instrument | Quarterly, kind: str) -> float:
    """Coins per contract: the swap's ``ctVal`` for SWAP and FUTURES, 1 for SPOT (sizes in coins)."""
    return 1.0 if kind == "SPOT" else float(spec_of(inst.coin if isinstance(inst, Quarterly) else inst).ct_val)


def lot(inst: Instrument | Quarterly, kind: str) -> tuple[float, float]:
    """(lotSz, minSz): coins for SPOT, contracts for SWAP and FUTURES."""
    if kind == "FUTURES":
        return float(FUTURES_LOT), float(FUTURES_LOT)
    sp = spec_of(inst)
    return (float(sp.spot_lot), float(sp.spot_min)) if kind == "SPOT" else (float(sp.swap_lot), float(sp.swap_min))


class OkxMarket(OkxApi):
    """`OkxApi` plus the FUTURES listing and the quote endpoints (module docstring)."""

    def __init__(self, state: SimState):
        super().__init__(state)
        self.depth = MarketDataApi(state).depth

    # ------------------------------------------------------------ lookups

    def future(self, inst_id: str, delisted: bool = False) -> Quarterly | None:
        """The quarterly ``BTC-USDT-240329`` names: listed now, or (``delisted``) also one delivered before."""
        parts = inst_id.split("-")
        if len(parts) != 3 or parts[1] != QUOTE or not (parts[2].isdigit() and len(parts[2]) == 6):
            return None
        for old in (False, True) if delisted else (False,):
            try:
                q = self.state.inst(f"{parts[0]}{QUOTE}_{parts[2]}", "perp", delisted=old)
            except BinanceError:
                continue
            if isinstance(q, Quarterly):
                return q
        return None

    def inst(self, p: dict[str, str], allowed: tuple[str, ...] = ("SPOT", "SWAP"),
             delisted: bool = False) -> tuple[Any, str]:
        """The instrument an ``instId`` names and its type; FUTURES too when ``allowed``."""
        inst_id = p.get("instId") or ""
        if self.future(inst_id, True) is None:
            return super().inst(p, allowed)
        q = self.future(inst_id, delisted)
        if q is None:
            raise OkxError("51001", NO_INSTRUMENT)
        if "FUTURES" not in allowed:
            raise OkxError("51000", "Parameter instId error")
        return q, "FUTURES"

    def of_type(self, kind: str, inst_id: str | None = None) -> list[tuple[Any, str]]:
        """(instrument, type) of every instrument of ``kind`` trading now, or the one ``inst_id`` names."""
        if inst_id:
            return [self.inst({"instId": inst_id}, (kind,))]
        st = self.state
        every = list(st.listed_quarterlies().values()) if kind == "FUTURES" else list(st.instruments.values())
        return [(i, kind) for i in every if i.has_data(st.t)]

    # ------------------------------------------------------------ reference data

    def instruments(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/public/instruments``: SPOT and SWAP as `OkxApi` lists them, plus the listed quarterlies."""
        if p.get("instType") != "FUTURES":
            return super().instruments(p)
        st, rows = self.state, []
        with st.lock:
            listed = list(st.listed_quarterlies().values())
            for q in listed:
                inst_id, family = okx_id(q, "FUTURES"), f"{q.base}-{QUOTE}"
                if (p.get("instId") and p["instId"] != inst_id) or any(p.get(k) and p[k] != family for k in ("uly", "instFamily")):
                    continue
                sp = spec_of(q.coin)
                first = q.expiry == min(x.expiry for x in listed if x.base == q.base)
                rows.append({
                    "alias": "quarter" if first else "next_quarter", "auctionEndTime": "", "baseCcy": "", "category": "1",
                    "contTdSwTime": "", "ctMult": "1", "ctType": "linear", "ctVal": sp.ct_val, "ctValCcy": q.base,
                    "expTime": str(q.expiry * 1000), "futureSettlement": False, "instFamily": family, "instId": inst_id,
                    "instType": "FUTURES", "lever": sp.lever, "listTime": str(q.onboard * 1000), "lotSz": FUTURES_LOT,
                    "maxIcebergSz": "100000000", "maxLmtAmt": "20000000", "maxLmtSz": "100000000", "maxMktAmt": "",
                    "maxMktSz": "12000", "maxStopSz": "12000", "maxTriggerSz": "100000000", "maxTwapSz": "100000000",
                    "minSz": FUTURES_LOT, "openType": "", "optType": "", "quoteCcy": "", "ruleType": "normal",
                    "settleCcy": QUOTE, "state": "live" if q.has_data(st.t) else "suspend", "stk": "",
                    "tickSz": sp.swap_tick, "tradeQuoteCcyList": [], "uly": family})
        return rows

    # ------------------------------------------------------------ quotes

    def _ticker(self, inst: Any, kind: str) -> dict[str, Any]:
        t = self.state.t
        market = "spot" if kind == "SPOT" else "perp"
        bid, last, ask = inst.quote(market, t)
        w = inst.window(market, t)
        size = _s(250_000 / last / ct_val(inst, kind), 2)
        return {"instType": kind, "instId": okx_id(inst, kind), "last": _s(last), "lastSz": "0", "askPx": _s(ask),
                "askSz": size, "bidPx": _s(bid), "bidSz": size, "open24h": _s(float(w[0])), "high24h": _s(float(max(w))),
                "low24h": _s(float(min(w))), "volCcy24h": "0", "vol24h": "0", "ts": str(self.state.ms),
                "sodUtc0": _s(float(w[0])), "sodUtc8": _s(float(w[0]))}

    def tickers(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/market/tickers?instType=SPOT|SWAP|FUTURES`` (other types: empty)."""
        kind = p.get("instType") or ""
        if kind not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            raise OkxError("51000", "Parameter instType error")
        if kind not in ("SPOT", "SWAP", "FUTURES"):
            return []
        with self.state.lock:
            return [self._ticker(i, k) for i, k in self.of_type(kind)]

    def ticker(self, p: dict[str, str]) -> list[dict[str, Any]]:
        with self.state.lock:
            return [self._ticker(*self.inst(p, ("SPOT", "SWAP", "FUTURES")))]

    def mark_price(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/public/mark-price?instType=SWAP|FUTURES[&instId=]``."""
        kind = p.get("instType") or ""
        if kind not in ("SWAP", "FUTURES", "MARGIN", "OPTION"):
            raise OkxError("51000", "Parameter instType error")
        if kind not in ("SWAP", "FUTURES"):
            return []
        st = self.state
        with st.lock:
            return [{"instType": k, "instId": okx_id(i, k), "markPx": _s(i.mark(st.t)), "ts": str(st.ms)}
                    for i, k in self.of_type(kind, p.get("instId"))]

    def index_tickers(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/market/index-tickers?instId=BTC-USDT`` or ``quoteCcy=USDT``: the coin's spot is its index."""
        if not (p.get("instId") or p.get("quoteCcy")):
            raise OkxError("50015", "Either parameter quoteCcy or instId is required.")
        st, rows = self.state, []
        with st.lock:
            for inst in st.instruments.values():
                if not inst.has_data(st.t) or p.get("instId", okx_id(inst, "SPOT")) != okx_id(inst, "SPOT"):
                    continue
                if p.get("quoteCcy") and p["quoteCcy"] != QUOTE:
                    continue
                w = inst.window("spot", st.t)
                rows.append({"instId": okx_id(inst, "SPOT"), "idxPx": _s(inst.spot(st.t)), "open24h": _s(float(w[0])),
                             "high24h": _s(float(max(w))), "low24h": _s(float(min(w))), "sodUtc0": _s(float(w[0])),
                             "sodUtc8": _s(float(w[0])), "ts": str(st.ms)})
        return rows

    def books(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/market/books?instId=&sz=``: [price, size, "0", orders]; derivative sizes in contracts."""
        with self.state.lock:
            inst, kind = self.inst(p, ("SPOT", "SWAP", "FUTURES"))
            n = max(1, min(int(p.get("sz") or 1), 400))
            d = self.depth("spot" if kind == "SPOT" else "perp", inst.id, n)
            ct = ct_val(inst, kind)

            def side(levels: list[list[str]]) -> list[list[str]]:
                return [[px, _s(float(q) / ct, 8), "0", "1"] for px, q in levels]

            return [{"asks": side(d["asks"]), "bids": side(d["bids"]), "ts": str(self.state.ms)}]

    # ------------------------------------------------------------ funding

    def funding_rate(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/public/funding-rate``: one swap, or every swap (``instId=ANY``)."""
        if p.get("instId") != "ANY":
            return super().funding_rate(p)
        st = self.state
        with st.lock:
            return [super(OkxMarket, self).funding_rate({"instId": okx_id(i, "SWAP")})[0] for i, _ in self.of_type("SWAP")]
