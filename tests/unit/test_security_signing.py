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
from core.verify import check, main

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
