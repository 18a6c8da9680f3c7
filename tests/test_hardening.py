"""Hardening: each attack from the review, reproduced, and shown to fail now.

One writer per book, an audit log that cannot be rewritten quietly, redaction of every
credential-looking name, bounded audit rows, secrets scrubbed in every encoding, safe HTTP
defaults, strict inputs, every call audited even when it dies, and a busy database that
answers within seconds with nothing done.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from basis_mcp.audit import AuditPaths, legacy_hash, row_hash
from basis_mcp.redact import bound_args, looks_like_credential, mask_credentials, register_secret, scrub
from tests.conftest import REPO, call, call_error, db_rows, stdio_params

pytestmark = pytest.mark.anyio


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "basis_mcp", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ============================================================================ 1. one writer per book


async def test_six_servers_on_one_book_exactly_one_serves_and_the_caps_hold(tmp_path: Path) -> None:
    db = tmp_path / "book.db"
    logs = [tmp_path / f"server{i}.log" for i in range(6)]
    results: list[str] = [""] * 6

    async def one(i: int) -> None:
        with open(logs[i], "w") as errlog:
            try:
                async with Client(stdio_client(stdio_params(db), errlog=errlog)) as client:
                    # every client that got a server tries to take the whole anchor budget in BTC
                    for k in range(3):
                        r = await client.call_tool("enter_trade", {"symbol": "BTC", "notional_usd": 5000,
                                                                   "idempotency_key": f"race-{i}-{k}"})
                        results[i] += "E" if r.is_error else "O"
                    await anyio.sleep(3)  # keep serving while the others fail and the CLI reads beside us
                    st = cli("status", "--db", str(db))
                    ver = cli("audit", "verify", "--db", str(db))
                    results[i] += f"|status={st.returncode}|verify={ver.returncode}"
            except Exception as e:  # noqa: BLE001 - a refused server closes the pipe: the client errors
                results[i] = f"refused: {type(e).__name__}"

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, i)

    served = [r for r in results if not r.startswith("refused")]
    assert len(served) == 1, results
    assert served[0].startswith("OEE") and served[0].endswith("|status=0|verify=0"), served[0]
    messages = [p.read_text() for p in logs]
    refused = [m for m in messages if "cannot start" in m]
    assert len(refused) == 5, messages
    for m in refused:
        assert "is already served by pid" in m and "since 20" in m and "transport stdio" in m, m
    pids = {m.split("served by pid ")[1].split()[0] for m in refused}
    assert len(pids) == 1, pids  # every refusal names the same holder
    positions = db_rows(db, "SELECT symbol, status FROM positions")
    assert positions == [] or [tuple(p) for p in positions] == [("BTC", "open")]
    assert len(positions) == 1


def test_a_second_server_names_the_holder_and_a_killed_holder_frees_the_book(tmp_path: Path) -> None:
    db = tmp_path / "book.db"
    first = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lease = db.with_name("book.db.lease")
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (lease.exists() and lease.read_text().strip()):
            time.sleep(0.1)
        time.sleep(1.0)
        second = cli("serve", "--db", str(db), "--transport", "http", "--port", "0", timeout=60)
        assert second.returncode == 3, second.stderr
        assert f"served by pid {first.pid} since" in second.stderr and "transport stdio" in second.stderr
        # operator commands work beside the running server
        assert cli("status", "--db", str(db)).returncode == 0
        assert cli("halt", "--db", str(db), "--reason", "operator check").returncode == 0
        assert cli("resume", "--db", str(db), "--reason", "all fine").returncode == 0
        assert cli("audit", "verify", "--db", str(db)).returncode == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # the kernel dropped the lock with the process: a new server starts at once, no stale lease
    third = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(4)
        assert third.poll() is None, third.stderr.read().decode() if third.stderr else ""
    finally:
        third.kill()
        third.wait(timeout=10)


async def test_a_second_desk_in_the_same_process_is_refused(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "risk_status")
        with pytest.raises(Exception):  # noqa: B017 - the lifespan fails: the client cannot connect
            async with Client(make_server()) as other:
                await call(other, "risk_status")
        await call(client, "risk_status")  # the first one is unaffected


# ============================================================================ 2. the audit log


async def _activity(make_server) -> None:
    async with Client(make_server()) as client:
        await call(client, "scan_basis", {})
        await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": -1, "idempotency_key": "a"})
        e = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "a1"})
        await call(client, "advance_time", {"hours": 3})
        await call(client, "exit_trade", {"position_id": e["position"]["position_id"], "idempotency_key": "a1-x"})
        await call(client, "risk_status", {})


def _copy_book(db: Path, dest: Path) -> tuple[Path, Path]:
    """A copy of the book and its journal; the key stays where it is (the operator's copy)."""
    dest.mkdir()
    src = sqlite3.connect(db)
    dst = sqlite3.connect(dest / db.name)
    src.backup(dst)
    src.close()
    dst.close()
    shutil.copy(AuditPaths.for_db(db).journal, dest / (db.name + ".audit-journal"))
    return dest / db.name, dest / (db.name + ".audit-journal")


def _verify(db: Path, key: Path, journal: Path | None = None) -> subprocess.CompletedProcess:
    args = ["audit", "verify", "--db", str(db), "--audit-key", str(key)]
    if journal is not None:
        args += ["--audit-journal", str(journal)]
    return cli(*args)


def _rehash(conn: sqlite3.Connection, key: bytes | None) -> None:
    """What an attacker does after editing: recompute every hash (with a key of their own, or none)."""
    prev = "0" * 64
    fields = ("id", "ts", "market_ts", "kind", "name", "args_json", "outcome", "detail", "duration_ms")
    for r in conn.execute(f"SELECT {', '.join(fields)} FROM audit ORDER BY id").fetchall():
        row = dict(zip(fields, r, strict=True))
        h = legacy_hash(prev, row) if key is None else row_hash(key, prev, row)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, row["id"]))
        prev = h
    conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{r[0]}:{prev}",))


