"""Cost of the optional security transforms per message (docs/benchmarks.md "Security").

Ed25519 signing is once per message per WebSocket gateway process (core/signing.py), order-id
anonymization once per l3/trades message (core/anonymize.py); both run in core.follower's
``_parse`` when installed. This measures them in isolation and through ``_parse``, and the
later additions: a REST answer's X-MD-Signature (gateway_rest/signing.py, signed or from its
cache), a FIX X message's trailer signature (core/signing_fix.py, per message per session), a
WebSocket tier's copy of an l3 message (core.anonymize.View: made and re-signed, or shared),
and with ``--redis URL`` a FIX session lease taken and released (fix_gateway/session_lock.py).

    .venv/bin/python -m loadtests.bench_security [--n 20000] [--redis redis://127.0.0.1:16379/0]
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
    ap.add_argument("--redis", default="", help="also time a FIX session lease on this Redis")
    args = ap.parse_args()
    n, redis_url = args.n, args.redis
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
    out += _later_rows(signer, n)
    for name, us in out:
        print(f"{name:50s} {us:8.2f} us CPU")
    if redis_url:
        print(f"{'FIX session lease acquire + release (wall)':50s} {_lease_us(redis_url):8.2f} us")


def _later_rows(signer: Signer, n: int) -> list[tuple[str, float]]:
    from core import signing_fix
    from core.anonymize import ws_anonymizer
    from core.settings import Settings
    from fix_gateway.codec import encode
    from gateway_rest.signing import ResponseSigner

    body = L2  # a REST answer of that size
    rs = ResponseSigner(signer)
    fields: list[tuple[int, str | int]] = [
        (49, "MDGW"),
        (56, "CLIENT1"),
        (34, 1234),
        (52, "20261206-10:00:00.123"),
        (262, "md1"),
        (268, 2),
    ]
    for action, side, px, size in (("0", "0", "43250.12", "0.5"), ("2", "1", "43251.00", "0")):
        fields += [(279, action), (269, side), (55, "BTC-USD"), (270, px), (271, size)]
    x = encode("X", fields)
    signing.install(signer)
    try:
        a = ws_anonymizer(Settings.from_env({"MD_ANON_SECRET": "0123456789abcdef-secret"}))
        assert a.tiers is not None
        view = a.tiers.for_tier("anonymous")
        assert view is not None
        l3 = signer.sign(L3)

        def cold() -> object:
            view.cache.clear()
            return view.variant(l3)

        rows: list[tuple[str, Callable[[], object]]] = [
            (f"REST X-MD-Signature, {len(body)} B body, signed", lambda: signer.header(body)),
            ("REST X-MD-Signature, cached body", lambda: rs.header(body)),
            (f"FIX trailer signature, X of {len(x)} B", lambda: signing_fix.sign(x, signer)),
            ("WS tier copy of an l3_update: made + re-signed", cold),
            ("WS tier copy of an l3_update: shared", lambda: view.variant(l3)),
        ]
        return [(name, per_call_us(fn, n)) for name, fn in rows]
    finally:
        signing.install(None)


def _lease_us(url: str, n: int = 500) -> float:
    """Wall time of one FIX logon's lease acquire + release on a real Redis (a round trip each)."""
    import asyncio

    from fix_gateway.session_lock import SessionLock

    async def run() -> float:
        lock = SessionLock(url, "bench", owner="bench")
        try:
            t = time.perf_counter()
            for i in range(n):
                lock.acquire(f"S{i % 10}")
                lock.release(f"S{i % 10}")
            return (time.perf_counter() - t) / n * 1e6
        finally:
            lock.close()

    return asyncio.run(run())


if __name__ == "__main__":
    main()
