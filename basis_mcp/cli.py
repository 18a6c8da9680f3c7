"""Command line: ``basis-mcp serve | status``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import platformdirs

from basis_mcp import __version__


def default_db_path(mode: str = "replay", venue: str = "binance") -> Path:
    """``$BASIS_MCP_DB``, else one database per mode in the user data directory (a replay book
    and a live book must never share a file)."""
    env = os.environ.get("BASIS_MCP_DB")
    if env:
        return Path(env)
    name = "basis-mcp.db" if mode == "replay" else f"basis-mcp-{mode}-{venue}.db"
    return Path(platformdirs.user_data_dir("basis-mcp", appauthor=False)) / name


def _add_common(p: argparse.ArgumentParser) -> None:
    """--db, and the flags that pick the default database the same way ``serve`` does, so
    ``basis-mcp halt --market live --live`` reaches the live book without typing its path."""
    p.add_argument("--db", type=Path, default=None,
                   help="SQLite database (default: one per mode and venue in the user data dir, or $BASIS_MCP_DB)")
    g = p.add_argument_group("which book (when --db is not given)")
    g.add_argument("--market", choices=["replay", "live"], default="replay",
                   help="replay: shipped history under a simulated clock (default); live: prices from the venue")
    g.add_argument("--venue", default="binance", help="venue(s), comma separated; the first one trades (binance, bybit, okx)")
    g.add_argument("--readonly", action="store_true", help="live data, no trading tools at all")
    g.add_argument("--live", action="store_true", help="REAL ORDERS with real money; needs API keys")
    a = p.add_argument_group("audit log (see README: Audit log)")
    a.add_argument("--audit-key", type=Path, default=None,
                   help="the book's audit key file (default: $BASIS_MCP_AUDIT_KEY_FILE, else <db>.audit-key beside the database)")
    a.add_argument("--audit-journal", type=Path, default=None,
                   help="the audit checkpoint journal (default: $BASIS_MCP_AUDIT_JOURNAL_FILE, else <db>.audit-journal)")


def audit_paths(args: argparse.Namespace, db: Path):
    from basis_mcp.audit import AuditPaths

    return AuditPaths.for_db(db, getattr(args, "audit_key", None), getattr(args, "audit_journal", None))


def book_mode(args: argparse.Namespace) -> str:
    if args.market != "live":
        return "replay"
    return "live" if args.live else "readonly" if args.readonly else "paper"


def book_db(args: argparse.Namespace) -> Path:
    return args.db or default_db_path(book_mode(args), args.venue.split(",")[0].strip().lower())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="basis-mcp", description="MCP server for a crypto basis-convergence book.")
    parser.add_argument("--version", action="version", version=f"basis-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    _add_common(serve)
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                       help="stdio (default): the client starts this process and talks over stdin/stdout (Claude Desktop, "
                            "Claude Code); http: streamable HTTP at http://HOST:PORT/mcp, plus the dashboard at /dashboard")
    serve.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                       help="http: the address to listen on (default 127.0.0.1, this machine only; any other needs "
                            "$BASIS_MCP_HTTP_TOKEN)")
    serve.add_argument("--port", type=int, default=8765, metavar="PORT", help="http: the TCP port (default 8765)")
    serve.add_argument("--data", type=Path, default=None, metavar="PATH",
                       help="market data: an .npz extract or a freqtrade data dir (default: shipped extract)")
    serve.add_argument("--start", default=None, metavar="DATE",
                       help="replay start time, e.g. 2025-06-01 (a new database only; default 2024-03-01)")
    serve.add_argument("--config", type=Path, default=os.environ.get("BASIS_MCP_CONFIG"), metavar="TOML",
                       help="operator config (TOML; default $BASIS_MCP_CONFIG)")
    serve.add_argument("--paper-venues", default=None, metavar="VENUE[,VENUE]",
                       help="replay: extra paper venues for cross_exchange trades (bybit, gate, dydx: their real funding "
                            "2020-2023); each starts with max_venue_share of capital")
    live = serve.add_argument_group("live markets (ccxt)")
    live.add_argument("--symbols", default=None, metavar="SYM[,SYM]", help="symbols to watch and trade, e.g. BTC,ETH,SOL (default: the allowlist or BTC,ETH,SOL)")
    live.add_argument("--key-file", type=Path, default=None, metavar="PATH", help="JSON or TOML with api_key, secret (and password for OKX)")
    live.add_argument("--venue-url", default=os.environ.get("BASIS_MCP_VENUE_URL"), help=argparse.SUPPRESS)

    status = sub.add_parser("status", help="print the book from the database without starting a server")
    _add_common(status)

    resume = sub.add_parser("resume", help="operator: set the trading state back to ACTIVE (works on a running server)")
    _add_common(resume)
    resume.add_argument("--reason", default="operator resumed trading", metavar="TEXT", help="recorded with the state change")

    halt = sub.add_parser("halt", help="operator: kill switch, stop all new entries")
    _add_common(halt)
    halt.add_argument("--reason", default="operator halted trading", metavar="TEXT", help="recorded with the state change")

    audit = sub.add_parser("audit", help="verify or export the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain; exit 1 if a row was edited, inserted or deleted")
    _add_common(verify)
    export = audit_sub.add_parser("export", help="write the audit log as JSON lines")
    _add_common(export)
    export.add_argument("--out", type=Path, default=None, metavar="FILE", help="file to write (default: stdout)")

    bt = sub.add_parser("backtest", help="backtest a strategy's rules on history (writes JSON and a PNG chart under --out)")
    bt.add_argument("--symbols", default="BTC,ETH", metavar="SYM[,SYM]", help="symbols to test (default BTC,ETH)")
    bt.add_argument("--start", default="2020-01-01", metavar="DATE", help="first day, UTC (default 2020-01-01)")
    bt.add_argument("--end", default="2026-05-16", metavar="DATE", help="last day, UTC (default 2026-05-16, the shipped data's end)")
    bt.add_argument("--data", type=Path, default=None, metavar="PATH",
                    help="an .npz extract, a freqtrade data dir or a CSV dir (default: shipped)")
    bt.add_argument("--timeframe", default=None, metavar="TF", help="candle timeframe to read from a data directory "
                    "holding several (1m, 5m, 15m, 1h, 4h, 8h, 1d); default: the only one there")
    bt.add_argument("--engine", choices=["vectorized", "reference"], default="vectorized",
                    help="vectorized (default, fast) or reference (the per-bar loop it is checked against)")
    bt.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help=f"where the JSON result and the PNG chart go (default: $BASIS_MCP_BACKTEST_DIR, else "
                         f"{default_backtest_dir()})")
    bt.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    bt.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                    help="sweep a parameter over values (repeatable): every combination is run")
    bt.add_argument("--workers", type=int, default=1, metavar="N",
                    help="--sweep: run the combinations in N processes (0: every core; default 1, this process)")
    bt.add_argument("--dask", default=None, metavar="ADDRESS",
                    help="--sweep: send the combinations to a Dask scheduler (tcp://host:8786), or 'local' for a local "
                         "cluster of --workers processes (needs pip install 'basis-mcp[cluster]')")
    import typing

    from basis_mcp.backtest.params import BacktestParams

    bt.add_argument("--fill-delay", dest="p_fill_delay_seconds", default=None, metavar="DURATION",
                    help="fill this long after the signal, at the first fresh bar at or after it: 0 (the signal's own "
                         "close), 5m, 1h (default: 1h, one hourly bar; see README)")
    bt.add_argument("--config", type=Path, default=os.environ.get("BASIS_MCP_CONFIG"), metavar="TOML",
                    help="operator config (TOML): per-symbol costs, and the caps --sizing desk applies")
    for name, f in BacktestParams.model_fields.items():
        if name == "fill_delay_seconds":
            continue
        if typing.get_origin(f.annotation) is typing.Literal:
            bt.add_argument("--" + name.replace("_", "-"), dest=f"p_{name}", choices=typing.get_args(f.annotation),
                            default=None, help=f"{f.description or name} (default {f.default})")
            continue
        if typing.get_origin(f.annotation) is tuple:  # a list of names: comma separated
            bt.add_argument("--" + name.replace("_", "-"), dest=f"p_{name}", default=None, metavar="NAME[,NAME]",
                            type=lambda v: tuple(x.strip().lower() for x in v.split(",") if x.strip()),
                            help=f"{f.description or name} (default {','.join(f.default)})")
            continue
        typ = int if f.annotation is int else float
        bt.add_argument("--" + name.replace("_", "-"), dest=f"p_{name}", type=typ, default=None, metavar=_metavar(name, typ),
                        help=f"{f.description or name} (default {f.default})")

    _add_data(sub)
    from basis_mcp.dashboard.command import add_dashboard, run_dashboard

    add_dashboard(sub, _add_common)

    from basis_mcp.client_config import add_client_config, run_client_config

    add_client_config(sub)

    args = parser.parse_args(argv)
    if args.command == "client-config":
        return run_client_config(args, args.db, book_db)
    if args.command == "backtest":
        return _backtest(args)
    if args.command == "data":
        return _data_download(args)
    db = book_db(args)
    if args.command == "serve":
        rc = _serve(args, db)
        if argv is None:  # the process's own entry point: the book is closed and its lease released
            _exit_fast(rc)
        return rc
    if args.command != "audit" or args.audit_command == "verify":
        print(f"basis-mcp: {book_mode(args)} book, database {db}", file=sys.stderr)
    paths = audit_paths(args, db)
    if args.command == "dashboard":
        return run_dashboard(args, db, paths)
    if args.command == "status":
        return _status(db)
    if args.command in ("resume", "halt"):
        return _set_state(db, paths, "ACTIVE" if args.command == "resume" else "HALTED", args.reason)
    if args.command == "audit":
        return _audit_verify(db, paths) if args.audit_command == "verify" else _audit_export(db, args.out)
    return 2


def default_backtest_dir() -> Path:
    """``$BASIS_MCP_BACKTEST_DIR``, else ``backtests`` in the user data directory (beside the default book)."""
    env = os.environ.get("BASIS_MCP_BACKTEST_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("basis-mcp", appauthor=False)) / "backtests"


def _metavar(name: str, typ: type) -> str:
    """A flag's value in the unit its name gives: PCT, USD, DAYS, HOURS, SECONDS, X (a multiple), N (a count)."""
    for suffix, mv in (("_pct", "PCT"), ("_usd", "USD"), ("_days", "DAYS"), ("_hours", "HOURS"), ("_seconds", "SECONDS")):
        if name.endswith(suffix):
            return mv
    if "leverage" in name or "multiplier" in name or "multiple" in name or "cover" in name:
        return "X"
    if name.endswith("_fee"):
        return "FRACTION"
    if name.endswith("sigmas"):
        return "SIGMAS"
    return "N" if typ is int else "NUMBER"


