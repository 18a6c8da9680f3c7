"""The tools the agent sees: names, descriptions, models, annotations. Handlers are one-liners into the desk."""

from __future__ import annotations

from mcp.server.mcpserver import Context

from basis_mcp import models as m
from basis_mcp import strategies
from basis_mcp.tools.registry import ToolSpec, WithImages

UNITS = (
    " Units: *_pct = percent (0.05 means 0.05 %), *_usd = US dollars, times are ISO-8601 UTC."
)


async def _scan(desk, inp: m.ScanBasisInput, ctx: Context) -> m.ScanBasisOutput:
    return await desk.scan(inp.symbols, inp.venues)


async def _zscore(desk, inp: m.ComputeZScoreInput, ctx: Context) -> m.ZScoreOutput:
    return desk.compute_zscore(inp.symbol, inp.window)


def _described(out, strategy: str):
    """The trade shape's legs, what it earns and its own risks, on every output about a trade (from its declaration)."""
    try:
        spec = strategies.get(strategy)
    except KeyError:
        return out
    legs = [f"{leg.side} {leg.market}" + (f" on the {leg.venue_slot}est venue" if leg.venue_slot else "") for leg in spec.legs]
    return out.model_copy(update={"legs_summary": legs, "earns": spec.summary, "risks": list(spec.risks)})


async def _apy(desk, inp: m.EstimateNetApyInput, ctx: Context) -> m.NetApyEstimate:
    return _described(await desk.estimate_net_apy(
        inp.symbol, inp.notional_usd, inp.hold_days, inp.leverage, inp.funding_rate_8h_pct, inp.exit_basis_pct, inp.basis_pct,
        inp.playbook, inp.strategy, inp.contract, inp.short_venue, inp.long_venue,
    ), inp.strategy)


async def _size(desk, inp: m.SizePositionInput, ctx: Context) -> m.SizePositionOutput:
    return _described(await desk.size(inp.symbol, inp.leverage, inp.target_notional_usd, inp.playbook, inp.strategy), inp.strategy)


async def _enter(desk, inp: m.EnterTradeInput, ctx: Context) -> m.EnterTradeOutput:
    return _described(await desk.enter(inp.symbol, inp.notional_usd, inp.leverage, inp.idempotency_key, inp.strategy,
                                       inp.expected_hold_days, inp.confirmation_token, inp.playbook, inp.contract,
                                       inp.short_venue, inp.long_venue), inp.strategy)


async def _exit(desk, inp: m.ExitTradeInput, ctx: Context) -> m.ExitTradeOutput:
    return await desk.exit(inp.position_id, inp.idempotency_key, confirmation_token=inp.confirmation_token)


async def _delta(desk, inp: m.CheckDeltaInput, ctx: Context) -> m.CheckDeltaOutput:
    return await desk.check_delta(inp.position_id)


async def _funding(desk, inp: m.SecondsToFundingInput, ctx: Context) -> m.SecondsToFundingOutput:
    return await desk.seconds_to_funding(inp.symbol)


async def _portfolio(desk, inp: m.PortfolioStatusInput, ctx: Context) -> m.PortfolioOutput:
    return await desk.portfolio(inp.include_closed, inp.include_fills)


async def _risk(desk, inp: m.RiskStatusInput, ctx: Context) -> m.RiskStatusOutput:
    return await desk.risk_status()


async def _halt(desk, inp: m.HaltTradingInput, ctx: Context) -> m.RiskStatusOutput:
    return await desk.halt(inp.reason)


async def _backtest(desk, inp: m.BacktestInput, ctx: Context) -> WithImages:
    return await desk.backtest(inp, ctx)


async def _plot(desk, inp: m.PlotBasisInput, ctx: Context) -> WithImages:
    return await desk.plot_basis(inp.symbol, inp.days)


async def _advance(desk, inp: m.AdvanceTimeInput, ctx: Context) -> m.AdvanceTimeOutput:
    async def progress(done: float, total: float, message: str) -> None:
        await ctx.report_progress(done, total, message=message)

    return await desk.advance(inp.hours, progress)


