"""``MD_WS_GC_GEN0``: the gateway process runs the cyclic collector less often (issue 16 item 4:
a connection storm spent ~30 % of the gateway's CPU per connection in collections)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from core.errors import ConfigError
from core.settings import Settings
from gateway_ws.__main__ import tune_gc
from gateway_ws.config import WsConfig


@pytest.fixture
def restore_gc() -> Iterator[None]:
    old = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*old)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_raises_the_thresholds_and_freezes_what_the_start_allocated() -> None:
    gc.unfreeze()
    tune_gc(100_000)
    assert gc.get_threshold() == (100_000, 50, 100)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restore_gc")
def test_zero_leaves_the_collector_as_python_sets_it() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_the_threshold_is_a_setting_and_a_bad_value_names_it() -> None:
    assert WsConfig.from_settings(Settings.from_env({})).gc_gen0 == 100_000
    assert WsConfig.from_settings(Settings.from_env({"MD_WS_GC_GEN0": "0"})).gc_gen0 == 0
    with pytest.raises(ConfigError, match="MD_WS_GC_GEN0"):
        WsConfig.from_settings(Settings.from_env({"MD_WS_GC_GEN0": "-1"}))
