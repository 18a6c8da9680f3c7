"""Pure signal math shared by the live desk and the backtest. No I/O.

Conventions: ``*_pct`` values are percent (0.05 means 0.05 %), bare rates are fractions
(0.0001 = 0.01 %), ``*_usd`` are dollars, times are UTC epoch seconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from basis_mcp.costs import PairCosts
from basis_mcp.dated import roll_down_exit_basis_pct

ZSCORE_MIN_SAMPLES = 30
ZSCORE_STD_FLOOR = 1e-8
DEFAULT_ZSCORE_WINDOW = 1080
DAYS_PER_YEAR = 365.0


def basis_pct(spot: float, perp: float) -> float:
    """(perp − spot) / spot × 100. Positive = contango (perp rich)."""
    return (perp - spot) / spot * 100.0


def funding_apr_pct(rate: float, interval_hours: float) -> float:
    """Simple (non-compounded) annualised funding, percent: rate × settlements per year × 100."""
    return rate * (24.0 / interval_hours) * DAYS_PER_YEAR * 100.0


def funding_8h_pct(rate: float, interval_hours: float) -> float:
    """A per-interval funding rate restated per 8 h, percent."""
    return rate * (8.0 / interval_hours) * 100.0


def realised_vol_1h_pct(high: float, low: float, prev_close: float | None, close: float) -> float:
    """Realised volatility over the last hour, percent per hour.

    The larger of the Parkinson range estimate, ln(H/L) / (2·sqrt(ln 2)), and the absolute
    close-to-close log return: a conservative reading from one hourly bar.
    """
    park = math.log(high / low) / (2.0 * math.sqrt(math.log(2.0))) if high > 0 and low > 0 and high >= low else 0.0
    c2c = abs(math.log(close / prev_close)) if prev_close and prev_close > 0 and close > 0 else 0.0
    return max(park, c2c) * 100.0


# --------------------------------------------------------------------------- z-score


class RollingZScore:
    """Rolling z-score over the last ``window`` samples, O(1) per new sample.

    Population std (ddof=0); no z before ``min_samples`` samples; ``std < 1e-8`` → z = 0.
    The window includes the newest sample. Mean and M2 are maintained with Welford's
    add/remove updates, and recomputed exactly once every ``window`` samples so rounding
    cannot drift (amortised O(1)).
    """

    __slots__ = ("window", "min_samples", "_buf", "_mean", "_m2", "_since_exact")

    def __init__(self, window: int = DEFAULT_ZSCORE_WINDOW, min_samples: int = ZSCORE_MIN_SAMPLES):
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = int(window)
        self.min_samples = int(min_samples)
        self._buf: deque[float] = deque(maxlen=self.window)
        self._mean = 0.0
        self._m2 = 0.0
        self._since_exact = 0

    @property
    def n(self) -> int:
        return len(self._buf)

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        return math.sqrt(max(self._m2, 0.0) / len(self._buf)) if self._buf else 0.0

    def _recompute(self) -> None:
        arr = np.fromiter(self._buf, dtype=np.float64, count=len(self._buf))
        self._mean = float(arr.mean()) if arr.size else 0.0
        self._m2 = float(((arr - self._mean) ** 2).sum()) if arr.size else 0.0
        self._since_exact = 0

    def add(self, x: float) -> float | None:
        """Add a sample; return the z-score of that sample (None while warming up)."""
        self._push(x)
        return self.zscore(x)

    def extend(self, xs: list[float]) -> None:
        """`add` each of ``xs`` in turn, to the same state bit for bit, without the Welford steps the last
        exact recompute among them overwrites (a replay adds weeks of samples at once)."""
        first = self.window - self._since_exact  # the add that recomputes next
        if len(xs) >= first:
            last = first + (len(xs) - first) // self.window * self.window  # the last one that does, among xs
            self._buf.extend(xs[:last])  # (the deque keeps the last `window`: the buffer that recompute reads)
            self._recompute()
            xs = xs[last:]
        for x in xs:
            self._push(x)

    def _push(self, x: float) -> None:
        buf = self._buf
        if len(buf) == self.window:
            old = buf[0]
            buf.append(x)  # evicts ``old``
            n = len(buf)
            # remove old (n -> n-1), then add x (n-1 -> n), folded into one step
            delta_old = old - self._mean
            self._mean -= delta_old / (n - 1) if n > 1 else 0.0
            self._m2 -= delta_old * (old - self._mean)
            delta = x - self._mean
            self._mean += delta / n
            self._m2 += delta * (x - self._mean)
        else:
            buf.append(x)
            n = len(buf)
            delta = x - self._mean
            self._mean += delta / n
            self._m2 += delta * (x - self._mean)
        self._since_exact += 1
        if self._since_exact >= self.window:
            self._recompute()

    def zscore(self, x: float) -> float | None:
        if len(self._buf) < self.min_samples:
            return None
        sd = self.std
        return 0.0 if sd < ZSCORE_STD_FLOOR else (x - self._mean) / sd

    def values(self) -> np.ndarray:
        return np.fromiter(self._buf, dtype=np.float64, count=len(self._buf))


@dataclass(frozen=True)
class ZScoreStats:
    n: int
    window: int
    latest: float | None
    zscore: float | None
    mean: float | None
    std: float | None
    p10: float | None
    p90: float | None
    minimum: float | None
    maximum: float | None


def zscore_stats(values: np.ndarray, window: int, min_samples: int = ZSCORE_MIN_SAMPLES) -> ZScoreStats:
    """Descriptive stats of the last ``window`` values (the newest last) with the z of the newest."""
    tail = np.asarray(values[-window:], dtype=np.float64)
    n = int(tail.size)
    if n == 0:
        return ZScoreStats(0, window, None, None, None, None, None, None, None, None)
    mean = float(tail.mean())
    std = float(tail.std())
    latest = float(tail[-1])
    z = None if n < min_samples else (0.0 if std < ZSCORE_STD_FLOOR else (latest - mean) / std)
    p10, p90 = (float(v) for v in np.percentile(tail, [10, 90]))
    return ZScoreStats(n, window, latest, z, mean, std, p10, p90, float(tail.min()), float(tail.max()))


def _window_sums(v: np.ndarray, window: int) -> np.ndarray:
    """Sum of v over the trailing window ending at each index (inclusive), along the last axis
    (``v`` may be 1-D, or 2-D to sum several series in one pass).

    Prefix sums restart every ``window`` rows, so no partial sum spans more than two
    windows of data and rounding stays at the scale of one window, not of the series.
    """
    lead, n = v.shape[:-1], v.shape[-1]
    nb = -(-n // window)
    padded = np.zeros((*lead, nb * window))
    padded[..., :n] = v
    prefix = padded.reshape(*lead, nb, window)
    np.cumsum(prefix, axis=-1, out=prefix)
    # window ending at (b, k) = block b[0..k] + block b-1[k+1..]
    prefix[..., 1:, :-1] += prefix[..., :-1, -1:] - prefix[..., :-1, :-1]
    return padded[..., :n]


def rolling_zscore(values: np.ndarray, window: int, min_samples: int = ZSCORE_MIN_SAMPLES) -> np.ndarray:
    """Vectorised z-score of every sample against the trailing ``window`` (inclusive).

    Same definition as `RollingZScore` (population std, NaN before ``min_samples``,
    ``std < 1e-8`` → 0); used by the backtest. Values are centred on the series mean and
    summed per block (see `_window_sums`; the sum and the sum of squares in one pass), which
    matches the O(1) tracker to ~1e-12 on basis data; only windows whose std is below ~1e-5 of
    their level lose digits.
    """
    return rolling_zscore_std(values, window, min_samples)[0]


def rolling_zscore_std(values: np.ndarray, window: int, min_samples: int = ZSCORE_MIN_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """(z-score, population std) of every sample against the trailing ``window``; both NaN before
    ``min_samples`` (see `rolling_zscore`)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    out = np.full(n, np.nan)
    sd_out = np.full(n, np.nan)
    if n == 0 or min_samples > window:  # a window that never holds enough samples never has a z
        return out, sd_out
    both = np.empty((2, n))
    xs = np.subtract(x, float(x.mean()), out=both[0])
    np.multiply(xs, xs, out=both[1])
    sums = _window_sums(both, window)
    cnt = np.minimum(np.arange(1, n + 1, dtype=np.float64), window)
    mean = np.divide(sums[0], cnt, out=sums[0])
    var = np.divide(sums[1], cnt, out=sums[1])
    ex2 = var.copy()
    var -= mean * mean
    np.maximum(var, 0.0, out=var)
    first = max(min_samples, 1) - 1  # counts grow 1, 2, …: the samples with enough history are a suffix
    # a (nearly) flat window: E[x²] − mean² cancels to rounding noise, and a z of noise over noise could cross any
    # threshold; those windows are recomputed exactly (two passes, as the per-row loop does), the rest stand
    unsure = np.flatnonzero(var[first:] <= 1e-10 * ex2[first:]) + first
    std = np.sqrt(var, out=var)
    sd_out[first:] = std[first:]
    small = std < ZSCORE_STD_FLOOR
    std[small] = 1.0
    z = np.subtract(xs, mean, out=mean)
    z /= std
    z[small] = 0.0
    out[first:] = z[first:]
    full = unsure[unsure >= window - 1]
    if full.size:  # whole windows: every row of them at once (the same two-pass reductions, row by row)
        rows = sliding_window_view(x, window)[full - window + 1]
        sd = rows.std(axis=1)
        mu = rows.mean(axis=1)
        sd_out[full] = sd
        out[full] = np.where(sd < ZSCORE_STD_FLOOR, 0.0, (x[full] - mu) / np.where(sd < ZSCORE_STD_FLOOR, 1.0, sd))
    for i in unsure[unsure < window - 1].tolist():  # the first, growing windows
        w = x[: i + 1]
        sdi = float(w.std())
        sd_out[i] = sdi
        out[i] = 0.0 if sdi < ZSCORE_STD_FLOOR else (float(x[i]) - float(w.mean())) / sdi
    return out, sd_out


