"""The platform's TLS policy, in one place for every listener and client (docs/security.md "TLS").

Policy:

- TLS 1.2 is the minimum; TLS 1.3 is negotiated whenever the peer offers it (OpenSSL picks the
  highest common version). TLS 1.0/1.1 are refused (RFC 8996 deprecates them).
- TLS 1.2 cipher suites: ephemeral ECDHE key exchange (forward secrecy) with an AEAD cipher
  only (AES-GCM, ChaCha20-Poly1305): :data:`TLS12_CIPHERS`. No RSA key exchange, no CBC, no
  SHA-1 MACs, no static DH. TLS 1.3 suites are OpenSSL's defaults (all AEAD).
- Renegotiation and TLS compression (CRIME) are off; the server chooses the cipher order.

The WebSocket and FIX gateways build their listening context with :func:`server_context`; the
REST gateway (uvicorn, which takes file names, not a context) passes :func:`uvicorn_ssl_options`;
the Kafka client uses :func:`client_context`.
"""

from __future__ import annotations

import ssl
from typing import Any

MIN_VERSION = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = MIN_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A listening socket's context: the certificate chain and key, the policy above."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_context(
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client's context: verifies the server against ``cafile`` (the system store when None)
    and its host name, presents ``certfile`` for mutual TLS when given."""
    ctx = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile))
    ctx.check_hostname = check_hostname
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def uvicorn_ssl_options(certfile: str, keyfile: str | None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``: the same policy through uvicorn's own options
    (TLS 1.0/1.1 cannot complete: they have none of these AEAD suites)."""
    return {
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "ssl_ciphers": TLS12_CIPHERS,
    }


def write_self_signed(
    directory: str, hostname: str = "localhost", days: int = 30, *, also: tuple[str, ...] = ()
) -> None:
    """``tls.crt`` + ``tls.key`` (0600) for ``hostname`` (and the names or IP addresses in
    ``also``, as further subjectAltNames) in ``directory``, and ``keystore.pem`` (0600: key and
    certificate in one file, Kafka's PEM keystore). A test certificate for docker compose or a
    demo, never for production: clients are told to trust it as its own CA (compose's Kafka and
    PostgreSQL: ``python -m core.tls self-signed var/tls-internal kafka kafka-2 kafka-3
    timescaledb localhost 127.0.0.1``)."""
    import datetime
    import ipaddress
    import os
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    sans: list[x509.GeneralName] = []
    for host in (hostname, *also):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (d / "tls.crt").write_bytes(cert_pem)
    for fname, data in (("tls.key", key_pem), ("keystore.pem", key_pem + cert_pem)):
        fd = os.open(d / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "self-signed":
        sys.exit("usage: python -m core.tls self-signed DIR [HOSTNAME [MORE-NAMES-OR-IPS...]]")
    hosts = sys.argv[3:] or ["localhost"]
    write_self_signed(sys.argv[2], hosts[0], also=tuple(hosts[1:]))
    print(f"wrote {sys.argv[2]}/tls.crt, tls.key and keystore.pem for {', '.join(hosts)}")
