"""Optional Ed25519 signatures on every data message a WebSocket client receives (docs/security.md).

Format: the message's JSON object gets two last members, the key id and the signature::

    {"type":"l2_update",...,"data":{...},"kid":"9f2c61d0a4b7e3f1","sig":"<base64url, 86 chars>"}

The signature (RFC 8032 Ed25519) covers the message's bytes as they were before those two members
were appended: a verifier cuts ``,"kid":"...","sig":"..."`` off the end and restores the ``}``
(:func:`split_signed`). No canonical-JSON step is needed, because the gateway forwards the bytes it
signed unchanged (serialize once); Ed25519 is deterministic, so a message signed twice (direct
feed and Kafka) is the same bytes. Cost: one signature per message per gateway process (~30 us),
not per client.

Keys: ``MD_SIGNING_KEY`` is a PEM PKCS#8 Ed25519 private key file (``python -m core.signing
keygen DIR`` writes one); its key id ``kid`` is the first 16 hex digits of the SHA-256 of the raw
public key, unless ``MD_SIGNING_KEY_ID`` names it. Public keys are served as JSON at ``GET /keys``
(:func:`keys_document`), with ``MD_SIGNING_PUBLIC_KEYS`` (comma-separated PEM files) listing
earlier keys still accepted during a rotation. ``python -m core.verify`` checks a capture.

Where messages are signed: :func:`sign` is called by ``core.follower`` for everything it hands a
gateway (live messages, snapshots it builds, resync-flagged copies) and by the WebSocket resume
reader; :func:`install` switches it on in a process (the WebSocket gateway, from settings).

REST answers carry a *detached* signature instead, because an answer may be any JSON value and
HTTP has headers for metadata: ``X-MD-Signature: kid=<kid>;sig=<base64url>`` over the exact body
bytes (:meth:`Signer.header`, :meth:`Verifier.verify_detached`). The same keys sign both, so one
``GET /keys`` document verifies a WebSocket capture and a REST answer.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import ConfigError
from core.settings import Settings, parse_list

HEADER = "x-md-signature"  # REST: the detached signature of the body (RFC 9110 field names are case-insensitive)
_HEADER_VALUE = re.compile(r"^kid=([0-9A-Za-z_-]{1,64});sig=([0-9A-Za-z_-]{86})$")
_TAIL = re.compile(rb',"kid":"([0-9A-Za-z_-]{1,64})","sig":"([0-9A-Za-z_-]{86})"\}$')


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: bytes) -> bytes:
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    kid: str
    key: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        """``message`` (a JSON object's bytes) with ``"kid"`` and ``"sig"`` appended."""
        sig = _b64(self.key.sign(message))
        sep = b"" if message == b"{}" else b","
        return b'%s%s"kid":"%s","sig":"%s"}' % (
            message[:-1],
            sep,
            self.kid.encode(),
            sig.encode(),
        )

    def header(self, body: bytes) -> bytes:
        """The ``X-MD-Signature`` value of an HTTP body: ``kid=<kid>;sig=<base64url>``."""
        return b"kid=%s;sig=%s" % (self.kid.encode(), _b64(self.key.sign(body)).encode())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @classmethod
    def from_pem(cls, pem: bytes, kid: str | None = None) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(kid or key_id(key.public_key()), key)

    @classmethod
    def from_settings(cls, s: Settings) -> Signer | None:
        path = s.get("MD_SIGNING_KEY", str, "")
        if not path:
            return None
        try:
            return cls.from_pem(
                Path(path).read_bytes(), s.get("MD_SIGNING_KEY_ID", str, "") or None
            )
        except (OSError, ValueError) as exc:
            raise ConfigError("MD_SIGNING_KEY", f"cannot load an Ed25519 key: {exc}") from None


def split_signed(line: bytes) -> tuple[bytes, str, bytes] | None:
    """(the signed bytes, kid, signature) of a signed message, None if it carries none."""
    m = _TAIL.search(line)
    if m is None:
        return None
    body = line[: m.start()]
    return (b"{}" if body == b"{" else body + b"}"), m.group(1).decode(), _unb64(m.group(2))


class Verifier:
    """Checks signed messages against known public keys by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] | dict[str, Ed25519PublicKey]) -> None:
        self.keys = dict(keys) if isinstance(keys, dict) else {key_id(k): k for k in keys}

    def verify(self, line: bytes) -> str | None:
        """None when ``line`` is signed by a known key; otherwise why not."""
        parts = split_signed(line.rstrip(b"\r\n"))
        if parts is None:
            return "unsigned"
        body, kid, sig = parts
        key = self.keys.get(kid)
        if key is None:
            return f"unknown key id {kid}"
        try:
            key.verify(sig, body)
        except InvalidSignature:
            return "bad signature"
        return None

    def verify_detached(self, body: bytes, header: str | None) -> str | None:
        """None when ``header`` (an ``X-MD-Signature`` value) signs ``body`` by a known key."""
        if not header:
            return "unsigned"
        m = _HEADER_VALUE.match(header.strip())
        if m is None:
            return "malformed signature header"
        key = self.keys.get(m.group(1))
        if key is None:
            return f"unknown key id {m.group(1)}"
        try:
            key.verify(_unb64(m.group(2).encode()), body)
        except InvalidSignature:
            return "bad signature"
        return None

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Verifier:
        """From the JSON of ``GET /keys`` (:func:`keys_document`)."""
        out: dict[str, Ed25519PublicKey] = {}
        for k in doc.get("keys", []):
            out[str(k["kid"])] = Ed25519PublicKey.from_public_bytes(_unb64(k["x"].encode()))
        return cls(out)


def load_public_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def keys_document(signer: Signer | None, s: Settings) -> dict[str, Any]:
    """The public keys, as a JWK set (RFC 8037 "OKP" keys): the current one first."""
    keys: list[Ed25519PublicKey] = [signer.public_key] if signer else []
    paths: tuple[str, ...] = s.get("MD_SIGNING_PUBLIC_KEYS", parse_list, ())
    for path in paths:
        try:
            keys.append(load_public_pem(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError("MD_SIGNING_PUBLIC_KEYS", f"{path}: {exc}") from None
    kids = [signer.kid] if signer else []
    kids += [key_id(k) for k in keys[len(kids) :]]
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": kid,
                "x": _b64(raw_public(k)),
            }
            for kid, k in zip(kids, keys, strict=True)
        ]
    }


# ------------------------------------------------------------------ the process's signer

_signer: Signer | None = None


def install(signer: Signer | None) -> None:
    """Sign every message :func:`sign` sees in this process from now on (None: stop)."""
    global _signer
    _signer = signer


def sign(raw: bytes) -> bytes:
    """``raw`` signed by the installed signer; unchanged when none is installed."""
    s = _signer
    return raw if s is None else s.sign(raw)


def installed() -> Signer | None:
    return _signer


def write_keypair(directory: str) -> tuple[Path, Path]:
    """``signing.key`` (0600 PKCS#8 PEM) and ``signing.pub`` (PEM) in ``directory``."""
    import os

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(d / "signing.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (d / "signing.pub").write_bytes(pub)
    return d / "signing.key", d / "signing.pub"


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "keygen":
        sys.exit("usage: python -m core.signing keygen DIR")
    k, p = write_keypair(sys.argv[2])
    print(f"wrote {k} (MD_SIGNING_KEY) and {p}; key id {key_id(load_public_pem(p.read_bytes()))}")
