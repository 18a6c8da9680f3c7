"""``basis-mcp client-config``: a ready ``mcpServers`` entry for this installation, with absolute paths.

Nobody should hand-edit relative paths into a client's config: the entry names the ``basis-mcp``
executable of the Python environment this command runs in, and the book's database, by absolute path.

- ``--client claude-desktop``: the JSON to merge into ``claude_desktop_config.json`` (stdio: Claude
  Desktop starts the server itself). Its location per OS is printed on stderr.
- ``--client claude-code``: the ``claude mcp add`` command line, and the same entry for a project's
  ``.mcp.json``.
- ``--client inspector``: the ``npx @modelcontextprotocol/inspector`` command line (stdio), or the URL and
  header to type into the Inspector (http).

``--transport http`` gives the URL entry of a server started with ``basis-mcp serve --transport http``,
with the ``Authorization: Bearer`` header. The token is written as ``${BASIS_MCP_HTTP_TOKEN}`` (Claude Code
expands environment variables in ``.mcp.json``) unless ``--show-token`` asks for the value itself, which
then comes from ``$BASIS_MCP_HTTP_TOKEN`` (the output then holds a secret: say so on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLIENTS = ("claude-desktop", "claude-code", "inspector")
TOKEN_ENV_NAME = "BASIS_MCP_HTTP_TOKEN"
DESKTOP_CONFIG = {
    "darwin": "~/Library/Application Support/Claude/claude_desktop_config.json",
    "win32": "%APPDATA%\\Claude\\claude_desktop_config.json",
    "linux": "~/.config/Claude/claude_desktop_config.json",
}


def add_client_config(sub: Any) -> None:
    p = sub.add_parser("client-config", help="print a ready mcpServers entry (absolute paths) for Claude Desktop, "
                                             "Claude Code or the MCP Inspector")
    p.add_argument("--client", choices=CLIENTS, default="claude-desktop", help="which client the entry is for "
                   "(default claude-desktop)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (default): the client starts the server; http: the client connects to a running "
                        "`basis-mcp serve --transport http`")
    p.add_argument("--name", default="basis-mcp", metavar="NAME", help="the server's name in the client (default basis-mcp)")
    p.add_argument("--db", type=Path, default=None, metavar="PATH",
                   help="the book (default: the replay book in the user data dir, or $BASIS_MCP_DB)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS", help="http: the server's address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, metavar="PORT", help="http: the server's port (default 8765)")
    p.add_argument("--show-token", action="store_true",
                   help="http: write the value of $BASIS_MCP_HTTP_TOKEN into the header instead of a reference to it")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="-- SERVE-ARGS",
                   help="stdio: extra arguments for `serve` after --, e.g. -- --start 2025-06-01")


def executable() -> list[str]:
    """How to start this installation's server: the ``basis-mcp`` script beside this Python, else
    ``python -m basis_mcp``, by absolute path."""
    here = Path(sys.executable).resolve().parent
    for name in ("basis-mcp", "basis-mcp.exe"):
        script = Path(sys.executable).parent / name
        if script.is_file():
            return [str(script.absolute())]
        if (here / name).is_file():
            return [str((here / name).absolute())]
    found = shutil.which("basis-mcp")
    return [str(Path(found).absolute())] if found else [str(Path(sys.executable).absolute()), "-m", "basis_mcp"]


def url(host: str, port: int) -> str:
    """``http://host:port/mcp``, an IPv6 address in brackets."""
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return f"http://{shown}:{port}/mcp"


def book_for(serve_args: list[str], default_db: Path | None,
             book_of: Callable[[argparse.Namespace], Path]) -> Path | None:
    """The book ``serve`` with these arguments opens (None: they name it with --db themselves): the flags that
    pick a book (--market, --live, --readonly, --venue) give what ``book_of`` (the CLI's own rule) says."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db")
    p.add_argument("--market", default="replay")
    p.add_argument("--venue", default="binance")
    p.add_argument("--live", action="store_true")
    p.add_argument("--readonly", action="store_true")
    known, _ = p.parse_known_args(serve_args)
    if known.db:
        return None
    return default_db if default_db is not None else book_of(known)


def entry(args: argparse.Namespace, db: Path | None, token_env: str,
          book_of: Callable[[argparse.Namespace], Path]) -> dict[str, Any]:
    """The ``mcpServers`` value for this server."""
    if args.transport == "http":
        token = os.environ.get(token_env) if args.show_token else None
        header = f"Bearer {token}" if token else f"Bearer ${{{token_env}}}"
        return {"type": "http", "url": url(args.host, args.port), "headers": {"Authorization": header}}
    cmd = executable()
    extra = [a for a in (args.serve_args or []) if a != "--"]
    book = book_for(extra, db, book_of)
    return {"command": cmd[0], "args": cmd[1:] + ["serve", *(["--db", str(book.absolute())] if book else []), *extra]}


def run_client_config(args: argparse.Namespace, db: Path | None, book_of: Callable[[argparse.Namespace], Path]) -> int:
    """Print the entry; ``db`` is --db if given, ``book_of`` the CLI's rule for the default book of serve's flags."""
    from basis_mcp.server.http import TOKEN_ENV

    if args.show_token and args.transport == "http" and not os.environ.get(TOKEN_ENV):
        print(f"basis-mcp: --show-token: ${TOKEN_ENV} is not set", file=sys.stderr)
        return 2
    e = entry(args, db, TOKEN_ENV, book_of)
    block = {"mcpServers": {args.name: e}}
    out = sys.stdout
    if args.client == "claude-desktop":
        if args.transport == "http":
            print("basis-mcp: Claude Desktop starts local servers over stdio; use --transport stdio (the default) for "
                  "it. The http entry below is for clients that speak streamable HTTP.", file=sys.stderr)
        where = DESKTOP_CONFIG.get(sys.platform, DESKTOP_CONFIG["linux"])
        print(f"basis-mcp: merge this into {where} (then restart Claude Desktop)", file=sys.stderr)
        print(json.dumps(block, indent=2), file=out)
    elif args.client == "claude-code":
        print("# run this once:", file=out)
        if args.transport == "http":  # the shell fills the token in from the environment: never typed, never in history
            print(shlex.join(["claude", "mcp", "add", "--transport", "http", args.name, e["url"], "--header"])
                  + f' "Authorization: Bearer ${TOKEN_ENV_NAME}"', file=out)
        else:
            print(shlex.join(["claude", "mcp", "add", args.name, "--", e["command"], *e["args"]]), file=out)
        print("# or put this in the project's .mcp.json:", file=out)
        print(json.dumps(block, indent=2), file=out)
    else:
        if args.transport == "http":
            print(f"# in the Inspector: transport 'Streamable HTTP', URL {e['url']}", file=out)
            shown = e["headers"]["Authorization"] if args.show_token else "Bearer <the value of $BASIS_MCP_HTTP_TOKEN>"
            print(f"# header Authorization: {shown}", file=out)
        else:
            print("# starts the Inspector (fetches it from npm the first time) with this server on stdio:", file=out)
            print(shlex.join(["npx", "@modelcontextprotocol/inspector", e["command"], *e["args"]]), file=out)
        print(json.dumps(block, indent=2), file=out)
    if args.show_token and args.transport == "http":
        print("basis-mcp: the output above contains the HTTP token: keep it out of shared files", file=sys.stderr)
    return 0
