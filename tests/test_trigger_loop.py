"""Many triggers, one event loop: what the shared poller does so that the loop is never blocked for long.

Real aiobotocore over HTTP against the double's server. The loop's turns are counted by a
callback that re-schedules itself (it runs once per turn), so the tests assert in which turn
the poller built a request, parsed an answer or woke a trigger: what the code decides, not
how long it took.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from helpers import PollRecorder, client_made, first_event, tag_trigger

from airflow_ecr_retag.core import tag_poller
from airflow_ecr_retag.core.tag_poller import loop_state
from airflow_ecr_retag.testing import build_image
from airflow_ecr_retag.triggers.tag import EcrTagTrigger

# Sleeps, measures time or races threads: proven under load by scripts/prove_timing.py.
pytestmark = pytest.mark.timing

REPO = "team/many"


def trigger(tag, **kwargs):
    return tag_trigger(REPO, tag, **kwargs)


class TurnCounter:
    """The number of the event loop's current turn: a callback scheduled for the next turn, every turn."""

    def __init__(self):
        self.turn = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self):
        self.turn += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self):
        self._handle.cancel()


@pytest.fixture
def served(ecr_double_server):
    ecr_double_server.create_repository(REPO)
    return ecr_double_server


def test_outcomes_wake_a_bounded_batch_of_triggers_per_turn(served):
    digest = served.push(REPO, build_image("oci", "all"), [f"t{i}" for i in range(300)])

    async def scenario():
        turns = TurnCounter()

        async def record(tag):
            event = await first_event(trigger(tag))
            return event, turns.turn

        results = await asyncio.gather(*(record(f"t{i}") for i in range(300)))
        turns.stop()
        return results

    results = asyncio.run(scenario())
    assert all(event["status"] == "success" and event["digest"] == digest for event, _ in results)
    assert served.calls["BatchGetImage"] == 3  # one round: 300 tags in calls of 100
    per_turn = {}
    for _, turn in results:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    # 300 triggers finishing together are woken a batch per turn, not all in one.
    batch = tag_poller.WORK_PER_TURN // tag_poller.HAND_OVER_WORK
    assert max(per_turn.values()) <= batch, per_turn
    assert len(per_turn) >= 300 // batch


def test_full_requests_and_answers_each_get_a_turn_of_their_own(served, monkeypatch):
    work = []  # (turn, what) for every 100-reference request built and answer parsed
    counter = {}
    fetch, parse = tag_poller.ecr.fetch_images_async, tag_poller._paced_parse

    async def recorded_fetch(client, repository_name, refs, registry_id=None):
        work.append((counter["turns"].turn, f"build {len(refs)}"))
        return await fetch(client, repository_name, refs, registry_id)

    async def recorded_parse(response_dict, **kwargs):
        await parse(response_dict, **kwargs)
        references = response_dict["body"].count(b'"imageId"')
        work.append((counter["turns"].turn, f"parse {references}"))

    monkeypatch.setattr(tag_poller.ecr, "fetch_images_async", recorded_fetch)
    monkeypatch.setattr(tag_poller, "_paced_parse", recorded_parse)

    async def scenario():
        counter["turns"] = TurnCounter()
        tasks = [asyncio.ensure_future(first_event(trigger(f"t{i}", timeout_at=time.time() + 30))) for i in range(500)]
        while len(work) < 10:  # one round: five requests of 100 tags, five answers of 100 failures
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        counter["turns"].stop()

    asyncio.run(scenario())
    first_round = work[:10]
    assert sorted(what for _, what in first_round) == ["build 100"] * 5 + ["parse 100"] * 5
    # Building or parsing 100 references is milliseconds of CPU: never two in one turn.
    assert len({turn for turn, _ in first_round}) == 10, first_round


def test_work_released_from_the_budget_queue_has_its_turn_to_itself():
    # The 1-in-30 failure of the test above under load: a response arrived in the turn a released
    # request was built in, right after the budget had reset, and was parsed in that same turn.
    log = []

    async def scenario():
        loop = asyncio.get_running_loop()
        budget = tag_poller._TurnBudget(tag_poller.WORK_PER_TURN)
        late = []

        async def piece(name, then=None):
            await budget.take(tag_poller.WORK_PER_TURN)
            log.append(name)
            # Runs in the turn after this piece's: whatever is logged before it shared that turn.
            loop.call_soon(log.append, f"turn after {name}")
            if then:
                loop.call_soon(then)

        def start_late():
            # Runs in the turn in which the budget releases "queued", so the task's first step
            # comes in the turn "queued" runs in.
            late.append(asyncio.ensure_future(piece("late")))

        first = asyncio.ensure_future(piece("first", then=start_late))
        queued = asyncio.ensure_future(piece("queued"))  # asks in the turn "first" spent: waits
        await asyncio.gather(first, queued)
        while not late or not late[0].done():
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert log.index("queued") > log.index("turn after first"), log
    assert log.index("late") > log.index("turn after queued"), log