def _add_data(sub: Any) -> None:
    """``basis-mcp data download``: market history through ccxt into freqtrade's layout (basis_mcp.download)."""
    data = sub.add_parser("data", help="market data for backtests: download history from a venue")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="download spot, perp and mark candles and funding (freqtrade layout, "
                                              "incremental: run it again to resume or extend)")
    dl.add_argument("--venue", required=True, help="binance, bybit or okx")
    dl.add_argument("--symbols", required=True, help="coins, comma separated: BTC,ETH (USDT spot and USDT perp)")
    dl.add_argument("--timeframe", default="5m", help="spot and perp candles (1m, 5m, 15m, 1h, 4h, ...; default 5m)")
    dl.add_argument("--start", required=True, help="first candle, e.g. 2024-01-01 (UTC)")
    dl.add_argument("--end", default=None, help="stop before this time (default: the venue's now; closed candles only)")
    dl.add_argument("--dir", type=Path, default=Path("user_data/data"),
                    help="data directory; files go to <dir>/<venue>/ and <dir>/<venue>/futures/ (default ./user_data/data)")
    dl.add_argument("--mark-timeframe", default=None, metavar="TF",
                    help="mark candles (default as freqtrade: binance 8h, bybit 4h, okx 4h)")
    dl.add_argument("--funding", action=argparse.BooleanOptionalAction, default=True,
                    help="settled funding rates (default on)")
    dl.add_argument("--venue-url", default=os.environ.get("BASIS_MCP_VENUE_URL"), help=argparse.SUPPRESS)


