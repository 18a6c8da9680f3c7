"""Who signed a Hyperliquid ``POST /exchange`` request: the EIP-712 digests Hyperliquid signs and the
recovery of the signer's address from ``{"r", "s", "v"}``, with the crypto ccxt itself ships (its
keccak, msgpack and EIP-712 encoder; secp256k1 recovery through coincurve, ccxt's own signing
backend, or, where coincurve is not installed, a few lines of plain-integer curve arithmetic).

- L1 actions (orders, cancels, leverage, isolated margin...): the action is msgpack-encoded, then the
  nonce (8 bytes, big-endian), a vault flag (``00``, or ``01`` + the vault's 20 bytes) and, when given,
  ``00`` + ``expiresAfter`` (8 bytes); keccak of that is the ``connectionId`` of a phantom ``Agent``
  (``source`` "a" on mainnet, "b" on testnet) signed in the domain ``Exchange`` / version 1 / chain
  1337 / the zero address.
- user-signed actions (``approveBuilderFee``, transfers...): the action's own fields as the typed
  ``HyperliquidTransaction:<Name>`` struct, in the domain ``HyperliquidSignTransaction`` / version 1 /
  the action's ``signatureChainId``.

Prices and sizes are hashed as Hyperliquid re-serialises them (`canonical`: ``"65000.0"`` → ``"65000"``),
so a client that signs a non-canonical number string gets the same answer as from the real venue: a
signature that recovers to some other address ("User or API Wallet 0x... does not exist.").
"""

from __future__ import annotations

import copy
from decimal import Decimal, InvalidOperation
from typing import Any

from ccxt.base.exchange import Exchange
from ccxt.static_dependencies import keccak

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
L1_DOMAIN = {"chainId": 1337, "name": "Exchange", "verifyingContract": ZERO_ADDRESS, "version": "1"}
AGENT_TYPES = {"Agent": [{"name": "source", "type": "string"}, {"name": "connectionId", "type": "bytes32"}]}
# user-signed actions the simulator verifies: action type -> (struct name, [(field, EIP-712 type)])
USER_SIGNED = {
    "approveBuilderFee": ("ApproveBuilderFee", [("hyperliquidChain", "string"), ("maxFeeRate", "string"),
                                                ("builder", "address"), ("nonce", "uint64")]),
}

# secp256k1
_P = 2**256 - 2**32 - 977
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
      0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)


class BadSignature(ValueError):
    """The signature is not a recoverable secp256k1 signature at all."""


def keccak256(data: bytes) -> bytes:
    return bytes(keccak.SHA3(data))


def _wire_num(s: Any) -> Any:
    if not isinstance(s, str):
        return s
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s
    if not d.is_finite():
        return s
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def canonical(action: dict[str, Any]) -> dict[str, Any]:
    """The action as Hyperliquid hashes it: order prices and sizes in canonical decimal form."""
    if action.get("type") != "order" or not isinstance(action.get("orders"), list):
        return action
    out = copy.deepcopy(action)
    for o in out["orders"]:
        if isinstance(o, dict):
            for k in ("p", "s"):
                if k in o:
                    o[k] = _wire_num(o[k])
    return out


def action_hash(action: dict[str, Any], nonce: int, vault: str | None = None, expires_after: int | None = None) -> bytes:
    data = bytes(Exchange.packb(canonical(action))) + int(nonce).to_bytes(8, "big")
    data += b"\x00" if vault is None else b"\x01" + bytes.fromhex(vault.removeprefix("0x"))
    if expires_after is not None:
        data += b"\x00" + int(expires_after).to_bytes(8, "big")
    return keccak256(data)


def l1_digest(action: dict[str, Any], nonce: int, vault: str | None = None, expires_after: int | None = None,
              mainnet: bool = True) -> bytes:
    agent = {"source": "a" if mainnet else "b", "connectionId": action_hash(action, nonce, vault, expires_after)}
    return keccak256(Exchange.eth_encode_structured_data(L1_DOMAIN, AGENT_TYPES, agent))


