"""Risk limits and venue parameters.

`HARD` holds the ceilings written into the code: no config file, environment variable or
tool argument can exceed them. `Settings` is the operator's configuration; it is
validated at start-up and may only tighten the ceilings. Nothing in the tool layer can
write it.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from basis_mcp.costs import LegCosts, PairCosts
from basis_mcp.dated import underlying
from basis_mcp.margin import Bracket, brackets
from basis_mcp.playbooks import ExitRules
from basis_mcp.venues import PERP_TAKER_FEE

Tier = Literal["anchor", "mid", "speculative"]


@dataclass(frozen=True)
class HardLimits:
    max_leverage: float = 5.0
    tier_allocation: tuple[tuple[str, float], ...] = (("anchor", 0.50), ("mid", 0.35), ("speculative", 0.15))
    tier_single_position: tuple[tuple[str, float], ...] = (("anchor", 0.25), ("mid", 0.15), ("speculative", 0.07))
    max_drawdown: float = 0.15
    max_realised_vol_1h: float = 0.05
    max_orders_per_minute: int = 120
    max_hold_days: float = 30.0  # the convergence playbook
    max_hold_days_carry: float = 365.0  # the carry playbook: long holds are its point (margin is watched every tick)
    max_stale_seconds_live: float = 10.0

    def allocation(self, tier: str) -> float:
        return dict(self.tier_allocation)[tier]

    def single(self, tier: str) -> float:
        return dict(self.tier_single_position)[tier]


HARD = HardLimits()

ANCHOR = ("BTC", "ETH")
MID = ("SOL", "ARB", "AVAX", "BNB", "XRP", "DOGE", "ADA", "LINK", "DOT", "MATIC", "OP", "LTC", "TON", "SUI")


class SymbolSpec(BaseModel):
    """What the (paper) venue needs to know to trade one symbol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spot_taker_fee: float = Field(0.001, ge=0, le=0.01, description="fraction; Binance VIP 0 spot taker 0.10 %")
    perp_taker_fee: float = Field(0.0005, ge=0, le=0.01, description="fraction; Binance VIP 0 USD-M taker 0.05 %")
    spot_half_spread_bps: float = Field(0.5, ge=0, le=100)
    perp_half_spread_bps: float = Field(0.5, ge=0, le=100)
    spot_impact_bps_per_sqrt_musd: float = Field(5.0, ge=0, le=1000)
    perp_impact_bps_per_sqrt_musd: float = Field(4.0, ge=0, le=1000)
    qty_step: float = Field(0.001, gt=0, description="lot step in base units shared by both legs")
    min_notional_usd: float = Field(100.0, ge=0)
    mmr_brackets: list[tuple[float, float]] = Field(
        default_factory=lambda: [
            (50_000, 0.004),
            (600_000, 0.005),
            (3_000_000, 0.01),
            (12_000_000, 0.025),
            (70_000_000, 0.05),
            (100_000_000, 0.10),
            (230_000_000, 0.125),
            (480_000_000, 0.15),
            (600_000_000, 0.25),
            (math.inf, 0.50),
        ],
        description="(notional cap USD, maintenance margin rate) rows; cum amounts are derived",
    )

    @property
    def costs(self) -> PairCosts:
        return PairCosts(
            spot=LegCosts(self.spot_taker_fee, self.spot_half_spread_bps, self.spot_impact_bps_per_sqrt_musd),
            perp=LegCosts(self.perp_taker_fee, self.perp_half_spread_bps, self.perp_impact_bps_per_sqrt_musd),
        )

    @property
    def brackets(self) -> list[Bracket]:
        return brackets(self.mmr_brackets)


DEFAULT_SPECS: dict[str, SymbolSpec] = {
    "BTC": SymbolSpec(),
    "ETH": SymbolSpec(
        spot_half_spread_bps=0.7,
        perp_half_spread_bps=0.6,
        spot_impact_bps_per_sqrt_musd=7.0,
        perp_impact_bps_per_sqrt_musd=5.0,
        min_notional_usd=20.0,
        mmr_brackets=[
            (50_000, 0.005),
            (600_000, 0.0065),
            (3_000_000, 0.01),
            (12_000_000, 0.02),
            (50_000_000, 0.05),
            (65_000_000, 0.10),
            (150_000_000, 0.125),
            (320_000_000, 0.15),
            (400_000_000, 0.25),
            (math.inf, 0.50),
        ],
    ),
    "SOL": SymbolSpec(
        spot_half_spread_bps=1.5,
        perp_half_spread_bps=1.0,
        spot_impact_bps_per_sqrt_musd=15.0,
        perp_impact_bps_per_sqrt_musd=10.0,
        qty_step=1.0,
        min_notional_usd=5.0,
        mmr_brackets=[
            (10_000, 0.005),
            (100_000, 0.01),
            (500_000, 0.02),
            (2_000_000, 0.05),
            (5_000_000, 0.10),
            (10_000_000, 0.125),
            (20_000_000, 0.15),
            (40_000_000, 0.25),
            (math.inf, 0.50),
        ],
    ),
}