def _data_download(args: argparse.Namespace) -> int:
    import asyncio

    from basis_mcp.download import DownloadRequest, download
    from basis_mcp.history import DataError

    urls = _venue_urls(args.venue_url)
    url = urls.get(args.venue.strip().lower()) if isinstance(urls, dict) else urls
    req = DownloadRequest(venue=args.venue, symbols=args.symbols.split(","), timeframe=args.timeframe, start=args.start,
                          end=args.end, directory=args.dir, mark_timeframe=args.mark_timeframe, funding=args.funding,
                          base_url=url)
    try:
        summary = asyncio.run(download(req, lambda what, done, total: _progress_bar(done, total, what)))
    except DataError as e:
        print(f"\nbasis-mcp data download: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbasis-mcp data download: interrupted; the files written are valid: run the same command again to resume",
              file=sys.stderr)
        return 130
    print(summary.text())
    return 0


def _progress_bar(done: float, total: float, message: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    end = "\n" if done >= total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {int(done)}/{int(total)} {message[:50]:<50}", end=end,
          file=sys.stderr, flush=True)


def _backtest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pydantic import ValidationError

    from basis_mcp.backtest.params import BacktestParams
    from basis_mcp.backtest.report import write_outputs
    from basis_mcp.backtest.runner import load_markets, run, sweep, warm_up_params
    from basis_mcp.config import ConfigError, load_settings
    from basis_mcp.history import DataError
    from basis_mcp.loaders import load_any, with_market_facts

    overrides = {k[2:]: v for k, v in vars(args).items() if k.startswith("p_") and v is not None}
    try:
        settings = load_settings(args.config)
        params = BacktestParams(**overrides)
        grid: dict[str, list[float]] = {}
        for spec in args.sweep:
            name, _, values = spec.partition("=")
            if name not in BacktestParams.model_fields or not values:
                raise DataError(f"--sweep {spec!r}: expected NAME=V1,V2 with NAME one of the parameters")
            grid[name] = [_sweep_value(name, v) for v in values.split(",")]
        symbols = [s for s in args.symbols.split(",") if s.strip()]
        histories = load_any(args.data, symbols, args.timeframe)  # only the symbols asked for are read
        settings, facts = with_market_facts(settings, args.data, [s.strip().upper() for s in symbols])
        markets = load_markets(histories, symbols, args.start, args.end, warm_up_params(params, grid), settings)
        markets = [replace(m, notes=m.notes + tuple(n for n in facts if n.startswith(m.symbol + ":"))) for m in markets]
    except ValidationError as e:
        print("basis-mcp backtest: " + "; ".join(f"{_flag(er['loc'])}: {er['msg']}" for er in e.errors()), file=sys.stderr)
        return 2
    except (DataError, ValueError, ConfigError) as e:
        print(f"basis-mcp backtest: {e}", file=sys.stderr)
        return 2
    if grid:
        if args.dask or args.workers != 1:
            from basis_mcp.backtest.parallel import sweep_parallel

            try:
                rows = sweep_parallel(markets, params, grid, args.workers, args.dask, _progress_bar)
            except ImportError:
                print("basis-mcp backtest: --dask needs Dask: pip install 'basis-mcp[cluster]'", file=sys.stderr)
                return 2
        else:
            rows = sweep(markets, params, grid, _progress_bar)
        cols = list(grid) + ["trades", "win_rate_pct", "total_pnl_usd", "apy_pct", "apy_while_invested_pct", "max_drawdown_pct"]
        print("  ".join(f"{c:>14}" for c in cols))
        for r in rows:
            print("  ".join(f"{'' if r[c] is None else r[c]:>14}" for c in cols))
        return 0
    try:
        result = run(markets, params, args.engine, _progress_bar, settings=settings)
    except DataError as e:
        print(f"basis-mcp backtest: {e}", file=sys.stderr)
        return 2
    paths = write_outputs(result, args.out or default_backtest_dir(), chart=not args.no_chart)
    s = result.summary
    delay = params.fill_delay_seconds
    print(f"{', '.join(result.symbols)}  {result.start[:10]} → {result.end[:10]}  playbook {params.playbook}, "
          f"{params.sizing} sizing, fills {'at the signal bar' if delay == 0 else f'{delay / 3600:g} h after the signal'} "
          f"({args.engine} engine)")
    print(f"trades {s['trades']}  win rate {s['win_rate_pct']}%  avg hold {s['avg_hold_days']} d  exposure {s['exposure_pct']}%")
    borrow = s.get("borrow_usd", 0.0)
    print(f"basis ${s['basis_pnl_usd']:,.2f}  funding ${s['funding_usd']:,.2f}  "
          + (f"borrow ${borrow:,.2f} (modelled: {params.borrow_scenario})  " if params.direction == -1 else "")
          + f"fees ${s['fees_usd']:,.2f}  slippage ${s['slippage_usd']:,.2f}  =  P&L ${s['total_pnl_usd']:,.2f}")
    if params.direction == -1:
        print("strategy reverse_cash_and_carry: short borrowed spot, long perp; borrow interest MODELLED "
              f"(basis_mcp/borrow.py, scenario {params.borrow_scenario})")
    if params.strategy == "calendar_spread":
        print("strategy calendar_spread: long perp, short the quarterly the desk would choose; the quarterly's price is "
              "SIMULATED (basis_mcp/dated.py: perp x (1 + last 90 days' funding x years to expiry)), left "
              f"{params.expiry_exit_hours:g} h before expiry")
    print(f"return {s['total_return_pct']}% of ${params.capital_usd:,.0f}  APY {s['apy_pct']}%  "
          f"APY while invested {s['apy_while_invested_pct']}%  Sharpe {s['sharpe']}  max drawdown {s['max_drawdown_pct']}%")
    print("exits: " + ", ".join(f"{k} {v}" for k, v in s["exit_reasons"].items()) + f"  (emergency {s['emergency_exit_pct']}%)")
    sens = result.sensitivity
    if sens:
        kept = sens["one_bar_kept_pct"]
        print(f"fill-delay sensitivity: P&L ${sens['pnl_fill_at_signal_usd']:,.2f} filled at the signal bar, "
              f"${sens['pnl_fill_one_bar_later_usd']:,.2f} one bar later" + (f" ({kept}% kept)" if kept is not None else ""))
    if result.always_on:
        a = result.always_on
        print(f"always-on carry (same run): P&L ${a['total_pnl_usd']:,.2f}, APY {a['apy_pct']}% of capital")
        for sym in result.symbols:
            b = result.by_symbol[sym]
            print(f"  {sym}: this playbook ${b['total_pnl_usd']:,.2f} vs always-on ${b['always_on_pnl_usd']:,.2f} "
                  f"({b['vs_always_on_dollars_pct']}%); at constant notional ${b['pnl_at_constant_notional_usd']:,.2f} vs "
                  f"${b['always_on_pnl_at_constant_notional_usd']:,.2f} ({b['vs_always_on_pct']}%)")
    print(f"\n{'year':>6} {'closed':>7} {'funding $':>10} {'costs $':>10} {'P&L $':>10} {'ret %':>8} {'always-on $':>12}")
    for y in result.by_year:
        print(f"{y['year']:>6} {y['trades_closed']:>7} {y['funding_usd']:>10,.2f} {y['costs_usd']:>10,.2f} "
              f"{y['pnl_usd']:>10,.2f} {y['return_pct']:>8.3f} {y.get('always_on_pnl_usd', 0.0):>12,.2f}")
    stale = {k: v for k, v in result.stale.items() if v}
    if stale:
        print("stale candles treated as gaps: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in stale.items()))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _sweep_value(name: str, raw: str):
    """A sweep value as its parameter's type: numbers for numbers, words for choices."""
    from basis_mcp.backtest.params import BacktestParams
    from basis_mcp.history import DataError

    ann = BacktestParams.model_fields[name].annotation
    raw = raw.strip()
    if ann is int:
        try:
            return int(raw)
        except ValueError:
            raise DataError(f"--sweep {name}: {raw!r} is not a whole number") from None
    if ann in (float, float | None):
        try:
            return float(raw)
        except ValueError:
            raise DataError(f"--sweep {name}: {raw!r} is not a number") from None
    return raw


def _flag(loc: tuple) -> str:
    name = ".".join(map(str, loc)) or "params"
    return "--fill-delay" if name == "fill_delay_seconds" else "--" + name.replace("_", "-")


def _existing_store(db: Path, paths=None):
    from basis_mcp.audit import AuditKeyError
    from basis_mcp.store import DatabaseBusy, SchemaTooNew, Store

    if not db.is_file():
        print(f"no database at {db} (pick the book with --market/--live/--readonly/--venue as for serve, or --db)", file=sys.stderr)
        return None
    try:
        return Store(db, paths)
    except (SchemaTooNew, AuditKeyError, DatabaseBusy) as e:
        print(f"basis-mcp: {e}", file=sys.stderr)
        return None


def _set_state(db: Path, paths, state: str, reason: str) -> int:
    import time

    from basis_mcp.models import _plain_text

    try:
        _plain_text(reason)
    except ValueError as e:
        print(f"basis-mcp: --reason: {e}", file=sys.stderr)
        return 2
    store = _existing_store(db, paths)
    if store is None:
        return 1
    before = store.get_meta("trading_state") or "ACTIVE"
    with store.tx():
        store.set_meta("trading_state", state)
        store.set_meta("trading_state_reason", reason)
        store.set_meta("trading_state_since", repr(time.time()))
        store.x(
            "INSERT INTO alerts(ts, market_ts, severity, rule, message, data_json) VALUES (?,?,?,?,?,?)",
            (time.time(), float(store.get_meta("replay_time") or time.time()), "critical", f"state_{state.lower()}",
             f"operator set trading state {before} → {state}: {reason}", "{}"),
        )
        store.append_audit(ts=time.time(), market_ts=None, kind="operator", name=f"set_state_{state.lower()}",
                           args={"from": before, "to": state, "reason": reason}, outcome="ok")
    store.close()
    print(f"trading state {before} → {state} ({reason})")
    return 0


def _audit_verify(db: Path, paths) -> int:
    """Read-only: never creates, migrates or repairs anything."""
    from basis_mcp.audit import verify

    if not db.is_file():
        print(f"no database at {db} (pick the book with --market/--live/--readonly/--venue as for serve, or --db)", file=sys.stderr)
        return 1
    print(f"audit key {paths.key}, journal {paths.journal}", file=sys.stderr)
    verdict = verify(db, paths)
    print(verdict.text())
    return 0 if verdict.ok else 1


def _audit_export(db: Path, out: Path | None) -> int:
    import json
    import sqlite3

    if not db.is_file():
        print(f"no database at {db}", file=sys.stderr)
        return 1
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    fh = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
    try:
        for r in conn.execute("SELECT * FROM audit ORDER BY id"):
            row = dict(r)
            row["args"] = json.loads(row.pop("args_json"))
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    finally:
        if out:
            fh.close()
        conn.close()
    return 0


def load_credentials(venue: str, key_file: Path | None, env: dict[str, str] | None = None):
    """API keys from a key file, else ``{VENUE}_API_KEY``/``_API_SECRET`` or ``BASIS_MCP_API_KEY``/``_SECRET``."""
    import json
    import tomllib

    from basis_mcp.live.exchanges import Credentials

    env = dict(os.environ) if env is None else env
    if key_file is not None:
        if not key_file.is_file():
            raise ValueError(f"key file not found: {key_file}")
        text = key_file.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = tomllib.loads(text)
        data = data.get(venue, data)
        key, secret, pw = data.get("api_key") or data.get("apiKey"), data.get("secret"), data.get("password")
    else:
        v = venue.upper()
        key = env.get(f"{v}_API_KEY") or env.get("BASIS_MCP_API_KEY")
        secret = env.get(f"{v}_API_SECRET") or env.get("BASIS_MCP_API_SECRET")
        pw = env.get(f"{v}_API_PASSWORD") or env.get("BASIS_MCP_API_PASSWORD")
    if not key or not secret:
        return None
    return Credentials(str(key), str(secret), str(pw) if pw else None)


def _venue_urls(raw: str | None) -> str | dict[str, str] | None:
    """Dev/test: ``URL`` for every venue, or ``binance=URL,bybit=URL`` (a local server per venue)."""
    if not raw or "=" not in raw:
        return raw
    return dict(part.split("=", 1) for part in raw.split(",") if part)


def _serve(args: argparse.Namespace, db: Path) -> int:
    import anyio

    from basis_mcp.audit import AuditKeyError
    from basis_mcp.clock import iso
    from basis_mcp.config import ConfigError, load_settings
    from basis_mcp.errors import Rejected
    from basis_mcp.history import DataError
    from basis_mcp.lease import BookLease, BookLeaseHeld
    from basis_mcp.server.app import ServeOptions, build_server, open_desk
    from basis_mcp.server.http import TOKEN_ENV, UnsafeHttp, check_http_safety, run_http
    from basis_mcp.server.stdio import run_stdio
    from basis_mcp.store import DatabaseBusy, SchemaTooNew
    from basis_mcp.venue.base import VenueError, VenueTimeout

    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"basis-mcp: {e}", file=sys.stderr)
        return 2
    venues = [v.strip().lower() for v in args.venue.split(",") if v.strip()]
    if args.paper_venues:
        try:
            settings = settings.model_copy(update={"paper_venues": [v.strip().lower() for v in args.paper_venues.split(",")
                                                                    if v.strip()]})
            settings = type(settings).model_validate(settings.model_dump())
        except ValueError as e:
            why = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()) if hasattr(e, "errors") else str(e)
            print(f"basis-mcp: --paper-venues {args.paper_venues}: {why}", file=sys.stderr)
            return 2
    if args.market == "replay":
        if args.live or args.readonly:
            print("basis-mcp: --live and --readonly need --market live", file=sys.stderr)
            return 2
        mode = "replay"
    else:
        if args.live and args.readonly:
            print("basis-mcp: --live and --readonly exclude each other", file=sys.stderr)
            return 2
        mode = "live" if args.live else "readonly" if args.readonly else "paper"
    token = os.environ.get(TOKEN_ENV) or None
    if args.transport == "http":
        try:
            check_http_safety(args.host, token, mode)
        except UnsafeHttp as e:
            print(f"basis-mcp: refusing to start: {e}", file=sys.stderr)
            return 2
    creds: Any = None
    if mode == "live":
        try:
            creds = load_credentials(venues[0], args.key_file)
            if len(venues) > 1:  # another venue trades with keys of its own (its section of --key-file, or VENUE_API_KEY)
                plain = {k: v for k, v in os.environ.items() if not k.startswith("BASIS_MCP_API_")}
                creds = {venues[0]: creds, **{v: load_credentials(v, args.key_file, plain) for v in venues[1:]}}
        except (ValueError, OSError) as e:
            print(f"basis-mcp: {e}", file=sys.stderr)
            return 2
        if creds is None or (isinstance(creds, dict) and creds[venues[0]] is None):
            v = venues[0].upper()
            print(f"basis-mcp: --live needs API keys: set {v}_API_KEY and {v}_API_SECRET, or pass --key-file", file=sys.stderr)
            return 2
    universe = [x.strip().upper() for x in args.symbols.split(",")] if args.symbols else None
    opts = ServeOptions(settings=settings, db_path=db, data_path=args.data, start=args.start, mode=mode, venues=venues,
                        universe=universe, venue_url=_venue_urls(args.venue_url), credentials=creds, audit_paths=audit_paths(args, db))
    try:  # one server per book, for this process's whole life (the kernel drops it if the process dies)
        lease = BookLease.acquire(db, transport=args.transport if args.transport == "stdio" else
                                  f"http://{args.host}:{args.port}/mcp")
    except BookLeaseHeld as e:
        print(f"basis-mcp: cannot start: {e}", file=sys.stderr)
        return 3

    async def preflight() -> str:  # fail fast, with a readable message, before any transport is up
        desk = await open_desk(opts, start=False)
        try:
            v, t = desk.feed.venue.capitalize(), iso(desk.now())
            return {
                "replay": f"paper desk replaying {v} history at {t}",
                "paper": f"paper desk on live {v} prices ({t})",
                "readonly": f"read-only desk on live {v} prices ({t})",
                "live": f"LIVE desk on {v}: real orders ({t})",
            }[desk.mode]
        finally:
            await desk.aclose()

    try:
        try:
            what = anyio.run(preflight)
        except (Rejected, DataError, VenueError, VenueTimeout, ValueError, SchemaTooNew, AuditKeyError, DatabaseBusy) as e:
            print(f"basis-mcp: cannot start: {e}", file=sys.stderr)
            return 2
        print(f"basis-mcp {__version__}: {what}, database {db}", file=sys.stderr)
        key = opts.audit_paths.key if opts.audit_paths else None
        if key is not None and mode == "live":
            from basis_mcp.audit import key_is_private

            if not key_is_private(key):
                print(f"basis-mcp: WARNING: the audit key {key} is readable by other users (chmod 600 it)", file=sys.stderr)
        server = build_server(opts)
        try:
            if args.transport == "stdio":
                print("basis-mcp: waiting for an MCP client on stdin/stdout (a client such as Claude Desktop, Claude Code "
                      "or the Inspector starts this command itself: `basis-mcp client-config` prints its entry; "
                      "Ctrl-C stops)", file=sys.stderr, flush=True)
                anyio.run(run_stdio, server)
            else:
                auth = (f"a bearer token is required (header 'Authorization: Bearer <${TOKEN_ENV}>')" if token
                        else f"NO token required (loopback only; set {TOKEN_ENV} to require one)")
                print(f"basis-mcp: serving MCP at http://{args.host}:{args.port}/mcp; {auth}", file=sys.stderr)
                run_http(server, args.host, args.port, token)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        lease.release()


