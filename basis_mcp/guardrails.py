"""Guardrails as pure functions of readings: pre-trade checks and watchdog rules. No I/O.

The desk gathers the readings (prices, margin, capital, state) and executes what these
functions decide; keeping the decisions pure makes every rule testable on its numbers and
shared by the live desk and the backtest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from basis_mcp.errors import Violation
from basis_mcp.playbooks import ExitRules, Signals, exit_signal

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
    playbook: str = "convergence"
    carry_refusal: str | None = None  # carry: why the carry entry rule says no (None: it may enter)
    stop_now: str | None = None  # the basis stop would fire at once


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
    if r.stop_now:
        v.append(Violation("basis_pct", "smoothed", r.stop_now))
    if r.playbook == "carry":
        if r.carry_refusal:
            v.append(Violation("playbook", "carry", f"carry entry rule: {r.carry_refusal}"))
    elif r.expected_net_usd <= 0:
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
    max_imbalance_pct: float = 2.0
    liquidation_distance_add_pct: float = 15.0  # add margin when the liquidation price is closer than this to the mark
    liquidation_distance_target_pct: float = 25.0  # ... to put it this far away again
    settlement_wait_seconds: float = 1800.0
    settlement_wait_min_usd: float = 5.0
    rules: ExitRules = field(default_factory=ExitRules)  # the basis, funding and hold rules (see `playbooks`)


@dataclass(frozen=True)
class PositionReadings:
    position_id: int
    symbol: str
    status: str
    entry_basis_pct: float
    signals: Signals
    margin_ratio: float | None  # margin balance / maintenance margin (fraction)
    spot_quantity: float
    perp_quantity: float  # signed
    held_seconds: float
    seconds_to_funding: float
    next_funding_usd: float  # + received by this position at the next settlement
    margin_needed_usd: float  # to bring the ratio back to the target
    playbook: str = "convergence"
    liquidation_distance_pct: float | None = None  # (liquidation price − mark) / mark × 100 for the short
    margin_for_distance_usd: float = 0.0  # to put the liquidation price back at the target distance


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

    Margin < 130 % closes at once; margin < 150 % adds margin; a leg imbalance is trimmed. The
    basis, funding and hold rules are the playbook's (`playbooks.exit_signal`): the emergency
    basis blow-out never waits; planned exits (funding reversal, persistent sign flip, carry
    funding exit, max hold) are returned with ``emergency=False`` and the caller defers them
    while a settlement worth > $5 to this position is < 30 min away.
    """
    acts: list[Action] = []
    if p.margin_ratio is not None and p.margin_ratio < lim.margin_close_ratio:
        acts.append(Action("close", "margin_ratio_below_130", True,
                           f"margin ratio {p.margin_ratio * 100:.1f}% < {lim.margin_close_ratio * 100:.0f}%: closing both legs",
                           {"margin_ratio_pct": round(p.margin_ratio * 100, 2)}))
    sig = exit_signal(p.playbook, p.entry_basis_pct, p.held_seconds, p.signals, lim.rules)
    if sig is not None and sig.emergency:
        acts.append(Action("close", sig.rule, True, sig.message, sig.numbers))
    if (p.liquidation_distance_pct is not None and p.liquidation_distance_pct < lim.liquidation_distance_add_pct
            and p.margin_for_distance_usd > 0 and not (p.margin_ratio is not None and p.margin_ratio < lim.margin_add_ratio)):
        acts.append(Action("add_margin", "liquidation_distance", True,
                           f"liquidation price only {p.liquidation_distance_pct:.1f}% above the mark (< "
                           f"{lim.liquidation_distance_add_pct:g}%): adding ${p.margin_for_distance_usd:,.2f} margin to move it "
                           f"{lim.liquidation_distance_target_pct:g}% away",
                           {"liquidation_distance_pct": round(p.liquidation_distance_pct, 3)}, amount_usd=p.margin_for_distance_usd))
    if p.margin_ratio is not None and lim.margin_close_ratio <= p.margin_ratio < lim.margin_add_ratio:
        acts.append(Action("add_margin", "margin_ratio_below_150", True,
                           f"margin ratio {p.margin_ratio * 100:.1f}% < {lim.margin_add_ratio * 100:.0f}%: adding "
                           f"${max(p.margin_needed_usd, p.margin_for_distance_usd):,.2f} margin",
                           {"margin_ratio_pct": round(p.margin_ratio * 100, 2)},
                           amount_usd=max(p.margin_needed_usd, p.margin_for_distance_usd)))
    base = max(abs(p.spot_quantity), abs(p.perp_quantity))
    imbalance = abs(p.spot_quantity + p.perp_quantity) / base * 100 if base > 0 else 0.0
    if imbalance > lim.max_imbalance_pct:
        acts.append(Action("rebalance", "delta_imbalance", True,
                           f"legs differ by {imbalance:.2f}% of quantity (> {lim.max_imbalance_pct:g}%): trimming the larger leg",
                           {"imbalance_pct": round(imbalance, 4), "spot_quantity": p.spot_quantity, "perp_quantity": p.perp_quantity}))
    if sig is not None and not sig.emergency:
        acts.append(Action("close", sig.rule, False, sig.message, sig.numbers))
    return acts


def defer_planned_exit(p: PositionReadings, lim: WatchdogLimits) -> bool:
    """A planned exit waits for a settlement within 30 min that pays this position > $5."""
    return p.seconds_to_funding <= lim.settlement_wait_seconds and p.next_funding_usd > lim.settlement_wait_min_usd


def drawdown(equity_usd: float, capital_usd: float) -> float:
    """Loss as a fraction of capital (0 when at or above capital)."""
    return max(0.0, (capital_usd - equity_usd) / capital_usd)