async def test_audit_verify_detects_every_rewrite(make_server, db: Path, tmp_path: Path) -> None:
    await _activity(make_server)
    key = AuditPaths.for_db(db).key
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    ok = _verify(db, key)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout + ok.stderr
    n = db_rows(db, "SELECT COUNT(*) AS n FROM audit")[0]["n"]
    assert n > 15

    cases = {
        "edited row": ("UPDATE audit SET outcome = 'ok' WHERE outcome = 'rejected'", "edited"),
        "edited arguments": ("UPDATE audit SET args_json = '{}' WHERE id = 3", "edited"),
        "deleted row": ("DELETE FROM audit WHERE id = 4", "deleted or inserted"),
        "inserted row": ("UPDATE audit SET id = id + 1000 WHERE id >= 5; INSERT INTO audit SELECT 5, ts, market_ts, kind, "
                         "name, args_json, outcome, detail, duration_ms, prev_hash, hash FROM audit WHERE id = 1004; "
                         "UPDATE audit SET id = id - 999 WHERE id >= 1005", "deleted or inserted"),
        "truncated tail": (f"DELETE FROM audit WHERE id > {n - 3}", "cut from the end"),
        "truncated tail, head rewritten": (
            f"DELETE FROM audit WHERE id > {n - 3}; UPDATE meta SET value = '{n - 3}:' || "
            f"(SELECT hash FROM audit WHERE id = {n - 3}) WHERE key = 'audit_head'", "cut from the end"),
        "emptied table": ("DELETE FROM audit; DELETE FROM meta WHERE key = 'audit_head'", "empty"),
        "dropped table": ("DROP TABLE audit", "dropped"),
    }
    for i, (name, (sql, expect)) in enumerate(cases.items()):
        copy, journal = _copy_book(db, tmp_path / f"case{i}")
        conn = sqlite3.connect(copy)
        conn.executescript(sql)
        conn.commit()
        conn.close()
        r = _verify(copy, key, journal)
        assert r.returncode == 1 and r.stdout.startswith("TAMPERED"), f"{name}: {r.stdout}"
        assert expect in r.stdout, f"{name}: {r.stdout}"

    # an edit followed by recomputing the whole chain: without the key, with no key, or with the attacker's own key
    for i, attacker_key in enumerate([None, os.urandom(32)]):
        copy, journal = _copy_book(db, tmp_path / f"rehash{i}")
        conn = sqlite3.connect(copy)
        conn.execute("UPDATE audit SET detail = 'nothing to see' WHERE outcome = 'rejected'")
        _rehash(conn, attacker_key)
        conn.commit()
        conn.close()
        r = _verify(copy, key, journal)
        assert r.returncode == 1 and "without the key" in r.stdout, r.stdout
    # ... even when they also forge the journal with their key: the operator's key (kept elsewhere) says no
    copy, journal = _copy_book(db, tmp_path / "forged")
    conn = sqlite3.connect(copy)
    fake = os.urandom(32)
    _rehash(conn, fake)
    conn.commit()
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    conn.close()
    from basis_mcp.audit import Journal

    journal.unlink()
    Journal(journal, fake).append(last[0], last[1])
    r = _verify(copy, key, journal)
    assert r.returncode == 1 and "MAC" in r.stdout, r.stdout

    # the journal itself: missing, or a line edited
    copy, journal = _copy_book(db, tmp_path / "nojournal")
    journal.unlink()
    r = _verify(copy, key, journal)
    assert r.returncode == 1 and "journal" in r.stdout and "missing" in r.stdout, r.stdout
    copy, journal = _copy_book(db, tmp_path / "editedjournal")
    lines = journal.read_text().splitlines()
    c = json.loads(lines[2])
    c["n"] += 1
    lines[2] = json.dumps(c)
    journal.write_text("\n".join(lines) + "\n")
    r = _verify(copy, key, journal)
    assert r.returncode == 1 and "line 3" in r.stdout, r.stdout
    # no key, no verdict
    r = _verify(db, tmp_path / "nokey")
    assert r.returncode == 1 and "no audit key" in r.stdout