def user_signed_digest(action: dict[str, Any]) -> bytes:
    """The digest of a user-signed action (KeyError: a type the simulator does not know)."""
    name, fields = USER_SIGNED[action["type"]]
    domain = {"chainId": int(str(action["signatureChainId"]), 16), "name": "HyperliquidSignTransaction",
              "verifyingContract": ZERO_ADDRESS, "version": "1"}
    types = {f"HyperliquidTransaction:{name}": [{"name": f, "type": t} for f, t in fields]}
    message = {f: action[f] for f, _ in fields}
    return keccak256(Exchange.eth_encode_structured_data(domain, types, message))


# --------------------------------------------------------------------------- recovery


def _add(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % _P == 0:
        return None
    if a == b:
        m = 3 * a[0] * a[0] * pow(2 * a[1], _P - 2, _P) % _P
    else:
        m = (b[1] - a[1]) * pow(b[0] - a[0], _P - 2, _P) % _P
    x = (m * m - a[0] - b[0]) % _P
    return x, (m * (a[0] - x) - a[1]) % _P


def _mul(k: int, pt: tuple[int, int] | None) -> tuple[int, int] | None:
    out = None
    while k:
        if k & 1:
            out = _add(out, pt)
        pt = _add(pt, pt)
        k >>= 1
    return out


def _recover_plain(digest: bytes, r: int, s: int, recid: int) -> bytes:
    """The uncompressed public key (64 bytes, X || Y) that signed ``digest``: Q = r⁻¹ (s·R − e·G)."""
    x = r + (_N if recid & 2 else 0)
    if x >= _P:
        raise BadSignature("r out of range")
    y = pow((x * x * x + 7) % _P, (_P + 1) // 4, _P)
    if (y * y - x * x * x - 7) % _P:
        raise BadSignature("r is not on the curve")
    if y & 1 != recid & 1:
        y = _P - y
    e = int.from_bytes(digest, "big") % _N
    r_inv = pow(r, _N - 2, _N)
    q = _add(_mul(s * r_inv % _N, (x, y)), _mul((-e * r_inv) % _N, _G))
    if q is None:
        raise BadSignature("point at infinity")
    return q[0].to_bytes(32, "big") + q[1].to_bytes(32, "big")


def _recover_coincurve(digest: bytes, r: int, s: int, recid: int) -> bytes | None:
    try:
        import coincurve
    except ImportError:
        return None
    try:
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([recid])
        return coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None).format(compressed=False)[1:]
    except Exception as e:  # noqa: BLE001  (coincurve raises plain Exception on a bad signature)
        raise BadSignature(str(e)) from None


def recover_address(digest: bytes, signature: Any, plain: bool = False) -> str:
    """The address (``0x`` + 40 lowercase hex) whose key signed ``digest``; `BadSignature` if none can have.
    ``plain``: skip coincurve (tests compare both paths)."""
    try:
        r = int(str(signature["r"]), 16)
        s = int(str(signature["s"]), 16)
        v = int(signature["v"])
    except (KeyError, TypeError, ValueError):
        raise BadSignature("signature must be {r, s, v}") from None
    recid = v - 27 if v >= 27 else v
    if not (0 < r < _N and 0 < s < _N) or recid not in (0, 1):
        raise BadSignature("signature out of range")
    pub = None if plain else _recover_coincurve(digest, r, s, recid)
    if pub is None:
        pub = _recover_plain(digest, r, s, recid)
    return "0x" + keccak256(pub)[-20:].hex()


def address_of(private_key: str) -> str:
    """The wallet address of a hex private key (ccxt's own derivation), lowercase."""
    return str(Exchange.eth_get_address_from_private_key(private_key if private_key.startswith("0x") else "0x" + private_key)).lower()