def _exit_fast(rc: int) -> None:
    """Leave without the interpreter's teardown (half a second of freeing the SDK's and our pydantic
    classes: every client that stops the server waits for it). Only after `_serve` returned: the
    desk, its database and audit journal are closed and the lease released; streams are flushed here."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the client closed the pipe already
            pass
    os._exit(rc)


def _status(db: Path) -> int:
    import sqlite_utils

    from basis_mcp.clock import iso

    if not db.is_file():
        print(f"no database at {db} (pick the book with --market/--live/--readonly/--venue as for serve, or --db)", file=sys.stderr)
        return 1
    d = sqlite_utils.Database(db)
    meta = {r["key"]: r["value"] for r in d.query("SELECT key, value FROM meta")}
    t = float(meta["replay_time"]) if "replay_time" in meta else None
    print(f"database   {db}")
    print(f"mode       {meta.get('mode', '?')}   market time {iso(t) if t else '-'}")
    state, why = meta.get("trading_state") or "ACTIVE", meta.get("trading_state_reason") or ""
    print(f"trading    {state}" + (f": {why}" if why else " (entries allowed)" if state == "ACTIVE" else ""))
    if "paper_balances" in d.table_names():
        bal = {r["asset"]: r["free"] for r in d.query("SELECT asset, free FROM paper_balances")}
        print(f"capital    ${float(meta.get('capital_usd', 0)):,.2f}   free USDT ${bal.get('USDT', 0):,.2f}")
    fund = next(d.query("SELECT COALESCE(SUM(amount_usd),0) AS s FROM funding_payments"))["s"]
    fees = next(d.query("SELECT COALESCE(SUM(fee_usd),0) AS s FROM fills"))["s"]
    real = next(d.query("SELECT COALESCE(SUM(realized_pnl_usd),0) AS s FROM positions WHERE status IN ('closed','liquidated','failed')"))["s"]
    print(f"realised   ${real:,.2f}   funding received ${fund:,.2f}   fees paid ${fees:,.2f}")
    rows = list(d.query("SELECT * FROM positions ORDER BY id DESC LIMIT 20"))
    if not rows:
        print("positions  none")
    else:
        print(f"\n{'id':>4} {'symbol':6} {'status':10} {'qty':>12} {'lev':>4} {'entry basis%':>12} {'funding $':>10} {'realised $':>11}  opened")
        for r in rows:
            f = next(d.query("SELECT COALESCE(SUM(amount_usd),0) AS s FROM funding_payments WHERE position_id = ?", [r["id"]]))["s"]
            rp = "" if r["realized_pnl_usd"] is None else f"{r['realized_pnl_usd']:,.2f}"
            eb = "" if r["entry_basis_pct"] is None else f"{r['entry_basis_pct']:.4f}"
            print(f"{r['id']:>4} {r['symbol']:6} {r['status']:10} {r['quantity']:>12g} {r['leverage']:>4g} {eb:>12} {f:>10.2f} {rp:>11}  {iso(r['opened_at'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