async def test_an_untouched_book_verifies_after_restarts_and_a_kill_mid_call(db: Path, tmp_path: Path) -> None:
    for _ in range(2):  # two clean starts and stops
        async with Client(stdio_params(db)) as client:
            await call(client, "enter_trade", {"symbol": "ETH", "notional_usd": 2000, "idempotency_key": f"r{_}"}) if _ == 0 \
                else await call(client, "risk_status")
    params = stdio_params(db)
    with open(tmp_path / "err.log", "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            async def long_replay() -> None:
                with contextlib.suppress(Exception):  # the server dies under it
                    await client.call_tool("advance_time", {"hours": 2200})

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_replay)
                with anyio.fail_after(30):  # kill it as soon as the call has started
                    while not db_rows(db, "SELECT 1 FROM audit WHERE name = 'advance_time' AND outcome = 'started'"):
                        await anyio.sleep(0.02)
                from tests.conftest import kill9

                kill9(db)
                await anyio.sleep(0.5)
                tg.cancel_scope.cancel()
    r = cli("audit", "verify", "--db", str(db))
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout
    assert "started without a recorded outcome" in r.stdout and "advance_time" in r.stdout, r.stdout
    # the server comes back on the same book, and the chain still verifies
    async with Client(stdio_params(db)) as client:
        await call(client, "portfolio_status")
    assert cli("audit", "verify", "--db", str(db)).returncode == 0


# ============================================================================ 3. redaction


CREDENTIAL_NAMES = ["token", "access_token", "authorization", "key", "credentials", "passwd", "private",
                    "confirmation_token", "Api-Key", "API_KEY", "apiKey", "X-Api-Key", "accessToken", "PRIVATE_KEY",
                    "password", "client_secret", "Passphrase", "sessionId", "bearer", "privKey", "secretKey"]


def test_credential_names_are_recognised_in_any_case_and_separator() -> None:
    for name in CREDENTIAL_NAMES:
        assert looks_like_credential(name), name
    for name in ["symbol", "notional_usd", "idempotency_key", "leverage", "position_id", "hours", "reason", "window",
                 "include_closed", "expected_hold_days", "funding_rate_8h_pct", "target_notional_usd", "start", "end",
                 "venues", "chart", "strategy", "days", "zscore_window", "exit_basis_pct"]:
        assert not looks_like_credential(name), name
    nested = {"a": [{"b": {"Client-Secret": "x1", "ok": 1}}], "auth": {"user": "u"}, "deep": {"deeper": {"APIKEY": "x2"}}}
    assert mask_credentials(nested) == {"a": [{"b": {"Client-Secret": "***", "ok": 1}}], "auth": "***",
                                        "deep": {"deeper": {"APIKEY": "***"}}}


async def test_credential_looking_arguments_are_masked_in_the_audit_and_never_echoed(make_server, db: Path) -> None:
    secret = "hunter2-S3CRET-value"
    async with Client(make_server()) as client:
        for name in CREDENTIAL_NAMES:
            if name == "confirmation_token":  # a real argument of enter_trade: refused here only for its value below
                continue
            text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "k",
                                                            name: secret})
            assert secret not in text
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "k",
                                                        "options": {"nested": [{"Client_Secret": secret}]}})
        assert secret not in text
        text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": "k",
                                                        "confirmation_token": secret + " with a space"})
        assert secret not in text and "confirmation_token=***" in text
        text = await call_error(client, "exit_trade", {"position_id": 7, "idempotency_key": "x",
                                                       "confirmation_token": "Hunter2S3CRETvalue"})
        assert "Hunter2S3CRETvalue" not in text
    everything = "\n".join(str(tuple(r)) for r in db_rows(db, "SELECT * FROM audit"))
    assert secret not in everything
    assert secret not in AuditPaths.for_db(db).journal.read_text()
    rows = db_rows(db, "SELECT args_json FROM audit WHERE kind = 'tool' AND outcome = 'rejected'")
    stored = [json.loads(r["args_json"]) for r in rows]
    for name in CREDENTIAL_NAMES:
        assert any(s.get(name) == "***" for s in stored), name
    assert any(s.get("options") == {"nested": [{"Client_Secret": "***"}]} for s in stored)
    assert "hunter2" not in db.read_bytes().decode("latin-1").lower()