# A symbol nobody described: costs wider than any listed one (thin books are the rule there),
# the lot step from the venue or, failing that, from its price (`lot_step_for_price`).
CONSERVATIVE_SPEC = SymbolSpec(
    spot_half_spread_bps=5.0,
    perp_half_spread_bps=4.0,
    spot_impact_bps_per_sqrt_musd=60.0,
    perp_impact_bps_per_sqrt_musd=45.0,
    min_notional_usd=5.0,
    mmr_brackets=[(5_000, 0.01), (25_000, 0.025), (100_000, 0.05), (250_000, 0.10), (1_000_000, 0.125), (math.inf, 0.50)],
)


def lot_step_for_price(price: float) -> float:
    """A conservative lot step for a coin at ``price``: a power of ten worth $1–$10 (venues' own
    steps are finer; rounding to a coarser one never sends an order the venue would refuse)."""
    if not (price > 0 and math.isfinite(price)):
        return 1.0
    return float(10.0 ** math.floor(math.log10(10.0 / price)))


# field -> (hard ceiling, "max" = value must be <= ceiling | "min" = value must be >= ceiling)
TIGHTEN_ONLY: dict[str, tuple[float, str]] = {
    "max_leverage": (HARD.max_leverage, "max"),
    "max_hold_days": (HARD.max_hold_days, "max"),
    "max_stale_seconds_live": (HARD.max_stale_seconds_live, "max"),
    "max_drawdown": (HARD.max_drawdown, "max"),
    "max_realised_vol_1h_pct": (HARD.max_realised_vol_1h * 100, "max"),
    "max_orders_per_minute": (HARD.max_orders_per_minute, "max"),
    "margin_add_ratio": (1.50, "min"),
    "margin_close_ratio": (1.30, "min"),
    "max_imbalance_pct": (2.0, "max"),
    "basis_stop_multiple": (3.0, "max"),
    "carry_max_hold_days": (HARD.max_hold_days_carry, "max"),
    "max_venue_share": (0.40, "max"),
    "liquidation_distance_add_pct": (5.0, "min"),
}


