"""OKX V5's public market-data wire format over a `SimState`: the ``data`` lists of the instrument, candle,
mark-price candle, funding and time endpoints, and OKX's ``code`` errors (`OkxError`).

Instruments: ``BTC-USDT`` (SPOT) and ``BTC-USDT-SWAP`` (USDT-margined linear SWAP) per simulated coin. The
contract facts follow what OKX publishes (`OKX_SPECS`, approximate, as of 2025): a BTC swap contract is
``ctVal`` 0.01 BTC, traded in steps of ``lotSz`` 0.01 contracts (``minSz`` 0.01), ``tickSz`` 0.1; ETH 0.1 ETH,
SOL 1 SOL; spot sizes are in coins (BTC ``lotSz`` 1e-8, ``minSz`` 1e-5). Coins without an entry (the
synthetic ``S001``...) get ``ctVal`` 1.

Candles (``/market/candles`` and ``/market/history-candles``, mark price: ``/market/mark-price-candles``
and ``/market/history-mark-price-candles``): newest first, closed candles only (``confirm`` "1"; the
in-progress candle is not simulated), ``after`` = only candles opening strictly before it (ms), ``before`` =
only those opening strictly after it; the NEWEST ``limit`` of what is left, also when ``before`` is given
(OKX: "the latest data will be returned when using before individually"). Page caps as OKX's: candles 300,
history-candles 100, mark-price candles 100 (default 100 everywhere). ``/market/candles`` reaches back only
1440 bars from now, as OKX's does; the history endpoints reach the data's start. Bars: 1m 3m 5m 15m 30m 1H
2H 4H, and 6H 12H 1D on Hong Kong time (UTC+8, OKX's default) or ``6Hutc`` ``12Hutc`` ``1Dutc`` on UTC
(what ccxt asks for). Built by `basis_mcp.sim.instruments.path_candles` from the hourly data; sub-hour
candles are SIMULATED on the straight line between the hour's two prices (served once the hour closed).

Funding (``/public/funding-rate-history``): settled rates, newest first, at most ``limit`` (max 100),
``after`` / ``before`` on ``fundingTime`` as for candles; ``realizedRate`` = ``fundingRate`` (what ccxt
reads). ``/public/funding-rate``: the next settlement's rate and time. Imports nothing that trades."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from basis_mcp.history import HOUR
from basis_mcp.sim.instruments import QUOTE, Instrument, hourly_price, last_closed_open, select_candles
from basis_mcp.sim.state import SimState

HK_OFFSET = 8 * HOUR  # OKX's 6H / 12H / 1D candles open on Hong Kong time unless the bar ends in "utc"
BARS: dict[str, tuple[int, int]] = {  # bar -> (length s, offset of its grid s)
    "1m": (60, 0), "3m": (180, 0), "5m": (300, 0), "15m": (900, 0), "30m": (1800, 0), "1H": (HOUR, 0),
    "2H": (2 * HOUR, 0), "4H": (4 * HOUR, 0), "6H": (6 * HOUR, HK_OFFSET), "12H": (12 * HOUR, HK_OFFSET),
    "1D": (24 * HOUR, HK_OFFSET), "6Hutc": (6 * HOUR, 0), "12Hutc": (12 * HOUR, 0), "1Dutc": (24 * HOUR, 0),
}
PAGE_CAPS = {"candles": 300, "history-candles": 100, "mark-price-candles": 100, "history-mark-price-candles": 100}
RECENT_BARS = 1440  # /market/candles: the latest 1440 bars only
FUNDING_PAGE = 100
INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION")


@dataclass(frozen=True)
class OkxSpec:
    """One coin's published OKX contract facts (strings, as OKX sends them)."""

    ct_val: str = "1"  # coins per swap contract
    swap_lot: str = "1"  # swap lotSz (contracts)
    swap_min: str = "1"
    swap_tick: str = "0.0001"
    spot_lot: str = "0.000001"  # spot lotSz (coins)
    spot_min: str = "0.001"
    spot_tick: str = "0.0001"
    lever: str = "50"


OKX_SPECS = {
    "BTC": OkxSpec("0.01", "0.01", "0.01", "0.1", "0.00000001", "0.00001", "0.1", "100"),
    "ETH": OkxSpec("0.1", "0.01", "0.01", "0.01", "0.000001", "0.0001", "0.01", "100"),
    "SOL": OkxSpec("1", "0.01", "0.01", "0.01", "0.000001", "0.001", "0.01", "50"),
}


