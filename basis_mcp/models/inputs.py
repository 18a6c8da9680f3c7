"""Tool inputs (see `basis_mcp.models` for the units and signs every model follows)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

# ----------------------------------------------------------------------------- inputs
#
# Inputs are strict: numbers must be JSON numbers (a string, even "5000", and a boolean are
# refused, never coerced), identifiers are plain ASCII with no spaces, and free text may not
# carry control characters or invisible format characters (bidi overrides, zero-width marks).


def _whole_number(v: object) -> object:
    """JSON has one number type: accept 3.0 for a whole-number field, nothing else."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**63 else v


# Characters that render as nothing (Unicode's default-ignorable code points, fillers, the blank braille cell)
_INVISIBLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800), (0x3164, 0x3164), (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)


def _invisible(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _INVISIBLE)


def _plain_text(v: str) -> str:
    import unicodedata

    for i, ch in enumerate(v):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in ("\u2028", "\u2029") or _invisible(ch):
            raise ValueError(f"no control or invisible formatting characters allowed (found U+{ord(ch):04X} at "
                             f"position {i}); send plain text")
    return v


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
PlainText = Annotated[str, AfterValidator(_plain_text)]

Symbol = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9/:_.\-]*$"),
    Field(description="Base asset, e.g. 'BTC' (also accepted: 'BTCUSDT', 'BTC/USDT', 'BTC/USDT:USDT')."),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$"),
    Field(
        description="Your unique key for this trade request (1-64 chars of A-Z a-z 0-9 _ . : -). "
        "Retrying with the same key returns the first result and never trades twice; "
        "use a NEW key for a new trade."
    ),
]


ConfirmationToken = Annotated[
    str | None,
    StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$"),
    Field(
        description="LIVE mode only: the token from the first call's `confirmation`. Repeat the exact same call with it "
        "within the expiry to send the orders. Single use. Ignored in paper and replay modes."
    ),
]


PlaybookName = Annotated[
    Literal["convergence", "carry"],
    Field(description="convergence: the z-score trade (enter on a rich basis, exit when it converges; short holds, "
          "max 30 days; the basis is the profit). carry: hold for funding (enter when the last 7 days of funding averaged "
          "≥ 0.005 %/8h and the funding expected over the hold pays the round trip twice; the server closes it when the "
          "7-day average falls below −0.005 %/8h; long holds up to 365 days; funding is the profit)."),
]


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScanBasisInput(InputModel):
    symbols: list[Symbol] | None = Field(
        None, max_length=50, description="Symbols to scan; omit or null for every symbol the desk trades."
    )
    venues: list[Annotated[str, StringConstraints(min_length=1, max_length=20, pattern=r"^[A-Za-z0-9_\-]+$")]] | None = Field(
        None, max_length=5, description="Live data: venues to include (default: all the server was started with)."
    )


class ComputeZScoreInput(InputModel):
    symbol: Symbol
    window: WholeNumber = Field(
        1080,
        ge=30,
        le=100_000,
        description="Number of most recent basis samples (one per hour) in the rolling window; default 1080 (45 days).",
    )


VenueName = Annotated[str, StringConstraints(min_length=2, max_length=20, pattern=r"^[a-z][a-z0-9]{1,19}$")]

STRATEGY_FIELD = Field(
    "cash_and_carry", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$",
    description="The trade shape: cash_and_carry = buy spot, short the perpetual (for a positive basis / positive funding); "
    "reverse_cash_and_carry = borrow and sell spot, buy the perpetual (for a negative basis / negative funding; pays hourly "
    "borrow interest, MODELLED on paper); calendar_spread = buy the perpetual, sell a quarterly future (for a rich quarterly "
    "premium; earns its roll-down, pays funding on the long perp, closed before expiry; the future's price is SIMULATED on "
    "paper); cross_exchange = short the perpetual on the venue paying the most funding, buy it on the one paying the least "
    "(earns the funding differential; needs a desk with two venues). An unknown name is refused with the list.")


