"""Security settings of internal traffic: Kafka TLS/SASL, PostgreSQL sslmode, Redis AUTH."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.follower import StreamFollower
from core.kafka import make_consumer, make_producer
from core.kafka_auth import kafka_security_options
from core.settings import Settings
from tests.helpers import self_signed_cert


def env(**kw: str) -> Settings:
    return Settings.from_env(kw)


def test_plaintext_kafka_by_default() -> None:
    assert kafka_security_options(env()) == {}


def test_kafka_sasl_ssl(tmp_path: Path) -> None:
    ca, _ = self_signed_cert(tmp_path)
    opts = kafka_security_options(
        env(
            MD_KAFKA_SECURITY_PROTOCOL="sasl_ssl",
            MD_KAFKA_SSL_CAFILE=str(ca),
            MD_KAFKA_SASL_USERNAME="aggregator",
            MD_KAFKA_SASL_PASSWORD="pw",
        )
    )
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "aggregator" and opts["sasl_plain_password"] == "pw"
    ctx: ssl.SSLContext = opts["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"MD_KAFKA_SECURITY_PROTOCOL": "TLS"}, "MD_KAFKA_SECURITY_PROTOCOL"),
        ({"MD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "MD_KAFKA_SASL_USERNAME"),
        (
            {
                "MD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "MD_KAFKA_SASL_MECHANISM": "PLAIN",
                "MD_KAFKA_SASL_USERNAME": "u",
                "MD_KAFKA_SASL_PASSWORD": "p",
            },
            "MD_KAFKA_SASL_MECHANISM",
        ),
        (
            {"MD_KAFKA_SECURITY_PROTOCOL": "SSL", "MD_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "MD_KAFKA_SSL_CAFILE",
        ),
    ],
)
def test_bad_kafka_security_settings_name_the_variable(kw: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        kafka_security_options(env(**kw))
    assert ei.value.key == key


async def test_every_kafka_factory_applies_them(tmp_path: Path) -> None:
    ca, _ = self_signed_cert(tmp_path)
    s = env(
        MD_KAFKA_SECURITY_PROTOCOL="SSL",
        MD_KAFKA_SSL_CAFILE=str(ca),
    )
    producer, consumer = make_producer(s), make_consumer(s, "t")
    follower = StreamFollower(s)._consumer()  # the gateways' own consumer
    for client in (producer.client, consumer._client, follower._client):
        assert client._security_protocol == "SSL" and client._ssl_context is not None


def test_pg_sslmode_is_added_to_the_dsn() -> None:
    s = env(
        MD_PG_DSN="postgresql://md:pw@db:5432/marketdata?application_name=x",
        MD_PG_SSLMODE="verify-full",
        MD_PG_SSLROOTCERT="/etc/md/pg-ca.pem",
    )
    assert s.pg_dsn.startswith("postgresql://md:pw@db:5432/marketdata?")
    assert "application_name=x" in s.pg_dsn and "sslmode=verify-full" in s.pg_dsn
    assert "sslrootcert=%2Fetc%2Fmd%2Fpg-ca.pem" in s.pg_dsn
    own = env(MD_PG_DSN="postgresql://db/x?sslmode=require", MD_PG_SSLMODE="verify-full")
    assert own.pg_dsn == "postgresql://db/x?sslmode=require"  # the DSN's own choice wins
    assert env().pg_dsn == Settings().pg_dsn


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"MD_PG_SSLMODE": "on"}, "MD_PG_SSLMODE"),
        ({"MD_PG_SSLROOTCERT": "/ca.pem", "MD_PG_SSLMODE": "require"}, "MD_PG_SSLROOTCERT"),
    ],
)
def test_bad_pg_tls_settings(kw: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        Settings.from_env(kw)
    assert ei.value.key == key


def test_redis_password_is_merged_and_quoted() -> None:
    s = env(MD_REDIS_URL="rediss://cache:6380/2", MD_REDIS_PASSWORD="p@ss:w/rd")
    assert s.redis_url == "rediss://:p%40ss%3Aw%2Frd@cache:6380/2"
    u = env(MD_REDIS_PASSWORD="pw", MD_REDIS_USERNAME="gateway")
    assert u.redis_url == "redis://gateway:pw@127.0.0.1:16379/0"
    assert "pw" not in repr(u)
    with pytest.raises(ConfigError):
        env(MD_REDIS_URL="redis://:a@h:1/0", MD_REDIS_PASSWORD="b")