# --------------------------------------------------------------------------- funding schedule


def settlements_in(seconds_to_next: float, interval_hours: float, horizon_seconds: float) -> int:
    """How many funding settlements fall in (now, now + horizon]."""
    if horizon_seconds < seconds_to_next or interval_hours <= 0:
        return 0
    return int((horizon_seconds - seconds_to_next) // (interval_hours * 3600.0)) + 1


# --------------------------------------------------------------------------- expected return


@dataclass(frozen=True)
class NetReturnEstimate:
    notional_usd: float
    hold_days: float
    capital_employed_usd: float
    basis_capture_usd: float
    funding_usd: float
    settlements: int
    fees_usd: float
    slippage_usd: float
    net_usd: float
    net_return_pct: float
    apy_pct: float
    apy_on_notional_pct: float
    break_even_hold_days: float | None
    borrow_usd: float = 0.0  # interest on borrowed spot over the hold (≤ 0), reverse trades only


def estimate_net_return(
    *,
    notional_usd: float,
    spot_price: float,
    perp_price: float,
    hold_days: float,
    exit_basis_pct: float,
    funding_rate: float,
    funding_interval_hours: float,
    seconds_to_next_funding: float,
    leverage: float,
    entry_exit_cost_usd: tuple[float, float],
    direction: int = 1,
    borrow_rate_hourly: float = 0.0,
    funding_direction: int | None = None,
    reference_leveraged: bool | None = None,
    funding_price: float | None = None,
) -> NetReturnEstimate:
    """Honest expected return of a cash-and-carry (long spot, short perp) over a hold.

    ``direction`` −1 is the reverse trade (short borrowed spot, long perp): the basis capture
    and funding change sign, borrow interest at ``borrow_rate_hourly`` (a fraction of the spot
    value per hour) is paid over the hold, and the spot leg ties up only its margin.

    - basis capture happens ONCE: q × (basis_entry − basis_exit), q = notional / spot;
    - funding accrues per settlement: q × perp × rate × settlements in the hold;
    - costs are the round trip: fees and slippage on both legs, in and out;
    - net_return_pct = net ÷ capital employed (spot cash + perp margin);
    - apy_pct = net_return_pct ÷ hold_days × 365 (simple, not compounded). The one-off
      basis is NOT multiplied by settlements per year.
    ``entry_exit_cost_usd`` = (fees_usd, slippage_usd) for the full round trip.

    Other two-leg shapes read the same way with ``spot_price`` the reference leg and ``perp_price``
    the other: a calendar spread passes the perp and the dated future, ``funding_direction`` −1
    (its long perp pays positive funding) at ``funding_price`` (the perp's), and
    ``reference_leveraged`` (its reference leg is margined, not bought outright).
    """
    fd = direction if funding_direction is None else funding_direction
    ref_leveraged = (direction == -1) if reference_leveraged is None else reference_leveraged
    q = notional_usd / spot_price
    basis_entry_usd = perp_price - spot_price
    basis_exit_usd = exit_basis_pct / 100.0 * spot_price
    basis_capture = direction * q * (basis_entry_usd - basis_exit_usd)
    n_settle = settlements_in(seconds_to_next_funding, funding_interval_hours, hold_days * 86400.0)
    funding_per_settlement = fd * q * (perp_price if funding_price is None else funding_price) * funding_rate
    funding = funding_per_settlement * n_settle
    borrow = -q * spot_price * borrow_rate_hourly * hold_days * 24.0
    fees, slip = entry_exit_cost_usd
    net = basis_capture + funding + borrow - fees - slip
    spot_capital = notional_usd / leverage if ref_leveraged else notional_usd
    capital = spot_capital + q * perp_price / leverage
    net_return_pct = net / capital * 100.0
    apy = net_return_pct / hold_days * DAYS_PER_YEAR
    apy_notional = net / notional_usd * 100.0 / hold_days * DAYS_PER_YEAR
    shortfall = fees + slip - basis_capture
    funding_per_day = funding_per_settlement * 24.0 / funding_interval_hours - q * spot_price * borrow_rate_hourly * 24.0
    if shortfall <= 0:
        break_even: float | None = 0.0
    elif funding_per_day > 0:
        break_even = shortfall / funding_per_day
    else:
        break_even = None
    return NetReturnEstimate(
        notional_usd=notional_usd,
        hold_days=hold_days,
        capital_employed_usd=capital,
        basis_capture_usd=basis_capture,
        funding_usd=funding,
        settlements=n_settle,
        fees_usd=fees,
        slippage_usd=slip,
        net_usd=net,
        net_return_pct=net_return_pct,
        apy_pct=apy,
        apy_on_notional_pct=apy_notional,
        break_even_hold_days=break_even,
        borrow_usd=borrow,
    )


def entry_expected_net_usd(
    *,
    qty: float,
    spot: float,
    perp: float,
    leverage: float,
    costs: PairCosts,
    hold_days: float,
    funding_rate: float,
    funding_interval_hours: float,
    seconds_to_next_funding: float,
    direction: int = 1,
    borrow_rate_hourly: float = 0.0,
    seconds_to_expiry: float | None = None,
) -> float:
    """The pre-trade "net expected return > 0" number: basis to 0, funding at ``funding_rate`` over
    the planned hold, round-trip fees and slippage, for ``qty`` already rounded to the lot step.
    One function for the desk's guardrail, the backtest and its reference loop.

    With ``seconds_to_expiry`` it is a calendar spread (``spot`` the perp, ``perp`` the dated
    future): the premium is expected to roll down linearly to zero at expiry, so a hold captures
    only its share of it (`dated.roll_down_exit_basis_pct`), and the long perp pays the funding."""
    if seconds_to_expiry is not None:
        entry_basis = (perp - spot) / spot * 100.0
        return estimate_net_return(
            notional_usd=max(qty * spot, 1e-9), spot_price=spot, perp_price=perp, hold_days=hold_days,
            exit_basis_pct=roll_down_exit_basis_pct(entry_basis, hold_days * 86400.0, seconds_to_expiry),
            funding_rate=funding_rate, funding_interval_hours=funding_interval_hours,
            seconds_to_next_funding=seconds_to_next_funding, leverage=leverage,
            entry_exit_cost_usd=costs.round_trip_usd(qty, spot, perp), direction=1, funding_direction=-1,
            reference_leveraged=True, funding_price=spot).net_usd
    rounded = qty * spot
    return estimate_net_return(
        notional_usd=max(rounded, 1e-9),
        spot_price=spot,
        perp_price=perp,
        hold_days=hold_days,
        exit_basis_pct=0.0,
        funding_rate=funding_rate,
        funding_interval_hours=funding_interval_hours,
        seconds_to_next_funding=seconds_to_next_funding,
        leverage=leverage,
        entry_exit_cost_usd=costs.round_trip_usd(qty, spot, perp),
        direction=direction,
        borrow_rate_hourly=borrow_rate_hourly,
    ).net_usd


def funding_apr_pct_between(times: np.ndarray, rates: np.ndarray, t0: float, t1: float) -> float:
    """What a SHORT received from one venue's perp over (t0, t1], as percent a year of notional: the
    settlements in the span summed and divided by the span's length, so venues paying every hour
    and every 8 hours are compared per unit of time, each on its own schedule (a missing settlement
    simply pays nothing)."""
    if t1 <= t0:
        raise ValueError("t1 must be after t0")
    lo = int(np.searchsorted(times, t0, side="right"))
    hi = int(np.searchsorted(times, t1, side="right"))
    return float(np.sum(rates[lo:hi])) / (t1 - t0) * 365.0 * 86400.0 * 100.0


def funding_differential_apr_pct(rich: tuple[np.ndarray, np.ndarray], cheap: tuple[np.ndarray, np.ndarray],
                                 t0: float, t1: float) -> float:
    """The cross-exchange carry over (t0, t1]: short the perp on the venue whose funding is richer,
    long it where it is cheaper; percent a year of notional per leg, before costs."""
    return funding_apr_pct_between(*rich, t0, t1) - funding_apr_pct_between(*cheap, t0, t1)
