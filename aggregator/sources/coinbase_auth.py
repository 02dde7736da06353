"""Coinbase Developer Platform (CDP) API key and the WebSocket JWT it signs.

Coinbase's Advanced Trade WebSocket accepts a JWT in each ``subscribe`` message (required for
the ``user`` channel, recommended for the market-data channels: "for the most reliable
connection, authenticate with a CDP API key"). The JWT is ES256 (ECDSA P-256, SHA-256), signed
with the key's EC private key; its header carries ``kid`` = the key name and a random ``nonce``,
its claims ``iss="cdp"``, ``sub`` = the key name, ``nbf`` = now and ``exp`` = now + 120 s (a
WebSocket JWT has no ``uri`` claim). Because it lives two minutes, the connector signs a fresh
one for every subscribe message it sends, never reusing one across connections.

The credentials come from a key file (the JSON Coinbase lets one download when creating a key:
``{"name": "organizations/.../apiKeys/...", "privateKey": "-----BEGIN EC PRIVATE KEY-----..."}``)
or from two settings (``MD_COINBASE_AT_KEY_NAME`` and ``MD_COINBASE_AT_KEY_SECRET_FILE``, e.g. a
mounted Kubernetes secret). The private key never appears in ``repr``, logs or exceptions.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from aggregator.errors import AggregatorError

JWT_ISSUER = "cdp"
JWT_LIFETIME_S = 120  # Coinbase: a JWT expires after two minutes


class CredentialsError(AggregatorError):
    """The API key cannot be used (missing, unreadable, not an EC P-256 key). Permanent."""


@dataclass(frozen=True)
class CdpCredentials:
    name: str  # "organizations/{org}/apiKeys/{key}": not secret, goes into every JWT
    _key: ec.EllipticCurvePrivateKey = field(repr=False)

    def __repr__(self) -> str:  # the dataclass repr would be fine, this makes it explicit
        return f"CdpCredentials(name={self.name!r}, private_key=<redacted>)"

    @classmethod
    def from_pem(cls, name: str, pem: str | bytes) -> CdpCredentials:
        if not name:
            raise CredentialsError("API key name is empty")
        data = pem.encode() if isinstance(pem, str) else pem
        data = data.replace(b"\\n", b"\n")  # keys pasted into env files keep literal \n
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:  # never echo the key material
            raise CredentialsError(
                f"API key {name!r}: private key is not a PEM key ({type(exc).__name__})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CredentialsError(f"API key {name!r}: need an EC P-256 (ES256) private key")
        return cls(name, key)

    @classmethod
    def from_key_file(cls, path: Path) -> CdpCredentials:
        """The JSON key file Coinbase hands out (``name`` + ``privateKey``)."""
        try:
            raw: Any = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise CredentialsError(f"key file {path}: {exc.strerror}") from None
        except orjson.JSONDecodeError:
            raise CredentialsError(f"key file {path}: not JSON") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise CredentialsError(f"key file {path}: needs 'name' and 'privateKey'")
        pem = raw.get("privateKey")
        if not isinstance(pem, str):
            raise CredentialsError(f"key file {path}: needs 'name' and 'privateKey'")
        return cls.from_pem(raw["name"], pem)

    def websocket_jwt(self, now: float | None = None) -> str:
        """A fresh JWT for one subscribe message (random nonce, 120 s lifetime)."""
        t = int(time.time() if now is None else now)
        claims = {"iss": JWT_ISSUER, "sub": self.name, "nbf": t, "exp": t + JWT_LIFETIME_S}
        headers = {"kid": self.name, "nonce": secrets.token_hex(16), "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)

    def public_pem(self) -> bytes:
        """The public half (what Coinbase holds; the mock verifies JWTs with it)."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self._key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def verify_websocket_jwt(token: str, public_pem: bytes, name: str, now: float | None = None) -> str:
    """What Coinbase checks (for the mock): ES256 signature, ``kid``/``sub``, ``iss``, lifetime.

    Returns "" when valid, else the reason (never raises on a bad token).
    """
    try:
        header = jwt.get_unverified_header(token)
        if header.get("kid") != name or not header.get("nonce"):
            return "kid or nonce missing"
        claims = jwt.decode(
            token,
            public_pem,
            algorithms=["ES256"],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "nbf", "sub", "iss"], "verify_exp": now is None},
        )
    except jwt.PyJWTError as exc:
        return f"{type(exc).__name__}"
    if claims.get("sub") != name:
        return "sub is not the key"
    if now is not None and not (claims["nbf"] - 5 <= now < claims["exp"]):
        return "expired or not yet valid"
    return ""


def generate_test_credentials(name: str = "organizations/test/apiKeys/mock") -> CdpCredentials:
    """A throw-away key pair (tests, the mock's demo mode)."""
    return CdpCredentials(name, ec.generate_private_key(ec.SECP256R1()))


def credentials_from_settings(s: Any) -> CdpCredentials | None:
    """``MD_COINBASE_AT_KEY_FILE``, else ``MD_COINBASE_AT_KEY_NAME`` + ``..._SECRET_FILE``; or None."""
    key_file = s.get("MD_COINBASE_AT_KEY_FILE", str, "")
    if key_file:
        return CdpCredentials.from_key_file(Path(key_file))
    name = s.get("MD_COINBASE_AT_KEY_NAME", str, "")
    secret_file = s.get("MD_COINBASE_AT_KEY_SECRET_FILE", str, "")
    if not name and not secret_file:
        return None  # public market data without a key
    if not (name and secret_file):
        raise CredentialsError(
            "MD_COINBASE_AT_KEY_NAME and MD_COINBASE_AT_KEY_SECRET_FILE go together"
        )
    try:
        pem = Path(secret_file).read_bytes()
    except OSError as exc:
        raise CredentialsError(
            f"MD_COINBASE_AT_KEY_SECRET_FILE {secret_file}: {exc.strerror}"
        ) from None
    return CdpCredentials.from_pem(name, pem)
