"""One convention for every number and message the agent reads (issue 13, items 2 and 3).

Names carry units: ``_pct`` percent, ``_usd`` dollars, ``_seconds``/``_hours``/``_days`` time, a bare
name a price, a quantity, a fraction, a multiple or a count. Numbers are rounded to what they mean
(cents for dollars, a handful of significant digits elsewhere): no float noise. Times in messages are
ISO-8601, never epoch seconds.

The walk calls every tool through the SDK client (in-process transport) over a book with positions of
two strategies, an advance across settlements, an exit, a backtest, a chart, and a set of refusals.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from mcp import Client

from basis_mcp.config import Settings, limits_view
from basis_mcp.models.rounding import round_number, significant, tidy
from tests.conftest import call

pytestmark = pytest.mark.anyio

UNIT_SUFFIXES = ("_usd", "_pct", "_bps", "_seconds", "_hours", "_days", "_ms", "_per_minute")
# bare names: a price, a quantity, a fraction or multiple (unitless), a count or an id
BARE_WORDS = ("price", "quantity", "qty", "zscore", "leverage", "ratio", "scale", "multiple", "sigmas", "samples",
              "count", "window", "ticks", "settlements", "trades", "id", "share", "fraction", "hours", "days", "seconds",
              "bar", "round", "rank", "interval", "step", "n", "cover", "multiplier")
EPOCH = re.compile(r"(?<![\d.])1[5-9]\d{8}(?:\.\d+)?(?![\d])|(?<![\d.])1[5-9]\d{11}(?![\d])")


def _digits(x: float) -> int:
    """Significant digits in the shortest repr of ``x``."""
    m = repr(abs(x)).lower().split("e")[0].replace(".", "").lstrip("0")
    return len(m.rstrip("0")) or 1


def numbers(tree: Any, key: str = "", path: str = "") -> list[tuple[str, str, float | int]]:
    """Every (key it is shown under, path, number) in a JSON tree. A limit reading's ``limit``,
    ``hard_ceiling`` and ``current`` are in the unit of its ``name``."""
    out: list[tuple[str, str, float | int]] = []
    if isinstance(tree, bool) or tree is None or isinstance(tree, str):
        return out
    if isinstance(tree, (int, float)):
        return [(key, path, tree)]
    if isinstance(tree, dict):
        named = "name" in tree and "hard_ceiling" in tree
        for k, v in tree.items():
            shown = tree["name"] if named and k in ("limit", "hard_ceiling", "current") else k
            if not has_unit(shown) and has_unit(key):  # a category's entry (tier, venue, coin): its parent's unit
                shown = key
            out += numbers(v, shown, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += numbers(v, key, f"{path}[{i}]")
    return out


def texts(tree: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(tree, str):
        return [(path, tree)]
    if isinstance(tree, dict):
        return [t for k, v in tree.items() for t in texts(v, f"{path}.{k}")]
    if isinstance(tree, list):
        return [t for i, v in enumerate(tree) for t in texts(v, f"{path}[{i}]")]
    return []


def has_unit(key: str) -> bool:
    """The name says what the number is: a unit suffix, or a bare word for a price, quantity, fraction, count..."""
    k = key.lower()
    return k.endswith(UNIT_SUFFIXES) or any(w in k.split("_") for w in BARE_WORDS)


def convention_problems(tool: str, data: Any) -> list[str]:
    problems = []
    for key, path, x in numbers(data):
        k = key.lower()
        if isinstance(x, float) and not has_unit(key):  # a whole number under a bare name is a count
            problems.append(f"{tool}{path}: {key}={x!r} has no unit in its name")
        if isinstance(x, float) and math.isfinite(x):
            if k.endswith("_usd") and abs(x * 100 - round(x * 100)) > 1e-6:
                problems.append(f"{tool}{path}: {key}={x!r} is dollars beyond the cent")
            elif _digits(x) > 10:
                problems.append(f"{tool}{path}: {key}={x!r} carries float noise ({_digits(x)} significant digits)")
    return problems


def epoch_problems(where: str, data: Any) -> list[str]:
    return [f"{where}{path}: epoch time in {text[:160]!r}" for path, text in texts(data) if EPOCH.search(text)]


# --------------------------------------------------------------------------- the rules themselves


def test_rounding_rules():
    assert round_number("equity_usd", 61136.187371400316) == 61136.19
    assert round_number("funding_rate_pct", 0.0100000000000002) == 0.01
    assert round_number("spot_price", 61136.187371400316) == 61136.187
    assert round_number("spot_quantity", 0.08179630000000001) == 0.0817963
    assert round_number("seconds_to_funding", 12345.678901) == 12345.7
    assert round_number("anything", 1 / 3) == 0.3333333333
    assert round_number("fee_usd", -0.001) == 0.0 and math.copysign(1, round_number("fee_usd", -0.001)) == 1
    assert math.isnan(round_number("x_usd", math.nan)) and significant(0.0, 3) == 0.0
    assert tidy("equity_usd", [1.234, 2.345]) == [1.23, 2.35]
    assert tidy("data", {"realised_vol_1h_pct": 5.123456789, "n": 3}) == {"realised_vol_1h_pct": 5.12346, "n": 3}


def test_the_checks_catch_what_they_are_for():
    assert convention_problems("t", {"drawdown": 15.0})  # no unit in the name
    assert convention_problems("t", {"equity_usd": 61136.187})  # beyond the cent
    assert convention_problems("t", {"spot_price": 61136.187371400316})  # float noise
    assert not convention_problems("t", {"spot_price": 61136.19, "equity_usd": 1.5, "zscore": -1.25, "n": 3})
    assert epoch_problems("t", {"m": "SOL data starts 1738371600"}) and epoch_problems("t", ["at 1738371600000 ms"])
    assert not epoch_problems("t", {"m": "SOL data starts 2025-02-01T01:00:00Z; 1,080 samples; $61136.19"})


def test_the_limits_resource_uses_one_unit_per_name():
    view = limits_view(Settings())
    assert view["settings"]["max_drawdown_pct"] == view["hard_ceilings"]["max_drawdown_pct"] == 15.0
    assert view["settings"]["max_realised_vol_1h_pct"] == view["hard_ceilings"]["max_realised_vol_1h_pct"] == 5.0
    assert view["settings"]["tier_allocation_pct"]["anchor"] == 50.0 and view["hard_ceilings"]["max_venue_share_pct"] == 40.0
    assert "max_drawdown" not in view["settings"] and "max_realised_vol_1h" not in view["hard_ceilings"]
    for side in ("settings", "hard_ceilings"):
        assert not convention_problems(side, view[side]), convention_problems(side, view[side])


# --------------------------------------------------------------------------- every tool, as the agent reads it


async def test_every_tool_output_follows_the_convention_and_no_message_has_epoch_seconds(make_server):
    server = make_server(Settings(paper_venues=["bybit"]), start="2024-03-01T00:00:00Z")
    problems: list[str] = []
    seen: set[str] = set()

    async def check(name: str, args: dict[str, Any]) -> dict[str, Any]:
        data = await call(client, name, args)
        seen.add(name)
        problems.extend(convention_problems(name, data) + epoch_problems(name, data))
        return data

    async def either(name: str, args: dict[str, Any]) -> None:
        """A call that may be refused at this market time: its answer or its refusal is checked."""
        r = await client.call_tool(name, args)
        seen.add(name)
        if r.is_error:
            problems.extend(epoch_problems(f"{name} error", r.content[0].text))
        else:
            problems.extend(convention_problems(name, r.structured_content) + epoch_problems(name, r.structured_content))

    async def refused(name: str, args: dict[str, Any]) -> None:
        r = await client.call_tool(name, args)
        assert r.is_error, f"{name}({args}) was expected to be refused"
        problems.extend(epoch_problems(f"{name} error", r.content[0].text))

    async with Client(server) as client:
        limits = json.loads((await client.read_resource("basis://limits")).contents[0].text)
        problems.extend(convention_problems("basis://limits", limits["settings"]))
        problems.extend(convention_problems("basis://limits", limits["hard_ceilings"]))
        await check("scan_basis", {})
        await check("compute_zscore", {"symbol": "BTC"})
        z = await check("compute_zscore", {"symbol": "SOL"})  # no SOL history in 2024: nulls, and why
        assert z["zscore"] is None and z["note"], z
        for strategy in ("cash_and_carry", "reverse_cash_and_carry", "calendar_spread", "cross_exchange"):
            await either("estimate_net_apy", {"symbol": "BTC", "strategy": strategy, "hold_days": 30, "notional_usd": 3000})
            await either("size_position", {"symbol": "BTC", "strategy": strategy})
        await check("seconds_to_funding", {"symbol": "BTC"})
        entered = await check("enter_trade", {"symbol": "ETH", "notional_usd": 3000, "idempotency_key": "units-1",
                                              "expected_hold_days": 20, "playbook": "carry"})
        await either("enter_trade", {"symbol": "BTC", "strategy": "calendar_spread", "notional_usd": 3000,
                                    "idempotency_key": "units-2", "expected_hold_days": 10})
        await check("check_delta", {})
        await check("advance_time", {"hours": 30})
        await check("portfolio_status", {})
        await check("risk_status", {})
        await check("exit_trade", {"position_id": entered["position"]["position_id"], "idempotency_key": "units-3"})
        await check("backtest", {"symbols": ["BTC"], "start": "2022-01-01", "end": "2022-03-01"})
        await check("plot_basis", {"symbol": "BTC", "days": 30})
        for name, args in (
            ("compute_zscore", {"symbol": "NOPE"}),
            ("enter_trade", {"symbol": "SOL", "notional_usd": 1000, "idempotency_key": "units-4"}),
            ("estimate_net_apy", {"symbol": "BTC", "hold_days": 0}),
            ("advance_time", {"hours": 1e9}),
            ("backtest", {"symbols": ["SOL"], "start": "2019-01-01", "end": "2019-06-01"}),
            ("plot_basis", {"symbol": "SOL", "days": 30}),
        ):
            await refused(name, args)
        await check("halt_trading", {"reason": "end of the units walk"})
    assert seen >= {"scan_basis", "compute_zscore", "estimate_net_apy", "size_position", "enter_trade", "exit_trade",
                    "check_delta", "seconds_to_funding", "portfolio_status", "risk_status", "halt_trading", "backtest",
                    "plot_basis", "advance_time"}
    assert not problems, "\n".join(problems[:60]) + (f"\n... {len(problems) - 60} more" if len(problems) > 60 else "")


async def test_every_input_field_of_every_tool_is_described(make_server):
    async with Client(make_server()) as client:
        tools = (await client.list_tools()).tools
    missing = [f"{t.name}.{name}" for t in tools for name, prop in (t.input_schema.get("properties") or {}).items()
               if not (prop.get("description") or "").strip()]
    assert not missing, f"input fields without a description: {missing}"


async def test_published_output_schemas_are_flat(make_server):
    """No $ref and no anyOf of bare types: cheap for every client to validate (issue 13, item 5)."""
    async with Client(make_server()) as client:
        tools = (await client.list_tools()).tools
    for t in tools:
        text = json.dumps(t.output_schema)
        assert '"$ref"' not in text and '"$defs"' not in text, t.name
        assert '"anyOf": [{"type": "number"}, {"type": "null"}]' not in text, t.name