# ============================================================================ 4. bounded audit rows


async def test_a_twenty_megabyte_argument_costs_the_book_a_few_hundred_bytes(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "risk_status")
        before = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
        for i in range(2):
            huge_name = chr(ord("a") + i) * 20_000_000
            text = await call_error(client, "scan_basis", {huge_name: 1})
            assert "bytes of JSON" in text and len(text) < 400
            text = await call_error(client, "halt_trading", {"reason": "x" * 20_000_000})
            assert len(text) < 400
        await call(client, "risk_status")
    after = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    assert after - before < 200_000, after - before  # WAL pages included; the arguments were 80 MB
    rows = db_rows(db, "SELECT args_json FROM audit WHERE outcome = 'rejected'")
    assert len(rows) == 4
    for r in rows:
        assert len(r["args_json"]) < 9_000
        a = json.loads(r["args_json"])
        assert a["_args_bytes"] > 20_000_000 and len(a["_args_sha256"]) == 64


def test_bound_args_keeps_small_arguments_whole_and_hashes_what_it_cuts() -> None:
    small = {"symbol": "BTC", "notional_usd": 5000}
    assert bound_args(small) == small
    big = {"k" * 100: ["v" * 1000] * 200, "ok": 1}
    out = bound_args(big)
    assert "_args_sha256" in out and out["_args_bytes"] > 200_000 and len(json.dumps(out)) < 9_000
    medium = {"n" * 100: 1, "ok": 2}
    out = bound_args(medium)
    assert out["ok"] == 2 and ("n" * 64 + "…") in out and "_args_sha256" in out


# ============================================================================ 5. secrets in any encoding


def test_scrub_removes_a_secret_in_every_common_encoding() -> None:
    secret = "Zq9/+sEcReT=&k3y!\"é"
    register_secret(secret)
    forms = [
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(urllib.parse.quote(secret, safe=""), safe=""),
        urllib.parse.quote(secret, safe="").lower(),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        "".join(f"\\u{ord(c):04x}" for c in secret),
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode(),
        base64.b64encode(b"user:" + secret.encode()).decode(),  # HTTP basic auth
        base64.b64encode(b"xy" + secret.encode() + b"tail").decode(),
        secret.encode().hex(),
    ]
    for f in forms:
        text = f"venue said: error near '{f}' in request"
        out = scrub(text)
        assert f not in out and "***" in out, (f, out)
    assert scrub("https://api.example.com/order?signature=abc&timestamp=1 failed") == "https://api.example.com/order?… failed"


async def test_a_venue_echoing_the_key_encoded_never_reaches_the_agent_the_audit_or_the_book(db: Path, tmp_path: Path) -> None:
    from basis_mcp.sim.binance import running_sim

    key, secret = "sim-key-7f3a9c2e41/+=", "sim-secret-b8d04e6a15c2"
    echoes = " ".join([urllib.parse.quote(key, safe=""), json.dumps(key)[1:-1].replace("/", "\\/"),
                       base64.b64encode(f"{key}:{secret}".encode()).decode(), urllib.parse.quote_plus(secret)])
    with running_sim(start="2024-03-15T01:00:00Z", api_key=key, secret=secret) as sim:
        env = {"BASIS_MCP_VENUE_URL": sim.url, "BINANCE_API_KEY": key, "BINANCE_API_SECRET": secret}
        seen = []
        with open(tmp_path / "err.log", "w") as errlog:
            async with Client(stdio_client(stdio_params(db, "--market", "live", "--live", env=env), errlog=errlog)) as client:
                sim.state.faults.reject_next = 2
                sim.state.faults.reject_msg = f"Invalid API-key {echoes}"
                for k in range(2):
                    r = await client.call_tool("enter_trade", {"symbol": "BTC", "notional_usd": 4000, "idempotency_key": f"e{k}"})
                    seen.append(json.dumps(r.model_dump(mode="json")))
                    if not r.is_error and r.structured_content and r.structured_content.get("confirmation"):
                        tok = r.structured_content["confirmation"]["token"]
                        r = await client.call_tool("enter_trade", {"symbol": "BTC", "notional_usd": 4000,
                                                                   "idempotency_key": f"e{k}", "confirmation_token": tok})
                        seen.append(json.dumps(r.model_dump(mode="json")))
                r = await client.call_tool("portfolio_status", {"include_closed": 5})
                seen.append(json.dumps(r.model_dump(mode="json")))
    assert "Invalid API-key" in "\n".join(seen) or "rejected" in "\n".join(seen)
    blobs = {
        "agent": "\n".join(seen),
        "log": (tmp_path / "err.log").read_text(),
        "database": b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*")).decode("latin-1"),
    }
    for where, text in blobs.items():
        for form in echoes.split(" ") + [key, secret]:
            assert form not in text, f"{form!r} reached the {where}"


