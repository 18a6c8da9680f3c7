"""Property-based fuzzing of every tool the server lists, plus the "loosen the limits" attack.

Hypothesis builds argument dicts for each tool from the tool's published JSON input schema
(its property names, types and bounds) mixed with a pool of hostile values: wrong types,
NaN/±inf (as floats and as strings), huge and negative numbers, empty and unicode strings
(emoji, RTL override, NUL, 10 000 chars), missing required fields and unknown extra fields
that look like configuration (max_leverage, capital_usd, leverage_cap...). Every answer must
be either a success whose structured content validates against the tool's output schema,
or a readable rejection that names a field; nothing internal (tracebacks, exception class
names, bare "Error executing tool X") may reach the client, and every call is audited.

One long-lived in-process client per tool (fresh SQLite file each) runs in a background
event loop (anyio blocking portal) so the synchronous Hypothesis test can drive it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp import Client
from pydantic import TypeAdapter, ValidationError

from basis_mcp.config import Settings
from basis_mcp.models import FiniteFloat
from basis_mcp.server.app import ServeOptions, build_server
from basis_mcp.tools.definitions import TOOLS
from tests.conftest import START, call, call_error, db_rows

pytestmark = pytest.mark.anyio

EXAMPLES_PER_TOOL = 250
# Tools whose every valid call does real work (a backtest over years of bars, a rendered chart):
# fewer random examples, so the suite stays inside its time budget; their explicit edge-case
# examples all still run.
EXAMPLES_FOR = {"backtest": 60, "plot_basis": 100}

# Tools this build registers in replay mode; test_every_listed_tool_is_fuzzed checks this is
# exactly what list_tools() returns, so every listed tool has a test_fuzz_tool case.
REPLAY_TOOLS = [spec.name for spec in TOOLS if "replay" in spec.modes]

# ----------------------------------------------------------------------------- value pools

NAN, INF = float("nan"), float("inf")

NASTY_NUMBERS: list[Any] = [
    0, -0.0, 1, -1, 0.5, -0.5, 1e-300, -1e-300, 5e-324, 1e308, -1e308, 1.7976931348623157e308,
    2**31, 2**53, 2**53 + 1, 2**63, 2**64, 2**80, -(2**80), 10**30, NAN, INF, -INF,
]
NASTY_STRINGS: list[str] = [
    "nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "-Infinity", "infinity", "1e308", "1e309", "-1e309",
    "-1", "0", "0.0", "0x10", "1_000", "1,000", "5 ", "true", "false", "null", "None", "[]", "{}",
    "", " ", "\t\n", "\x00", "BTC\x00", "\x00BTC", "\u202eCTB", "\u200fBTC\u200f", "مرحبا", "שלום", "😀", "🚀BTC",
    "👨\u200d👩\u200d👧\u200d👦" * 10, "A" * 10_000, "😀" * 5_000, "'; DROP TABLE positions; --", "${jndi:x}", "%s%n",
    "../../etc/passwd", "BTC" * 20,
]
CONFIG_KEYS: list[str] = [
    "max_leverage", "capital_usd", "leverage_cap", "max_position_notional_usd", "default_leverage", "max_drawdown",
    "max_orders_per_minute", "symbol_allowlist", "tier_allocation", "trading_state", "hard_ceiling", "settings",
    "config", "mode", "override", "force", "admin", "__class__", "__proto__", "constructor", "", " ", "\x00",
    "😀", "\u202ekey", "x" * 300,
]
SYMBOL_LIKE: list[str] = [
    "BTC", "ETH", "SOL", "btc", " eth ", "BTCUSDT", "ethusdt", "BTC/USDT", "BTC/USDT:USDT", "ETH-USDT", "eth_usdt",
    "SOLUSDT", "USDT", "BTC/EUR", "BTC/", "/USDT", "::", "DOGE", "XRP",
]


def _recursive_junk() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(NASTY_NUMBERS)
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12,
    )


NASTY: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(NASTY_NUMBERS),
    st.sampled_from(NASTY_STRINGS),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # includes nan, ±inf, subnormals, ±0.0
    st.text(max_size=40),
    st.text(min_size=33, max_size=600),
    st.just([]),
    st.just({}),
    st.lists(st.sampled_from(SYMBOL_LIKE + NASTY_STRINGS[:20]), max_size=60),
    _recursive_junk(),
)

# advance_time moves the replay clock: keep every value it would ACCEPT below one hour, so 1000
# calls stay far inside the data (it ends in 2026-05) and each call replays at most one tick.
_HOURS = TypeAdapter(FiniteFloat)


def _clock_safe(v: Any) -> bool:
    try:
        h = _HOURS.validate_python(v)
    except (ValidationError, TypeError):
        return True
    return not (1.0 <= h <= 24.0 * 366)


CLOCK_BOUND = {("advance_time", "hours")}

# ----------------------------------------------------------------------------- strategies


def _num_bounds(ps: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if "minimum" in ps:
        kw["min_value"] = ps["minimum"]
    if "exclusiveMinimum" in ps:
        kw["min_value"], kw["exclude_min"] = ps["exclusiveMinimum"], True
    if "maximum" in ps:
        kw["max_value"] = ps["maximum"]
    if "exclusiveMaximum" in ps:
        kw["max_value"], kw["exclude_max"] = ps["exclusiveMaximum"], True
    return kw


_VALID_CACHE: dict[tuple[str, str, str], st.SearchStrategy[Any]] = {}


def valid_for(tool: str, name: str, ps: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema accepts for one property (the server may still refuse them on business rules).

    Built once per property: building strategies inside every draw made Hypothesis re-validate
    them each time, which cost more than the tool calls themselves."""
    key = (tool, name, json.dumps(ps, sort_keys=True))
    if key not in _VALID_CACHE:
        _VALID_CACHE[key] = _build_valid_for(tool, name, ps)
    return _VALID_CACHE[key]


