"""Tool outputs (see `basis_mcp.models` for the units and signs every model follows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from basis_mcp.models.rounding import RoundedModel


class Alert(BaseModel):
    id: int
    time: str = Field(description="Wall-clock time the alert was raised (UTC).")
    market_time: str = Field(description="Market time (simulated in replay) the alert refers to.")
    severity: Literal["info", "warning", "critical"]
    rule: str = Field(description="Which rule or event raised it, e.g. 'liquidation', 'data_gap'.")
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class ToolOutput(RoundedModel):
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
    funding_rate_pct: float = Field(description="Funding rate per interval, percent: the last settled rate in replay, the "
                                    "venue's predicted rate for the next settlement live (funding_rate_source says which).")
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
    cross_short_venue: str | None = Field(None, description="Desks with two or more venues: the venue paying the most "
                                          "funding per hour on this coin now (a cross_exchange trade shorts the perp there).")
    cross_long_venue: str | None = Field(None, description="... the venue paying the least (the cross_exchange long leg).")
    cross_funding_diff_apr_pct: float | None = Field(None, description="The funding differential between them at the rates "
                                                     "shown now, percent a year of notional (each venue's rate over its own "
                                                     "interval: 8 h, 4 h or 1 h).")
    cross_edge_pct: float | None = Field(None, description="What a week of that differential earns, percent of notional "
                                         "(before fees: four perp taker fills); when it beats edge_pct, strategy names "
                                         "cross_exchange.")


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
    note: str | None = Field(None, description="Why zscore is null, when it is (no data yet at this time, too few samples).")


class NetApyEstimate(ToolOutput):
    symbol: str
    strategy: str = Field("cash_and_carry", description="The trade shape this estimate is for.")
    legs_summary: list[str] = Field(default_factory=list, description="The strategy's legs: side, market and venue of each.")
    earns: str | None = Field(None, description="What this trade shape earns, and how.")
    risks: list[str] = Field(default_factory=list, description="This trade shape's own risks (what the watchdog watches).")
    contract: str | None = Field(None, description="calendar_spread: the quarterly priced (its price is SIMULATED on paper).")
    contract_expiry: str | None = Field(None, description="calendar_spread: that contract's expiry (ISO-8601 UTC).")
    short_venue: str | None = Field(None, description="cross_exchange: the venue the perp is shorted on (richest funding).")
    long_venue: str | None = Field(None, description="cross_exchange: the venue the perp is bought on (cheapest funding).")
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
    legs_summary: list[str] = Field(default_factory=list, description="The strategy's legs: side, market and venue of each.")
    earns: str | None = Field(None, description="What this trade shape earns, and how.")
    risks: list[str] = Field(default_factory=list, description="This trade shape's own risks (what the watchdog watches).")
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
    fill_count: int = Field(description="How many fills the position has (all of them are in fills unless the tool "
                            "left them out: portfolio_status lists them only with include_fills=true).")
    fills: list[FillOut] = Field(description="The position's fills in time order (empty in portfolio_status unless "
                                 "include_fills=true).")


class ConfirmationRequest(BaseModel):
    token: str = Field(description="Send the SAME call again with confirmation_token set to this to place the orders.")
    expires_at: str
    expires_in_seconds: float
    summary: str = Field(description="What will be sent, in words.")
    orders: list[dict[str, Any]] = Field(description="The orders that will go to the venue.")


class EnterTradeOutput(ToolOutput):
    position: PositionOut | None = Field(None, description="The position; null while a live confirmation is pending.")
    replayed: bool = Field(False, description="True if this is the stored result of an earlier call with the same idempotency_key.")
    legs_summary: list[str] = Field(default_factory=list, description="The strategy's legs: side, market and venue of each.")
    earns: str | None = Field(None, description="What this trade shape earns, and how.")
    risks: list[str] = Field(default_factory=list, description="This trade shape's own risks (what the watchdog watches).")
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
    venue: str = Field("", description="The venue the leg is held on (paper:binance, paper:bybit...).")
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


class VenueFunding(BaseModel):
    venue: str
    seconds_to_funding: float
    next_funding_time: str
    funding_interval_hours: float
    funding_rate_pct: float = Field(description="Rate per interval, percent.")
    funding_rate_source: str
    expected_payment_usd: float | None = Field(None, description="Your open perp leg on this venue: + received, − paid next.")


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
    other_venues: list[VenueFunding] = Field(default_factory=list, description="Desks with more than one venue: the same "
                                             "coin's perp on each other venue (its own schedule and rate).")


class TierUsage(BaseModel):
    tier: str
    allocation_limit_usd: float
    in_use_usd: float
    single_position_limit_usd: float


class VenueUsage(BaseModel):
    venue: str = Field(description="The venue's name on this desk (paper:bybit, live:binance).")
    cash_usd: float = Field(description="Free USDT in this venue's account (collateral does not move between venues).")
    in_use_usd: float = Field(description="What the open positions' legs on this venue commit: margin of leveraged legs, "
                              "cost of owned spot, at entry prices.")
    limit_usd: float = Field(description="max_venue_share of capital: no venue may hold more once an entry is on.")
    reachable: bool


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
    venues: list[VenueUsage] = Field(default_factory=list, description="Desks with more than one venue: each venue's "
                                     "collateral pool, what is committed there and its cap.")
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
    name: str = Field(description="What is limited; its unit is in the name (_pct percent, _usd dollars, _seconds, _days; "
                      "bare: a count or a multiple) and `limit`, `hard_ceiling` and `current` are in that unit.")
    symbol: str | None = Field(None, description="The symbol a per-symbol limit reads (realised_vol_1h_pct, data_age_seconds).")
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
    last_basis_pct: float | None
    mean_basis_pct: float | None
    basis_std_pct: float | None
    settlements: int
    mean_funding_rate_pct: float | None
    note: str | None = Field(None, description="Set when the book has less history than `days` asked for: what the "
                             "chart covers instead.")
