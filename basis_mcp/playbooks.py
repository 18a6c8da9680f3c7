"""The two playbooks for the same legs, and the basis/funding exit rules, as pure functions.

- ``convergence``: the write-up's trade. Enter on an unusually rich basis (z-score and
  level), leave when it has converged or the z-score has reverted. Short holds; the basis is
  the profit.
- ``carry``: hold for funding. Enter when the funding of the last week averaged at least
  ``carry_entry_8h_pct`` and the funding expected over the hold pays the round trip
  ``carry_cost_cover`` times over; leave when the last week's average turns against the
  position (below ``carry_exit_8h_pct``, which must be lower: hysteresis, so it does not
  churn). Long holds; funding is the profit, costs are paid rarely.

The server's agent-independent exits measure *danger*, never one hourly print:

- ``basis_blowout`` (emergency): the basis averaged over the funding window
  (``basis_smoothing_hours``, as the venue averages the premium) above
  ``basis_stop_multiple`` × the larger of the entry basis, ``basis_stop_floor_pct`` and
  ``basis_stop_sigmas`` × the symbol's own basis std (over the z-score window).
- ``funding_reversal`` (planned, convergence): funding over the last
  ``funding_exit_hours`` below ``funding_exit_8h_pct`` per 8 h with little smoothed basis left.
- ``basis_inverted`` (planned, convergence): entered at a positive basis, and the smoothed
  basis is below −``flip_sigmas`` × its std: a persistent flip, not a noisy print.
- ``carry_funding_exit`` (planned, carry): the carry lookback mean below its exit level.
- ``max_hold`` (planned): ``max_hold_days`` for convergence, ``carry_max_hold_days`` for carry.

Margin ratio and liquidation distance stay immediate; they live in `guardrails`.
The desk's watchdog, the vectorised engine and the reference loop all read these rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Playbook = Literal["convergence", "carry"]
PLAYBOOKS: tuple[Playbook, ...] = ("convergence", "carry")
EMERGENCY_RULES = frozenset({"basis_blowout", "margin_ratio_below_130", "margin_ratio_below_150", "liquidation_distance",
                             "perp liquidated", "liquidated", "loan_recall", "expiry_near", "liquidation_risk"})


@dataclass(frozen=True)
class ExitRules:
    basis_stop_multiple: float = 3.0
    basis_stop_floor_pct: float = 0.05
    basis_stop_sigmas: float = 2.0
    basis_smoothing_hours: float = 8.0
    flip_sigmas: float = 1.0
    funding_exit_8h_pct: float = -0.005
    funding_exit_basis_pct: float = 0.15
    funding_exit_hours: float = 24.0
    carry_lookback_days: float = 7.0
    carry_entry_8h_pct: float = 0.005
    carry_exit_8h_pct: float = -0.005
    carry_cost_cover: float = 2.0
    max_hold_days: float = 30.0
    carry_max_hold_days: float = 365.0

    def max_hold(self, playbook: str) -> float:
        return self.carry_max_hold_days if playbook == "carry" else self.max_hold_days


@dataclass(frozen=True)
class Signals:
    """What the exit rules read at one moment for one symbol (None: not measurable yet)."""

    basis_pct: float  # the current (hourly) basis
    basis_smooth_pct: float | None  # mean of the fresh samples over the smoothing window
    basis_std_pct: float | None  # std of the basis over the z-score window
    funding_recent_8h_pct: float | None  # mean settled funding over funding_exit_hours, per 8 h
    funding_carry_8h_pct: float | None  # mean settled funding over the carry lookback, per 8 h

    def seen_by(self, direction: int, borrow_8h_pct: float = 0.0, funding_direction: int | None = None) -> Signals:
        """The signals as a position of ``direction`` reads them. +1 (short the rich leg): as they are.
        −1 (long the perp against borrowed spot): the basis mirrored, so the same rules apply to the
        trade that earns from a negative basis. The funding means are the funding the position
        receives: × ``funding_direction`` (default ``direction``; −1 for any position long the perp,
        such as a calendar spread) and net of the borrow interest on a short spot leg
        (``borrow_8h_pct``, % per 8 h)."""
        fd = direction if funding_direction is None else funding_direction
        if direction == 1 and fd == 1 and borrow_8h_pct == 0.0:
            return self

        def carry(f: float | None) -> float | None:
            return None if f is None else fd * f - borrow_8h_pct

        return Signals(basis_pct=direction * self.basis_pct,
                       basis_smooth_pct=None if self.basis_smooth_pct is None else direction * self.basis_smooth_pct,
                       basis_std_pct=self.basis_std_pct, funding_recent_8h_pct=carry(self.funding_recent_8h_pct),
                       funding_carry_8h_pct=carry(self.funding_carry_8h_pct))


def stop_level_pct(entry_basis_pct: float, basis_std_pct: float | None, r: ExitRules) -> float:
    """The smoothed basis above which a position is stopped out."""
    floor = r.basis_stop_floor_pct
    if basis_std_pct is not None and not math.isnan(basis_std_pct):
        floor = max(floor, r.basis_stop_sigmas * basis_std_pct)
    return r.basis_stop_multiple * max(entry_basis_pct, floor)


@dataclass(frozen=True)
class ExitSignal:
    rule: str
    emergency: bool
    message: str
    numbers: dict[str, float]


def exit_signal(playbook: str, entry_basis_pct: float, held_seconds: float, s: Signals, r: ExitRules) -> ExitSignal | None:
    """The first rule that closes a position now, in priority order (emergency first), or None."""
    nums = {"basis_pct": round(s.basis_pct, 6), "entry_basis_pct": round(entry_basis_pct, 6)}
    if s.basis_smooth_pct is not None:
        nums["basis_smooth_pct"] = round(s.basis_smooth_pct, 6)
        stop = stop_level_pct(entry_basis_pct, s.basis_std_pct, r)
        if s.basis_smooth_pct > stop:
            return ExitSignal("basis_blowout", True,
                              f"basis averaged over {r.basis_smoothing_hours:g} h is {s.basis_smooth_pct:.4f}%, beyond "
                              f"{r.basis_stop_multiple:g}x the larger of entry and its floor ({stop:.4f}%): stop",
                              {**nums, "stop_level_pct": round(stop, 6)})
    if playbook == "carry":
        if s.funding_carry_8h_pct is not None and s.funding_carry_8h_pct < r.carry_exit_8h_pct:
            return ExitSignal("carry_funding_exit", False,
                              f"funding over the last {r.carry_lookback_days:g} days averaged {s.funding_carry_8h_pct:.4f}%/8h, "
                              f"below the carry exit level {r.carry_exit_8h_pct:g}%/8h: the carry has turned against the position",
                              {**nums, "funding_carry_8h_pct": round(s.funding_carry_8h_pct, 6)})
    else:
        if (s.funding_recent_8h_pct is not None and s.basis_smooth_pct is not None
                and s.funding_recent_8h_pct < r.funding_exit_8h_pct and s.basis_smooth_pct < r.funding_exit_basis_pct):
            return ExitSignal("funding_reversal", False,
                              f"funding over the last {r.funding_exit_hours:g} h averaged {s.funding_recent_8h_pct:.4f}%/8h "
                              f"(< {r.funding_exit_8h_pct:g}%) with only {s.basis_smooth_pct:.4f}% smoothed basis left",
                              {**nums, "funding_recent_8h_pct": round(s.funding_recent_8h_pct, 6)})
        if (entry_basis_pct > 0 and s.basis_smooth_pct is not None and s.basis_std_pct is not None
                and s.basis_smooth_pct < -r.flip_sigmas * s.basis_std_pct):
            return ExitSignal("basis_inverted", False,
                              f"basis flipped sign and stayed there: {r.basis_smoothing_hours:g} h average "
                              f"{s.basis_smooth_pct:.4f}% (entered at {entry_basis_pct:.4f}%)", nums)
    max_hold = r.max_hold(playbook)
    if held_seconds > max_hold * 86400.0:
        return ExitSignal("max_hold", False, f"held {held_seconds / 86400:.1f} days > max hold {max_hold:g} days",
                          {"held_days": round(held_seconds / 86400, 3)})
    return None


def carry_entry_check(funding_carry_8h_pct: float | None, expected_funding_usd: float, round_trip_cost_usd: float,
                      r: ExitRules) -> str | None:
    """Why a carry entry is refused now, or None if it may enter."""
    if funding_carry_8h_pct is None:
        return f"no settled funding in the last {r.carry_lookback_days:g} days to judge the carry by"
    if funding_carry_8h_pct < r.carry_entry_8h_pct:
        return (f"funding over the last {r.carry_lookback_days:g} days averaged {funding_carry_8h_pct:.4f}%/8h, below the "
                f"carry entry level {r.carry_entry_8h_pct:g}%/8h")
    if expected_funding_usd < r.carry_cost_cover * round_trip_cost_usd:
        return (f"funding expected over the hold (${expected_funding_usd:,.2f}) does not pay the round trip "
                f"(${round_trip_cost_usd:,.2f}) {r.carry_cost_cover:g} times over")
    return None


def expected_carry_usd(qty: float, perp: float, rate: float, settlements: int) -> float:
    """Funding a short perp of ``qty`` expects over ``settlements`` at ``rate`` per settlement."""
    return qty * perp * rate * settlements