def _build_valid_for(tool: str, name: str, ps: dict[str, Any]) -> st.SearchStrategy[Any]:
    if (tool, name) in CLOCK_BOUND:
        return st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True)
    if "anyOf" in ps:
        return st.one_of([valid_for(tool, name, sub) for sub in ps["anyOf"]])
    typ = ps.get("type")
    if typ == "null":
        return st.none()
    if typ == "number":
        kw = _num_bounds(ps)
        lo, hi = kw.get("min_value", -1e6), kw.get("max_value", 1e6)
        options = [st.floats(allow_nan=False, allow_infinity=False, **kw)]  # anywhere in the allowed range
        small_hi = min(hi, max(lo, 0) + 10_000.0)  # and the everyday part of it
        options.append(st.floats(min_value=lo, max_value=small_hi, exclude_min=kw.get("exclude_min", False),
                                 exclude_max=kw.get("exclude_max", False) and small_hi == hi))
        if math.ceil(lo) + 1 <= min(math.floor(hi), 10_000) - 1:
            options.append(st.integers(math.ceil(lo) + 1, min(math.floor(hi), 10_000) - 1))  # ints where floats go
        return st.one_of(options)
    if typ == "integer":
        lo, hi = ps.get("minimum", -(2**31)), ps.get("maximum", 2**31)
        return st.one_of(st.integers(lo, min(hi, lo + 5)), st.integers(lo, hi))
    if typ == "string":
        if "enum" in ps:
            return st.sampled_from(ps["enum"])
        if "const" in ps:
            return st.just(ps["const"])
        if name in ("symbol", "symbols") or "Base asset" in ps.get("description", ""):
            return st.sampled_from(SYMBOL_LIKE)
        if "pattern" in ps:
            short = st.sampled_from(["k1", "k2", "fuzz-1", "a.b:c_d-e", "A" * 64])
            gen = st.from_regex(ps["pattern"], fullmatch=True).filter(lambda s: len(s) <= ps.get("maxLength", 64))
            return st.one_of(short, gen)
        return st.text(min_size=ps.get("minLength", 0), max_size=min(ps.get("maxLength", 100), 100))
    if typ == "array":
        items = valid_for(tool, name, ps.get("items", {}))
        return st.lists(items, max_size=min(ps.get("maxItems", 5), 5))
    if typ == "boolean":
        return st.booleans()
    return NASTY


NASTY_CLOCK_SAFE = NASTY.filter(_clock_safe)


