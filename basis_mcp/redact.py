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
import math
import re
import threading
import unicodedata
import urllib.parse
from typing import Any

MASK = "***"

# Substrings of a normalised name (lower case, letters and digits only) that mark a credential.
_CREDENTIAL_PARTS = (
    "token", "secret", "passw", "passwd", "pwd", "passphrase", "passcode", "auth", "credential", "creds", "private",
    "apikey", "accesskey", "accesscode", "signature", "cookie", "session", "bearer", "mnemonic", "seed", "recovery",
    "otp", "jwt", "hmac", "mfa", "2fa", "totp", "pincode", "xprv", "privkey", "wif",
)
# Whole words of a name that mark a credential on their own ("key", "api_key", "privKey", "pin_code", "pw").
_CREDENTIAL_WORDS = frozenset({"key", "keys", "pass", "pin", "sig", "cert", "pw", "priv", "code", "phrase"})
# This server's own argument names that contain a credential word but are not secrets.
NOT_SECRET = frozenset({"idempotencykey"})

_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# letters that look like Latin ones (Cyrillic, Greek): "tоken" with a Cyrillic о is still a token
_CONFUSABLES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "к": "k", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "һ": "h", "т": "t", "м": "m", "н": "h", "в": "b", "ԛ": "q", "ԝ": "w", "α": "a", "ο": "o", "ρ": "p",
    "τ": "t", "κ": "k", "ν": "v", "ι": "i", "ε": "e", "υ": "u", "χ": "x",
})


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_CONFUSABLES)


def looks_like_credential(name: Any) -> bool:
    """True if a field called ``name`` probably holds a credential (case, separator and look-alike
    insensitive). A name with letters outside plain ASCII is treated as one: this server's own
    argument names are ASCII, and a disguised name is the point of a disguise."""
    raw = str(name)
    if len(raw) > 320:  # no credential name is this long: judge its ends (a 20 MB name must not cost seconds)
        raw = raw[:256] + "_" + raw[-64:]
    if not raw.isascii():
        return True
    text = _fold(raw)
    norm = _normalise(text)
    if not norm or norm in NOT_SECRET:
        return False
    if any(p in norm for p in _CREDENTIAL_PARTS):
        return True
    words = {w.lower() for w in _SPLIT.split(text) if w}
    if words & _CREDENTIAL_WORDS and not (words == {"code"} or words == {"phrase"}):
        return True
    return norm.endswith(("key", "keys"))