# ============================================================================ 6. safe network defaults


def test_http_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BASIS_MCP_HTTP_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "basis_mcp", "serve", "--transport", "http", "--host", "0.0.0.0",
                        "--db", str(tmp_path / "a.db")], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert r.returncode == 2 and "refusing to start" in r.stderr and "BASIS_MCP_HTTP_TOKEN" in r.stderr
    assert not (tmp_path / "a.db").exists()  # nothing was opened
    r = subprocess.run([sys.executable, "-m", "basis_mcp", "serve", "--transport", "http", "--market", "live", "--live",
                        "--db", str(tmp_path / "b.db")], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert r.returncode == 2 and "live trading over HTTP always needs a token" in r.stderr
    r = subprocess.run([sys.executable, "-m", "basis_mcp", "serve", "--transport", "http", "--host", "0.0.0.0",
                        "--db", str(tmp_path / "c.db")], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={**env, "BASIS_MCP_HTTP_TOKEN": "short"})
    assert r.returncode == 2 and "at least 16" in r.stderr


def test_mcp_json_shows_the_token_header() -> None:
    cfg = json.loads((REPO / "mcp.json").read_text())
    http = [s for s in cfg["mcpServers"].values() if s.get("type") in ("http", "streamable-http") or "url" in s]
    assert http and http[0]["headers"]["Authorization"].startswith("Bearer ")


# ============================================================================ 7. strict inputs


@pytest.mark.parametrize(
    ("tool", "args", "field", "as_sent", "rule"),
    [
        ("enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "s1", "leverage": True}, "leverage",
         "true", "JSON number"),
        ("enter_trade", {"symbol": "BTC", "notional_usd": "5000", "idempotency_key": "s1"}, "notional_usd", '"5000"',
         "JSON number"),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "s1", "leverage": " 3 "}, "leverage",
         '" 3 "', "JSON number"),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "s1", "leverage": "3_0"}, "leverage",
         '"3_0"', "JSON number"),
        ("enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "s1", "leverage": 5.0000001},
         "leverage", "5.0000001", "hard ceiling"),
        ("enter_trade", {"symbol": " BTC ", "notional_usd": 3000, "idempotency_key": "s1"}, "symbol", '" BTC "', "pattern"),
        ("halt_trading", {"reason": "stop\u0000now"}, "reason", '"stop\\u0000now"', "control"),
        ("halt_trading", {"reason": "safe \u202egnirts"}, "reason", '"safe \\u202egnirts"', "invisible"),
        ("halt_trading", {"reason": "zero\u200bwidth"}, "reason", '"zero\\u200bwidth"', "invisible"),
        ("compute_zscore", {"symbol": "BTC", "window": "1080"}, "window", '"1080"', "whole JSON number"),
        ("compute_zscore", {"symbol": "BTC", "window": True}, "window", "true", "whole JSON number"),
        ("portfolio_status", {"include_closed": 2.5}, "include_closed", "2.5", "whole JSON number"),
        ("exit_trade", {"position_id": "1", "idempotency_key": "x"}, "position_id", '"1"', "whole JSON number"),
        ("advance_time", {"hours": "24"}, "hours", '"24"', "JSON number"),
    ],
)
async def test_strict_inputs_refuse_and_quote_the_value_as_sent(make_server, db: Path, tool, args, field, as_sent, rule) -> None:
    async with Client(make_server()) as client:
        text = await call_error(client, tool, args)
        await call(client, "risk_status")
    assert f"{field}={as_sent}" in text and rule in text, text
    assert "\u0000" not in text and "\u202e" not in text and "\u200b" not in text
    assert db_rows(db, "SELECT COUNT(*) AS n FROM positions")[0]["n"] == 0
    state = db_rows(db, "SELECT value FROM meta WHERE key = 'trading_state'")
    assert not state or state[0]["value"] == "ACTIVE"
    stored = "\n".join(r["detail"] or "" for r in db_rows(db, "SELECT detail FROM audit"))
    assert "\u0000" not in stored and "\u202e" not in stored


async def test_whole_numbers_sent_as_3_0_are_fine(make_server) -> None:
    async with Client(make_server()) as client:
        z = await call(client, "compute_zscore", {"symbol": "BTC", "window": 1080.0})
        assert z["window"] == 1080


# ============================================================================ 8. every call audited


