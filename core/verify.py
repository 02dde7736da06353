"""``python -m core.verify``: check the Ed25519 signatures of a captured message stream.

    python -m core.verify capture.ndjson --keys https://md.example.com:8001/keys
    python -m core.verify capture.ndjson --public-key signing.pub
    python -m core.verify --keys https://md.example.com:8000/keys \
        --http https://md.example.com:8000/api/v1/market/BTC-USD/ticker --header 'X-API-Key: ...'
    python -m core.verify body.json --signature 'kid=...;sig=...' --public-key signing.pub
    python -m core.verify --fix session.fix --public-key signing.pub

The capture holds one message per line, as a WebSocket client received them (``-`` reads stdin).
Data messages (those with a ``seq``) must be signed by a known key; control messages
(``subscribed``, ``heartbeat``, ``error``...) are counted but need no signature. REST answers
carry a detached signature in the ``X-MD-Signature`` header: ``--http`` fetches answers and checks
them, ``--signature`` checks one saved body (the file's exact bytes, e.g. ``curl -o``). Exit status
0 when everything checked verifies, 1 otherwise, 2 on bad usage. Signature format: core/signing.py.
``--fix`` reads a captured FIX byte stream (SOH, or ``|`` as in logs): every market-data message
(W, X) must carry a good Signature(89) (core/signing_fix.py), other messages are control.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

from core import signing_fix
from core.signing import HEADER, Verifier, load_public_pem


def check(lines: Iterable[bytes], verifier: Verifier) -> tuple[Counter[str], list[str]]:
    """Counts per outcome and the first problems (line number: reason)."""
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        reason = verifier.verify(line)
        if reason is None:
            counts["verified"] += 1
            continue
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            reason = "not JSON"
        else:
            if reason == "unsigned" and not (isinstance(msg, dict) and "seq" in msg):
                counts["control"] += 1
                continue
        counts[reason.split(" ")[0] if reason.startswith("unknown") else reason] += 1
        if len(problems) < 20:
            problems.append(f"line {n}: {reason}")
    return counts, problems


def check_fix(data: bytes, verifier: Verifier) -> tuple[Counter[str], list[str]]:
    """Like :func:`check`, for a FIX capture: W and X must be signed, the rest is control."""
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for n, raw in enumerate(signing_fix.messages(data), 1):
        reason = signing_fix.verify(raw, verifier)
        if reason is None:
            counts["verified"] += 1
        elif reason == "unsigned" and signing_fix.msg_type(raw) not in signing_fix.SIGNED_TYPES:
            counts["control"] += 1
        else:
            counts[reason.split(" ")[0] if reason.startswith("unknown") else reason] += 1
            if len(problems) < 20:
                problems.append(f"message {n} (35={signing_fix.msg_type(raw)!r}): {reason}")
    return counts, problems


def fetch(url: str, headers: dict[str, str]) -> tuple[bytes, str | None]:
    """The body of ``GET url`` and its ``X-MD-Signature`` header (None when absent)."""
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - user-given URL
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return r.read(), r.headers.get(HEADER)
    except urllib.error.HTTPError as exc:  # a 4xx/5xx answer is signed as well
        with exc:
            return exc.read(), exc.headers.get(HEADER)


def check_http(
    answers: Iterable[tuple[str, bytes, str | None]], verifier: Verifier
) -> tuple[Counter[str], list[str]]:
    """Like :func:`check`, for (name, body, signature header) REST answers: each must verify."""
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for name, body, header in answers:
        reason = verifier.verify_detached(body, header)
        if reason is None:
            counts["verified"] += 1
            continue
        counts[reason.split(" ")[0] if reason.startswith("unknown") else reason] += 1
        problems.append(f"{name}: {reason}")
    return counts, problems


def _headers(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs or ():
        name, sep, value = p.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {p!r}: expected 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def _verifier(args: argparse.Namespace) -> Verifier:
    if args.keys:
        with urllib.request.urlopen(args.keys, timeout=10) as r:  # noqa: S310 - user-given URL
            return Verifier.from_document(orjson.loads(r.read()))
    return Verifier([load_public_pem(Path(p).read_bytes()) for p in args.public_key])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.verify", description=__doc__.split("\n")[0])
    ap.add_argument(
        "capture", nargs="?", help="one message per line (- for stdin); with --signature a body"
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--keys", help="URL of the gateway's GET /keys")
    src.add_argument("--public-key", action="append", help="PEM public key file (repeatable)")
    ap.add_argument("--http", action="append", help="GET this REST URL and check its answer")
    ap.add_argument("--header", action="append", help="'Name: value' sent with --http")
    ap.add_argument("--signature", help="the X-MD-Signature value of the body in CAPTURE")
    ap.add_argument("--fix", action="store_true", help="CAPTURE is a FIX byte stream")
    args = ap.parse_args(argv)
    if (args.capture is None) == (args.http is None):
        ap.error("give a CAPTURE or --http URL, not both")
    if args.signature is not None and args.capture is None:
        ap.error("--signature checks a CAPTURE file")
    try:
        verifier = _verifier(args)
        if args.http:
            hdrs = _headers(args.header)
            answers = [(url, *fetch(url, hdrs)) for url in args.http]
            counts, problems = check_http(answers, verifier)
        elif args.fix:
            data = (
                sys.stdin.buffer.read() if args.capture == "-" else Path(args.capture).read_bytes()
            )
            counts, problems = check_fix(data, verifier)
        elif args.signature is not None:
            body = (
                sys.stdin.buffer.read() if args.capture == "-" else Path(args.capture).read_bytes()
            )
            counts, problems = check_http([(args.capture, body, args.signature)], verifier)
        else:
            stream = (
                sys.stdin.buffer if args.capture == "-" else Path(args.capture).open("rb")  # noqa: SIM115
            )
            with stream:
                counts, problems = check(stream, verifier)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    bad = sum(v for k, v in counts.items() if k not in ("verified", "control"))
    print(f"{'FAIL' if bad or not counts['verified'] else 'OK'}: {summary or 'no messages'}")
    return 1 if bad or not counts["verified"] else 0


if __name__ == "__main__":
    sys.exit(main())
