"""Pydantic models at the edge: every tool's input and output.

Units are in the names: ``_pct`` is percent (0.05 means 0.05 %), ``_usd`` is US dollars
(USDT), ``_time`` is an ISO-8601 UTC timestamp, ``seconds``/``hours``/``days`` say so.
Signs: basis > 0 means the perp trades above spot (contango); a positive funding rate
means longs pay shorts, so a cash-and-carry (short perp) RECEIVES it; money amounts are
positive when they are received/earned and negative when paid/lost, except fields named
``*_cost_usd``/``fees_usd``/``slippage_usd`` which are costs (positive = paid).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


STRATEGY_FIELD = Field(
    "cash_and_carry", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$",
    description="The trade shape: cash_and_carry = buy spot, short the perpetual (for a positive basis / positive funding); "
    "reverse_cash_and_carry = borrow and sell spot, buy the perpetual (for a negative basis / negative funding; pays hourly "
    "borrow interest, MODELLED on paper); calendar_spread = buy the perpetual, sell a quarterly future (for a rich quarterly "
    "premium; earns its roll-down, pays funding on the long perp, closed before expiry; the future's price is SIMULATED on "
    "paper). An unknown name is refused with the list.")


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
    playbook: PlaybookName = "convergence"
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


class Alert(BaseModel):
    id: int
    time: str = Field(description="Wall-clock time the alert was raised (UTC).")
    market_time: str = Field(description="Market time (simulated in replay) the alert refers to.")
    severity: Literal["info", "warning", "critical"]
    rule: str = Field(description="Which rule or event raised it, e.g. 'liquidation', 'data_gap'.")
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class ToolOutput(BaseModel):
    alerts: list[Alert] = Field(
        default_factory=list,
        description="Events since your previous call (liquidations, forced exits, data gaps...). Read and act on them.",
    )


class BasisSnapshot(BaseModel):
    symbol: str
    venue: str
    market_time: str = Field(description="Time of this snapshot (UTC; simulated in replay mode).")
    spot_price: float
    perp_price: float = Field(description="Perpetual last price.")
    mark_price: float = Field(description="Perpetual mark price (margin and funding use it).")
    basis_usd: float = Field(description="perp_price − spot_price.")
    basis_pct: float = Field(description="(perp − spot) / spot × 100. > 0 contango (cash-and-carry earns it as it converges).")
    zscore: float | None = Field(description="Basis z-score against the rolling window; null until 30 samples exist.")
    zscore_samples: int
    funding_rate_pct: float = Field(description="Funding rate per interval, percent, for the next settlement.")
    funding_rate_source: str = Field(description="'last_settled' in replay (no look-ahead) or 'venue_predicted' live.")
    funding_rate_8h_pct: float = Field(description="The same rate restated per 8 h, percent.")
    funding_apr_pct: float = Field(description="Simple annualised funding, percent per year (rate × settlements/yr).")
    funding_interval_hours: float
    next_funding_time: str
    seconds_to_funding: float
    data_age_seconds: float = Field(description="Age of the older leg's price. Entries are refused above the desk's staleness limit.")
    spot_gap: bool = Field(description="True if the spot price is carried over a gap in the data.")
    mark_is_proxy: bool = Field(description="True if no mark price exists at this time and the perp price stands in.")
    strategy: str = Field("cash_and_carry", description="The trade this basis points to: cash_and_carry for a positive "
                          "basis (short the rich perp), reverse_cash_and_carry for a negative one (long the cheap perp "
                          "against borrowed spot, paying borrow_apr_pct). Check it with estimate_net_apy(strategy=...).")
    edge_pct: float = Field(0.0, description="The basis as that trade earns it: basis_pct for cash_and_carry, −basis_pct "
                            "for reverse_cash_and_carry (before costs, funding and borrow). Snapshots are ranked by it.")
    borrow_apr_pct: float | None = Field(None, description="reverse_cash_and_carry: the borrow rate on the spot, percent "
                                         "a year (MODELLED on paper: see borrow_rate_source).")
    borrow_rate_source: str | None = None
    calendar_contract: str | None = Field(None, description="The nearest listed quarterly future (paper: SIMULATED price).")
    calendar_basis_pct: float | None = Field(None, description="That quarterly's premium over the perp, percent: what a "
                                             "calendar_spread (long perp, short the quarterly) earns as it rolls down to expiry.")
    calendar_edge_pct: float | None = Field(None, description="calendar_basis_pct less the funding the long perp would pay to "
                                            "expiry at the last 30 days' rate, percent; when it beats edge_pct, strategy "
                                            "names calendar_spread.")


class Unavailable(BaseModel):
    symbol: str
    reason: str


class ScanBasisOutput(ToolOutput):
    market_time: str
    mode: str
    snapshots: list[BasisSnapshot] = Field(description="Sorted by basis_pct, richest first.")
    unavailable: list[Unavailable] = Field(default_factory=list)


class ZScoreOutput(ToolOutput):
    symbol: str
    window: int
    samples: int = Field(description="Samples in the window (≤ window).")
    ready: bool = Field(description="False until 30 samples exist; zscore is then null.")
    basis_pct: float | None = Field(description="Newest sample's basis, percent.")
    zscore: float | None = Field(description="(newest − mean) / population std; 0 if std < 1e-8.")
    mean_pct: float | None
    std_pct: float | None
    p10_pct: float | None
    p90_pct: float | None
    min_pct: float | None
    max_pct: float | None
    first_sample_time: str | None
    last_sample_time: str | None
    sample_interval_seconds: int


class NetApyEstimate(ToolOutput):
    symbol: str
    strategy: str = Field("cash_and_carry", description="The trade shape this estimate is for.")
    contract: str | None = Field(None, description="calendar_spread: the quarterly priced (its price is SIMULATED on paper).")
    contract_expiry: str | None = Field(None, description="calendar_spread: that contract's expiry (ISO-8601 UTC).")
    borrow_usd: float = Field(0.0, description="Borrow interest on the short spot over the hold (≤ 0; reverse trades only).")
    borrow_apr_pct: float | None = Field(None, description="The borrow rate assumed, percent a year (reverse trades).")
    borrow_rate_source: str | None = Field(None, description="Where the borrow rate comes from: 'modelled:calm' or "
                                           "'modelled:spike' on paper (no venue publishes a long history).")
    playbook: str = Field(description="The playbook this estimate is for.")
    playbook_entry_ok: bool = Field(description="Would the playbook's entry rule let this trade in now (see playbook_note)?")
    playbook_note: str = Field(description="The playbook's entry rule, and why it passes or not.")
    notional_usd: float
    quantity: float
    hold_days: float
    leverage: float
    entry_basis_pct: float
    exit_basis_pct: float
    funding_rate_8h_pct: float
    funding_rate_source: str
    settlements_in_hold: int = Field(description="Funding settlements between now and the end of the hold.")
    basis_capture_usd: float = Field(description="ONE-OFF: quantity × (entry basis − exit basis).")
    funding_usd: float = Field(description="Funding received over the hold (negative = paid).")
    fees_usd: float = Field(description="Round-trip taker fees, both legs, in and out (a cost).")
    slippage_usd: float = Field(description="Round-trip spread + impact, both legs (a cost).")
    net_usd: float = Field(description="basis_capture + funding − fees − slippage.")
    capital_employed_usd: float = Field(description="Spot notional + perp margin (notional / leverage).")
    net_return_pct: float = Field(description="net_usd / capital_employed × 100, over the hold.")
    apy_pct: float = Field(description="net_return_pct / hold_days × 365 (simple). Basis is NOT compounded per settlement.")
    apy_on_notional_pct: float
    break_even_hold_days: float | None = Field(description="Hold needed for funding to cover costs not covered by basis; null = never.")
    slippage_source: str = Field(description="Where slippage_usd comes from: the cost model, or the live order books.")
    formula: str


class CapOut(BaseModel):
    name: str
    limit_usd: float
    detail: str


class SizePositionOutput(ToolOutput):
    symbol: str
    strategy: str = Field("cash_and_carry", description="The trade shape sized: its legs decide the capital per dollar.")
    playbook: str
    max_hold_days: float = Field(description="The playbook's max hold: the server plans the exit after it.")
    tier: str
    leverage: float
    recommended_notional_usd: float = Field(description="The size to trade: max_notional_usd × the volatility regime and "
                                            "basis stability scales (see sizing_note), rounded down to the lot step.")
    max_notional_usd: float = Field(0.0, description="Largest spot-leg notional every cap allows (what enter_trade enforces).")
    quantity: float = Field(description="Base quantity for each leg at recommended_notional_usd.")
    binding_cap: str = Field(description="Name of the cap that limits max_notional_usd.")
    caps: list[CapOut]
    free_capital_usd: float
    capital_required_usd: float = Field(description="Cash the entry ties up: owned spot + margin of every leveraged leg "
                                        "(perp, borrowed spot) + entry fees/slippage.")
    margin_usd: float
    entry_costs_usd: float
    regime: str = Field("unknown", description="Realised-volatility regime of the last 7 days of hourly spot returns: low "
                        "(< 40 %/yr), medium (< 70 %), high (< 120 %), extreme, or unknown (fewer than 96 hourly returns).")
    realised_vol_7d_pct: float | None = Field(None, description="That volatility, annualised, percent.")
    regime_scale: float = Field(1.0, description="Size multiplier of the regime: 1.0 / 0.8 / 0.5 / 0.2, 0.3 unknown.")
    basis_std_pct: float | None = Field(None, description="Std of the basis over the z-score window, percent.")
    basis_stability_scale: float = Field(1.0, description="Size multiplier for an erratic basis: 1.0 up to a std of 0.05 %, "
                                         "down to 0.5 at 0.25 %.")
    sizing_note: str = Field("", description="Which scales applied to recommended_notional_usd and why (advice: "
                             "enter_trade enforces the caps, not the scales).")


class FillOut(BaseModel):
    order_id: int
    client_order_id: str
    purpose: str
    leg_id: int
    role: str = Field(description="The leg's role in its strategy (cash_and_carry: spot, perp).")
    market: Literal["spot", "margin_spot", "perp", "future"]
    side: Literal["buy", "sell"]
    quantity: float
    price: float
    mid_price: float
    fee_usd: float
    time: str


class PnLBreakdown(BaseModel):
    basis_pnl_usd: float = Field(description="Price P&L at mid prices: quantity × (entry basis − exit basis) for a matched pair.")
    funding_usd: float = Field(description="Funding received (negative = paid).")
    fees_usd: float = Field(description="All trading fees paid (a cost).")
    slippage_usd: float = Field(description="Spread and impact paid versus mid (a cost).")
    borrow_usd: float = Field(0.0, description="Interest paid on borrowed legs (negative = paid); 0 for shapes that borrow nothing.")
    total_usd: float = Field(description="basis_pnl + funding + borrow − fees − slippage = Σ fill cash flows − fees + funding + borrow.")


class LegOut(BaseModel):
    leg_id: int
    role: str = Field(description="The strategy's name for this leg (cash_and_carry: spot, perp).")
    market: Literal["spot", "margin_spot", "perp", "future"] = Field(
        description="spot (owned), margin_spot (borrowed, held short), perp (perpetual), future (dated).")
    venue: str
    symbol: str = Field(description="Base asset; for a dated future its contract code, base-YYMMDD (BTC-260327).")
    side: Literal["long", "short"]
    quantity: float = Field(description="Target base quantity: what the leg holds when the position is hedged.")
    held_quantity: float = Field(description="Base quantity held now according to the fills; long +, short −.")
    entry_price: float | None = Field(description="Average open fill price.")
    exit_price: float | None = Field(None, description="Last close fill price.")
    margin_usd: float | None = Field(None, description="Leveraged legs: isolated margin posted at entry.")
    expiry: str | None = Field(None, description="Dated futures: expiry (ISO-8601 UTC). Paper and backtests price the future "
                               "with a SIMULATED cost-of-carry model (perp × (1 + last 90 days' funding × years to expiry); settles at the spot "
                               "index).")


class PositionOut(BaseModel):
    position_id: int
    symbol: str
    strategy: str
    playbook: str = Field(description="convergence or carry: which exit rules the server applies to it (none: a strategy "
                          "without a basis to read; only the risk rules and the max hold apply).")
    status: str = Field(description="opening | open | closing | closed | liquidated | failed")
    quantity: float = Field(description="The reference (first) leg's base quantity; each leg's own is in legs.")
    leverage: float
    notional_usd: float = Field(description="Spot-leg notional: quantity × spot mid when the entry was checked (what caps count).")
    entry_spot_price: float | None = Field(description="The spot leg's entry price (null for shapes without one; see legs).")
    entry_perp_price: float | None = Field(description="The perp leg's entry price (null for shapes without one; see legs).")
    entry_basis_pct: float | None = Field(description="Basis at entry mid prices, percent.")
    exit_spot_price: float | None = None
    exit_perp_price: float | None = None
    exit_basis_pct: float | None = None
    margin_usd: float | None = Field(description="Isolated margin posted on the leveraged legs at entry.")
    opened_at: str
    closed_at: str | None = None
    close_reason: str | None = None
    pnl: PnLBreakdown = Field(description="Realised so far (entry costs and funding); full breakdown once closed.")
    legs: list[LegOut] = Field(description="The instruments the position is made of, in the strategy's order.")
    fills: list[FillOut]


class ConfirmationRequest(BaseModel):
    token: str = Field(description="Send the SAME call again with confirmation_token set to this to place the orders.")
    expires_at: str
    expires_in_seconds: float
    summary: str = Field(description="What will be sent, in words.")
    orders: list[dict[str, Any]] = Field(description="The orders that will go to the venue.")


class EnterTradeOutput(ToolOutput):
    position: PositionOut | None = Field(None, description="The position; null while a live confirmation is pending.")
    replayed: bool = Field(False, description="True if this is the stored result of an earlier call with the same idempotency_key.")
    liquidation_price: float | None = None
    margin_ratio_pct: float | None = Field(None, description="Margin balance / maintenance margin × 100; the watchdog acts below 150 %.")
    confirmation: ConfirmationRequest | None = Field(
        None, description="LIVE mode: nothing was sent yet; repeat the call with this token to trade."
    )
    fills_at: str | None = Field(
        None, description="Replay with a fill delay: the orders rest until this market time (the position is 'opening'); "
        "advance_time past it and read portfolio_status or the alerts for the fills.")


class ExitTradeOutput(ToolOutput):
    position: PositionOut | None = None
    realized: PnLBreakdown | None = None
    replayed: bool = False
    confirmation: ConfirmationRequest | None = None
    fills_at: str | None = Field(
        None, description="Replay with a fill delay: the close orders rest until this market time (the position is "
        "'closing'); the realized P&L arrives with the fills.")


class LegDelta(BaseModel):
    role: str = Field(description="The strategy's name for this leg.")
    market: str
    symbol: str
    quantity: float = Field(description="Base quantity held now; long +, short −.")
    price: float = Field(description="What the leg is valued at: spot mid, or the derivative's mark price.")
    value_usd: float = Field(description="quantity × price: signed, negative for a short.")
    margin_ratio_pct: float | None = Field(None, description="Leveraged legs: margin balance / maintenance margin × 100 "
                                           "(liquidation at 100 %); null for an owned spot leg.")
    liquidation_price: float | None = None
    distance_to_liquidation_pct: float | None = Field(None, description="How far the price must move against the leg to "
                                                      "liquidate it, percent of its mark.")


class DeltaReport(BaseModel):
    position_id: int
    symbol: str
    strategy: str = "cash_and_carry"
    legs: list[LegDelta] = Field(default_factory=list, description="Every leg: quantity, value and, for leveraged legs, margin.")
    spot_quantity: float = Field(description="Spot legs held (base units; 0 when the strategy has none).")
    perp_quantity: float = Field(description="Perp and future legs held, signed; negative = short.")
    spot_value_usd: float
    perp_value_usd: float = Field(description="Signed notional at mark; negative for a short.")
    net_delta_usd: float = Field(description="Sum of every leg's signed value; ≈ 0 when hedged.")
    imbalance_pct: float = Field(description="How far apart the legs are: (most − fewest hedge units) / most × 100.")
    mark_price: float
    margin_ratio_pct: float = Field(description="The lowest over the leveraged legs: margin balance / maintenance margin × 100. "
                                    "Liquidation at 100 %.")
    liquidation_price: float = Field(description="Of the leveraged leg with the lowest margin ratio.")
    distance_to_liquidation_pct: float = Field(description="How far mark must move to liquidate, percent of mark (that leg).")
    isolated_margin_usd: float = Field(description="Isolated margin of every leveraged leg, summed.")
    unrealized_pnl_usd: float = Field(description="Mark-to-market of both legs at mids, before exit costs.")
    funding_received_usd: float
    current_basis_pct: float = Field(description="The position's basis now on its basis legs, percent: (perp − spot)/spot for "
                                     "cash-and-carry and the reverse trade, (quarterly − perp)/perp for a calendar spread.")
    entry_basis_pct: float
    recommended_action: Literal["hold", "add_margin", "rebalance", "close"]
    reason: str


class CheckDeltaOutput(ToolOutput):
    market_time: str
    positions: list[DeltaReport]


class SecondsToFundingOutput(ToolOutput):
    symbol: str
    seconds_to_funding: float
    next_funding_time: str
    funding_interval_hours: float
    funding_rate_pct: float = Field(description="Rate per interval, percent (see funding_rate_source).")
    funding_rate_source: str
    expected_payment_usd: float | None = Field(
        description="For your open position: + received, − paid at the next settlement at this rate; null without one."
    )


class TierUsage(BaseModel):
    tier: str
    allocation_limit_usd: float
    in_use_usd: float
    single_position_limit_usd: float


class PortfolioOutput(ToolOutput):
    mode: str
    market_time: str
    capital_usd: float = Field(description="Starting capital the limits are measured against.")
    cash_usd: float = Field(description="Free USDT at the venue.")
    equity_usd: float = Field(
        description="The desk's book: capital + realized P&L + open positions marked to market (spot at mid, perp at "
        "mark, funding and fees included). Drawdown is measured on this."
    )
    account_equity_usd: float = Field(
        description="Everything in the venue account: USDT + spot coins at mid + isolated margin + unrealised perp P&L. "
        "Equals equity_usd on paper; live it includes assets the desk does not manage."
    )
    pnl_since_start_usd: float
    realized_pnl_usd: float
    unrealized_pnl_usd: float
    funding_received_usd: float
    fees_paid_usd: float
    capital_in_use_usd: float = Field(description="Owned spot at its entry notional plus the margin posted on every "
                                      "leveraged leg (perp, borrowed spot) of the open positions.")
    tiers: list[TierUsage]
    open_positions: list[PositionOut]
    closed_positions: list[PositionOut]


class FundingSettlementOut(BaseModel):
    position_id: int | None
    symbol: str
    time: str
    rate_pct: float
    mark_price: float
    quantity: float
    amount_usd: float


class AdvanceTimeOutput(ToolOutput):
    from_time: str
    to_time: str
    hours: float
    ticks: int = Field(description="Hourly market ticks processed.")
    funding: list[FundingSettlementOut]
    liquidations: list[dict[str, Any]]
    watchdog_actions: list[dict[str, Any]] = Field(
        default_factory=list, description="What the server-side watchdog did on the way (forced exits, margin added, rebalances)."
    )
    replay_end_time: str


class LimitReading(BaseModel):
    name: str
    limit: float | str | None = Field(description="The limit in force (operator config, never looser than the hard ceiling).")
    hard_ceiling: float | str | None = Field(description="The ceiling written in code.")
    current: float | str | None = Field(description="The current reading of what the limit bounds.")
    unit: str
    ok: bool = Field(description="False if the current reading breaches the limit.")


class RiskStatusOutput(ToolOutput):
    trading_state: Literal["ACTIVE", "REDUCING", "HALTED"] = Field(
        description="ACTIVE: entries allowed. REDUCING: exits only (set by the server, e.g. drawdown). "
        "HALTED: kill switch, exits only; only the operator can resume (`basis-mcp resume`)."
    )
    trading_state_reason: str
    market_time: str
    equity_usd: float = Field(description="Capital + the desk's realized P&L + open positions marked to market.")
    capital_usd: float
    drawdown_pct: float = Field(description="(capital − equity_usd) / capital, in percent; 0 when in profit.")
    free_capital_usd: float
    venue_reachable: bool
    limits: list[LimitReading]


class BacktestOutput(ToolOutput):
    symbols: list[str]
    start: str
    end: str
    params: dict[str, Any]
    summary: dict[str, Any] = Field(
        description="trades, win_rate_pct, avg_hold_days, basis_pnl_usd, funding_usd, fees_usd, slippage_usd, total_pnl_usd, "
        "total_return_pct (of capital), apy_pct (simple, of capital), apy_while_invested_pct (P&L per dollar a position ties "
        "up, per year actually held), sharpe (daily, annualised), max_drawdown_pct, exposure_pct, exit_reasons (count per "
        "rule) and emergency_exit_pct."
    )
    fill_delay_sensitivity: dict[str, Any] = Field(
        description="pnl_fill_at_signal_usd (fills at the signal's own close) and pnl_fill_one_bar_later_usd, side by side.")
    always_on_carry: dict[str, Any] = Field(
        description="The benchmark computed in the same run: long spot / short perp all the time, re-sized yearly.")
    by_year: list[dict[str, Any]] = Field(description="Per calendar year: P&L marked to market (pnl_usd) beside always-on carry.")
    by_symbol: dict[str, dict[str, Any]] = Field(
        description="Per symbol: the summary, plus vs_always_on_pct (P&L at constant notional over always-on's) and "
        "vs_always_on_dollars_pct (raw dollars; moves with the price drift of fixed quantities).")
    spot_gaps: dict[str, list[dict[str, Any]]] = Field(description="Missing spot hours in the range (no trade decisions there).")
    stale_bars: dict[str, list[str]] = Field(default_factory=dict,
                                             description="Zero-volume flat candles removed as gaps (no signal, fill or sample).")
    trades: list[dict[str, Any]] = Field(description="The first trades (at most 200); trades_total has the count.")
    trades_total: int


class PlotBasisOutput(ToolOutput):
    symbol: str
    from_time: str
    to_time: str
    samples: int
    basis_pct_last: float | None
    basis_pct_mean: float | None
    basis_pct_std: float | None
    settlements: int
    funding_rate_pct_mean: float | None