TOOLS: list[ToolSpec] = [
    ToolSpec(
        name="scan_basis",
        title="Scan basis and funding",
        description=(
            "Market snapshot per symbol: spot, perp and mark prices; basis = perp − spot in USD and "
            "basis_pct = (perp − spot)/spot × 100 (positive = contango, what a cash-and-carry sells); "
            "the funding rate per interval (funding_rate_pct; which rate it is is in funding_rate_source: "
            "'last_settled' in replay, the most recent settlement, never the future's; 'venue_predicted' live, the venue's "
            "estimate for the next settlement), the same rate per 8 h and simple annualised "
            "(funding_apr_pct; positive = longs pay shorts, i.e. the short perp leg RECEIVES it); the interval and "
            "next settlement time; the basis z-score against the rolling history (null until 30 samples); "
            "and data_age_seconds; `strategy`, the trade the basis points to (cash_and_carry when positive, "
            "reverse_cash_and_carry when negative, with its MODELLED borrow rate; calendar_spread when the nearest "
            "quarterly's premium over the perp less the funding to its expiry, calendar_edge_pct, is wider still; "
            "cross_exchange on a desk with two venues when a week of the funding differential between the richest and "
            "cheapest venue, cross_edge_pct, is wider still: cross_short_venue / cross_long_venue name them), and "
            "`edge_pct`, the edge of that trade in percent before costs. Results are ranked by edge_pct, widest first. Each call also records a basis "
            "sample (at most one per symbol per hour) for the z-score history. Read-only." + UNITS
        ),
        input_model=m.ScanBasisInput,
        output_model=m.ScanBasisOutput,
        handler=_scan,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="compute_zscore",
        title="Basis z-score",
        description=(
            "Rolling z-score of the basis_pct history for one symbol: z = (newest − mean) / population std over the "
            "last `window` hourly samples (default 1080 = 45 days). Returns mean, std, p10/p90, min/max (all in "
            "basis percent) and the sample count. ready=false and zscore=null until 30 samples exist; std < 1e-8 "
            "gives z = 0. A high positive z means the perp is unusually rich versus spot: a candidate cash-and-carry "
            "entry. The history persists across restarts. Read-only." + UNITS
        ),
        input_model=m.ComputeZScoreInput,
        output_model=m.ZScoreOutput,
        handler=_zscore,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="estimate_net_apy",
        title="Estimate net return and APY",
        description=(
            "Honest expected return of a cash-and-carry (buy spot, short perp, equal quantity) of notional_usd held "
            "hold_days, itemised: basis_capture_usd is earned ONCE (quantity × (entry basis − exit basis), exit "
            "basis default 0); funding_usd = Σ over the settlements that fall inside the hold of quantity × perp × "
            "rate (default rate: mean settled over the last 30 days); minus round-trip fees (spot 0.10 % + perp "
            "0.05 % taker, in and out) and slippage (half-spread + square-root impact). net_return_pct = net / "
            "(notional + notional/leverage); apy_pct = net_return_pct / hold_days × 365, simple. The one-off basis is "
            "never multiplied by settlements per year. break_even_hold_days is the hold at which funding covers "
            "the costs the basis does not (null = never at this rate). playbook: 'convergence' (default rate: 30-day "
            "mean; the entry rule is net > 0) or 'carry' (default rate: the 7-day mean the carry rule reads; the entry "
            "rule is: that mean ≥ 0.005 %/8h and the funding over the hold ≥ 2 × the round-trip costs); "
            "playbook_entry_ok and playbook_note say whether the playbook would enter now and why. Read-only." + UNITS
        ),
        input_model=m.EstimateNetApyInput,
        output_model=m.NetApyEstimate,
        handler=_apy,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="size_position",
        title="Size a position within every limit",
        description=(
            "Largest spot-leg notional (USD) the desk would accept for a cash-and-carry in this symbol now, with "
            "every cap listed and the binding one named: operator's per-position cap, the symbol tier's "
            "single-position cap (anchor BTC/ETH 25 %, mid 15 %, speculative 7 % of capital), the tier's remaining "
            "allocation (50/35/15 %), and free capital (spot cost + perp margin at the given leverage + entry "
            "costs). The size is rounded down to the venue's lot step; below the venue minimum it is 0. "
            "max_hold_days is the playbook's max hold (convergence 30, carry 365): the server plans the exit then. "
            "Read-only." + UNITS
        ),
        input_model=m.SizePositionInput,
        output_model=m.SizePositionOutput,
        handler=_size,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="enter_trade",
        title="Open a cash-and-carry position",
        description=(
            "Opens a delta-neutral pair: BUY spot and SELL (short) the USD-M perpetual, same base quantity "
            "(notional_usd / spot, rounded down to the lot step), perp in isolated margin at `leverage` "
            "(default 2x; the operator's cap and a hard 5x ceiling are enforced). Market orders pay the spread, "
            "impact and taker fees. If the second leg fails the first is unwound at once, so no naked leg is left. "
            "idempotency_key is required: a retry with the same key returns the first result instead of trading "
            "again. Rejected with every violated rule listed when a limit, the data freshness or free capital "
            "does not allow it. An instrument (say the BTC perp) belongs to one open position at a time. Returns the "
            "position with its legs (instrument, side, quantity held, entry price, margin), fills, fees, entry "
            "basis, liquidation price and margin ratio. strategy names the trade shape: cash_and_carry (default; buy "
            "spot, short the perp), reverse_cash_and_carry (borrow and sell spot, buy the perp) or calendar_spread "
            "(buy the perp, sell the quarterly named by `contract` or the nearest listed one your expected_hold_days "
            "ends expiry_exit_hours before its expiry; a hold across expiry is refused) or cross_exchange (sell the perp on "
            "short_venue, buy it on long_venue; default: the venues paying the most and least funding per hour now; each "
            "leg margined on its own venue, no venue above max_venue_share, 40 %, of capital); the legs are sent in the "
            "strategy's order, each later leg sized to what the earlier ones filled. playbook (stated at entry, shown on the position) picks the "
            "server's exit rules: 'convergence' (the z-score trade, short holds; you exit on convergence; the server "
            "exits on a persistent sign flip, funding reversal, a smoothed-basis blow-out or after 30 days) or "
            "'carry' (hold for funding; the server exits when the 7-day mean funding falls below −0.005 %/8h, on a "
            "smoothed-basis blow-out, or after 365 days). Margin ratio < 130 % closes either at once. "
            "LIVE mode: the first call sends nothing and returns "
            "`confirmation` (what would be sent, and a single-use token valid for about a minute); repeat the exact "
            "same call with confirmation_token to send the orders." + UNITS
        ),
        input_model=m.EnterTradeInput,
        output_model=m.EnterTradeOutput,
        handler=_enter,
        read_only=False,
        destructive=True,
        idempotent=True,
        modes=("replay", "paper", "live"),
    ),
    ToolSpec(
        name="exit_trade",
        title="Close a position",
        description=(
            "Closes every leg of an open position in its strategy's exit order (cash_and_carry: buys back the perp, "
            "reduce-only so it can never open a new position, then sells the spot; reverse_cash_and_carry: sells the "
            "perp, then buys back and repays the borrowed spot; calendar_spread: buys back the quarterly, then sells "
            "the perp; cross_exchange: buys back the short perp, then sells the long one); a later leg is closed only down to what no longer "
            "hedges an earlier one. Returns realised P&L itemised: basis_pnl_usd (price P&L at mids = "
            "quantity × (entry basis − exit basis) for cash_and_carry), funding_usd received, borrow_usd paid (≤ 0), "
            "fees_usd and slippage_usd paid, and total_usd = basis + funding + borrow − fees − slippage, which equals "
            "the recorded fills, fees, funding and borrow payments exactly. idempotency_key is required; a retry returns the first result. LIVE mode: like "
            "enter_trade, the first call returns a confirmation token and sends nothing." + UNITS
        ),
        input_model=m.ExitTradeInput,
        output_model=m.ExitTradeOutput,
        handler=_exit,
        read_only=False,
        destructive=True,
        idempotent=True,
        modes=("replay", "paper", "live"),
    ),
    ToolSpec(
        name="check_delta",
        title="Check hedge and margin",
        description=(
            "Per open position: spot and perp quantities and values (perp signed, negative = short), net delta in "
            "USD and imbalance_pct (|net| / spot value × 100; > 2 % needs a rebalance), margin_ratio_pct (margin "
            "balance / maintenance margin × 100; liquidation at 100 %, the watchdog adds margin below 150 % and "
            "closes below 130 %), liquidation price and distance to it in percent, unrealised P&L at mids, funding "
            "received so far, and a recommended_action: hold | add_margin | rebalance | close. Read-only." + UNITS
        ),
        input_model=m.CheckDeltaInput,
        output_model=m.CheckDeltaOutput,
        handler=_delta,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="seconds_to_funding",
        title="Time to next funding",
        description=(
            "Seconds until the symbol's next funding settlement, its time, the interval in hours (venues use 8, 4 or "
            "1 h per contract), the current rate per interval in percent, and for an open position the expected "
            "payment at that rate (positive = you receive it). Useful to avoid exiting just before a settlement "
            "worth collecting. Read-only." + UNITS
        ),
        input_model=m.SecondsToFundingInput,
        output_model=m.SecondsToFundingOutput,
        handler=_funding,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="portfolio_status",
        title="Portfolio and positions",
        description=(
            "The book: capital, free cash, equity (capital + realised P&L + open positions marked to market; the "
            "drawdown limit is measured on it), the whole venue account's value, P&L since start, realised and unrealised P&L, funding received, fees paid, capital in use, tier usage "
            "against the allocation limits, every open position with its legs and P&L so far, and optionally the last N "
            "closed positions and every position's fills (include_fills). Read-only." + UNITS
        ),
        input_model=m.PortfolioStatusInput,
        output_model=m.PortfolioOutput,
        handler=_portfolio,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="risk_status",
        title="Risk limits and readings",
        description=(
            "Every risk limit that has a reading, next to it: trading state (ACTIVE / REDUCING = "
            "exits only / HALTED = kill switch) and why, equity, drawdown vs its limit, free capital, leverage cap "
            "and the 5x hard ceiling, per-position and tier caps with usage, orders in the last minute, realised "
            "volatility and data age per symbol. Each limit's unit is in its name. The fixed thresholds with nothing "
            "to read (watchdog margin ratios, stops, max holds, single-position caps, the allowlist) are in the "
            "basis://limits resource. Limits come from the operator's configuration and can only be tighter than the "
            "hard ceilings; no tool can change them. Read-only."
        ),
        input_model=m.RiskStatusInput,
        output_model=m.RiskStatusOutput,
        handler=_risk,
        read_only=True,
        destructive=False,
        idempotent=True,
    ),
    ToolSpec(
        name="halt_trading",
        title="Kill switch: stop new entries",
        description=(
            "Stops all new entries at once (state HALTED). Exits and the server's watchdog keep working, so you can "
            "still close positions. One-way for the agent: only the operator can resume, with `basis-mcp resume` "
            "on the server's machine. Use it when something looks wrong. Returns the risk status."
        ),
        input_model=m.HaltTradingInput,
        output_model=m.RiskStatusOutput,
        handler=_halt,
        read_only=False,
        destructive=False,
        idempotent=True,
        modes=("replay", "paper", "live"),
    ),
    ToolSpec(
        name="backtest",
        title="Backtest the rules on history",
        description=(
            "Runs a playbook over the server's historical data (the shipped Binance BTC/ETH/SOL history unless the "
            "operator loaded other data), with the same rules the server applies. convergence: enter when basis_pct >= "
            "min_basis_pct, z >= min_zscore, 1 h vol below the breaker and the net expected return over "
            "expected_hold_days is positive; exit on convergence (basis <= exit_basis_pct) or z reversion (z <= "
            "exit_zscore). carry: enter when the 7-day mean funding >= carry_entry_8h_pct and the expected funding pays "
            "the round trip twice; exit when it falls below carry_exit_8h_pct. Both: the server's exits (basis averaged "
            "over 8 h beyond 3x the larger of entry and 2 std; convergence also funding reversal, persistent sign flip; "
            "max hold 30 d / 365 d). Fills land fill_delay after the signal ('1h' default: the next bar; '0' = the "
            "signal's own close); stale zero-volume candles are gaps. Costs are the desk's own. Returns the summary (P&L "
            "split into basis, funding, fees, slippage; exit reasons; APY; Sharpe; drawdown), the fill-delay "
            "sensitivity (P&L at delay 0 and one bar), always-on carry computed in the same run, per-year rows, trades "
            "and a chart image. Sends progress notifications. Read-only." + UNITS
        ),
        input_model=m.BacktestInput,
        output_model=m.BacktestOutput,
        handler=_backtest,
        read_only=True,
        destructive=False,
        idempotent=True,
        computes=True,
    ),
    ToolSpec(
        name="plot_basis",
        title="Chart recent basis and funding",
        description=(
            "A chart (PNG image) of one symbol's recorded basis over the last `days` with its rolling mean and "
            "±2σ band, and the funding rate at each settlement, plus the numbers behind it. Read-only." + UNITS
        ),
        input_model=m.PlotBasisInput,
        output_model=m.PlotBasisOutput,
        handler=_plot,
        read_only=True,
        destructive=False,
        idempotent=True,
        computes=True,
    ),
    ToolSpec(
        name="advance_time",
        title="Advance the replay clock",
        description=(
            "Replay mode only: moves the simulated market clock forward by `hours`. Every hour in between is a "
            "market tick: funding settles on open perp positions at the real settlement times with the real "
            "rates, liquidations are checked against the hour's mark high/low, and basis samples are recorded. "
            "Returns the settlements (amount_usd + = received) and any liquidation. Refused past the end of the "
            "data. Sends progress notifications for long advances."
        ),
        input_model=m.AdvanceTimeInput,
        output_model=m.AdvanceTimeOutput,
        handler=_advance,
        read_only=False,
        destructive=False,
        idempotent=False,
        modes=("replay",),
    ),
]
