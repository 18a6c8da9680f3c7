"""Keep secrets out of everything the agent, the audit log and the database see.

Three jobs, no I/O:

- `looks_like_credential(name)`: an argument or field name that smells of a credential
  (``token``, ``accessToken``, ``X-Api-Key``, ``passwd``, ``private``…), whatever its case
  or separators. `mask_credentials` replaces such values with ``***`` at any depth.
- `register_secret` / `scrub`: the API key, secret and passphrase the server was started
  with are registered once; `scrub` removes them from any text in every common encoding a
  venue might echo them in (raw, URL-encoded once or twice, JSON-escaped, base64 at any
  alignment, hex), and drops URL query strings (which carry signatures).
- `bound_args`: a size-bounded copy of a tool call's arguments for the audit log, with a
  hash of the original when anything was cut, so a 20 MB argument costs the book a few
  hundred bytes, and the row still proves what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from typing import Any

MASK = "***"

# Substrings of a normalised name (lower case, letters and digits only) that mark a credential.
_CREDENTIAL_PARTS = (
    "token", "secret", "passw", "passwd", "pwd", "passphrase", "auth", "credential", "private", "apikey",
    "accesskey", "signature", "cookie", "session", "bearer", "mnemonic", "seedphrase", "otp", "jwt",
)
# Names that are whole words of a credential on their own, or as the last word ("key", "api_key", "privKey").
_CREDENTIAL_WORDS = ("key", "keys", "pass", "pin", "sig", "seed", "cert")
# This server's own argument names that contain a credential word but are not secrets.
NOT_SECRET = frozenset({"idempotencykey"})

_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def looks_like_credential(name: Any) -> bool:
    """True if a field called ``name`` probably holds a credential (case and separator insensitive)."""
    text = str(name)
    norm = _normalise(text)
    if not norm or norm in NOT_SECRET:
        return False
    if any(p in norm for p in _CREDENTIAL_PARTS):
        return True
    words = [w.lower() for w in _SPLIT.split(text) if w]
    if words and (words[-1] in _CREDENTIAL_WORDS or any(w in ("key", "keys") for w in words)):
        return True
    return norm in _CREDENTIAL_WORDS or any(norm.endswith(w) for w in ("key", "keys"))


def mask_credentials(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with every credential-named entry replaced by ``***``, at any depth."""
    if _depth > 32:
        return "…"
    if isinstance(value, dict):
        return {k: (MASK if looks_like_credential(k) else mask_credentials(v, _depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_credentials(v, _depth + 1) for v in value]
    return value


# ----------------------------------------------------------------------------- registered secrets

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_QUERY = re.compile(r"(https?://[^\s?\"'\\]+)\?[^\s\"'\\]*")


def _base64_cores(raw: bytes) -> set[str]:
    """The part of the base64 text of ``raw`` that is the same wherever ``raw`` sits in a longer
    message (3 alignments), in the standard and the URL-safe alphabet."""
    out: set[str] = set()
    for offset in range(3):
        enc = base64.b64encode(b"\0" * offset + raw).decode()
        start = -(-offset * 4 // 3)  # characters that mix in the bytes before the secret
        tail = (offset + len(raw)) % 3
        end = len(enc) - (4 if tail else 0)  # the last group mixes in whatever follows
        core = enc[start:end]
        if len(core) >= 6:
            out.add(core)
            out.add(core.replace("+", "-").replace("/", "_"))
    return out


def _encodings(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             urllib.parse.quote(urllib.parse.quote(secret, safe=""), safe=""),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             json.dumps(secret)[1:-1].replace("/", "\\/"),
             "".join(f"\\u{ord(c):04x}" for c in secret),
             raw.hex()}
    forms |= _base64_cores(raw)
    return {f for f in forms if len(f) >= 4}


def register_secret(value: str | None) -> None:
    """Remember a secret (API key, secret, passphrase, HTTP token) so `scrub` removes it everywhere."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        forms = set().union(*(_encodings(s) for s in _secrets))
        alternation = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        _pattern = re.compile(alternation, re.IGNORECASE)


def scrub(text: str, limit: int | None = None) -> str:
    """``text`` with URL query strings dropped and every registered secret, in any common encoding, masked."""
    out = _QUERY.sub(r"\1?…", text)
    pat = _pattern
    if pat is not None:
        out = pat.sub(MASK, out)
    return out if limit is None else out[:limit]


def scrub_value(value: Any) -> Any:
    """`scrub` applied to every string inside a JSON-like value (keys included)."""
    if _pattern is None and not isinstance(value, str | dict | list):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


# ----------------------------------------------------------------------------- bounded arguments

MAX_NAME_CHARS = 64
MAX_STRING_CHARS = 500
MAX_ITEMS = 50
MAX_DEPTH = 6
MAX_STORED_BYTES = 8_192
MAX_REQUEST_ARGS_BYTES = 65_536  # a tool call whose arguments are larger is refused before anything else


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _bound(value: Any, depth: int, cut: list[bool]) -> Any:
    if depth > MAX_DEPTH:
        cut[0] = True
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        if len(items) > MAX_ITEMS:
            cut[0] = True
        out = {}
        for k, v in items[:MAX_ITEMS]:
            name = str(k)
            if len(name) > MAX_NAME_CHARS:
                cut[0] = True
                name = name[:MAX_NAME_CHARS] + "…"
            out[name] = _bound(v, depth + 1, cut)
        return out
    if isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            cut[0] = True
        return [_bound(v, depth + 1, cut) for v in list(value)[:MAX_ITEMS]]
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        cut[0] = True
        return value[:MAX_STRING_CHARS] + f"…({len(value)} chars)"
    return value


def bound_args(args: Any, size: int | None = None) -> dict[str, Any]:
    """What the audit stores for a call's arguments: credentials masked, secrets scrubbed, names,
    strings, lists and depth bounded, the whole at most `MAX_STORED_BYTES`. If anything was cut,
    ``_args_sha256`` and ``_args_bytes`` describe the original (credentials masked before hashing,
    so the hash cannot be used to test guesses of a secret)."""
    masked = scrub_value(mask_credentials(args if isinstance(args, dict) else {"_raw": args}))
    cut = [False]
    stored = _bound(masked, 0, cut)
    text = canonical_json(stored)
    if len(text.encode()) > MAX_STORED_BYTES:
        cut[0] = True
        stored = {"_partial": text[: MAX_STORED_BYTES // 2] + "…"}
    if cut[0] or (size is not None and size > MAX_REQUEST_ARGS_BYTES):
        full = canonical_json(masked).encode()
        stored["_args_sha256"] = hashlib.sha256(full).hexdigest()
        stored["_args_bytes"] = len(full) if size is None else size
    return stored


def bound_text(text: Any, limit: int = 200) -> str:
    s = scrub(str(text))
    return s if len(s) <= limit else s[:limit] + f"…({len(s)} chars, sha256 {hashlib.sha256(s.encode()).hexdigest()[:16]})"