def _rpc(proc: subprocess.Popen, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write((line + "\n").encode())
    proc.stdin.flush()


def _read_reply(proc: subprocess.Popen, want_id: int, timeout: float = 30) -> dict:
    assert proc.stdout is not None
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg.get("id") == want_id:
            return msg
    raise AssertionError(f"no reply {want_id}")


def test_malformed_messages_are_audited_as_rejected(db: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}))
        _read_reply(proc, 1)
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        _rpc(proc, "{this is not json")
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"arguments": {"x": 1}}}))
        reply = _read_reply(proc, 2)
        assert "error" in reply
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "no_such_tool"}}))
        _read_reply(proc, 3)
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "risk_status"}}))
        ok = _read_reply(proc, 4)
        assert ok["result"]["isError"] is False
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
    rows = db_rows(db, "SELECT kind, name, outcome, detail FROM audit WHERE kind IN ('tool', 'transport') ORDER BY id")
    got = [(r["kind"], r["name"], r["outcome"]) for r in rows]
    assert ("transport", "(unparseable message)", "rejected") in got
    assert ("tool", "(no tool name)", "rejected") in got
    assert ("tool", "no_such_tool", "rejected") in got
    assert got[-2:] == [("tool", "risk_status", "started"), ("tool", "risk_status", "ok")]
    assert cli("audit", "verify", "--db", str(db)).returncode == 0


async def test_each_call_has_a_start_row_and_an_outcome_row(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "scan_basis", {"symbols": ["BTC"]})
        await call_error(client, "exit_trade", {"position_id": 99, "idempotency_key": "zz"})
    rows = db_rows(db, "SELECT id, name, outcome, args_json, duration_ms FROM audit WHERE kind = 'tool' ORDER BY id")
    assert [(r["name"], r["outcome"]) for r in rows] == [("scan_basis", "started"), ("scan_basis", "ok"),
                                                         ("exit_trade", "started"), ("exit_trade", "error")]
    assert json.loads(rows[0]["args_json"]) == {"symbols": ["BTC"]}
    assert json.loads(rows[1]["args_json"]) == {"call": rows[0]["id"]} and rows[1]["duration_ms"] >= 0


# ============================================================================ 9. responsiveness


async def test_a_locked_database_gives_a_clear_error_within_seconds_and_nothing_is_traded(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "risk_status")
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process (a DB browser, a backup) holds the write lock
        try:
            t0 = time.monotonic()
            text = await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "busy-1"})
            took = time.monotonic() - t0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert took < 8, took
        assert "locked by another process" in text and "nothing was done" in text and "idempotency_key" in text
        assert "Error executing tool" not in text or "locked" in text
        assert db_rows(db, "SELECT COUNT(*) AS n FROM positions")[0]["n"] == 0
        # safe to retry with the same key once the lock is gone
        ok = await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "busy-1"})
        assert ok["position"]["status"] == "open"


async def test_risk_status_is_served_while_a_long_replay_runs(make_server) -> None:
    async with Client(make_server()) as client:
        await call(client, "enter_trade", {"symbol": "BTC", "notional_usd": 3000, "idempotency_key": "long-1"})
        done: list[str] = []

        async def replay() -> None:
            await call(client, "advance_time", {"hours": 1500})
            done.append("advance")

        async with anyio.create_task_group() as tg:
            tg.start_soon(replay)
            await anyio.sleep(0.3)
            for _ in range(3):
                await call(client, "risk_status")
                done.append("risk")
        assert done[:3] == ["risk", "risk", "risk"] and done[-1] == "advance", done


# ============================================================================ the second attack review


async def test_a_book_faked_back_to_v1_does_not_pass_for_an_unkeyed_one(make_server, db: Path, tmp_path: Path) -> None:
    await _activity(make_server)
    key_copy = tmp_path / "operator-key"  # the operator's copy, kept elsewhere
    shutil.copy(AuditPaths.for_db(db).key, key_copy)
    copy, journal = _copy_book(db, tmp_path / "fake")
    conn = sqlite3.connect(copy)
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.execute("DROP TABLE schema_migrations")
    conn.execute("UPDATE audit SET detail = 'nothing happened' WHERE outcome = 'rejected'")
    _rehash(conn, None)  # an internally consistent unkeyed chain
    conn.commit()
    conn.close()
    journal.unlink()
    r = _verify(copy, key_copy, journal)  # with the operator's key, the unkeyed chain is a rewritten one
    assert r.returncode == 1 and "not keyed" in r.stdout, r.stdout
    # and the server will not "upgrade" a v1 book that has a journal (a v1 book never had one)
    copy2, journal2 = _copy_book(db, tmp_path / "fake2")
    conn = sqlite3.connect(copy2)
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    r = cli("status", "--db", str(copy2))  # status only reads
    assert r.returncode == 0
    r = cli("halt", "--db", str(copy2), "--audit-key", str(key_copy), "--audit-journal", str(journal2))
    assert r.returncode == 1 and "never had one" in r.stderr, r.stderr


