"""Guardrails as pure functions of readings: pre-trade checks and watchdog rules. No I/O.

The desk gathers the readings (prices, margin, capital, state) and executes what these
functions decide; keeping the decisions pure makes every rule testable on its numbers and
shared by the live desk and the backtest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from basis_mcp.errors import Violation
from basis_mcp.playbooks import ExitRules, ExitSignal, Signals, exit_signal

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
    expected_net_usd: float | None  # convergence: the expected net over the hold (None: the shape has no basis to read)
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
    orders_per_entry: int = 2  # one per leg
    leg_problems: tuple[str, ...] = ()  # legs on another coin: under that coin's venue minimum, or over its tier's caps
    borrow_apr_pct: float | None = None  # a borrowed-spot leg's borrow rate now, percent a year
    seconds_to_expiry: float | None = None  # a dated-future leg: time left to its expiry
    contract: str | None = None  # ... and its code
    borrow_limit_apr_pct: float = 50.0  # the watchdog closes above this: no entry above it either


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
    for why in r.leg_problems:
        v.append(Violation("notional_usd", r.notional_usd, why))
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
    if r.borrow_apr_pct is not None and r.borrow_apr_pct > r.borrow_limit_apr_pct:
        v.append(Violation("borrow_apr_pct", round(r.borrow_apr_pct, 3),
                           f"borrowing {r.symbol} costs more than {r.borrow_limit_apr_pct:g}%/yr now: the watchdog would close "
                           "the position at once (borrow_spike)"))
    if r.playbook == "carry":
        if r.carry_refusal:
            v.append(Violation("playbook", "carry", f"carry entry rule: {r.carry_refusal}"))
    elif r.playbook == "convergence" and r.expected_net_usd is not None and r.expected_net_usd <= 0:
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
    if r.orders_last_minute + r.orders_per_entry > r.orders_per_minute_limit:
        v.append(Violation("orders_per_minute", r.orders_last_minute,
                           f"an entry sends {r.orders_per_entry} orders; limit is {r.orders_per_minute_limit}/min"))
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
    borrow_spike_apr_pct: float = 50.0  # a borrowed-spot leg whose borrow rate is above this is closed
    expiry_exit_hours: float = 24.0  # a dated-future leg is closed this long before its expiry
    settlement_wait_seconds: float = 1800.0
    settlement_wait_min_usd: float = 5.0
    rules: ExitRules = field(default_factory=ExitRules)  # the basis, funding and hold rules (see `playbooks`)


@dataclass(frozen=True)
class LegRisk:
    """The margin readings of one leveraged leg (perp, future, borrowed spot)."""

    role: str
    symbol: str
    margin_ratio: float | None  # margin balance / maintenance margin (fraction)
    margin_needed_usd: float = 0.0  # to bring the ratio back to the target
    liquidation_distance_pct: float | None = None  # |liquidation price − mark| / mark × 100, on the losing side
    margin_for_distance_usd: float = 0.0  # to put the liquidation price back at the target distance


@dataclass(frozen=True)
class PositionReadings:
    position_id: int
    symbol: str
    status: str
    entry_basis_pct: float
    signals: Signals | None  # None: the strategy has no basis for the playbook rules to read
    held: dict[str, float]  # signed base quantity per leg role
    imbalance_pct: float  # how far apart the legs are (`basis_mcp.legs.imbalance_pct`)
    held_seconds: float
    seconds_to_funding: float
    next_funding_usd: float  # + received by this position at the next settlement
    margins: tuple[LegRisk, ...] = ()
    playbook: str = "convergence"
    rebalance_possible: bool = True  # False: the legs are apart by less than a lot step can correct
    borrow_apr_pct: float | None = None  # a borrowed-spot leg's borrow rate now, percent a year
    seconds_to_expiry: float | None = None  # a dated-future leg: time left to its expiry
    contract: str | None = None  # ... and its code


@dataclass(frozen=True)
class Action:
    kind: Literal["close", "add_margin", "rebalance"]
    rule: str
    emergency: bool
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)
    amount_usd: float = 0.0
    leg: str | None = None  # add_margin: the role of the leg to add it to


def watchdog_actions(p: PositionReadings, lim: WatchdogLimits) -> list[Action]:
    """What the watchdog must do for one open position, most urgent first.

    Any leveraged leg's margin < 130 % closes at once; < 150 % (or a liquidation price too
    close) adds margin to that leg; legs apart by more than the imbalance limit are trimmed.
    The basis, funding and hold rules are the playbook's (`playbooks.exit_signal`): the
    emergency basis blow-out never waits; planned exits (funding reversal, persistent sign
    flip, carry funding exit, max hold) are returned with ``emergency=False`` and the caller
    defers them while a settlement worth > $5 to this position is < 30 min away. A strategy
    without a basis (``signals`` None) gets the risk rules and the max hold only.
    """
    acts: list[Action] = []
    for m in p.margins:
        if m.margin_ratio is not None and m.margin_ratio < lim.margin_close_ratio:
            acts.append(Action("close", "margin_ratio_below_130", True,
                               f"{m.role} leg margin ratio {m.margin_ratio * 100:.1f}% < {lim.margin_close_ratio * 100:.0f}%: "
                               "closing every leg", {"margin_ratio_pct": round(m.margin_ratio * 100, 2), "leg": m.role}))
            break
    if p.signals is not None:
        sig = exit_signal(p.playbook, p.entry_basis_pct, p.held_seconds, p.signals, lim.rules)
    elif p.held_seconds > lim.rules.max_hold_days * 86400.0:
        sig = ExitSignal("max_hold", False, f"held {p.held_seconds / 86400:.1f} days > max hold {lim.rules.max_hold_days:g} days",
                         {"held_days": round(p.held_seconds / 86400, 3)})
    else:
        sig = None
    if sig is not None and sig.emergency:
        acts.append(Action("close", sig.rule, True, sig.message, sig.numbers))
    if p.seconds_to_expiry is not None and p.seconds_to_expiry <= lim.expiry_exit_hours * 3600.0:
        acts.append(Action("close", "expiry_near", True,
                           f"{p.contract} expires in {p.seconds_to_expiry / 3600:.1f} h (≤ expiry_exit_hours "
                           f"{lim.expiry_exit_hours:g}): closing every leg before the contract settles",
                           {"hours_to_expiry": round(p.seconds_to_expiry / 3600, 3)}))
    if p.borrow_apr_pct is not None and p.borrow_apr_pct > lim.borrow_spike_apr_pct:
        acts.append(Action("close", "borrow_spike", True,
                           f"borrow rate {p.borrow_apr_pct:.1f}%/yr > {lim.borrow_spike_apr_pct:g}%/yr: a squeeze on the borrowed "
                           "spot (and the venue may recall the loan): closing every leg",
                           {"borrow_apr_pct": round(p.borrow_apr_pct, 3)}))
    for m in p.margins:
        low_ratio = m.margin_ratio is not None and m.margin_ratio < lim.margin_add_ratio
        if (m.liquidation_distance_pct is not None and m.liquidation_distance_pct < lim.liquidation_distance_add_pct
                and m.margin_for_distance_usd > 0 and not low_ratio):
            acts.append(Action("add_margin", "liquidation_distance", True,
                               f"{m.role} leg liquidation price only {m.liquidation_distance_pct:.1f}% from the mark (< "
                               f"{lim.liquidation_distance_add_pct:g}%): adding ${m.margin_for_distance_usd:,.2f} margin to move it "
                               f"{lim.liquidation_distance_target_pct:g}% away",
                               {"liquidation_distance_pct": round(m.liquidation_distance_pct, 3), "leg": m.role},
                               amount_usd=m.margin_for_distance_usd, leg=m.role))
        if m.margin_ratio is not None and lim.margin_close_ratio <= m.margin_ratio < lim.margin_add_ratio:
            amount = max(m.margin_needed_usd, m.margin_for_distance_usd)
            acts.append(Action("add_margin", "margin_ratio_below_150", True,
                               f"{m.role} leg margin ratio {m.margin_ratio * 100:.1f}% < {lim.margin_add_ratio * 100:.0f}%: adding "
                               f"${amount:,.2f} margin", {"margin_ratio_pct": round(m.margin_ratio * 100, 2), "leg": m.role},
                               amount_usd=amount, leg=m.role))
    if p.imbalance_pct > lim.max_imbalance_pct and p.rebalance_possible:
        acts.append(Action("rebalance", "delta_imbalance", True,
                           f"legs differ by {p.imbalance_pct:.2f}% of quantity (> {lim.max_imbalance_pct:g}%): trimming the larger leg",
                           {"imbalance_pct": round(p.imbalance_pct, 4), **{f"{role}_quantity": q for role, q in p.held.items()}}))
    if sig is not None and not sig.emergency:
        acts.append(Action("close", sig.rule, False, sig.message, sig.numbers))
    return acts


def defer_planned_exit(p: PositionReadings, lim: WatchdogLimits) -> bool:
    """A planned exit waits for a settlement within 30 min that pays this position > $5."""
    return p.seconds_to_funding <= lim.settlement_wait_seconds and p.next_funding_usd > lim.settlement_wait_min_usd


def drawdown(equity_usd: float, capital_usd: float) -> float:
    """Loss as a fraction of capital (0 when at or above capital)."""
    return max(0.0, (capital_usd - equity_usd) / capital_usd)
