"""The cache writer's librdkafka settings (storage/kafka_rd.py) carry the same MD_KAFKA_*
security as every aiokafka client, and a wrong client name fails at start with its variable."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.settings import Settings
from storage.cache_writer import CacheWriter
from storage.kafka_rd import RdConsumer, rd_config


def _settings(**env: str) -> Settings:
    return Settings.from_env({"MD_KAFKA_BOOTSTRAP": "127.0.0.1:1", **env})


def test_plaintext_has_no_security_and_never_commits() -> None:
    conf = rd_config(_settings(), "c1")
    assert conf["bootstrap.servers"] == "127.0.0.1:1" and "security.protocol" not in conf
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False


def test_sasl_scram_is_passed_to_librdkafka() -> None:
    conf = rd_config(
        _settings(
            MD_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            MD_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            MD_KAFKA_SASL_USERNAME="storage",
            MD_KAFKA_SASL_PASSWORD="pw",
        ),
        "c1",
    )
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "SCRAM-SHA-512",
        "storage",
        "pw",
    )


def test_incomplete_security_settings_fail_as_for_aiokafka() -> None:
    with pytest.raises(ConfigError, match="MD_KAFKA_SASL_USERNAME"):
        rd_config(_settings(MD_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT"), "c1")


async def test_client_setting_picks_the_reader_and_rejects_others() -> None:
    conf = _settings(MD_STORAGE_KAFKA_CLIENT="confluent")
    assert isinstance(CacheWriter(conf)._consumer(), RdConsumer)  # noqa: SLF001
    assert not isinstance(CacheWriter(_settings())._consumer(), RdConsumer)  # noqa: SLF001
    w = CacheWriter(_settings(MD_STORAGE_KAFKA_CLIENT="kafka-python"))
    with pytest.raises(ConfigError, match="MD_STORAGE_KAFKA_CLIENT"):
        w._consumer()  # noqa: SLF001
