"""Cost of the optional security transforms per message (docs/benchmarks.md "Security").

Ed25519 signing is once per message per WebSocket gateway process (core/signing.py), order-id
anonymization once per l3/trades message (core/anonymize.py); both run in core.follower's
``_parse`` when installed. This measures them in isolation and through ``_parse``.

    .venv/bin/python -m loadtests.bench_security [--n 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import orjson

from core import anonymize, signing
from core.anonymize import Anonymizer
from core.follower import _parse
from core.signing import Signer, Verifier, write_keypair

L2 = orjson.dumps(
    {
        "type": "l2_update",
        "channel": "l2",
        "symbol": "BTC-USD",
        "seq": 123456,
        "epoch": 1,
        "timestamp": "2026-12-06T10:00:00.123456Z",
        "event_time": "2026-12-06T10:00:00.123000Z",
        "checksum": 2882343476,
        "data": {"changes": [["buy", "43250.12", "0.5"], ["sell", "43251.00", "0"]]},
    }
)
L3 = orjson.dumps(
    {
        "type": "l3_update",
        "channel": "l3",
        "symbol": "BTC-USD",
        "seq": 654321,
        "epoch": 1,
        "timestamp": "2026-12-06T10:00:00.123456Z",
        "data": {
            "events": [
                {
                    "op": "add",
                    "order_id": f"ord-{i}",
                    "side": "buy",
                    "price": "43250.12",
                    "size": "0.5",
                }
                for i in range(3)
            ]
        },
    }
)


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """CPU time per call (process time: on a shared, oversubscribed machine wall time mostly
    measures the other processes), best of 3 runs of ``n`` calls."""
    for _ in range(min(n, 1000)):
        fn()
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as d:
        key, _ = write_keypair(d)
        signer = Signer.from_pem(key.read_bytes())
    signed = signer.sign(L2)
    verifier = Verifier([signer.public_key])
    anon = Anonymizer(b"0123456789abcdef-secret", "pseudonym")
    rows = [
        (f"ed25519 sign, l2_update ({len(L2)} B)", lambda: signer.sign(L2)),
        ("ed25519 verify, l2_update", lambda: verifier.verify(signed)),
        ("pseudonymize l3_update, 3 events", lambda: anon.raw(L3)),
        ("anonymizer on l2_update (nothing to do)", lambda: anon.raw(L2)),
        ("follower _parse l2_update, nothing installed", lambda: _parse(L2)),
    ]
    out = [(name, per_call_us(fn, n)) for name, fn in rows]
    signing.install(signer)
    anonymize.install(anon)
    try:
        out.append(
            ("follower _parse l2_update, signer+anonymizer", per_call_us(lambda: _parse(L2), n))
        )
        out.append(
            ("follower _parse l3_update, signer+anonymizer", per_call_us(lambda: _parse(L3), n))
        )
    finally:
        signing.install(None)
        anonymize.install(None)
    for name, us in out:
        print(f"{name:50s} {us:8.2f} us CPU")


if __name__ == "__main__":
    main()
