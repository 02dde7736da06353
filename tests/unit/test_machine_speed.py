"""The host-speed reference recorded beside every CPU figure of bench_e2e."""

from __future__ import annotations

import pytest

from loadtests import machine_speed


def test_the_reference_is_the_cpu_time_of_the_workload_in_a_child() -> None:
    v = machine_speed.reference_cpu_s()
    assert v is not None and 0.01 < v < 60  # seconds of CPU, not wall time or a count


def test_a_reference_that_cannot_run_is_none_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(machine_speed.sys, "executable", "/nonexistent/python")
        assert machine_speed.reference_cpu_s() is None
    monkeypatch.setattr(machine_speed, "WORKLOAD", "print('not a number')")
    assert machine_speed.reference_cpu_s() is None


def test_the_wakeup_is_one_hop_between_two_event_loops_in_microseconds() -> None:
    v = machine_speed.wakeup_us(n=20)
    assert v is not None and 1 < v < 1_000_000  # µs of one loopback hop, not ns or seconds


def test_a_wakeup_that_cannot_run_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_speed.sys, "executable", "/nonexistent/python")
    assert machine_speed.wakeup_us(n=5) is None
