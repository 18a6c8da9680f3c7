"""Guardrails as pure functions of readings: pre-trade checks and watchdog rules. No I/O.

The desk gathers the readings (prices, margin, capital, state) and executes what these
functions decide; keeping the decisions pure makes every rule testable on its numbers and
shared by the live desk and the backtest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from basis_mcp.errors import Violation

TradingState = Literal["ACTIVE", "REDUCING", "HALTED"]


# --------------------------------------------------------------------------- pre-trade


@dataclass(frozen=True)
class EntryReadings:
    symbol: str
    state: TradingState
    state_reason: str
    allowlisted: bool
    allowlist: tuple[str, ...]
    leverage: float
    leverage_cap: float
    hard_leverage_cap: float
    notional_usd: float
    caps: list[tuple[str, float, str]]  # (name, limit_usd, detail)
    free_capital_usd: float
    capital_required_usd: float
    data_age_seconds: float
    stale_limit_seconds: float
    realised_vol_1h_pct: float | None
    vol_limit_pct: float
    expected_net_usd: float
    expected_hold_days: float
    duplicate_position_id: int | None
    orders_last_minute: int
    orders_per_minute_limit: int
    min_notional_usd: float
    quantity: float
    rounded_notional_usd: float
    venue_reachable: bool = True
    venue_down_seconds: float = 0.0


def pre_trade_violations(r: EntryReadings) -> list[Violation]:
    """Every rule an entry breaks, each with its numbers. Empty list = allowed."""
    v: list[Violation] = []
    if r.state != "ACTIVE":
        v.append(Violation("trading_state", r.state, f"entries are blocked ({r.state_reason or r.state}); exits only"))
    if not r.allowlisted:
        v.append(Violation("symbol", r.symbol, f"not on the operator's allowlist ({', '.join(r.allowlist)})"))
    if r.leverage > r.hard_leverage_cap:
        v.append(Violation("leverage", r.leverage, f"above the hard ceiling of {r.hard_leverage_cap:g}x (never allowed)"))
    elif r.leverage > r.leverage_cap:
        v.append(Violation("leverage", r.leverage, f"above the operator's cap of {r.leverage_cap:g}x"))
    for name, limit, detail in r.caps:
        if r.notional_usd > limit + 1e-9:
            v.append(Violation("notional_usd", r.notional_usd, f"above {name} ${limit:,.2f} ({detail})"))
    if r.quantity <= 0 or r.rounded_notional_usd < r.min_notional_usd:
        v.append(Violation("notional_usd", r.notional_usd, f"below the venue minimum of ${r.min_notional_usd:,.2f} after lot rounding"))
    if r.capital_required_usd > r.free_capital_usd + 1e-9:
        v.append(
            Violation(
                "free_capital_usd",
                round(r.free_capital_usd, 2),
                f"entry needs ${r.capital_required_usd:,.2f} (spot + margin + costs); only ${r.free_capital_usd:,.2f} is free: "
                "lower notional_usd or raise leverage",
            )
        )
    if not r.venue_reachable:
        v.append(Violation("venue", "unreachable", f"the venue has been unreachable for {r.venue_down_seconds:.0f}s; no entries"))
    if r.data_age_seconds > r.stale_limit_seconds:
        v.append(
            Violation("market_data_age_seconds", round(r.data_age_seconds, 1),
                      f"symbol {r.symbol}: older than the {r.stale_limit_seconds:g}s limit; no entry on stale prices")
        )
    if r.realised_vol_1h_pct is not None and r.realised_vol_1h_pct > r.vol_limit_pct:
        v.append(
            Violation(
                "realised_vol_1h_pct",
                round(r.realised_vol_1h_pct, 3),
                f"circuit breaker: symbol {r.symbol} moved more than {r.vol_limit_pct:g} %/h in the last hour, entries paused",
            )
        )
    if r.expected_net_usd <= 0:
        v.append(
            Violation(
                "expected_net_usd",
                round(r.expected_net_usd, 2),
                f"net expected return of notional_usd={r.notional_usd:g} over expected_hold_days={r.expected_hold_days:g} after "
                "fees and slippage is not positive; a longer expected_hold_days or a richer basis is needed "
                "(see estimate_net_apy)",
            )
        )
    if r.duplicate_position_id is not None:
        v.append(Violation("symbol", r.symbol, f"position {r.duplicate_position_id} is already open in {r.symbol}"))
    if r.orders_last_minute + 2 > r.orders_per_minute_limit:
        v.append(
            Violation("orders_per_minute", r.orders_last_minute, f"an entry sends 2 orders; limit is {r.orders_per_minute_limit}/min")
        )
    return v


# --------------------------------------------------------------------------- watchdog


@dataclass(frozen=True)
class WatchdogLimits:
    margin_add_ratio: float = 1.50
    margin_close_ratio: float = 1.30
    margin_target_ratio: float = 2.00
    basis_stop_multiple: float = 3.0
    basis_stop_floor_pct: float = 0.05
    funding_exit_8h_pct: float = -0.005
    funding_exit_basis_pct: float = 0.15
    max_imbalance_pct: float = 2.0
    max_hold_days: float = 30.0
    settlement_wait_seconds: float = 1800.0
    settlement_wait_min_usd: float = 5.0


@dataclass(frozen=True)
class PositionReadings:
    position_id: int
    symbol: str
    status: str
    entry_basis_pct: float
    basis_pct: float
    funding_rate_8h_pct: float
    margin_ratio: float | None  # margin balance / maintenance margin (fraction)
    spot_quantity: float
    perp_quantity: float  # signed
    held_seconds: float
    seconds_to_funding: float
    next_funding_usd: float  # + received by this position at the next settlement
    margin_needed_usd: float  # to bring the ratio back to the target


@dataclass(frozen=True)
class Action:
    kind: Literal["close", "add_margin", "rebalance"]
    rule: str
    emergency: bool
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)
    amount_usd: float = 0.0


def watchdog_actions(p: PositionReadings, lim: WatchdogLimits) -> list[Action]:
    """What the watchdog must do for one open position, most urgent first.

    Emergency exits (margin < 130 %, basis blow-out) never wait. Planned exits (max hold,
    funding reversal, basis inverted) are returned with ``emergency=False``; the caller
    defers them while a settlement worth > $5 to this position is < 30 min away.
    """
    acts: list[Action] = []
    nums = {"basis_pct": round(p.basis_pct, 6), "entry_basis_pct": round(p.entry_basis_pct, 6)}
    if p.margin_ratio is not None and p.margin_ratio < lim.margin_close_ratio:
        acts.append(Action("close", "margin_ratio_below_130", True,
                           f"margin ratio {p.margin_ratio * 100:.1f}% < {lim.margin_close_ratio * 100:.0f}%: closing both legs",
                           {"margin_ratio_pct": round(p.margin_ratio * 100, 2)}))
    stop = lim.basis_stop_multiple * max(p.entry_basis_pct, lim.basis_stop_floor_pct)
    if p.basis_pct > stop:
        acts.append(Action("close", "basis_blowout", True,
                           f"basis {p.basis_pct:.4f}% widened beyond {lim.basis_stop_multiple:g}x entry ({stop:.4f}%): stop",
                           {**nums, "stop_level_pct": round(stop, 6)}))
    if p.margin_ratio is not None and lim.margin_close_ratio <= p.margin_ratio < lim.margin_add_ratio:
        acts.append(Action("add_margin", "margin_ratio_below_150", True,
                           f"margin ratio {p.margin_ratio * 100:.1f}% < {lim.margin_add_ratio * 100:.0f}%: adding ${p.margin_needed_usd:,.2f} margin",
                           {"margin_ratio_pct": round(p.margin_ratio * 100, 2)}, amount_usd=p.margin_needed_usd))
    base = max(abs(p.spot_quantity), abs(p.perp_quantity))
    imbalance = abs(p.spot_quantity + p.perp_quantity) / base * 100 if base > 0 else 0.0
    if imbalance > lim.max_imbalance_pct:
        acts.append(Action("rebalance", "delta_imbalance", True,
                           f"legs differ by {imbalance:.2f}% of quantity (> {lim.max_imbalance_pct:g}%): trimming the larger leg",
                           {"imbalance_pct": round(imbalance, 4), "spot_quantity": p.spot_quantity, "perp_quantity": p.perp_quantity}))
    if p.funding_rate_8h_pct < lim.funding_exit_8h_pct and p.basis_pct < lim.funding_exit_basis_pct:
        acts.append(Action("close", "funding_reversal", False,
                           f"funding {p.funding_rate_8h_pct:.4f}%/8h < {lim.funding_exit_8h_pct}% with only {p.basis_pct:.4f}% basis left",
                           {**nums, "funding_rate_8h_pct": round(p.funding_rate_8h_pct, 6)}))
    if p.entry_basis_pct > 0 and p.basis_pct < 0:
        acts.append(Action("close", "basis_inverted", False,
                           f"basis flipped sign ({p.entry_basis_pct:.4f}% → {p.basis_pct:.4f}%): the carry is over", nums))
    if p.held_seconds > lim.max_hold_days * 86400:
        acts.append(Action("close", "max_hold", False,
                           f"held {p.held_seconds / 86400:.1f} days > max hold {lim.max_hold_days:g} days",
                           {"held_days": round(p.held_seconds / 86400, 3)}))
    return acts


def defer_planned_exit(p: PositionReadings, lim: WatchdogLimits) -> bool:
    """A planned exit waits for a settlement within 30 min that pays this position > $5."""
    return p.seconds_to_funding <= lim.settlement_wait_seconds and p.next_funding_usd > lim.settlement_wait_min_usd


def drawdown(equity_usd: float, capital_usd: float) -> float:
    """Loss as a fraction of capital (0 when at or above capital)."""
    return max(0.0, (capital_usd - equity_usd) / capital_usd)