async def test_an_emptied_or_replaced_journal_is_not_ok(make_server, db: Path, tmp_path: Path) -> None:
    await _activity(make_server)
    key = AuditPaths.for_db(db).key
    for i, content in enumerate(["", "garbage\n"]):
        copy, journal = _copy_book(db, tmp_path / f"j{i}")
        conn = sqlite3.connect(copy)
        conn.execute("DELETE FROM audit WHERE id > 1")
        conn.commit()
        conn.close()
        journal.write_text(content)
        r = _verify(copy, key, journal)
        assert r.returncode == 1 and "no valid checkpoint" in r.stdout, r.stdout
    # a journal deleted under a book with rows is reported at the next start, not silently restarted
    AuditPaths.for_db(db).journal.unlink()
    async with Client(make_server()) as client:
        risk = await call(client, "risk_status")
        assert any(a["rule"] == "audit_tampered" and "missing" in a["message"] for a in risk["alerts"]), risk["alerts"]


def test_a_torn_journal_line_is_a_note_and_the_next_line_starts_fresh(tmp_path: Path) -> None:
    from basis_mcp.audit import Journal, Verdict, _read_journal

    path = tmp_path / "j"
    key = os.urandom(32)
    j = Journal(path, key)
    j.append(1, "a" * 64)
    j.close()
    with open(path, "a") as fh:
        fh.write('{"n":2,"head":"ab')  # a full disk cut this one short
    j = Journal(path, key)
    j.append(2, "b" * 64)
    j.close()
    v = Verdict(ok=False)
    got = _read_journal(path, key, v)
    assert [(n, h[0]) for _, n, h in got] == [(1, "a"), (2, "b")] and not v.problems
    assert any("torn" in note for note in v.notes)


async def test_a_journal_that_cannot_be_written_raises_an_alert_not_an_error(make_server, monkeypatch) -> None:
    import basis_mcp.audit as audit_mod

    async with Client(make_server()) as client:
        await call(client, "risk_status")

        def full_disk(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(audit_mod, "_os_write", full_disk)
        risk = await call(client, "halt_trading", {"reason": "disk is full, stop"})
        assert risk["trading_state"] == "HALTED"  # the kill switch works whatever the journal's disk says
        assert any(a["rule"] == "audit_journal_failed" for a in risk["alerts"]), risk["alerts"]
        monkeypatch.setattr(audit_mod, "_os_write", os.write)
        await call(client, "risk_status")


def test_a_symlink_or_hard_link_to_a_served_book_is_the_same_book(tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    first = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lease = db.with_name("real.db.lease")
        deadline = time.time() + 60
        while time.time() < deadline and not (lease.exists() and lease.read_text().strip()):
            time.sleep(0.1)
        (tmp_path / "link.db").symlink_to(db)
        os.link(db, tmp_path / "hard.db")
        lease.unlink()  # a careless operator deletes the lease file: the lock is on the book itself
        for other in ("link.db", "hard.db", "real.db"):
            r = cli("serve", "--db", str(tmp_path / other), timeout=60)
            assert r.returncode == 3 and "already served" in r.stderr, (other, r.stderr)
    finally:
        first.kill()
        first.wait(timeout=10)


async def test_credential_values_inside_other_arguments_are_never_echoed(make_server, db: Path) -> None:
    secret = "SUPERSECRET-7f3a9cE"
    async with Client(make_server()) as client:
        for tool, args in [
            ("scan_basis", {"symbols": [{"api_key": secret}]}),
            ("halt_trading", {"reason": {"password": secret}}),
            ("compute_zscore", {"symbol": ["token", secret, {"x": f"api_key={secret}"}]}),
            ("enter_trade", {"symbol": "BTC", "notional_usd": 1000, "idempotency_key": {"secret": secret}}),
            ("scan_basis", {"symbols": [f"wss://x/?apikey={secret}"]}),
            ("scan_basis", {"passcode": secret, "tоken": secret, "pin_code": secret, "xprv": secret}),
        ]:
            text = await call_error(client, tool, args)
            assert secret not in text, (tool, text)
    everything = "\n".join(str(tuple(r)) for r in db_rows(db, "SELECT * FROM audit"))
    assert secret not in everything


async def test_a_tools_call_sent_as_a_notification_is_audited_as_not_run(db: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "basis_mcp", "serve", "--db", str(db)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}))
        _read_reply(proc, 1)
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "method": "tools/call",
                               "params": {"name": "halt_trading", "arguments": {"reason": "notif"}}}))
        _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "risk_status"}}))
        ok = _read_reply(proc, 2)
        assert ok["result"]["structuredContent"]["trading_state"] == "ACTIVE"
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
    rows = db_rows(db, "SELECT name, outcome, detail FROM audit WHERE name = 'halt_trading'")
    assert [(r["name"], r["outcome"]) for r in rows] == [("halt_trading", "rejected")]
    assert "notification" in rows[0]["detail"]


