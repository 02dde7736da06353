"""Ed25519 signatures on FIX market-data messages (docs/security.md "Message signing").

FIX 4.4 has a place for it: the standard trailer's SignatureLength(93) and Signature(89), just
before CheckSum(10) (FIX 4.4 Vol. 1, "Standard Message Trailer"). A signed message ends::

    ...|93=103|89=<kid>:<86 base64url chars>|10=ccc|

- The signature (RFC 8032) covers the message from ``8=`` up to and including the SOH before
  ``93=``, i.e. with BodyLength(9) already counting the trailer fields (their length is fixed by
  the key id), so a verifier checks the bytes exactly as received.
- Signature(89) is a ``data`` field: ``<kid>:<signature>`` carries the key id (the same ids and
  keys as the WebSocket and REST signatures, ``GET /keys``) and never contains SOH.
- Only MarketDataSnapshotFullRefresh (W) and MarketDataIncrementalRefresh (X) are signed: the
  data. Session messages (Logon, Heartbeat, ...) are not.

Cost: one signature per message per session (each session has its own MsgSeqNum(34) and
SendingTime(52), so nothing can be shared), ~30-50 us each: an option for sessions that need it.
"""

from __future__ import annotations

import base64
import re

from cryptography.exceptions import InvalidSignature

from core.signing import Signer, Verifier

SIGNED_TYPES = frozenset({b"W", b"X"})
_HEAD = re.compile(rb"^8=[^\x01]*\x019=(\d{1,9})\x0135=([^\x01]{1,4})\x01")
_TRAILER = re.compile(
    rb"\x0193=(\d{1,4})\x0189=([0-9A-Za-z_-]{1,64}):([0-9A-Za-z_-]{86})\x0110=\d{3}\x01$"
)
_MESSAGE = re.compile(rb"8=FIX[^\x01]*\x01.*?\x0110=\d{3}\x01", re.S)


def msg_type(raw: bytes) -> bytes | None:
    m = _HEAD.match(raw)
    return m.group(2) if m else None


def sign(raw: bytes, signer: Signer) -> bytes:
    """``raw`` (a complete frame) with 93/89 in its trailer and 9/10 corrected; other message
    types and anything that is not a well-formed frame are returned unchanged."""
    m = _HEAD.match(raw)
    end = raw.rfind(b"\x0110=")
    if m is None or m.group(2) not in SIGNED_TYPES or end < 0:
        return raw
    value_len = len(signer.kid) + 1 + 86
    trailer_len = len(b"93=%d\x0189=\x01" % value_len) + value_len
    length = int(m.group(1)) + trailer_len
    head = b"%s9=%d\x01%s" % (raw[: m.start(1) - 2], length, raw[m.end(1) + 1 : end + 1])
    sig = base64.urlsafe_b64encode(signer.key.sign(head)).rstrip(b"=")
    trailer = b"93=%d\x0189=%s:%s\x01" % (value_len, signer.kid.encode(), sig)
    signed = head + trailer
    return signed + b"10=%03d\x01" % (sum(signed) & 0xFF)


def verify(raw: bytes, verifier: Verifier) -> str | None:
    """None when ``raw`` carries a good signature of a known key; otherwise why not."""
    m = _TRAILER.search(raw)
    if m is None:
        return "unsigned"
    kid = m.group(2).decode()
    if int(m.group(1)) != len(m.group(2)) + 1 + len(m.group(3)):
        return "malformed signature"
    key = verifier.keys.get(kid)
    if key is None:
        return f"unknown key id {kid}"
    sig = base64.urlsafe_b64decode(m.group(3) + b"==")
    try:
        key.verify(sig, raw[: m.start() + 1])
    except InvalidSignature:
        return "bad signature"
    return None


def messages(data: bytes) -> list[bytes]:
    """The frames of a captured FIX byte stream; a log with ``|`` for SOH is read as SOH."""
    if b"\x01" not in data:
        data = data.replace(b"|", b"\x01")
    return _MESSAGE.findall(data)
