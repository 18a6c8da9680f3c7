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
from pathlib import Path
from typing import Any

CLIENTS = ("claude-desktop", "claude-code", "inspector")
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


def entry(args: argparse.Namespace, db: Path, token_env: str) -> dict[str, Any]:
    """The ``mcpServers`` value for this server."""
    if args.transport == "http":
        token = os.environ.get(token_env) if args.show_token else None
        header = f"Bearer {token}" if token else f"Bearer ${{{token_env}}}"
        return {"type": "http", "url": f"http://{args.host}:{args.port}/mcp", "headers": {"Authorization": header}}
    cmd = executable()
    extra = [a for a in (args.serve_args or []) if a != "--"]
    return {"command": cmd[0], "args": cmd[1:] + ["serve", "--db", str(db.absolute()), *extra]}


def run_client_config(args: argparse.Namespace, db: Path) -> int:
    from basis_mcp.server.http import TOKEN_ENV

    if args.show_token and args.transport == "http" and not os.environ.get(TOKEN_ENV):
        print(f"basis-mcp: --show-token: ${TOKEN_ENV} is not set", file=sys.stderr)
        return 2
    e = entry(args, db, TOKEN_ENV)
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
        if args.transport == "http":
            header = e["headers"]["Authorization"]
            cmd = ["claude", "mcp", "add", "--transport", "http", args.name, e["url"], "--header", f"Authorization: {header}"]
        else:
            cmd = ["claude", "mcp", "add", args.name, "--", e["command"], *e["args"]]
        print("# run this once:", file=out)
        print(shlex.join(cmd), file=out)
        print("# or put this in the project's .mcp.json:", file=out)
        print(json.dumps(block, indent=2), file=out)
    else:
        if args.transport == "http":
            print(f"# in the Inspector: transport 'Streamable HTTP', URL {e['url']}", file=out)
            print(f"# header Authorization: {e['headers']['Authorization']}", file=out)
        else:
            print("# starts the Inspector (fetches it from npm the first time) with this server on stdio:", file=out)
            print(shlex.join(["npx", "@modelcontextprotocol/inspector", e["command"], *e["args"]]), file=out)
        print(json.dumps(block, indent=2), file=out)
    if args.show_token and args.transport == "http":
        print("basis-mcp: the output above contains the HTTP token: keep it out of shared files", file=sys.stderr)
    return 0