async def test_a_bad_call_under_a_foreign_lock_does_not_freeze_the_server(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call(client, "risk_status")
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            t0 = time.monotonic()
            await call_error(client, "enter_trade", {"symbol": "BTC", "notional_usd": "3000", "idempotency_key": "b1"})
            under_lock = await call(client, "risk_status")  # a read answers (WAL readers are not blocked); its rows queue
            took = time.monotonic() - t0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert took < 8, took
        assert under_lock["trading_state"] == "ACTIVE"
        await call(client, "risk_status")  # the queued rows land now, in order, before this call's
    rows = [tuple(r) for r in db_rows(db, "SELECT name, outcome FROM audit WHERE kind = 'tool' ORDER BY id")]
    assert ("enter_trade", "rejected") in rows
    assert rows[-5:] == [("enter_trade", "rejected"), ("risk_status", "started"), ("risk_status", "ok"),
                         ("risk_status", "started"), ("risk_status", "ok")]
    calls = db_rows(db, "SELECT id, args_json FROM audit WHERE kind = 'tool' AND name = 'risk_status' ORDER BY id")
    assert [json.loads(calls[i]["args_json"])["call"] for i in (-3, -1)] == [calls[-4]["id"], calls[-2]["id"]]


async def test_audit_rows_stay_bounded_in_bytes_whatever_the_characters(make_server, db: Path) -> None:
    async with Client(make_server()) as client:
        await call_error(client, "scan_basis", {f"a{i}": "😀" * 500 for i in range(9)})
        await call_error(client, "scan_basis", {"x": "😀" * 30_000})
    for r in db_rows(db, "SELECT args_json, detail FROM audit WHERE outcome = 'rejected'"):
        assert len(r["args_json"].encode()) <= 9_000, len(r["args_json"])


async def test_a_missing_key_for_a_keyed_book_is_an_error_not_a_new_key(make_server, db: Path, tmp_path: Path) -> None:
    await _activity(make_server)
    r = cli("resume", "--db", str(db), "--audit-key", str(tmp_path / "typo.audit-kye"))
    assert r.returncode == 1 and "no audit key" in r.stderr and not (tmp_path / "typo.audit-kye").exists(), r.stderr
    r = cli("halt", "--db", str(db), env={"BASIS_MCP_AUDIT_KEY_FILE": "ab" * 32})
    assert r.returncode == 1 and "not a file path" in r.stderr, r.stderr
    assert cli("audit", "verify", "--db", str(db)).returncode == 0


@pytest.mark.parametrize("reason", ["ok\ufe0f done", "a\u034fb", "x\u3164y", "blank\u2800", "soft\u00adhyphen"])
async def test_invisible_characters_are_refused_in_free_text(make_server, reason: str) -> None:
    async with Client(make_server()) as client:
        text = await call_error(client, "halt_trading", {"reason": reason})
        assert "invisible" in text


async def test_an_oversized_call_names_the_tools_own_field_and_masks_a_credential_looking_stranger(make_server) -> None:
    """Found by the fuzzer: a 60 kB idempotency_key was reported as argument '***' (its name contains
    "key"), so the agent could not tell which field to shorten. The tool's own names are not secrets."""
    async with Client(make_server()) as client:
        text = await call_error(client, "exit_trade", {"position_id": 1, "idempotency_key": "A" * 70_000})
        assert "the largest is argument 'idempotency_key'" in text and "Nothing was done" in text
        text = await call_error(client, "exit_trade", {"position_id": 1, "idempotency_key": "k-1", "api_token": "s" * 70_000})
        assert "unknown argument '***'" in text and "api_token" not in text and "s" * 100 not in text


def test_a_hex_private_key_is_scrubbed_with_or_without_its_0x() -> None:
    """A wallet key is registered as 0x…; ccxt signs with it stripped, so both spellings are secrets."""
    import secrets as _s

    from basis_mcp.redact import register_secret, scrub

    key = "0x" + _s.token_hex(32)
    register_secret(key)
    for shown in (key, key[2:], key[2:].upper(), f"privateKey={key[2:]}"):
        assert key[2:12].lower() not in scrub(shown).lower(), shown