class Settings(BaseModel):
    """Operator configuration. Every limit here may be tighter than `HARD`, never looser."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capital_usd: float = Field(100_000.0, gt=0, le=1e9, description="paper starting capital / capital the limits are measured against")
    max_leverage: float = Field(3.0, ge=1.0, description="perp leverage cap; hard ceiling 5x")
    default_leverage: float = Field(2.0, ge=1.0, description="leverage used when a tool call does not give one")
    max_position_notional_usd: float = Field(5_000.0, gt=0, description="per-position notional cap (spot leg, USD)")
    tier_allocation: dict[str, float] = Field(default_factory=lambda: dict(HARD.tier_allocation))
    tier_single_position: dict[str, float] = Field(default_factory=lambda: dict(HARD.tier_single_position))
    tiers: dict[str, Tier] = Field(default_factory=dict, description="symbol -> tier overrides; default anchor BTC/ETH, mid majors, speculative rest")
    symbol_allowlist: list[str] | None = Field(None, description="symbols the agent may enter; default: every symbol with data")
    symbols: dict[str, SymbolSpec] = Field(default_factory=dict, description="per-symbol venue parameter overrides")
    max_drawdown: float = Field(0.15, gt=0, description="loss as a fraction of capital that moves the desk to REDUCING")
    max_realised_vol_1h_pct: float = Field(5.0, gt=0, description="1 h realised vol (percent per hour) that pauses entries")
    max_orders_per_minute: int = Field(30, ge=2)
    margin_add_ratio: float = Field(1.50, description="watchdog adds margin below this margin ratio")
    margin_close_ratio: float = Field(1.30, description="watchdog closes both legs below this margin ratio")
    max_imbalance_pct: float = Field(2.0, gt=0, description="watchdog rebalances above this leg imbalance")
    liquidation_distance_add_pct: float = Field(15.0, ge=1, le=90, description="watchdog adds margin when the short's liquidation price is closer than this, percent above the mark")
    liquidation_distance_target_pct: float = Field(25.0, ge=1, le=95, description="... enough to put it this far above the mark")
    basis_stop_multiple: float = Field(3.0, gt=1, description="watchdog stops out when basis exceeds this multiple of entry")
    zscore_window: int = Field(1080, ge=30, le=100_000)
    zscore_sample_seconds: int = Field(3600, ge=60, le=86_400, description="one basis sample per symbol per bucket")
    max_stale_seconds_replay: float = Field(
        3599.0, ge=0, le=86_400, description="replay data is hourly: a price from this hour is fresh, a missing bar is stale"
    )
    max_stale_seconds_live: float = Field(5.0, gt=0)
    max_hold_days: float = Field(30.0, gt=0, description="convergence playbook: planned exit after this many days")
    # the server's basis and funding exits, per playbook (see basis_mcp.playbooks)
    basis_stop_floor_pct: float = Field(0.05, ge=0, le=5, description="basis stop floor, percent")
    basis_stop_sigmas: float = Field(2.0, ge=0, le=20, description="basis stop floor in the symbol's own basis std")
    basis_smoothing_hours: float = Field(8.0, ge=1, le=72, description="the basis the server's exits read is averaged over this window")
    flip_sigmas: float = Field(1.0, ge=0, le=20, description="convergence: basis inverted once its average is below -this × std")
    funding_exit_8h_pct: float = Field(-0.005, ge=-1, le=1, description="convergence: funding-reversal level, percent per 8 h")
    funding_exit_basis_pct: float = Field(0.15, ge=-5, le=5, description="convergence: ... with less basis than this left")
    funding_exit_hours: float = Field(24.0, ge=1, le=720, description="convergence: funding averaged over this window")
    carry_lookback_days: float = Field(7.0, ge=1, le=90, description="carry: funding averaged over this many days")
    carry_entry_8h_pct: float = Field(0.005, ge=-1, le=1, description="carry: enter at or above this mean funding per 8 h, percent")
    carry_exit_8h_pct: float = Field(-0.005, ge=-1, le=1, description="carry: leave below this mean funding per 8 h, percent")
    carry_cost_cover: float = Field(2.0, ge=0, le=100, description="carry: expected funding over the hold must pay the round trip this many times")
    carry_max_hold_days: float = Field(365.0, gt=0, description="carry playbook: planned exit (a re-size) after this many days")
    fill_delay_seconds: float = Field(0.0, ge=0, le=86_400, description="replay: paper fills land at the first fresh bar this long after the order")
    borrow_scenario: Literal["calm", "spike"] = Field(
        "calm", description="paper and backtests: the MODELLED borrow-rate series for short spot legs (basis_mcp.borrow)")
    borrow_spike_apr_pct: float = Field(50.0, gt=0, le=1000, description="watchdog: close a borrowed-spot leg when its borrow "
                                        "rate is above this (percent a year): a squeeze, and recall risk with it")
    expiry_exit_hours: float = Field(24.0, ge=1, le=24.0 * 30, description="calendar spread: the watchdog closes a dated-future "
                                     "leg this many hours before its expiry, and no entry's planned hold may run past that time")
    paper_venues: list[str] = Field(default_factory=list, description="replay: extra paper venues for cross-exchange trades "
                                    "(bybit, gate, dydx: the shipped real funding of 2020-2023); each starts with "
                                    "max_venue_share of capital, taken from the primary venue's")
    max_venue_share: float = Field(0.40, gt=0, le=0.40, description="with more than one venue, the most of capital (a fraction) "
                                   "the open positions on any one venue may commit (margin, collateral, spot bought); hard ceiling 0.40")
    max_advance_hours: float = Field(24.0 * 92, gt=0, le=24.0 * 366)
    live_confirmation: bool = Field(True, description="live mode: enter/exit need a confirmation token first")
    confirmation_ttl_seconds: float = Field(60.0, ge=5, le=600)
    poll_seconds: float = Field(2.0, ge=0.2, le=60, description="live modes: market tick / watchdog period")
    venue_timeout_ms: int = Field(10_000, ge=500, le=60_000, description="live modes: per-request timeout to the venue")

    @model_validator(mode="before")
    @classmethod
    def _tighten_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = []
        for name, (ceiling, kind) in TIGHTEN_ONLY.items():
            if name not in data:
                continue
            try:
                v = float(data[name])
            except (TypeError, ValueError):
                continue  # the field's own validation reports it
            if (kind == "max" and v > ceiling) or (kind == "min" and v < ceiling):
                word = "exceeds" if kind == "max" else "is below"
                problems.append(f"{name} {v:g} {word} the hard ceiling {ceiling:g} (config may only tighten limits)")
        if problems:
            raise ValueError("; ".join(problems))
        return data

    @field_validator("tier_allocation", "tier_single_position")
    @classmethod
    def _tier_ceiling(cls, v: dict[str, float], info: Any) -> dict[str, float]:
        hard = dict(HARD.tier_allocation if info.field_name == "tier_allocation" else HARD.tier_single_position)
        merged = dict(hard)
        for tier, frac in v.items():
            if tier not in hard:
                raise ValueError(f"unknown tier {tier!r} (tiers: {', '.join(hard)})")
            if not (0 <= frac <= hard[tier]):
                raise ValueError(f"{info.field_name}[{tier}] = {frac:g} is outside 0..{hard[tier]:g} (hard ceiling)")
            merged[tier] = frac
        return merged

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        known = ("bybit", "gate", "dydx")
        bad = [v for v in self.paper_venues if v not in known]
        if bad or len(set(self.paper_venues)) != len(self.paper_venues):
            raise ValueError(f"paper_venues {self.paper_venues} must be distinct names among {', '.join(known)} "
                             "(the venues with shipped funding history; binance is the primary paper venue)")
        if self.paper_venues and self.max_venue_share * len(self.paper_venues) >= 1.0:
            raise ValueError(f"{len(self.paper_venues)} extra paper venues at max_venue_share {self.max_venue_share:g} each "
                             "leave nothing for the primary venue")
        if self.default_leverage > self.max_leverage:
            raise ValueError(f"default_leverage {self.default_leverage:g} is above max_leverage {self.max_leverage:g}")
        if self.margin_close_ratio >= self.margin_add_ratio:
            raise ValueError("margin_close_ratio must be below margin_add_ratio")
        if self.liquidation_distance_target_pct <= self.liquidation_distance_add_pct:
            raise ValueError("liquidation_distance_target_pct must be above liquidation_distance_add_pct")
        if self.carry_exit_8h_pct >= self.carry_entry_8h_pct:
            raise ValueError(f"carry_exit_8h_pct {self.carry_exit_8h_pct:g} must be below carry_entry_8h_pct "
                             f"{self.carry_entry_8h_pct:g} (the gap stops the carry from churning)")
        return self

    @property
    def exit_rules(self) -> ExitRules:
        return ExitRules(
            basis_stop_multiple=self.basis_stop_multiple, basis_stop_floor_pct=self.basis_stop_floor_pct,
            basis_stop_sigmas=self.basis_stop_sigmas, basis_smoothing_hours=self.basis_smoothing_hours,
            flip_sigmas=self.flip_sigmas, funding_exit_8h_pct=self.funding_exit_8h_pct,
            funding_exit_basis_pct=self.funding_exit_basis_pct, funding_exit_hours=self.funding_exit_hours,
            carry_lookback_days=self.carry_lookback_days, carry_entry_8h_pct=self.carry_entry_8h_pct,
            carry_exit_8h_pct=self.carry_exit_8h_pct, carry_cost_cover=self.carry_cost_cover,
            max_hold_days=self.max_hold_days, carry_max_hold_days=self.carry_max_hold_days,
        )

    # ---------------------------------------------------------------- lookups

    def tier_of(self, symbol: str) -> Tier:
        symbol = underlying(symbol)  # a dated contract is in its coin's tier
        if symbol in self.tiers:
            return self.tiers[symbol]
        if symbol in ANCHOR:
            return "anchor"
        if symbol in MID:
            return "mid"
        return "speculative"

    def spec(self, symbol: str) -> SymbolSpec:
        venue = symbol.partition("@")[2]
        symbol = underlying(symbol)  # a dated contract trades on its coin's lot step, costs and brackets
        base = self.symbols.get(symbol) or DEFAULT_SPECS.get(symbol) or CONSERVATIVE_SPEC
        if venue and venue in PERP_TAKER_FEE:  # a perp on another venue: that venue's taker fee
            return base.model_copy(update={"perp_taker_fee": PERP_TAKER_FEE[venue]})
        return base

    def has_spec(self, symbol: str) -> bool:
        return symbol in self.symbols or symbol in DEFAULT_SPECS

    def with_unknown_symbols(self, hints: dict[str, tuple[float | None, float | None]]) -> Settings:
        """Settings where every symbol in ``hints`` without a spec gets the conservative one, with
        the lot step from ``(venue_step, price)``: the venue's own if known, else from the price."""
        extra = {}
        for sym, (venue_step, price) in hints.items():
            if self.has_spec(sym):
                continue
            step = venue_step if venue_step and venue_step > 0 else lot_step_for_price(price or 0.0)
            extra[sym] = CONSERVATIVE_SPEC.model_copy(update={"qty_step": step})
        return self if not extra else self.model_copy(update={"symbols": {**self.symbols, **extra}})


