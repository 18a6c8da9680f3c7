"""Backtest parameters: the desk's rule set, with the desk's defaults, validated."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from basis_mcp.config import HARD
from basis_mcp.playbooks import ExitRules

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int, name: str = "duration") -> float:
    """'1h', '5m', '90s', '0', 2 (hours if a bare number) → seconds. Raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected a duration such as 0, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value) * 3600.0
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{name}={value!r}: expected a duration such as 0, 5m, 1h or 1d (no negative values)")
        unit = (m.group(2) or "h").lower()
        seconds = float(m.group(1)) * _UNIT_S[unit]
    if not (seconds >= 0) or seconds == float("inf"):
        raise ValueError(f"{name}={value!r}: must be zero or a positive duration")
    return seconds


class BacktestParams(BaseModel):
    """The rules, per playbook (see `basis_mcp.playbooks`).

    convergence: enter when basis ≥ ``min_basis_pct``, z ≥ ``min_zscore``, 1 h vol ≤ limit and
    the net expected return over ``expected_hold_days`` > 0; exit on convergence (basis ≤
    ``exit_basis_pct``) or z reversion (z ≤ ``exit_zscore``), or when a server rule fires.
    carry: enter when the last ``carry_lookback_days`` of funding averaged ≥ ``carry_entry_8h_pct``
    per 8 h and the funding expected over ``carry_expected_hold_days`` pays the round trip
    ``carry_cost_cover`` times; exit when that average falls below ``carry_exit_8h_pct`` or a
    server rule fires. Fills happen ``fill_delay_seconds`` after the signal (at the first fresh
    bar at or after it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["cash_and_carry", "reverse_cash_and_carry", "calendar_spread", "cross_exchange"] = Field(
        "cash_and_carry", description="cash_and_carry (long spot, short perp), reverse_cash_and_carry (short borrowed spot, "
        "long perp: the rules read the basis and funding mirrored, and pay the MODELLED borrow interest every hour) or "
        "calendar_spread (long perp, short the quarterly the desk would choose, SIMULATED price; the basis is its premium over "
        "the perp, the long perp pays funding, closed expiry_exit_hours before expiry; convergence playbook only) or "
        "cross_exchange (short the perp where funding is richest, long it where cheapest, on the shipped real funding of "
        "Binance, Bybit, Gate and dYdX 2020/21-2023; carry playbook only, the carry_* thresholds read the differential)")
    venues: tuple[str, ...] = Field(("binance", "bybit", "gate", "dydx"), min_length=2, max_length=8,
                                    description="cross_exchange: the venues whose funding may be traded against each other")
    expiry_exit_hours: float = Field(24.0, ge=1, le=24.0 * 30, allow_inf_nan=False,
                                     description="calendar_spread: a contract is left this long before its expiry")
    borrow_scenario: Literal["calm", "spike"] = Field("calm", description="reverse_cash_and_carry: the modelled borrow series")
    playbook: Literal["convergence", "carry"] = Field("convergence", description="convergence or carry")
    min_basis_pct: float = Field(0.05, ge=-5, le=5, allow_inf_nan=False, description="convergence: enter at or above this basis, percent")
    min_zscore: float = Field(1.5, ge=-10, le=10, allow_inf_nan=False, description="convergence: enter at or above this z-score")
    exit_basis_pct: float = Field(0.0, ge=-5, le=5, allow_inf_nan=False, description="convergence: exit when basis falls to this")
    exit_zscore: float = Field(0.0, ge=-10, le=10, allow_inf_nan=False, description="convergence: exit when z falls to this")
    max_hold_days: float = Field(30.0, gt=0, le=HARD.max_hold_days, allow_inf_nan=False, description="convergence max hold")
    expected_hold_days: float = Field(7.0, ge=1 / 24, le=HARD.max_hold_days, allow_inf_nan=False,
                                      description="convergence: hold used for the net-return-after-costs entry check")
    carry_lookback_days: float = Field(7.0, ge=1, le=90, allow_inf_nan=False, description="carry: funding averaged over this many days")
    carry_entry_8h_pct: float = Field(0.005, ge=-1, le=1, allow_inf_nan=False, description="carry: enter at or above this mean funding per 8 h, percent")
    carry_exit_8h_pct: float = Field(-0.005, ge=-1, le=1, allow_inf_nan=False, description="carry: exit below this mean funding per 8 h, percent")
    carry_cost_cover: float = Field(2.0, ge=0, le=100, allow_inf_nan=False, description="carry: expected funding must pay the round trip this many times")
    carry_expected_hold_days: float = Field(90.0, ge=1, le=HARD.max_hold_days_carry, allow_inf_nan=False,
                                            description="carry: hold the entry check counts funding over")
    carry_max_hold_days: float = Field(365.0, gt=0, le=HARD.max_hold_days_carry, allow_inf_nan=False,
                                       description="carry max hold (then re-sized: a new entry if the rules allow)")
    fill_delay_seconds: float = Field(3600.0, ge=0, le=30 * 86400, allow_inf_nan=False,
                                      description="fills at the first fresh bar at or after signal + this delay (0: the signal's own close)")
    notional_usd: float = Field(5_000.0, gt=0, le=1e9, allow_inf_nan=False, description="spot-leg notional per trade (the target in desk sizing)")
    sizing: Literal["fixed", "desk"] = Field("fixed", description="fixed notional per position, or the desk's size_position caps")
    leverage: float = Field(2.0, ge=1, le=HARD.max_leverage, allow_inf_nan=False)
    zscore_window: int = Field(1080, ge=30, le=100_000, description="z-score window in HOURS of bars (1080 = 45 days: 1080 "
                               "hourly samples, 12,960 five-minute ones)")
    vol_limit_pct: float = Field(HARD.max_realised_vol_1h * 100, gt=0, le=HARD.max_realised_vol_1h * 100, allow_inf_nan=False)
    basis_stop_multiple: float = Field(3.0, gt=1, le=3.0, allow_inf_nan=False)
    basis_stop_floor_pct: float = Field(0.05, ge=0, le=5, allow_inf_nan=False)
    basis_stop_sigmas: float = Field(2.0, ge=0, le=20, allow_inf_nan=False, description="stop floor in the symbol's basis std")
    basis_smoothing_hours: float = Field(8.0, ge=1, le=72, allow_inf_nan=False, description="basis averaged over this window for the server's exits")
    flip_sigmas: float = Field(1.0, ge=0, le=20, allow_inf_nan=False)
    funding_exit_8h_pct: float = Field(-0.005, ge=-1, le=1, allow_inf_nan=False)
    funding_exit_basis_pct: float = Field(0.15, ge=-5, le=5, allow_inf_nan=False)
    funding_exit_hours: float = Field(24.0, ge=1, le=24 * 30, allow_inf_nan=False)
    capital_usd: float = Field(100_000.0, gt=0, le=1e12, allow_inf_nan=False)
    spot_fee: float | None = Field(None, ge=0, le=0.01, allow_inf_nan=False, description="override the spot taker fee (fraction)")
    perp_fee: float | None = Field(None, ge=0, le=0.01, allow_inf_nan=False, description="override the perp taker fee (fraction)")
    slippage_multiplier: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="scale spread and impact")

    @field_validator("fill_delay_seconds", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError(f"fill_delay={v!r}: expected a duration such as 0, 5m or 1h")
        if isinstance(v, str):
            return parse_duration(v, "fill_delay")
        return v

    @model_validator(mode="after")
    def _sensible(self) -> BacktestParams:
        if self.exit_basis_pct >= self.min_basis_pct:
            raise ValueError(
                f"exit_basis_pct ({self.exit_basis_pct:g}) must be below min_basis_pct ({self.min_basis_pct:g}): "
                "otherwise every entry exits at once"
            )
        if self.exit_zscore >= self.min_zscore:
            raise ValueError(f"exit_zscore ({self.exit_zscore:g}) must be below min_zscore ({self.min_zscore:g})")
        if self.expected_hold_days > self.max_hold_days:
            raise ValueError(f"expected_hold_days ({self.expected_hold_days:g}) is above max_hold_days ({self.max_hold_days:g}): "
                             "the desk refuses such entries")
        if self.carry_expected_hold_days > self.carry_max_hold_days:
            raise ValueError(f"carry_expected_hold_days ({self.carry_expected_hold_days:g}) is above carry_max_hold_days "
                             f"({self.carry_max_hold_days:g}): the desk refuses such entries")
        if self.strategy == "calendar_spread" and self.playbook != "convergence":
            raise ValueError(f"playbook={self.playbook}: calendar_spread trades the convergence playbook only (its carry is the "
                             "quarterly's roll-down, not funding)")
        if self.strategy == "cross_exchange" and self.playbook != "carry":
            raise ValueError(f"playbook={self.playbook}: cross_exchange trades the carry playbook only (it earns the funding "
                             "differential between venues); pass playbook=carry")
        if self.strategy == "cross_exchange" and self.sizing != "fixed":
            raise ValueError("sizing=desk: cross_exchange is backtested at a fixed notional per position")
        if self.strategy == "cross_exchange" and len(set(self.venues)) < 2:
            raise ValueError(f"venues={list(self.venues)}: cross_exchange needs two different venues")
        if self.strategy == "calendar_spread" and self.sizing != "fixed":
            raise ValueError("sizing=desk: calendar_spread is backtested at a fixed notional per position")
        if self.carry_exit_8h_pct >= self.carry_entry_8h_pct:
            raise ValueError(f"carry_exit_8h_pct ({self.carry_exit_8h_pct:g}) must be below carry_entry_8h_pct "
                             f"({self.carry_entry_8h_pct:g}): the gap between them is what stops the carry from churning")
        return self

    @property
    def rules(self) -> ExitRules:
        return ExitRules(
            basis_stop_multiple=self.basis_stop_multiple, basis_stop_floor_pct=self.basis_stop_floor_pct,
            basis_stop_sigmas=self.basis_stop_sigmas, basis_smoothing_hours=self.basis_smoothing_hours,
            flip_sigmas=self.flip_sigmas, funding_exit_8h_pct=self.funding_exit_8h_pct,
            funding_exit_basis_pct=self.funding_exit_basis_pct, funding_exit_hours=self.funding_exit_hours,
            carry_lookback_days=self.carry_lookback_days, carry_entry_8h_pct=self.carry_entry_8h_pct,
            carry_exit_8h_pct=self.carry_exit_8h_pct, carry_cost_cover=self.carry_cost_cover,
            max_hold_days=self.max_hold_days, carry_max_hold_days=self.carry_max_hold_days,
        )

    @property
    def direction(self) -> int:
        """+1 cash-and-carry, −1 the reverse trade (see `strategies.base.StrategySpec.direction`)."""
        return -1 if self.strategy == "reverse_cash_and_carry" else 1

    @property
    def funding_direction(self) -> int:
        """The sign of the funding the position receives: −1 for every trade long the perp."""
        return 1 if self.strategy == "cash_and_carry" else -1

    @property
    def borrows(self) -> bool:
        return self.strategy == "reverse_cash_and_carry"

    @property
    def hold_days(self) -> float:
        """The max hold of the chosen playbook."""
        return self.carry_max_hold_days if self.playbook == "carry" else self.max_hold_days