class OkxError(Exception):
    """An error OKX would answer: ``{"code": code, "msg": msg, "data": []}`` (HTTP ``status``)."""

    def __init__(self, code: str, msg: str, status: int = 200):
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status = code, msg, status


def _s(x: float, dec: int = 8) -> str:
    """OKX's number strings: fixed point, trailing zeros dropped ("0.01", "67012.5", "0")."""
    s = f"{x + 0.0:.{dec}f}"
    s = s.rstrip("0").rstrip(".") if "." in s else s
    return "0" if s in ("", "-0") else s


def _int(p: dict[str, str], name: str) -> int | None:
    if not p.get(name):
        return None
    try:
        return int(p[name])
    except ValueError:
        raise OkxError("51000", f"Parameter {name} error") from None


def _limit(p: dict[str, str], cap: int, default: int = 100) -> int:
    n = _int(p, "limit")
    return default if n is None else max(1, min(n, cap))


def spec_of(inst: Instrument) -> OkxSpec:
    return OKX_SPECS.get(inst.base, OkxSpec())


class OkxApi:
    """OKX V5 public market-data endpoints over one `SimState` (read only: nothing here trades)."""

    def __init__(self, state: SimState):
        self.state = state

    # ------------------------------------------------------------ lookups

    def inst(self, p: dict[str, str], allowed: tuple[str, ...] = ("SPOT", "SWAP")) -> tuple[Instrument, str]:
        """The instrument an ``instId`` names and its type (SPOT | SWAP)."""
        inst_id = p.get("instId") or ""
        if not inst_id:
            raise OkxError("50014", "Parameter instId can not be empty")
        parts = inst_id.split("-")
        kind = "SWAP" if len(parts) == 3 and parts[2] == "SWAP" else "SPOT" if len(parts) == 2 else ""
        inst = self.state.instruments.get(parts[0] + QUOTE) if len(parts) >= 2 and parts[1] == QUOTE else None
        if inst is None or not kind:
            raise OkxError("51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist.")
        if kind not in allowed:
            raise OkxError("51000", "Parameter instId error")
        return inst, kind

    # ------------------------------------------------------------ reference data

    def time(self, p: dict[str, str]) -> list[dict[str, Any]]:
        return [{"ts": str(self.state.ms)}]

    def instruments(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/public/instruments``: SPOT and SWAP rows; FUTURES, OPTION and MARGIN lists are empty."""
        kind = p.get("instType") or ""
        if kind not in INST_TYPES:
            raise OkxError("51000", "Parameter instType error")
        st, rows = self.state, []
        if kind not in ("SPOT", "SWAP"):
            return rows
        with st.lock:
            for inst in st.instruments.values():
                family = f"{inst.base}-{QUOTE}"
                inst_id = family if kind == "SPOT" else family + "-SWAP"
                if p.get("instId") and p["instId"] != inst_id:
                    continue
                if kind == "SWAP" and any(p.get(k) and p[k] != family for k in ("uly", "instFamily")):
                    continue
                sp = spec_of(inst)
                common = {"alias": "", "auctionEndTime": "", "category": "1", "contTdSwTime": "", "expTime": "",
                          "futureSettlement": False, "instId": inst_id, "instType": kind,
                          "listTime": str(inst.series.t0 * 1000), "maxIcebergSz": "999999999", "maxLmtAmt": "20000000",
                          "maxMktAmt": "1000000", "maxStopSz": "999999999", "maxTriggerSz": "999999999",
                          "maxTwapSz": "999999999", "openType": "", "optType": "", "ruleType": "normal",
                          "state": "live" if inst.has_data(st.t) else "suspend", "stk": "", "tradeQuoteCcyList": []}
                if kind == "SPOT":
                    rows.append(common | {
                        "baseCcy": inst.base, "quoteCcy": QUOTE, "settleCcy": "", "ctMult": "", "ctType": "",
                        "ctVal": "", "ctValCcy": "", "instFamily": "", "uly": "", "lever": "10",
                        "lotSz": sp.spot_lot, "minSz": sp.spot_min, "tickSz": sp.spot_tick,
                        "maxLmtSz": "999999999", "maxMktSz": "1000000"})
                else:
                    rows.append(common | {
                        "baseCcy": "", "quoteCcy": "", "settleCcy": QUOTE, "ctMult": "1", "ctType": "linear",
                        "ctVal": sp.ct_val, "ctValCcy": inst.base, "instFamily": family, "uly": family,
                        "lever": sp.lever, "lotSz": sp.swap_lot, "minSz": sp.swap_min, "tickSz": sp.swap_tick,
                        "maxLmtSz": "100000000", "maxMktSz": "12000"})
        return rows

    # ------------------------------------------------------------ candles

    def candles(self, p: dict[str, str], endpoint: str) -> list[list[str]]:
        """One of the four candle endpoints (``endpoint``: a key of `PAGE_CAPS`), newest first (module docstring)."""
        mark = "mark" in endpoint
        bar = p.get("bar") or "1m"
        if bar not in BARS:
            raise OkxError("51000", "Parameter bar error")
        length, off = BARS[bar]
        limit = _limit(p, PAGE_CAPS[endpoint])
        after, before = _int(p, "after"), _int(p, "before")
        st = self.state
        with st.lock:
            inst, kind = self.inst(p, ("SWAP",) if mark else ("SPOT", "SWAP"))
            s = inst.series
            arr = s.mark if mark else s.spot if kind == "SPOT" else s.perp
            # on the bar's own grid: local time L = T + off, candles open at L = k * length
            at = hourly_price(arr, s.t0 + off, inst.scale)
            hi = last_closed_open(st.t + off, length)
            lo = s.t0 + off
            if after is not None:  # opens T with T * 1000 < after
                hi = min(hi, (after + off * 1000 - 1) // (length * 1000) * length)
            if before is not None:  # opens T with T * 1000 > before
                lo = max(lo, ((before + off * 1000) // (length * 1000) + 1) * length)
            if endpoint in ("candles", "mark-price-candles"):
                lo = max(lo, last_closed_open(st.t + off, length) - (RECENT_BARS - 1) * length)
            if hi < lo:
                return []
            opens, ohlc = select_candles(at, length, lo, hi, None, limit)
        rows = []
        for L, (o, h, lw, c) in zip(opens.tolist()[::-1], ohlc.tolist()[::-1], strict=True):
            row = [str((L - off) * 1000), _s(o), _s(h), _s(lw), _s(c)]
            rows.append(row + ["1"] if mark else row + ["0", "0", "0", "1"])
        return rows

    # ------------------------------------------------------------ funding

    def _funding_row(self, inst: Instrument, T: int) -> dict[str, Any]:
        rate = _s(inst.funding_rate(T) or 0.0, 12)
        return {"formulaType": "noRate", "fundingRate": rate, "fundingTime": str(T * 1000),
                "instId": f"{inst.base}-{QUOTE}-SWAP", "instType": "SWAP", "method": "current_period",
                "realizedRate": rate}

    def funding_history(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/public/funding-rate-history``: settlements newest first, ``after`` / ``before`` exclusive (ms)."""
        limit = _limit(p, FUNDING_PAGE)
        after, before = _int(p, "after"), _int(p, "before")
        st = self.state
        with st.lock:
            inst, _ = self.inst(p, ("SWAP",))
            hi = st.t if after is None else min(st.t, (after - 1) // 1000)  # T * 1000 < after
            step = inst.interval_h * HOUR
            lo = before // 1000 if before is not None else hi - (limit + 1) * step  # T * 1000 > before
            times = inst.settlements(max(lo, inst.series.t0 - step), hi)[-limit:]
            return [self._funding_row(inst, T) for T in reversed(times)]

    def funding_rate(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/public/funding-rate``: the rate settling next, its time and the one after."""
        st = self.state
        with st.lock:
            inst, _ = self.inst(p, ("SWAP",))
            nxt = inst.next_funding(st.t)
            step = inst.interval_h * HOUR
            done = inst.settlements(st.t - step, st.t)
            rate = _s(inst.funding_rate(nxt) or 0.0, 12)
            return [{"instId": f"{inst.base}-{QUOTE}-SWAP", "instType": "SWAP", "fundingRate": rate,
                     "fundingTime": str(nxt * 1000), "nextFundingTime": str((nxt + step) * 1000),
                     "nextFundingRate": "", "method": "current_period", "formulaType": "noRate",
                     "minFundingRate": "-0.0075", "maxFundingRate": "0.0075", "interestRate": "0.0001",
                     "impactValue": "", "premium": "0", "sign": "", "settState": "settled",
                     "settFundingRate": _s(inst.funding_rate(done[-1]) or 0.0, 12) if done else rate,
                     "ts": str(st.ms)}]
