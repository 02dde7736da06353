"""Kafka client TLS and SASL options from settings (docs/security.md "Internal traffic").

Every Kafka client of the platform (``core.kafka`` factories, the stream follower) merges
:func:`kafka_security_options` into its constructor arguments, so one set of variables secures
them all:

=============================== ===================================================
``MD_KAFKA_SECURITY_PROTOCOL``  ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``
``MD_KAFKA_SSL_CAFILE``         CA bundle that signed the brokers' certificates (default: system)
``MD_KAFKA_SSL_CERTFILE/KEYFILE`` client certificate for mutual TLS (optional)
``MD_KAFKA_SASL_MECHANISM``     ``SCRAM-SHA-512`` (default with SASL), ``SCRAM-SHA-256``, ``PLAIN``
``MD_KAFKA_SASL_USERNAME/PASSWORD`` the principal; one per service lets broker ACLs say who may
                                produce to ``md.in`` (only sources) and to the streams
                                (only the aggregator)
=============================== ===================================================

TLS follows core.tls's policy (TLS 1.2+, AEAD suites) and verifies the broker's host name.
``SASL_PLAINTEXT`` with ``PLAIN`` would send the password in clear text: refused.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from core.tls import client_context

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


def kafka_security_options(s: Settings) -> dict[str, Any]:
    """``security_protocol``, ``ssl_context`` and ``sasl_*`` keyword arguments for aiokafka."""
    proto = s.get("MD_KAFKA_SECURITY_PROTOCOL", str, "PLAINTEXT").upper()
    if proto not in PROTOCOLS:
        raise ConfigError("MD_KAFKA_SECURITY_PROTOCOL", f"expected one of {', '.join(PROTOCOLS)}")
    if proto == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": proto}
    if proto in ("SSL", "SASL_SSL"):
        cert = s.get("MD_KAFKA_SSL_CERTFILE", str, "") or None
        key = s.get("MD_KAFKA_SSL_KEYFILE", str, "") or None
        if key and not cert:
            raise ConfigError("MD_KAFKA_SSL_CERTFILE", "MD_KAFKA_SSL_KEYFILE is set but no cert")
        try:
            opts["ssl_context"] = client_context(
                s.get("MD_KAFKA_SSL_CAFILE", str, "") or None, cert, key
            )
        except OSError as exc:
            raise ConfigError("MD_KAFKA_SSL_CAFILE", f"cannot load: {exc}") from exc
    if proto.startswith("SASL_"):
        mech = s.get("MD_KAFKA_SASL_MECHANISM", str, "SCRAM-SHA-512").upper()
        if mech not in MECHANISMS:
            raise ConfigError("MD_KAFKA_SASL_MECHANISM", f"expected one of {', '.join(MECHANISMS)}")
        if proto == "SASL_PLAINTEXT" and mech == "PLAIN":
            raise ConfigError(
                "MD_KAFKA_SASL_MECHANISM",
                "PLAIN over SASL_PLAINTEXT sends the password in clear: use SASL_SSL or SCRAM",
            )
        user = s.get("MD_KAFKA_SASL_USERNAME", str, "")
        password = s.get("MD_KAFKA_SASL_PASSWORD", str, "")
        if not user or not password:
            raise ConfigError(
                "MD_KAFKA_SASL_USERNAME", "SASL needs MD_KAFKA_SASL_USERNAME and _PASSWORD"
            )
        opts.update(sasl_mechanism=mech, sasl_plain_username=user, sasl_plain_password=password)
    return opts


def rdkafka_security_config(s: Settings) -> dict[str, Any]:
    """The same settings as :func:`kafka_security_options`, as librdkafka configuration
    (``core/kafka_rd.py``); validated by that function, so both clients refuse the same input."""
    opts = kafka_security_options(s)
    if not opts:
        return {}
    conf: dict[str, Any] = {"security.protocol": opts["security_protocol"]}
    if "ssl_context" in opts:
        for key, name in (
            ("ssl.ca.location", "MD_KAFKA_SSL_CAFILE"),
            ("ssl.certificate.location", "MD_KAFKA_SSL_CERTFILE"),
            ("ssl.key.location", "MD_KAFKA_SSL_KEYFILE"),
        ):
            value = s.get(name, str, "")
            if value:
                conf[key] = value
        conf["ssl.endpoint.identification.algorithm"] = "https"  # verify the host name
    if "sasl_mechanism" in opts:
        conf["sasl.mechanism"] = opts["sasl_mechanism"]
        conf["sasl.username"] = opts["sasl_plain_username"]
        conf["sasl.password"] = opts["sasl_plain_password"]
    return conf