class EstimateNetApyInput(InputModel):
    symbol: Symbol
    strategy: str = STRATEGY_FIELD
    playbook: PlaybookName = "convergence"
    notional_usd: FiniteFloat = Field(gt=0, le=1e9, description="Spot-leg notional in USD (both legs are this size).")
    hold_days: FiniteFloat = Field(ge=1 / 24, le=365, description="Expected holding period in days (at least one hour = 0.0417); carry holds run to months.")
    leverage: FiniteFloat | None = Field(None, ge=1, description="Perp leverage for the capital estimate; default: the desk's default.")
    funding_rate_8h_pct: FiniteFloat | None = Field(
        None,
        ge=-5,
        le=5,
        description="Assumed funding per 8 h in percent (0.01 = 0.01 %). Default: the mean settled rate of the last 30 days "
        "(convergence) or of the carry lookback, 7 days (carry).",
    )
    exit_basis_pct: FiniteFloat | None = Field(
        None, ge=-10, le=10, description="Basis you expect at exit, percent. Default: 0 (full convergence); for calendar_spread "
        "the quarterly's premium rolled down linearly toward expiry over the hold.")
    basis_pct: FiniteFloat | None = Field(None, ge=-20, le=20, description="Entry basis in percent; default: the current basis "
                                          "(calendar_spread: the quarterly's premium over the perp).")
    contract: str | None = Field(
        None, min_length=8, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9/:_\-]*$",
        description="calendar_spread only: the quarterly to price (e.g. 'BTC-260327'); default: the nearest listed one the hold "
        "ends before (expiry_exit_hours ahead of its expiry).")
    short_venue: VenueName | None = Field(None, description="cross_exchange only: the venue to short on (default: the richest "
                                          "funding per hour now).")
    long_venue: VenueName | None = Field(None, description="cross_exchange only: the venue to buy on (default: the cheapest).")


class SizePositionInput(InputModel):
    symbol: Symbol
    strategy: str = STRATEGY_FIELD
    playbook: PlaybookName = "convergence"
    leverage: FiniteFloat | None = Field(None, ge=1, description="Perp leverage; default: the desk's default. Must not exceed the desk's cap.")
    target_notional_usd: FiniteFloat | None = Field(None, gt=0, le=1e12, description="Notional you would like; the answer is capped by every limit.")


class EnterTradeInput(InputModel):
    symbol: Symbol
    notional_usd: FiniteFloat = Field(gt=0, le=1e12, description="Notional of the strategy's first leg in USD (cash_and_carry: the spot leg); rounded DOWN to the venue's lot step.")
    idempotency_key: IdempotencyKey
    leverage: FiniteFloat | None = Field(None, ge=1, description="Perp leverage (isolated margin); default: the desk's default; never above the cap.")
    strategy: str = STRATEGY_FIELD
    playbook: PlaybookName = "convergence"
    expected_hold_days: FiniteFloat | None = Field(
        None, ge=1 / 24, le=365,
        description="Your planned hold in days (default 7 for convergence, at most its 30-day max hold; 90 for carry, at most "
        "365). convergence: refused unless the expected net return over it is > 0. carry: refused unless the funding expected "
        "over it pays the round trip twice.",
    )
    confirmation_token: ConfirmationToken = None
    contract: str | None = Field(
        None, min_length=8, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9/:_\-]*$",
        description="calendar_spread only: the quarterly future to sell, e.g. 'BTC-260327' (also 'BTCUSDT_260327', "
        "'BTC/USDT:USDT-260327'); must be listed (the current or next quarter) and expire more than expiry_exit_hours after "
        "the planned hold ends. Omit it to take the nearest such contract.")
    short_venue: VenueName | None = Field(
        None, description="cross_exchange only: the venue to short the perp on (default: the one paying the most funding per "
        "hour now). One of the desk's venues (see scan_basis' cross_* fields).")
    long_venue: VenueName | None = Field(
        None, description="cross_exchange only: the venue to buy the perp on (default: the one paying the least funding per "
        "hour now); must differ from short_venue.")


class ExitTradeInput(InputModel):
    position_id: WholeNumber = Field(ge=1, le=2**53, description="Id of an OPEN position (from enter_trade or portfolio_status).")
    idempotency_key: IdempotencyKey
    confirmation_token: ConfirmationToken = None


class CheckDeltaInput(InputModel):
    position_id: WholeNumber | None = Field(None, ge=1, le=2**53, description="One position; omit for every open position.")


class SecondsToFundingInput(InputModel):
    symbol: Symbol


class PortfolioStatusInput(InputModel):
    include_closed: WholeNumber = Field(0, ge=0, le=500, description="Also list this many most recently closed positions.")
    include_fills: bool = Field(False, description="Also list every position's fills (each order's executed quantity, "
                                "price, fee and time). Off by default: the book's summary stays the same size however "
                                "many times a position was trimmed or topped up; fill_count says how many there are.")


class RiskStatusInput(InputModel):
    pass


class HaltTradingInput(InputModel):
    reason: PlainText = Field(min_length=1, max_length=500, description="Why you are stopping; recorded in the audit log (plain text).")


DateStr = Annotated[str, StringConstraints(min_length=4, max_length=32, pattern=r"^[0-9][0-9T:+.\-Z ]*$"), Field(description="UTC date or time, ISO 8601, e.g. 2021-01-01")]


