"""``python -m core.verify``: check the Ed25519 signatures of a captured message stream.

    python -m core.verify capture.ndjson --keys https://md.example.com:8001/keys
    python -m core.verify capture.ndjson --public-key signing.pub

The capture holds one message per line, as a WebSocket client received them (``-`` reads stdin).
Data messages (those with a ``seq``) must be signed by a known key; control messages
(``subscribed``, ``heartbeat``, ``error``...) are counted but need no signature. Exit status 0
when every data message verifies, 1 otherwise, 2 on bad usage. Signature format: core/signing.py.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

from core.signing import Verifier, load_public_pem


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


def _verifier(args: argparse.Namespace) -> Verifier:
    if args.keys:
        with urllib.request.urlopen(args.keys, timeout=10) as r:  # noqa: S310 - user-given URL
            return Verifier.from_document(orjson.loads(r.read()))
    return Verifier([load_public_pem(Path(p).read_bytes()) for p in args.public_key])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.verify", description=__doc__.split("\n")[0])
    ap.add_argument("capture", help="one message per line; - for stdin")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--keys", help="URL of the gateway's GET /keys")
    src.add_argument("--public-key", action="append", help="PEM public key file (repeatable)")
    args = ap.parse_args(argv)
    try:
        verifier = _verifier(args)
        stream = (
            sys.stdin.buffer if args.capture == "-" else Path(args.capture).open("rb")  # noqa: SIM115
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with stream:
        counts, problems = check(stream, verifier)
    for p in problems:
        print(p)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    bad = sum(v for k, v in counts.items() if k not in ("verified", "control"))
    print(f"{'FAIL' if bad or not counts['verified'] else 'OK'}: {summary or 'no messages'}")
    return 1 if bad or not counts["verified"] else 0


if __name__ == "__main__":
    sys.exit(main())
