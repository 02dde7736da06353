"""core.signing / core.verify: Ed25519 signatures on data messages, verified from a capture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from core import signing
from core.errors import ConfigError
from core.follower import _parse
from core.settings import Settings
from core.signing import Signer, Verifier, keys_document, split_signed, write_keypair
from core.verify import check, check_fix, main

MSG = b'{"type":"l2_update","channel":"l2","symbol":"BTC-USD","seq":7,"epoch":1,"data":{"changes":[["buy","100.5","2"]]}}'


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_keypair(str(tmp_path / "k"))


@pytest.fixture
def signer(keys: tuple[Path, Path]) -> Signer:
    return Signer.from_pem(keys[0].read_bytes())


@pytest.fixture
def installed(signer: Signer) -> Iterator[Signer]:
    signing.install(signer)
    try:
        yield signer
    finally:
        signing.install(None)


def test_signed_message_is_the_same_json_plus_kid_and_sig(signer: Signer) -> None:
    out = signer.sign(MSG)
    d = orjson.loads(out)
    assert d.pop("kid") == signer.kid and len(d.pop("sig")) == 86
    assert d == orjson.loads(MSG)
    assert split_signed(out) == (MSG, signer.kid, split_signed(out)[2])  # type: ignore[index]
    assert Verifier([signer.public_key]).verify(out) is None
    assert signer.sign(MSG) == out  # deterministic (RFC 8032): direct feed and Kafka agree


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.replace(b'"100.5"', b'"100.6"'),  # a price changed
        lambda b: b.replace(b'"seq":7', b'"seq":8'),
        lambda b: b[:-20] + (b"A" if b[-20:-19] != b"A" else b"B") + b[-19:],  # the signature
    ],
)
def test_any_change_fails_verification(signer: Signer, tamper: object) -> None:
    bad = tamper(signer.sign(MSG))  # type: ignore[operator]
    assert Verifier([signer.public_key]).verify(bad) == "bad signature"


def test_unknown_key_and_unsigned(signer: Signer, tmp_path: Path) -> None:
    other = Signer.from_pem(write_keypair(str(tmp_path / "o"))[0].read_bytes())
    v = Verifier([signer.public_key])
    assert v.verify(other.sign(MSG)) == f"unknown key id {other.kid}"
    assert v.verify(MSG) == "unsigned"


def test_keys_document_round_trip(signer: Signer, keys: tuple[Path, Path], tmp_path: Path) -> None:
    old_pub = write_keypair(str(tmp_path / "old"))[1]
    s = Settings.from_env({"MD_SIGNING_PUBLIC_KEYS": str(old_pub)})
    doc = orjson.loads(orjson.dumps(keys_document(signer, s)))
    assert [k["kid"] for k in doc["keys"]][0] == signer.kid and len(doc["keys"]) == 2
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" for k in doc["keys"])
    assert Verifier.from_document(doc).verify(signer.sign(MSG)) is None


def test_settings(keys: tuple[Path, Path]) -> None:
    assert Signer.from_settings(Settings.from_env({})) is None
    s = Signer.from_settings(
        Settings.from_env({"MD_SIGNING_KEY": str(keys[0]), "MD_SIGNING_KEY_ID": "2026-12"})
    )
    assert s is not None and s.kid == "2026-12"
    with pytest.raises(ConfigError) as ei:
        Signer.from_settings(Settings.from_env({"MD_SIGNING_KEY": str(keys[1])}))  # public
    assert ei.value.key == "MD_SIGNING_KEY"


def test_follower_signs_what_it_hands_out_when_installed(installed: Signer) -> None:
    m = _parse(MSG)
    assert Verifier([installed.public_key]).verify(m.raw) is None
    signing.install(None)
    assert _parse(MSG).raw == MSG  # off by default: the bytes of Kafka, unchanged


def _capture(tmp_path: Path, lines: list[bytes]) -> Path:
    p = tmp_path / "capture.ndjson"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_verify_tool(
    signer: Signer, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [signer.sign(MSG.replace(b'"seq":7', b'"seq":%d' % i)) for i in range(1, 6)]
    control = b'{"type":"subscribed","subscriptions":["l2:BTC-USD"]}'
    ok = _capture(tmp_path, [control, *good])
    assert main([str(ok), "--public-key", str(keys[1])]) == 0
    assert "OK: control 1, verified 5" in capsys.readouterr().out
    bad = _capture(tmp_path, [*good[:2], good[2].replace(b"100.5", b"999.9"), MSG, *good[3:]])
    assert main([str(bad), "--public-key", str(keys[1])]) == 1
    out = capsys.readouterr().out
    assert "line 3: bad signature" in out and "line 4: unsigned" in out and out.startswith("line")
    assert main([str(tmp_path / "missing"), "--public-key", str(keys[1])]) == 2


def test_verify_counts(signer: Signer) -> None:
    counts, problems = check([signer.sign(MSG), MSG, b"garbage"], Verifier([signer.public_key]))
    assert counts == {"verified": 1, "unsigned": 1, "not JSON": 1} and len(problems) == 2


def test_resume_entries_from_redis_are_signed(installed: Signer) -> None:
    from gateway_ws.resume import _entry

    seq, epoch, raw = _entry((b"7-0", {b"m": MSG, b"e": b"1"}))
    assert (seq, epoch) == (7, 1) and Verifier([installed.public_key]).verify(raw) is None


# ------------------------------------------------------------------ REST: detached signatures

BODY = b'{"symbol":"BTC-USD","seq":7,"epoch":1,"bid":"100.5","ask":"100.6"}'


def test_detached_header_verifies_the_exact_body(signer: Signer, tmp_path: Path) -> None:
    header = signer.header(BODY).decode()
    v = Verifier([signer.public_key])
    assert header.startswith(f"kid={signer.kid};sig=") and v.verify_detached(BODY, header) is None
    assert v.verify_detached(BODY.replace(b"100.5", b"100.4"), header) == "bad signature"
    assert v.verify_detached(BODY + b" ", header) == "bad signature"  # bytes, not JSON values
    assert v.verify_detached(BODY, None) == "unsigned"
    assert v.verify_detached(BODY, "sig=abc") == "malformed signature header"
    other = Signer.from_pem(write_keypair(str(tmp_path / "o"))[0].read_bytes())
    assert v.verify_detached(BODY, other.header(BODY).decode()) == f"unknown key id {other.kid}"


def test_verify_tool_checks_a_saved_rest_body(
    signer: Signer, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    sig = signer.header(BODY).decode()
    assert main([str(body), "--signature", sig, "--public-key", str(keys[1])]) == 0
    assert "OK: verified 1" in capsys.readouterr().out
    body.write_bytes(BODY.replace(b"100.6", b"100.7"))
    assert main([str(body), "--signature", sig, "--public-key", str(keys[1])]) == 1
    assert "bad signature" in capsys.readouterr().out


def test_verify_tool_fetches_rest_answers(
    signer: Signer, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--http``: a real HTTP server; the signed answer passes, an unsigned or forged one fails,
    and ``--header`` reaches the server (an API key)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("X-API-Key"))
            self.send_response(404 if self.path == "/missing" else 200)
            self.send_header("Content-Length", str(len(BODY)))
            if self.path in ("/signed", "/missing"):
                self.send_header("X-MD-Signature", signer.header(BODY).decode())
            elif self.path == "/forged":
                self.send_header("X-MD-Signature", signer.header(BODY + b"x").decode())
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        pub = ["--public-key", str(keys[1])]
        assert main(["--http", f"{base}/signed", "--header", "X-API-Key: k1", *pub]) == 0
        assert seen == ["k1"]
        assert main(["--http", f"{base}/signed", "--http", f"{base}/plain", *pub]) == 1
        assert f"{base}/plain: unsigned" in capsys.readouterr().out
        assert main(["--http", f"{base}/missing", *pub]) == 0  # an error answer is signed too
        assert main(["--http", f"{base}/forged", *pub]) == 1
        assert f"{base}/forged: bad signature" in capsys.readouterr().out
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ FIX: the standard trailer


def test_fix_trailer_signature_is_a_valid_frame(signer: Signer, keys: tuple[Path, Path]) -> None:
    from core import signing_fix
    from fix_gateway.codec import Message, Parser, encode

    fields: list[tuple[int, str | int]] = [(49, "MDGW"), (56, "CLIENT1"), (34, 7), (262, "r1")]
    w = encode("W", [*fields, (55, "BTC-USD"), (268, 1), (269, "0"), (270, "100.5"), (271, "2")])
    signed = signing_fix.sign(w, signer)
    p = Parser()
    p.receive_data(signed)
    (msg,) = p.events_received()
    assert isinstance(msg, Message) and msg.error is None  # BodyLength and CheckSum still exact
    sig = msg.get(89) or ""
    assert sig.startswith(signer.kid + ":") and msg.get(93) == str(len(sig))
    v = Verifier([signer.public_key])
    assert signing_fix.verify(signed, v) is None
    assert signing_fix.verify(signed.replace(b"100.5", b"100.6"), v) == "bad signature"
    assert signing_fix.verify(w, v) == "unsigned"
    heartbeat = encode("0", fields)
    assert signing_fix.sign(heartbeat, signer) == heartbeat  # session messages are not signed
    log = (heartbeat + signed).replace(b"\x01", b"|")  # a log line with | for SOH
    counts, problems = check_fix(log, v)
    assert counts == {"control": 1, "verified": 1} and problems == []


def test_rest_signature_cache_is_bounded(signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway_rest import signing as rest_signing

    rs = rest_signing.ResponseSigner(signer)
    big = b"[" + b"1," * rest_signing.CACHE_BODY_MAX + b"1]"
    assert rs.header(big) == signer.header(big) and rs.cache == {}  # large answers: not kept
    monkeypatch.setattr(rest_signing, "CACHE_MAX", 3)
    for i in range(3):
        rs.header(b'{"n":%d}' % i)
    assert len(rs.cache) == 3
    rs.header(b'{"n":9}')
    assert list(rs.cache) == [b'{"n":9}']  # full: cleared, never more than CACHE_MAX
