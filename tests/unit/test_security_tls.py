"""core.tls: TLS 1.2 minimum, ECDHE + AEAD suites only for TLS 1.2, TLS 1.3 when offered.

Client and server shake hands through memory BIOs (no sockets); the clients are deliberately
permissive (security level 0) so that only the server's policy can refuse them.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from core.tls import client_context, server_context, uvicorn_ssl_options
from tests.helpers import self_signed_cert


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str | None, str]:
    """Run a full handshake in memory; (version, cipher) or raise ssl.SSLError."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", cli), ("s", srv)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            cipher = srv.cipher()
            return srv.version(), cipher[0] if cipher else ""
    raise AssertionError("handshake did not finish")


def permissive_client(
    cert: Path, *, max_version: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0"
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = max_version
    ctx.set_ciphers(ciphers)
    return ctx


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path)


def test_tls13_is_negotiated_when_offered(cert: tuple[Path, Path]) -> None:
    srv = server_context(str(cert[0]), str(cert[1]))
    version, _ = handshake(srv, client_context(str(cert[0])))
    assert version == "TLSv1.3"


def test_tls12_with_an_aead_suite_is_accepted(cert: tuple[Path, Path]) -> None:
    srv = server_context(str(cert[0]), str(cert[1]))
    cli = permissive_client(cert[0], max_version=ssl.TLSVersion.TLSv1_2)
    version, cipher = handshake(srv, cli)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and "GCM" in cipher


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"]
)
def test_tls12_cbc_suites_are_refused(cert: tuple[Path, Path], suite: str) -> None:
    """Python's default server context accepts these; our policy does not."""
    cli = permissive_client(cert[0], max_version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    default.load_cert_chain(cert[0], cert[1])
    default.set_ciphers("ALL:@SECLEVEL=0")  # what a deployment without a policy may end up with
    assert handshake(default, cli)[1] == suite  # the client really offers it
    with pytest.raises(ssl.SSLError):
        handshake(server_context(str(cert[0]), str(cert[1])), cli)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls10_and_tls11_are_refused(cert: tuple[Path, Path], version: ssl.TLSVersion) -> None:
    cli = permissive_client(cert[0], max_version=version)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(cert[0], cert[1])
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.set_ciphers("ALL:@SECLEVEL=0")
    assert handshake(old, cli)[0] in ("TLSv1", "TLSv1.1")  # the client really speaks it
    with pytest.raises(ssl.SSLError):
        handshake(server_context(str(cert[0]), str(cert[1])), cli)


def test_client_context_verifies_the_server(cert: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other, _ = self_signed_cert(tmp_path / "other")
    srv = server_context(str(cert[0]), str(cert[1]))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(srv, client_context(str(other)))


def _uvicorn_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """The context uvicorn builds from our options (what the REST gateway listens with)."""
    from uvicorn.config import create_ssl_context

    o = uvicorn_ssl_options(str(cert[0]), str(cert[1]))
    return create_ssl_context(
        o["ssl_certfile"],
        o["ssl_keyfile"],
        None,
        o["ssl_version"],
        ssl.CERT_NONE,
        None,
        o["ssl_ciphers"],
    )


def test_uvicorn_options_carry_the_policy(cert: tuple[Path, Path]) -> None:
    srv = _uvicorn_context(cert)
    assert handshake(srv, client_context(str(cert[0])))[0] == "TLSv1.3"
    cbc = permissive_client(
        cert[0], max_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA256"
    )
    with pytest.raises(ssl.SSLError):
        handshake(srv, cbc)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_uvicorn_context_refuses_tls11(cert: tuple[Path, Path]) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(
            _uvicorn_context(cert), permissive_client(cert[0], max_version=ssl.TLSVersion.TLSv1_1)
        )


def test_self_signed_helper_writes_a_usable_pair(tmp_path: Path) -> None:
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "core.tls", "self-signed", str(tmp_path), "localhost"],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    srv = server_context(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    assert handshake(srv, client_context(str(tmp_path / "tls.crt")))[0] == "TLSv1.3"


def test_self_signed_for_several_names_verifies_each(tmp_path: Path) -> None:
    """compose's internal certificate: one for every Kafka node and PostgreSQL, trusted as its
    own CA; each name verifies, another does not; keystore.pem is key + certificate (Kafka)."""
    import contextlib
    import subprocess
    import sys

    names = ["kafka", "kafka-2", "timescaledb", "127.0.0.1"]
    subprocess.run(
        [sys.executable, "-m", "core.tls", "self-signed", str(tmp_path), *names],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "keystore.pem").stat().st_mode & 0o077 == 0
    ks = (tmp_path / "keystore.pem").read_text()
    assert ks == (tmp_path / "tls.key").read_text() + (tmp_path / "tls.crt").read_text()
    srv = server_context(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))

    def shake(host: str) -> None:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        cli = client_context(str(tmp_path / "tls.crt")).wrap_bio(c_in, c_out, server_hostname=host)
        s = srv.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for obj in (cli, s):
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        cli.do_handshake()

    for host in names:
        shake(host)
    with pytest.raises(ssl.SSLCertVerificationError):
        shake("kafka-3")
