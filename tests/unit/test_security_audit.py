"""core.audit: audit lines carry an event, never a credential, and cannot flood the log."""

from __future__ import annotations

import logging

import pytest

from core.audit import MAX_VALUE, AuditLog
from core.security import fingerprint


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_credential_becomes_a_key_id(caplog: pytest.LogCaptureFixture) -> None:
    a = AuditLog("svc")
    with caplog.at_level(logging.INFO, logger="svc.audit"):
        assert a.event("auth_failed", api_key="sk_live_123456", ip="10.0.0.1")
    (rec,) = caplog.records
    f = vars(rec)  # the audit fields are extra attributes of the record
    assert rec.name == "svc.audit" and f["audit"] is True and f["event"] == "auth_failed"
    assert f["key_id"] == fingerprint("sk_live_123456") and f["ip"] == "10.0.0.1"
    assert "sk_live_123456" not in str(rec.__dict__)


def test_peer_values_are_truncated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="svc.audit"):
        AuditLog("svc").event("logon_refused", reason="x" * 10_000)
    assert len(vars(caplog.records[0])["reason"]) == MAX_VALUE


def test_repeated_events_of_one_peer_are_suppressed_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    a = AuditLog("svc", interval_s=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="svc.audit"):
        assert a.event("auth_failed", limit_key="10.0.0.1")
        assert not any(a.event("auth_failed", limit_key="10.0.0.1") for _ in range(50))
        assert a.event("auth_failed", limit_key="10.0.0.2")  # another peer is not muted
        assert a.event("rate_limited", limit_key="10.0.0.1")  # nor another event
        clock.t += 1.5
        assert a.event("auth_failed", limit_key="10.0.0.1")
    assert len(caplog.records) == 4
    assert vars(caplog.records[-1])["suppressed"] == 50


def test_key_table_is_bounded() -> None:
    clock = Clock()
    a = AuditLog("svc", clock=clock)
    for i in range(25_000):
        a.event("e", limit_key=str(i))
    assert len(a._last) <= 10_000
