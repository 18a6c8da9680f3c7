"""``basis-mcp dashboard``: the read-only dashboard of a book whose server speaks stdio (or of a
book no server runs). It reads the database file read-only (``mode=ro``) beside the server that
holds the book's lease, and never takes the lease itself.

The token is ``BASIS_MCP_HTTP_TOKEN`` when set; binding beyond loopback without one refuses to
start (`basis_mcp.server.http.check_http_safety`, as for ``serve --transport http``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from basis_mcp.audit import AuditPaths


def add_dashboard(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("dashboard", help="a read-only web dashboard of the book (for a stdio server's book; "
                                         "serve --transport http has one at /dashboard)")
    add_common(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; beyond loopback needs $BASIS_MCP_HTTP_TOKEN)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--config", type=Path, default=os.environ.get("BASIS_MCP_CONFIG"),
                   help="operator config (TOML): the margin brackets the margin ratios are read with")


def _refusal(db: Path) -> str | None:
    """Why this file cannot be shown (read-only: nothing is created, migrated or repaired), or None."""
    from basis_mcp.store import SCHEMA_VERSION

    if not db.is_file():
        return f"no database at {db} (pick the book with --market/--live/--readonly/--venue as for serve, or --db)"
    from basis_mcp.dashboard.reader import ro_uri

    try:
        conn = sqlite3.connect(ro_uri(db), uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        if not os.access(db.resolve().parent, os.W_OK):  # a served WAL book needs its -shm beside it
            return f"cannot read {db} (directory not writable: {db.resolve().parent}; SQLite needs its -shm file there) ({e})"
        return f"{db} is not a basis-mcp book ({e})"
    if row is None or not str(row[0]).isdigit():
        return f"{db} is not a basis-mcp book (no schema version)"
    if int(row[0]) > SCHEMA_VERSION:
        return f"{db} is a schema-v{row[0]} book, written by a newer basis-mcp; this version knows up to v{SCHEMA_VERSION}"
    if int(row[0]) < SCHEMA_VERSION:
        return f"{db} is a schema-v{row[0]} book: start its server once with this version to upgrade it"
    return None


def run_dashboard(args: argparse.Namespace, db: Path, paths: AuditPaths) -> int:
    import uvicorn

    from basis_mcp.config import ConfigError, load_settings
    from basis_mcp.dashboard.sources import Boards
    from basis_mcp.dashboard.web import dashboard_app
    from basis_mcp.redact import register_secret
    from basis_mcp.server.http import TOKEN_ENV, UnsafeHttp, check_http_safety

    token = os.environ.get(TOKEN_ENV) or None
    try:
        check_http_safety(args.host, token, "readonly")
    except UnsafeHttp as e:
        print(f"basis-mcp: refusing to start the dashboard: {e}", file=sys.stderr)
        return 2
    why = _refusal(db)
    if why:
        print(f"basis-mcp: {why}", file=sys.stderr)
        return 1
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"basis-mcp: {e}", file=sys.stderr)
        return 2
    if token:
        register_secret(token)
    app = dashboard_app(Boards(db=db, settings=settings, paths=paths), token, root_redirect=True,
                        host=args.host)
    auth = ("open it once with ?token=<$" + TOKEN_ENV + ">" if token
            else f"NO token required (loopback only; set {TOKEN_ENV} to require one)")
    print(f"basis-mcp: read-only dashboard of {db} at http://{args.host}:{args.port}/dashboard; {auth}", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    except KeyboardInterrupt:
        pass
    return 0