def test_the_shared_client_is_built_off_the_loop_with_one_hook_per_client(served, monkeypatch):
    from aiobotocore.session import ClientCreatorContext

    built_in, hooks = [], []
    enter, hook = ClientCreatorContext.__aenter__, EcrTagTrigger.hook

    async def recorded_enter(self):
        built_in.append(threading.get_ident())
        return await enter(self)

    def counted_hook(self):
        hooks.append((self.aws_conn_id, self.region_name))
        return hook(self)

    monkeypatch.setattr(ClientCreatorContext, "__aenter__", recorded_enter)
    monkeypatch.setattr(EcrTagTrigger, "hook", counted_hook)
    served.create_repository(REPO, region_name="us-west-2")
    digest = served.push(REPO, build_image("oci", "here"), ["here"])
    loop_thread = {}

    async def scenario():
        loop_thread["id"] = threading.get_ident()
        east = [first_event(trigger("here")) for _ in range(20)]
        west = [first_event(trigger("gone", region_name="us-west-2", timeout_at=time.time() + 1.5)) for _ in range(5)]
        return await asyncio.gather(*east, *west)

    events = asyncio.run(scenario())
    assert [e["digest"] for e in events[:20]] == [digest] * 20
    assert all(e["status"] == "timeout" for e in events[20:])
    # One hook (one connection lookup) per shared client, not per trigger...
    assert sorted(hooks) == [(None, "us-east-1"), (None, "us-west-2")]
    # ...and each client is built in a worker thread, not in the loop.
    assert len(built_in) == 2 and loop_thread["id"] not in built_in


def test_a_client_that_cannot_be_made_errors_its_waiters_and_the_next_trigger_tries_again(served, monkeypatch):
    def connection(region):
        monkeypatch.setenv("AIRFLOW_CONN_AWS_LATER", json.dumps({"conn_type": "aws", "extra": {"region_name": region}}))

    digest = served.push(REPO, build_image("oci", "later"), ["later"])
    connection("not a region")  # botocore refuses to build a client for it

    async def scenario():
        waits = [first_event(trigger("later", aws_conn_id="aws_later", region_name=None)) for _ in range(5)]
        failed = await asyncio.gather(*waits)
        left = dict(loop_state().clients), dict(loop_state().pollers)
        connection("us-east-1")  # the connection is fixed while the triggerer runs
        return failed, left, await first_event(trigger("later", aws_conn_id="aws_later", region_name=None))

    failed, (clients, pollers), retried = asyncio.run(scenario())
    assert [e["status"] for e in failed] == ["error"] * 5
    assert {e["code"] for e in failed} == {"InvalidRegionError"}
    assert "not a region" in failed[0]["message"]
    assert served.calls["BatchGetImage"] == 1  # the failed client made no call; the retried one, one
    assert clients == {} and pollers == {}  # nothing left behind for later triggers to join
    assert retried == {"status": "success", "digest": digest, "tag": "later", "repository_name": REPO}


def test_triggers_joining_over_time_share_the_next_round_instead_of_polling_alone(served, monkeypatch):
    recorder = PollRecorder(monkeypatch)
    interval = 1.0
    # Joins spread over most of an interval: far more than the ride-along share (0.25 x interval).
    join_at = [0.0] * 5 + [0.3, 0.45, 0.6, 0.75, 0.9]
    joined = []

    async def scenario():
        async with client_made(trigger("j0", poke_interval=interval)):  # joins are timed, not the client's build
            started = time.monotonic()
            tasks = []
            for i, at in enumerate(join_at):
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                joined.append(time.monotonic())
                tasks.append(asyncio.ensure_future(first_event(trigger(f"j{i}", poke_interval=interval))))
            await asyncio.sleep(interval * 3.5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    polls = [(e.at, e.waiters) for e in recorder.events if e.kind == "start"]
    after_joins = [(at, waiters) for at, waiters in polls if at > joined[-1]]
    # Every round after the last join asks for all ten tags in one call: one call per interval.
    assert len(after_joins) >= 2, polls
    assert all(waiters == len(join_at) for _, waiters in after_joins), polls
    assert all(len(c["imageIds"]) == len(join_at) for c in served.requests_for("BatchGetImage")[-2:])
    # A joining trigger is still polled within its interval: with the round it joined.
    for at in joined:
        first = min(poll for poll, _ in polls if poll >= at)
        assert first - at <= interval + 0.3, (at, polls)