class BacktestInput(InputModel):
    symbols: list[Symbol] = Field(default_factory=lambda: ["BTC", "ETH"], min_length=1, max_length=10,
                                  description="symbols to backtest (base assets), at most 10")
    strategy: Literal["cash_and_carry", "reverse_cash_and_carry", "calendar_spread", "cross_exchange"] = Field(
        "cash_and_carry", description="cash_and_carry, reverse_cash_and_carry (short borrowed spot, long perp; pays the "
        "MODELLED borrow interest every hour, see borrow_scenario), calendar_spread (long perp, short the quarterly the "
        "desk would choose; its price is SIMULATED; convergence playbook, fixed sizing), or cross_exchange (short the perp "
        "on the venue with the richest funding, long it on the cheapest; real funding of Binance, Bybit, Gate and dYdX, "
        "BTC and ETH, 2020/21-2023; both legs priced at the Binance perp mark; playbook must be carry, whose carry_* "
        "thresholds then read the differential per 8 h)")
    venues: list[Literal["binance", "bybit", "gate", "dydx"]] = Field(
        default_factory=lambda: ["binance", "bybit", "gate", "dydx"], min_length=2, max_length=4,
        description="cross_exchange: the venues whose funding may be traded against each other (at least two)")
    borrow_scenario: Literal["calm", "spike"] = Field(
        "calm", description="reverse_cash_and_carry: the modelled borrow series (calm; or spike: ×10 squeezes of 72 h every "
        "45 days, and the venue recalls open loans 24 h into each)")
    expiry_exit_hours: FiniteFloat | None = Field(None, ge=1, le=720, description="calendar_spread: hours before a quarterly's "
                                                  "expiry at which a position on it is closed (and the hold an entry may plan "
                                                  "ends); default: the desk's own setting (24)")
    playbook: PlaybookName = Field("convergence", description="convergence: enter on a wide basis (min_basis_pct, "
                                   "min_zscore), leave as it converges; carry: hold while the 7-day mean funding pays "
                                   "(carry_* fields), for months")
    fill_delay: Annotated[str, StringConstraints(max_length=16, pattern=r"^[0-9][0-9.]*\s*(s|m|min|h|d)?$")] = Field(
        "1h", description="fills land at the first fresh bar this long after the signal: '0' = at the signal's own close, "
        "'1h' (default) = the next hourly bar. The result always reports P&L for both.")
    sizing: Literal["fixed", "desk"] = Field(
        "fixed", description="fixed: notional_usd per position; desk: size_position's caps (tiers, single-position cap, "
        "free capital), notional_usd as the target")
    start: DateStr = Field("2020-01-01", description="first day of the range (UTC)")
    end: DateStr | None = Field(
        None, description="default: now (replay: the replay clock, which a backtest never looks past; live: the data's end)"
    )
    min_basis_pct: FiniteFloat = Field(0.05, ge=-5, le=5, description="convergence: enter at or above this basis, percent")
    min_zscore: FiniteFloat = Field(1.5, ge=-10, le=10, description="convergence: enter at or above this basis z-score")
    exit_basis_pct: FiniteFloat = Field(0.0, ge=-5, le=5, description="convergence: exit when basis falls to this, percent (below min_basis_pct)")
    exit_zscore: FiniteFloat = Field(0.0, ge=-10, le=10, description="convergence: exit when z falls to this (below min_zscore)")
    max_hold_days: FiniteFloat = Field(30.0, gt=0, le=30, description="convergence: max hold in days")
    expected_hold_days: FiniteFloat = Field(7.0, ge=1 / 24, le=30, description="convergence: hold used for the net-return-after-costs entry check")
    carry_entry_8h_pct: FiniteFloat = Field(0.005, ge=-1, le=1, description="carry: enter when the 7-day mean funding is at least this, percent per 8 h")
    carry_exit_8h_pct: FiniteFloat = Field(-0.005, ge=-1, le=1, description="carry: exit when the 7-day mean funding falls below this (below the entry level)")
    carry_lookback_days: FiniteFloat = Field(7.0, ge=1, le=90, description="carry: days of funding the mean covers")
    carry_max_hold_days: FiniteFloat = Field(365.0, gt=0, le=365, description="carry: max hold in days (then re-sized)")
    notional_usd: FiniteFloat = Field(5_000.0, gt=0, le=1e9, description="spot-leg notional per trade (the target with sizing=desk)")
    leverage: FiniteFloat = Field(2.0, ge=1, le=5, description="perp leverage")
    zscore_window: WholeNumber = Field(1080, ge=30, le=100_000, description="z-score window in hourly samples")
    chart: bool = Field(True, description="return the chart image (basis with z-bands and entries/exits, equity curve)")


class PlotBasisInput(InputModel):
    symbol: Symbol
    days: FiniteFloat = Field(30.0, gt=0, le=365, description="how far back from now")


class AdvanceTimeInput(InputModel):
    hours: FiniteFloat = Field(gt=0, description="Hours to move the simulated clock forward (fractions allowed).")


# ----------------------------------------------------------------------------- outputs
