"""The opt-in heap freeze of a big triggerer: when it freezes, what it never does, and the setting's path."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from helpers import first_event, tag_trigger
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_ecr_retag.core import heap_freeze
from airflow_ecr_retag.core.heap_freeze import FREEZE_FROM_WAITS, REFREEZE_GROWTH, SettledHeapFreezer
from airflow_ecr_retag.core.tag_poller import loop_state
from airflow_ecr_retag.testing import build_image
from airflow_ecr_retag.triggers.heap import freeze_settled_heap


class RecordingCollector:
    """Stands in for :mod:`gc`: a test process must not freeze its own heap."""

    def __init__(self) -> None:
        self.freezes: list[int] = []
        self.waits = 0

        self.young_collections_before_freeze = 0
        self._young_collected = False

    def collect(self, generation: int) -> int:
        assert generation == 1  # a freeze never pays for a full collection
        self._young_collected = True
        return 0

    def freeze(self) -> None:
        self.young_collections_before_freeze += self._young_collected
        self._young_collected = False
        self.freezes.append(self.waits)


def follow(freezer: SettledHeapFreezer, collector: RecordingCollector, counts: list[int]) -> None:
    for waits in counts:
        collector.waits = waits
        freezer.waits_changed(waits)


def test_disabled_freezer_never_touches_the_collector():
    collector = RecordingCollector()
    follow(SettledHeapFreezer(collector=collector), collector, list(range(1, 20_001)))
    assert collector.freezes == []


def test_freezes_at_100_waits_then_at_each_new_high_by_a_quarter():
    collector = RecordingCollector()
    freezer = SettledHeapFreezer(enabled=True, collector=collector)
    follow(freezer, collector, list(range(1, 10_001)))
    assert collector.freezes[:4] == [100, 125, 157, 197]
    assert all(b == math.ceil(a * 1.25) for a, b in itertools.pairwise(collector.freezes))
    assert freezer.frozen_at_waits == collector.freezes[-1] and collector.freezes[-1] * 1.25 > 10_000
    assert len(collector.freezes) == 21  # 10,000 waits, one at a time: 21 freezes in all
    assert collector.young_collections_before_freeze == 21  # the young generations' garbage is not frozen


def test_waits_falling_and_rising_again_below_the_high_do_not_freeze_again():
    collector = RecordingCollector()
    freezer = SettledHeapFreezer(enabled=True, collector=collector)
    follow(freezer, collector, [*range(1, 1001), *range(999, 0, -1), *range(1, 1001)])
    highs = list(collector.freezes)
    assert highs[-1] <= 1000 and len(highs) == len(set(highs))  # the second climb froze nothing
    follow(freezer, collector, [1001, math.ceil(highs[-1] * 1.25)])
    assert collector.freezes[-1] == math.ceil(highs[-1] * 1.25)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-300, max_value=400), max_size=60))
def test_freezes_only_at_new_highs_and_their_number_is_bounded_by_the_peak(steps):
    collector = RecordingCollector()
    freezer = SettledHeapFreezer(enabled=True, collector=collector)
    waits, counts = 0, []
    for step in steps:
        waits = max(0, waits + step)
        counts.append(waits)
    follow(freezer, collector, counts)
    peak = max(counts, default=0)
    previous = 0
    for frozen_at in collector.freezes:
        assert frozen_at >= max(FREEZE_FROM_WAITS, previous * (1 + REFREEZE_GROWTH))
        previous = frozen_at
    bound = 0 if peak < FREEZE_FROM_WAITS else 1 + math.log(peak / FREEZE_FROM_WAITS, 1 + REFREEZE_GROWTH)
    assert len(collector.freezes) <= bound


@pytest.fixture
def recorded_collector(monkeypatch):
    collector = RecordingCollector()
    monkeypatch.setattr(heap_freeze, "gc", collector)
    freeze_settled_heap.cache_clear()
    yield collector
    freeze_settled_heap.cache_clear()


@pytest.mark.timing  # real triggers against the double's server, to their events: proven under load
@pytest.mark.parametrize("setting", [None, "False", "True"])
def test_tag_triggers_freeze_only_with_the_setting(ecr_double_server, recorded_collector, monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv("AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP", setting)
    ecr_double_server.create_repository("team/many")
    tags = [f"t{i}" for i in range(FREEZE_FROM_WAITS + 30)]

    async def scenario():
        tasks = [asyncio.ensure_future(first_event(tag_trigger("team/many", tag))) for tag in tags]
        while loop_state().waits < len(tags):
            await asyncio.sleep(0.01)
        waiting = loop_state().heap.frozen_at_waits
        ecr_double_server.push("team/many", build_image("oci", "many"), tags)
        events = await asyncio.gather(*tasks)
        return waiting, events, loop_state().waits

    frozen_at, events, left = asyncio.run(scenario())
    assert [e["status"] for e in events] == ["success"] * len(tags) and left == 0
    if setting == "True":
        assert recorded_collector.freezes and frozen_at == FREEZE_FROM_WAITS + 25  # 100, then 125
    else:
        assert recorded_collector.freezes == [] and frozen_at == 0


def test_a_setting_that_is_not_a_boolean_is_off_and_logged_once(recorded_collector, monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP", "sometimes")
    assert freeze_settled_heap() is False
    assert freeze_settled_heap() is False
    errors = [r for r in caplog.records if "freeze_settled_heap is ignored" in r.getMessage()]
    assert len(errors) == 1 and "sometimes" in errors[0].getMessage()


def test_cancelled_waits_leave_the_count(ecr_double_server, recorded_collector, monkeypatch):
    monkeypatch.setenv("AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP", "True")
    ecr_double_server.create_repository("team/many")

    async def scenario():
        tasks = [asyncio.ensure_future(first_event(tag_trigger("team/many", f"t{i}"))) for i in range(150)]
        while loop_state().waits < len(tasks):
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return loop_state().waits, loop_state().heap.frozen_at_waits

    assert asyncio.run(scenario()) == (0, 125)  # the count came back to 0; the high stays