ENV_PREFIX = "BASIS_MCP_"
_ENV_FIELDS = {
    "capital_usd",
    "max_leverage",
    "default_leverage",
    "max_position_notional_usd",
    "zscore_window",
    "max_hold_days",
    "max_stale_seconds_live",
    "max_drawdown",
    "max_realised_vol_1h_pct",
    "max_orders_per_minute",
    "borrow_scenario",
    "borrow_spike_apr_pct",
    "expiry_exit_hours",
    "max_venue_share",
}


class ConfigError(ValueError):
    pass


def load_settings(path: Path | str | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from an optional TOML file, then ``BASIS_MCP_*`` environment variables.

    Raises `ConfigError` with a readable message for a missing file, bad TOML, an unknown
    key, or any value that would loosen a hard ceiling.
    """
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    for key in _ENV_FIELDS:
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is not None:
            data[key] = raw
    raw = env.get(ENV_PREFIX + "PAPER_VENUES")
    if raw:
        data["paper_venues"] = [x.strip().lower() for x in raw.split(",") if x.strip()]
    raw = env.get(ENV_PREFIX + "SYMBOL_ALLOWLIST")
    if raw:
        data["symbol_allowlist"] = [x.strip().upper() for x in raw.split(",") if x.strip()]
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc'])}: "
            + ("unknown setting (typo?)" if err["type"] == "extra_forbidden" else err["msg"])
            for err in e.errors()
        ]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


# the limits kept as fractions in the config (bare names: 0.15 = 15 %) and shown to the agent in percent
FRACTION_LIMITS = ("max_drawdown", "tier_allocation", "tier_single_position", "max_venue_share", "margin_add_ratio",
                   "margin_close_ratio")


def limits_view(settings: Settings) -> dict[str, Any]:
    """The operator's limits and the hard ceilings as the agent reads them (``basis://limits``): one unit
    per name, the same on both sides — every fraction of the config shown in percent under a ``_pct``
    name (``max_drawdown`` 0.15 → ``max_drawdown_pct`` 15), the hard 1 h volatility ceiling as
    ``max_realised_vol_1h_pct`` like the setting it bounds."""

    def pct(key: str, value: Any) -> tuple[str, Any]:
        if key not in FRACTION_LIMITS:
            return key, value
        if isinstance(value, dict):
            return f"{key}_pct", {k: round(v * 100, 6) for k, v in value.items()}
        return f"{key}_pct", round(value * 100, 6)

    shown = dict(pct(k, v) for k, v in settings.model_dump(mode="json").items())
    hard = {
        "max_leverage": HARD.max_leverage,
        "tier_allocation_pct": {t: round(f * 100, 6) for t, f in HARD.tier_allocation},
        "tier_single_position_pct": {t: round(f * 100, 6) for t, f in HARD.tier_single_position},
        "max_drawdown_pct": round(HARD.max_drawdown * 100, 6),
        "max_realised_vol_1h_pct": round(HARD.max_realised_vol_1h * 100, 6),
        "max_orders_per_minute": HARD.max_orders_per_minute,
        "max_hold_days": HARD.max_hold_days,
        "carry_max_hold_days": HARD.max_hold_days_carry,
        "max_stale_seconds_live": HARD.max_stale_seconds_live,
    }
    for key, (ceiling, _kind) in TIGHTEN_ONLY.items():
        name, value = pct(key, ceiling)
        hard.setdefault(name, value)
    return {
        "units": "_pct percent (15 = 15 %), _usd US dollars, _seconds/_hours/_days time, bare names a count or a "
                 "multiple (leverage 3 = 3x); every setting is at or inside its hard ceiling",
        "settings": shown,
        "hard_ceilings": hard,
    }
