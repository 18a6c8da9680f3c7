"""Dated (quarterly) futures: the contract calendar, contract codes, and the SIMULATED price.

Pure functions, no I/O: the paper venue, the replay feed, the desk's guards and the backtest
all read them, so they agree on every contract's price and expiry.

- Calendar: Binance's USD-M quarterlies expire on the last Friday of March, June, September
  and December at 08:00 UTC; the current and the next quarter are listed (`listed_expiries`).
- Codes: a contract is written ``<BASE>-<YYMMDD>`` (``BTC-260327``); `parse_contract` also
  reads Binance's ``BTCUSDT_260327``, OKX's ``BTC-USDT-260327`` and ccxt's ``BTC/USDT:USDT-260327``.
- Price: no real dated-future history was found that may be shipped, so paper trading and
  backtests use a SIMULATED quarterly: ``F = P × (1 + carry × τ)``, P the perp's price, τ the
  years left to expiry and ``carry`` the perp funding actually paid over the last
  `CARRY_LOOKBACK_DAYS` (real settled rates summed over the span and annualised, clipped to
  `CARRY_APR_BOUNDS`); at expiry it settles at the spot index. This is the cost-of-carry
  relation with the term structure priced off the last quarter's funding: the premium decays
  to zero at expiry (the roll-down a calendar spread earns), follows funding slowly, and a
  dislocated perp drags the future with it (both are derivatives on the same venue). So the
  spread earns, in this model, exactly when the funding the long perp pays over the hold is
  below the last 90 days' average: a property of the simulation, not evidence of a real edge.
  What it does NOT model: real quarterlies' own supply and demand (2021's 20-40 % premiums
  above funding), their order books, their delivery fee. Every output that shows a simulated
  price says so.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime

import numpy as np

YEAR_S = 365.0 * 86400.0
EXPIRY_HOUR_UTC = 8
QUARTER_MONTHS = (3, 6, 9, 12)
LISTED_QUARTERS = 2  # Binance lists the current and the next quarter
CARRY_LOOKBACK_DAYS = 90.0
CARRY_APR_BOUNDS = (-0.20, 0.60)  # a fraction a year: what the simulated premium may price in
SIMULATED_LABEL = "simulated:perp_plus_90d_funding_carry"

_CODE = re.compile(r"^([A-Z0-9]{2,20})-(\d{6})$")
_BINANCE = re.compile(r"^([A-Z0-9]{2,20})USDT_(\d{6})$")
_CCXT = re.compile(r"^([A-Z0-9]{2,20})/USDT:USDT-(\d{6})$")
_OKX = re.compile(r"^([A-Z0-9]{2,20})-USDT-(\d{6})$")


def _last_friday(year: int, month: int) -> float:
    last_day = calendar.monthrange(year, month)[1]
    d = datetime(year, month, last_day, EXPIRY_HOUR_UTC, tzinfo=UTC)
    back = (d.weekday() - 4) % 7  # Friday is weekday 4
    return d.timestamp() - back * 86400.0


def quarterly_expiries(t_from: float, t_to: float) -> list[float]:
    """Every quarterly expiry time in (t_from, t_to], in order."""
    out = []
    y = datetime.fromtimestamp(max(t_from, 0.0), UTC).year
    while True:
        for m in QUARTER_MONTHS:
            e = _last_friday(y, m)
            if e > t_to:
                return out
            if e > t_from:
                out.append(e)
        y += 1


def listed_expiries(t: float, count: int = LISTED_QUARTERS) -> list[float]:
    """The ``count`` quarterly contracts trading at ``t`` (expiry strictly after ``t``)."""
    out = quarterly_expiries(t, t + 400 * 86400.0)
    return out[:count]


def contract_code(base: str, expiry: float) -> str:
    return f"{base}-{datetime.fromtimestamp(expiry, UTC):%y%m%d}"


def _expiry_of(yymmdd: str) -> float:
    try:
        d = datetime.strptime(yymmdd, "%y%m%d").replace(hour=EXPIRY_HOUR_UTC, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{yymmdd!r} is not a date (YYMMDD)") from None
    return d.timestamp()


def parse_contract(raw: str) -> tuple[str, float]:
    """(base, expiry) of a contract written ``BTC-260327``, ``BTCUSDT_260327``, ``BTC-USDT-260327`` (OKX) or
    ``BTC/USDT:USDT-260327``.
    ValueError if it is not a dated contract or its date is not a quarterly expiry."""
    s = raw.strip().upper()
    for pat in (_CODE, _BINANCE, _CCXT, _OKX):
        m = pat.match(s)
        if m:
            base, expiry = m.group(1), _expiry_of(m.group(2))
            if expiry not in quarterly_expiries(expiry - 1.0, expiry):
                raise ValueError(f"{raw!r}: {datetime.fromtimestamp(expiry, UTC):%Y-%m-%d} is not a quarterly expiry "
                                 "(the last Friday of March, June, September or December)")
            return base, expiry
    raise ValueError(f"{raw!r} is not a dated contract (write it BTC-260327, BTCUSDT_260327 or BTC/USDT:USDT-260327)")


def is_contract(symbol: str) -> bool:
    return bool(_CODE.match(symbol))


def underlying(symbol: str) -> str:
    """The base asset of an instrument symbol: a contract code's base, or the symbol itself (on any
    venue: ``BTC@bybit`` → ``BTC``, see `basis_mcp.venues`)."""
    symbol = symbol.partition("@")[0]
    m = _CODE.match(symbol)
    return m.group(1) if m else symbol


def funding_carry_apr(funding_time: np.ndarray, funding_rate: np.ndarray, t: np.ndarray | float,
                      lookback_s: float = CARRY_LOOKBACK_DAYS * 86400.0) -> np.ndarray:
    """Funding a short perp was paid over (t − lookback, t], as a fraction a year (the settled
    rates summed and divided by the span: each venue on its own interval). Before a full lookback
    of history the span is what there is (from the first settlement's interval start); no
    settlement yet: 0. Vectorised over ``t``."""
    tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if funding_time.size == 0:
        return np.zeros(tt.shape)
    csum = np.concatenate(([0.0], np.cumsum(funding_rate, dtype=np.float64)))
    hi = np.searchsorted(funding_time, tt, side="right")
    lo = np.searchsorted(funding_time, tt - lookback_s, side="right")
    first = float(funding_time[0]) - (float(funding_time[1] - funding_time[0]) if funding_time.size > 1 else 8 * 3600.0)
    span = np.clip(tt - first, 3600.0, lookback_s)
    return (csum[hi] - csum[lo]) * (YEAR_S / span)


def simulated_price(perp: np.ndarray | float, carry_apr: np.ndarray | float, seconds_to_expiry: np.ndarray | float) -> np.ndarray:
    """The SIMULATED dated future's price before expiry: perp × (1 + clipped carry × years to expiry)."""
    tau = np.maximum(np.asarray(seconds_to_expiry, dtype=np.float64), 0.0) / YEAR_S
    carry = np.clip(np.asarray(carry_apr, dtype=np.float64), *CARRY_APR_BOUNDS)
    return np.asarray(perp, dtype=np.float64) * (1.0 + carry * tau)


def roll_down_exit_basis_pct(entry_basis_pct: float, hold_s: float, seconds_to_expiry: float) -> float:
    """The calendar basis expected after a hold if the premium decays linearly to zero at expiry."""
    if seconds_to_expiry <= 0:
        return 0.0
    return entry_basis_pct * max(1.0 - hold_s / seconds_to_expiry, 0.0)


def iso_day(expiry: float) -> str:
    return datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%MZ")
