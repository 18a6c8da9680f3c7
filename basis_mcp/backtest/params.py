"""Backtest parameters: the desk's rule set, with the desk's defaults, validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from basis_mcp.config import HARD


class BacktestParams(BaseModel):
    """The cash-and-carry rules. Entry: basis ≥ min, z ≥ min, 1 h vol ≤ limit, net expected return
    over ``expected_hold_days`` > 0. Exits (the watchdog's, then the agent's): basis blow-out past
    ``basis_stop_multiple`` × entry, funding reversal, basis inverted, max hold; convergence
    (basis ≤ exit level) and z-score reversion (z ≤ exit level)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_basis_pct: float = Field(0.05, ge=-5, le=5, allow_inf_nan=False, description="enter only at or above this basis, percent")
    min_zscore: float = Field(1.5, ge=-10, le=10, allow_inf_nan=False)
    exit_basis_pct: float = Field(0.0, ge=-5, le=5, allow_inf_nan=False, description="exit when basis falls to this (convergence)")
    exit_zscore: float = Field(0.0, ge=-10, le=10, allow_inf_nan=False, description="exit when z falls to this (reversion)")
    max_hold_days: float = Field(30.0, gt=0, le=HARD.max_hold_days, allow_inf_nan=False)
    expected_hold_days: float = Field(7.0, ge=1 / 24, le=HARD.max_hold_days, allow_inf_nan=False)
    notional_usd: float = Field(5_000.0, gt=0, le=1e9, allow_inf_nan=False, description="spot-leg notional per trade")
    leverage: float = Field(2.0, ge=1, le=HARD.max_leverage, allow_inf_nan=False)
    zscore_window: int = Field(1080, ge=30, le=100_000)
    vol_limit_pct: float = Field(HARD.max_realised_vol_1h * 100, gt=0, le=HARD.max_realised_vol_1h * 100, allow_inf_nan=False)
    basis_stop_multiple: float = Field(3.0, gt=1, le=3.0, allow_inf_nan=False)
    basis_stop_floor_pct: float = Field(0.05, ge=0, le=5, allow_inf_nan=False)
    funding_exit_8h_pct: float = Field(-0.005, ge=-1, le=1, allow_inf_nan=False)
    funding_exit_basis_pct: float = Field(0.15, ge=-5, le=5, allow_inf_nan=False)
    capital_usd: float = Field(100_000.0, gt=0, le=1e12, allow_inf_nan=False)
    spot_fee: float | None = Field(None, ge=0, le=0.01, allow_inf_nan=False, description="override the spot taker fee (fraction)")
    perp_fee: float | None = Field(None, ge=0, le=0.01, allow_inf_nan=False, description="override the perp taker fee (fraction)")
    slippage_multiplier: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="scale spread and impact")

    @model_validator(mode="after")
    def _sensible(self) -> BacktestParams:
        if self.exit_basis_pct >= self.min_basis_pct:
            raise ValueError(
                f"exit_basis_pct ({self.exit_basis_pct:g}) must be below min_basis_pct ({self.min_basis_pct:g}): "
                "otherwise every entry exits at once"
            )
        if self.exit_zscore >= self.min_zscore:
            raise ValueError(f"exit_zscore ({self.exit_zscore:g}) must be below min_zscore ({self.min_zscore:g})")
        return self