def tool_arguments(tool: str, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Argument dicts for one tool; every strategy is built here once, drawn from many times."""
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    picks: dict[str, dict[str, st.SearchStrategy[Any]]] = {}
    for name, ps in props.items():
        good = valid_for(tool, name, ps)
        bad = NASTY_CLOCK_SAFE if (tool, name) in CLOCK_BOUND else NASTY
        picks[name] = {"valid": good, "nasty": bad, "mixed": st.one_of(good, bad)}
    other_props = sorted({p for spec in TOOLS for p in spec.input_model.model_fields} - set(props))
    extra_key = st.one_of(st.sampled_from(CONFIG_KEYS), st.sampled_from(other_props), st.text(max_size=30))
    extras_strategy = st.dictionaries(extra_key, NASTY, min_size=1, max_size=4)
    styles = st.sampled_from(["valid", "valid", "mixed", "nasty"])

    @st.composite
    def draw_arguments(draw: st.DrawFn) -> dict[str, Any]:
        style = draw(styles)
        args: dict[str, Any] = {}
        for name in props:
            present = draw(st.integers(0, 9)) > 0 if name in required else draw(st.booleans())
            if present:
                args[name] = draw(picks[name][style])
        # unknown extra fields, config-looking ones first, sometimes many
        if draw(st.integers(0, 4)) == 0:
            for k, v in draw(extras_strategy).items():
                args.setdefault(k, v)
        return args

    return draw_arguments()


# Explicit examples, run before the generated ones so every hostile category is hit on every tool
# for sure: each value below in each property (the others valid), everything missing, config keys.
VALID_BASE: dict[str, dict[str, Any]] = {
    "compute_zscore": {"symbol": "BTC"},
    "estimate_net_apy": {"symbol": "BTC", "notional_usd": 1000, "hold_days": 7},
    "size_position": {"symbol": "BTC"},
    "enter_trade": {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "explicit-1"},
    "exit_trade": {"position_id": 1, "idempotency_key": "explicit-x1"},
    "seconds_to_funding": {"symbol": "BTC"},
    "halt_trading": {"reason": "fuzz"},
    "advance_time": {"hours": 0.25},
}
EXPLICIT_VALUES: list[Any] = [
    None, True, False, 0, -0.0, -1, -1e308, 1e308, 2**80, -(2**80), NAN, INF, -INF,
    "nan", "inf", "-Infinity", "1e309", "", " ", "\x00", "\u202eCTB", "😀" * 40, "A" * 10_000, [], ["BTC"], {}, {"value": 1},
]
# Inputs fuzzing found that break an acceptance criterion; kept so the finding is deterministic.
REGRESSIONS: dict[str, list[dict[str, Any]]] = {
    # rejected only by the expected-return rule: the text names "expected_net_usd", no argument
    "enter_trade": [{"symbol": "ETH", "notional_usd": 213, "idempotency_key": "regr-1", "expected_hold_days": 1.0}],
}


def explicit_examples(tool: str, schema: dict[str, Any]) -> list[dict[str, Any]]:
    base = VALID_BASE.get(tool, {})
    out: list[dict[str, Any]] = [{}, dict(base), {**base, "max_leverage": 10, "capital_usd": 1e9, "leverage_cap": 50}]
    out += [{**base, key: 10} for key in ("max_leverage", "capital_usd", "leverage_cap", "", "\x00", "x" * 300)]
    for name in schema.get("properties", {}):
        for v in EXPLICIT_VALUES:
            if (tool, name) in CLOCK_BOUND and not _clock_safe(v):
                continue
            out.append({**base, name: v})
        if name in base:
            out.append({k: v for k, v in base.items() if k != name})
    return out + REGRESSIONS.get(tool, [])


# ----------------------------------------------------------------------------- the oracle

INTERNAL_MARKERS = (
    "Traceback", "KeyError", "TypeError", "AttributeError", "ValueError", "IndexError", "ZeroDivisionError",
    "OverflowError", "RuntimeError", "AssertionError", "RecursionError", "UnicodeEncodeError", "NameError",
    "ValidationError", "sqlite3", "OperationalError", "IntegrityError", 'File "', "pydantic_core",
)
BARE_ERROR = re.compile(r"^\s*Error executing tool [\w.-]+\s*:?\s*$")


@dataclass
class Tally:
    calls: int = 0
    explicit: int = 0
    ok: int = 0
    rejected: int = 0
    failures: list[str] = field(default_factory=list)


def check_result(
    tool: str, schema: dict[str, Any], out_schema: dict[str, Any], args: dict[str, Any], r: Any,
    validator: jsonschema.protocols.Validator | None = None,
) -> str | None:
    """None if the answer is acceptable, else why not."""
    texts = [getattr(c, "text", "") or "" for c in (r.content or [])]
    text = "\n".join(texts)
    if r.is_error:
        if not text.strip():
            return "rejection without any text"
        if BARE_ERROR.match(text) or any(BARE_ERROR.match(t) for t in texts):
            return f"bare internal error: {text!r}"
        echoed = repr(args) + json.dumps(args, default=str)
        for marker in INTERNAL_MARKERS:
            if marker in text and marker not in echoed:
                return f"internal detail {marker!r} reached the client: {text[:500]!r}"
        names = [n for n in schema.get("properties", {})] + [k for k in args if isinstance(k, str) and len(k) >= 3]
        if not (any(n in text for n in names) or "unknown argument" in text or "missing required argument" in text):
            return f"rejection names no field: {text[:500]!r}"
        return None
    sc = r.structured_content
    if not isinstance(sc, dict) or "alerts" not in sc:
        return f"success without structured content / alerts: {sc!r:.300}"
    unknown = set(sc) - set(out_schema.get("properties", {}))
    if unknown:
        return f"structured content has keys outside the output schema: {sorted(unknown)}"
    validator = validator or jsonschema.validators.validator_for(out_schema)(out_schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(sc))
    if error is not None:
        return f"structured content does not validate against the output schema: {error.message[:300]}"
    return None


# ----------------------------------------------------------------------------- running a server


@contextmanager
def running_client(db: Path) -> Iterator[tuple[BlockingPortal, Client]]:
    server = build_server(ServeOptions(settings=Settings(), db_path=db, start=START))
    with start_blocking_portal("asyncio") as portal, portal.wrap_async_context_manager(Client(server)) as client:
        yield portal, client


def seed_positions(portal: BlockingPortal, client: Client) -> None:
    """Open a BTC and an ETH position so exit_trade / check_delta / seconds_to_funding can succeed too."""
    for sym in ("BTC", "ETH"):
        r = portal.call(client.call_tool, "enter_trade", {"symbol": sym, "notional_usd": 1000, "idempotency_key": f"seed-{sym}"})
        assert not r.is_error, r.content


TALLIES: dict[str, Tally] = {}


def fuzz_tool(tool: str, db: Path) -> Tally:
    tally = TALLIES.setdefault(tool, Tally())
    with running_client(db) as (portal, client):
        listed = {t.name: t for t in portal.call(client.list_tools).tools}
        assert tool in listed, f"{tool} is not listed by the server: {sorted(listed)}"
        schema = listed[tool].input_schema
        out_schema = listed[tool].output_schema or {}
        assert "alerts" in out_schema.get("properties", {}), f"{tool}: output schema has no alerts"
        validator_cls = jsonschema.validators.validator_for(out_schema)
        validator_cls.check_schema(out_schema)
        validator = validator_cls(out_schema)
        if tool in ("exit_trade", "check_delta", "seconds_to_funding", "portfolio_status"):
            seed_positions(portal, client)

        def one_call(args: dict[str, Any]) -> None:
            tally.calls += 1
            try:
                r = portal.call(client.call_tool, tool, args)
            except Exception as e:  # a protocol error / broken result is an internal error reaching the client
                raise AssertionError(f"{tool}({args!r:.500}) raised {type(e).__name__}: {e}") from e
            if r.is_error:
                tally.rejected += 1
            else:
                tally.ok += 1
            problem = check_result(tool, schema, out_schema, args, r, validator)
            if problem:
                tally.failures.append(f"{tool}({args!r:.300}): {problem}")
            assert problem is None, f"{tool}({args!r:.1000}): {problem}"

        explicit = explicit_examples(tool, schema)
        tally.explicit += len(explicit)
        test = given(args=tool_arguments(tool, schema))(one_call)
        for ex in reversed(explicit):
            test = example(args=ex)(test)
        settings(
            max_examples=EXAMPLES_FOR.get(tool, EXAMPLES_PER_TOOL),
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )(test)()
    return tally


def tool_audit_rows(db: Path, tool: str) -> dict[str, int]:
    rows = db_rows(db, "SELECT outcome, COUNT(*) AS n FROM audit WHERE kind = 'tool' AND name = ? GROUP BY outcome", (tool,))
    return {r["outcome"]: r["n"] for r in rows}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("tool", REPLAY_TOOLS)
def test_fuzz_tool(tool: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    db = tmp_path_factory.mktemp(f"fuzz-{tool}") / "desk.db"
    tally = fuzz_tool(tool, db)
    assert not tally.failures, tally.failures[:5]
    generated = tally.calls - tally.explicit
    assert generated >= EXAMPLES_FOR.get(tool, EXAMPLES_PER_TOOL), f"{tool}: only {generated} generated calls (+ {tally.explicit} explicit)"
    assert tally.rejected > 0, f"{tool}: nothing was rejected in {tally.calls} hostile calls"
    assert tally.ok > 0, f"{tool}: no call succeeded in {tally.calls}; the valid-looking half never got through"
    # every call the fuzzer made is in the audit log, with the outcome the client saw
    audit = tool_audit_rows(db, tool)
    assert audit.get("ok", 0) == tally.ok, (audit, tally.ok)
    assert audit.get("rejected", 0) + audit.get("error", 0) == tally.rejected, (audit, tally.rejected)


def test_every_listed_tool_is_fuzzed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fuzzed set (test_fuzz_tool's parameters) is exactly what the server lists.

    A tool added to the server without being registered for replay, or registered but not
    listed, fails here; each listed tool then has its own test_fuzz_tool case (they run on
    whichever xdist worker picks them up, so counting them here would re-fuzz everything)."""
    db = tmp_path_factory.mktemp("fuzz-list") / "desk.db"
    with running_client(db) as (portal, client):
        listed = sorted(t.name for t in portal.call(client.list_tools).tools)
    assert listed, "the server lists no tools"
    assert set(listed) == set(REPLAY_TOOLS), f"listed {listed} vs registered {REPLAY_TOOLS}"
    assert len(REPLAY_TOOLS) == len(set(REPLAY_TOOLS)), REPLAY_TOOLS


# ----------------------------------------------------------------------------- loosening limits


def trading_rows(db: Path) -> tuple[int, int]:
    return (
        db_rows(db, "SELECT COUNT(*) AS n FROM positions")[0]["n"],
        db_rows(db, "SELECT COUNT(*) AS n FROM orders")[0]["n"],
    )


def limits_by_name(status: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {x["name"]: (x["limit"], x["hard_ceiling"]) for x in status["limits"] if not x["name"].startswith(("data_age_", "realised_vol_"))}


LOOSENING_ATTEMPTS = [
    ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "loose-1", "leverage": 50},
     "leverage", ["leverage=50", "hard ceiling of 5x"]),
    ("enter_trade", {"symbol": "BTC", "notional_usd": 1e12, "idempotency_key": "loose-2"},
     "notional_usd", ["notional_usd=", "max_position_notional", "5,000"]),
    ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "loose-3", "max_leverage": 10},
     "max_leverage", ["unknown argument 'max_leverage'", "operator", "cannot be changed"]),
    ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "loose-4", "capital_usd": 1e9},
     "capital_usd", ["unknown argument 'capital_usd'", "operator", "cannot be changed"]),
    ("size_position", {"symbol": "BTC", "leverage": 50},
     "leverage", ["leverage=50", "hard ceiling of 5x"]),
]