def mask_credentials(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with every credential-named entry replaced by ``***``, at any depth."""
    if _depth > 32:
        return "…"
    if isinstance(value, dict):
        return {k: (MASK if looks_like_credential(k) else mask_credentials(v, _depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        out = [mask_credentials(v, _depth + 1) for v in value]
        for i in range(len(out) - 1):  # name/value pairs written as lists: ["Authorization", "Bearer …"]
            if isinstance(value[i], str) and len(value[i]) <= 64 and looks_like_credential(value[i]) \
                    and isinstance(value[i + 1], str | int | float) and not isinstance(value[i + 1], bool):
                out[i + 1] = MASK
        return out
    return value


# ----------------------------------------------------------------------------- registered secrets

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


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
    pct_all = "".join(f"%{b:02X}" for b in raw)
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             urllib.parse.quote(urllib.parse.quote(secret, safe=""), safe=""), pct_all,
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             json.dumps(secret)[1:-1].replace("/", "\\/"), json.dumps(json.dumps(secret))[1:-1],
             "".join(f"\\u{ord(c):04x}" for c in secret), "".join(f"\\x{b:02x}" for b in raw),
             raw.hex(), ":".join(f"{b:02x}" for b in raw), " ".join(f"{b:02x}" for b in raw),
             secret.encode("utf-16-be").hex(), base64.b32encode(raw).decode().rstrip("="), base64.b85encode(raw).decode()}
    b64 = _base64_cores(raw)
    forms |= b64
    for core in list(b64):  # base64 of base64 (a token inside a basic-auth header inside a log line)
        forms |= _base64_cores(core.encode())
    # a venue echoing only part of it: long prefixes and suffixes
    part = max(12, (len(secret) * 2) // 3)
    if len(secret) > part:
        forms |= {secret[:part], secret[-part:]}
    return {f for f in forms if len(f) >= 6 or f == secret}


_SEP = r"(?:\s|\\[nrt]|[\u200b-\u200d\u2060\ufeff])*"  # whitespace, escaped newlines, zero-width characters


def _tolerant(form: str) -> str:
    """A pattern for ``form`` that also matches it wrapped or split by whitespace or zero-width characters."""
    return _SEP.join(re.escape(c) for c in form)


_stale = False  # a secret was registered since the pattern was built: build it on the next scrub, once


def register_secret(value: str | None) -> None:
    """Remember a secret (API key, secret, passphrase, HTTP token) so `scrub` removes it everywhere. The
    pattern is built on the next scrub (registering four keys at start-up compiles it once, not four times)."""
    global _stale
    if not value or len(value) < 4:
        return
    forms = {value}
    if value[:2].lower() == "0x" and len(value) > 10:  # a hex key (a wallet's private key) is also written without 0x
        forms.add(value[2:])
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        _stale = True


def _secret_pattern() -> re.Pattern[str] | None:
    global _pattern, _stale
    if _stale:
        with _lock:
            if _stale:
                forms = set().union(*(_encodings(s) for s in _secrets))
                alternation = "|".join(_tolerant(f) for f in sorted(forms, key=len, reverse=True))
                _pattern = re.compile(alternation, re.IGNORECASE)
                _stale = False
    return _pattern


_ANY_QUERY = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s?\"'\\]+)\?[^\s\"'\\]*", re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^\s/:@\"']+:[^\s/@\"']+@", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"\b(bearer|basic|token|digest)(\s+)[A-Za-z0-9._~+/=\-]{6,}", re.IGNORECASE)
_INLINE = re.compile(  # name=value and "name": "value" (bounded runs: linear time on any input)
    r"""(?<![\w\-])(?P<name>(?P<word>[\w\-]{2,64})\s{0,8}=\s{0,8})(?P<q>["']?)(?P<v>[^"'\s,;&}\]]{3,512})(?P=q)"""
    r"""|(?P<name2>["'](?P<word2>[\w\-]{2,64})["']\s{0,8}:\s{0,8})(?P<q2>["'])(?P<v2>[^"']{3,512})(?P=q2)""")
_INLINE_WORD = re.compile(r"key|token|secret|passw|pwd|passphrase|passcode|signature|auth|credential|cookie|session|private|"
                          r"mnemonic|seed", re.IGNORECASE)


def _inline(m: re.Match[str]) -> str:
    pair = ("name", "word", "q") if m.group("name") is not None else ("name2", "word2", "q2")
    name, word, q = (m.group(g) for g in pair)
    if _INLINE_WORD.search(word) and _normalise(word) not in NOT_SECRET:
        return name + q + MASK + q
    return m.group(0)


def scrub(text: str, limit: int | None = None) -> str:
    """``text`` with URL query strings and user:password@ parts dropped (any scheme), inline
    ``name=value`` / ``"name": "value"`` credentials and ``Bearer …`` masked, and every registered
    secret, in any common encoding, masked."""
    out = _ANY_QUERY.sub(r"\1?…", text)
    out = _USERINFO.sub(r"\1***:***@", out)
    out = _AUTH_SCHEME.sub(r"\1\2" + MASK, out)
    out = _INLINE.sub(_inline, out)
    pat = _secret_pattern()
    if pat is not None:
        out = pat.sub(MASK, out)
    return out if limit is None else out[:limit]


def scrub_value(value: Any) -> Any:
    """`scrub` applied to every string inside a JSON-like value (keys included)."""
    if _secret_pattern() is None and not isinstance(value, str | dict | list):
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


def _finite(value: Any) -> Any:
    """NaN and infinities as strings, so a stored row is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def bound_args(args: Any, size: int | None = None) -> dict[str, Any]:
    """What the audit stores for a call's arguments: credentials masked, secrets scrubbed, names,
    strings, lists and depth bounded, the whole at most `MAX_STORED_BYTES`. If anything was cut,
    ``_args_sha256`` and ``_args_bytes`` describe the original (credentials masked before hashing,
    so the hash cannot be used to test guesses of a secret)."""
    masked = mask_credentials(args if isinstance(args, dict) else {"_raw": args})
    cut = [False]
    stored = _finite(scrub_value(_bound(masked, 0, cut)))  # bound first: scrubbing 20 MB would take seconds
    text = json.dumps(stored, sort_keys=True, default=str)  # as the audit stores it (ASCII: characters = bytes)
    if len(text) > MAX_STORED_BYTES:
        cut[0] = True
        stored = {"_partial": text[: MAX_STORED_BYTES // 2] + "..."}
    if cut[0] or (size is not None and size > MAX_REQUEST_ARGS_BYTES):
        full = canonical_json(masked).encode()
        stored["_args_sha256"] = hashlib.sha256(full).hexdigest()
        stored["_args_bytes"] = len(full) if size is None else size
    return stored


def bound_text(text: Any, limit: int = 200) -> str:
    raw = str(text)
    s = scrub(raw[: limit * 4])
    if len(raw) > limit * 4:
        s += "…"
    return s if len(s) <= limit else s[:limit] + f"…({len(raw)} chars, sha256 {hashlib.sha256(raw.encode()).hexdigest()[:16]})"