async def test_loosening_limits_through_arguments_is_refused_and_audited(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        before = await call(client, "risk_status")
        lev = next(x for x in before["limits"] if x["name"] == "leverage")
        assert (lev["limit"], lev["hard_ceiling"]) == (3.0, 5.0)
        assert before["trading_state"] == "ACTIVE"

        for tool, args, offending, must_mention in LOOSENING_ATTEMPTS:
            rows_before = trading_rows(db)
            text = await call_error(client, tool, args)
            assert offending in text, f"{tool}({args}): {offending!r} not named in {text!r}"
            for phrase in must_mention:
                assert phrase in text, f"{tool}({args}): {phrase!r} not in {text!r}"
            assert "Traceback" not in text
            assert trading_rows(db) == rows_before == (0, 0), f"{tool}({args}) left positions/orders behind"

            audit = db_rows(
                db, "SELECT id, outcome, args_json, detail FROM audit WHERE kind = 'tool' AND name = ? ORDER BY id DESC LIMIT 1",
                (tool,),
            )
            assert audit, f"{tool}({args}) was not audited"
            assert audit[0]["outcome"] in ("rejected", "error"), audit[0]["outcome"]
            logged = json.loads(audit[0]["args_json"])
            if audit[0]["outcome"] == "error":  # it ran and failed: the arguments are on its start row
                assert logged.get("call"), logged
                logged = json.loads(db_rows(db, "SELECT args_json FROM audit WHERE id = ?", (logged["call"],))[0]["args_json"])
            assert logged.get(offending) == args[offending], f"audit args {logged} lack {offending}={args[offending]}"
            assert offending in (audit[0]["detail"] or ""), audit[0]["detail"]

        after = await call(client, "risk_status")
        assert limits_by_name(after) == limits_by_name(before)
        lev = next(x for x in after["limits"] if x["name"] == "leverage")
        assert (lev["limit"], lev["hard_ceiling"]) == (3.0, 5.0)
        assert after["capital_usd"] == before["capital_usd"] == 100_000.0
        assert after["trading_state"] == "ACTIVE"

        # and the desk still trades normally within the limits afterwards
        ok = await call(client, "size_position", {"symbol": "BTC", "leverage": 3})
        assert ok["leverage"] == 3.0 and ok["recommended_notional_usd"] <= 5_000
