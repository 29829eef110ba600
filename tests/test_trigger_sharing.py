"""Deferrable waits at scale: triggers share clients and coalesce polls (real aiobotocore over HTTP)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest
from helpers import PollRecorder, client_made, first_event, tag_trigger

from airflow_ecr_retag.core.tag_poller import loop_state
from airflow_ecr_retag.testing import build_image

# Sleeps, measures time or races threads: proven under load by scripts/prove_timing.py.
pytestmark = pytest.mark.timing

INTERVAL = 0.5


def trigger(repository, tag, **kwargs):
    return tag_trigger(repository, tag, **{"poke_interval": INTERVAL, **kwargs})


async def until(condition, limit=30.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
def served(ecr_double_server):
    for r in range(5):
        ecr_double_server.create_repository(f"team/svc{r}")
    return ecr_double_server


def test_50_triggers_on_5_repositories_make_at_most_5_calls_per_interval(served, monkeypatch):
    recorder = PollRecorder(monkeypatch)
    waits = [(f"team/svc{i % 5}", f"sha-{i}") for i in range(50)]
    pushed = {}

    async def scenario():
        repositories = sorted({r for r, _ in waits})
        async with client_made(trigger(*waits[0])):  # the window counts polls, not the client's build
            tasks = [asyncio.ensure_future(first_event(trigger(repo, tag))) for repo, tag in waits]
            await until(lambda: all(recorder.times("start", r) for r in repositories))
        await asyncio.sleep(INTERVAL * 4 + 0.1)  # four intervals of "not yet"
        polls = {repo: recorder.times("start", repo) for repo in sorted({r for r, _ in waits})}
        waiting_calls = [c for c in served.requests if c.operation == "BatchGetImage"]
        for i, (repo, tag) in enumerate(waits):
            pushed[tag] = served.push(repo, build_image("oci", f"img{i}"), [tag])
        events = await asyncio.gather(*tasks)
        assert not loop_state().pollers and not loop_state().clients  # all left, all closed
        return polls, waiting_calls, events

    polls, waiting_calls, events = asyncio.run(scenario())
    # Each poll round asks once per repository for all 10 of its tags: 5 calls per interval, not 50.
    assert all(len(c.params["imageIds"]) == 10 for c in waiting_calls), [
        len(c.params["imageIds"]) for c in waiting_calls
    ]
    for repo, starts in polls.items():
        assert len(starts) >= 2, (repo, starts)
        # One poll an interval:
        assert all(b - a >= INTERVAL - 1e-9 for a, b in itertools.pairwise(starts)), (repo, starts)
    assert len(waiting_calls) <= sum(len(s) for s in polls.values())  # one call per poll
    for (repo, tag), event in zip(waits, events, strict=True):
        assert event == {"status": "success", "digest": pushed[tag], "tag": tag, "repository_name": repo}
    assert max(len(c["imageIds"]) for c in served.requests_for("BatchGetImage")) == 10


def test_a_missing_repository_errors_only_its_own_triggers(served):
    digest = served.push("team/svc0", build_image("oci", "x"), ["here"])

    async def scenario():
        good = [asyncio.ensure_future(first_event(trigger("team/svc0", "here"))) for _ in range(3)]
        missing = [asyncio.ensure_future(first_event(trigger("team/gone", f"t{i}"))) for i in range(4)]
        return await asyncio.gather(*good), await asyncio.gather(*missing)

    good, missing = asyncio.run(scenario())
    assert all(e["status"] == "success" and e["digest"] == digest for e in good)
    assert all(e["status"] == "error" and e["code"] == "RepositoryNotFoundException" for e in missing)


def test_each_trigger_gets_its_own_outcome_including_per_item_expectations(served):
    a = served.push("team/svc1", build_image("oci", "a"), ["prod"])
    b = served.push("team/svc1", build_image("oci", "b"))

    async def scenario():
        at_a = asyncio.ensure_future(first_event(trigger("team/svc1", "prod", expected_digest=a)))
        at_b = asyncio.ensure_future(
            first_event(trigger("team/svc1", "prod", expected_digest=b, timeout_at=time.time() + 1.5))
        )
        return await at_a, await at_b

    at_a, at_b = asyncio.run(scenario())
    assert at_a["status"] == "success" and at_a["digest"] == a
    assert at_b["status"] == "timeout"  # same tag, other digest: "not yet" for this one only


def test_cancelling_half_the_triggers_leaves_the_others_working(served):
    async def scenario():
        tasks = [asyncio.ensure_future(first_event(trigger("team/svc2", f"t{i}"))) for i in range(10)]
        await until(lambda: served.calls["BatchGetImage"] >= 1)
        for task in tasks[:5]:
            task.cancel()
        polls_before = served.calls["BatchGetImage"]
        # Two more polls: the first may have been on the wire when the cancellations landed.
        await until(lambda: served.calls["BatchGetImage"] >= polls_before + 2)
        calls_after_cancel = served.requests_for("BatchGetImage")[-1]["imageIds"]
        digests = {f"t{i}": served.push("team/svc2", build_image("oci", f"c{i}"), [f"t{i}"]) for i in range(5, 10)}
        events = await asyncio.gather(*tasks[5:])
        cancelled = [t.cancelled() for t in tasks[:5]]
        return calls_after_cancel, digests, events, cancelled

    last_poll, digests, events, cancelled = asyncio.run(scenario())
    assert all(cancelled)
    assert sorted(r["imageTag"] for r in last_poll) == [f"t{i}" for i in range(5, 10)]  # the cancelled ones left
    assert [e["digest"] for e in events] == [digests[f"t{i}"] for i in range(5, 10)]


def test_different_connection_or_region_never_share_a_client(served, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_OTHER", json.dumps({"conn_type": "aws", "login": "other", "password": "other-secret"})
    )
    served.create_repository("team/svc0", region_name="us-west-2")
    seen = {}

    async def scenario():
        tasks = [
            asyncio.ensure_future(first_event(trigger("team/svc0", "x", timeout_at=time.time() + 5))),
            asyncio.ensure_future(first_event(trigger("team/svc0", "y", timeout_at=time.time() + 5))),
            asyncio.ensure_future(
                first_event(trigger("team/svc0", "x", region_name="us-west-2", timeout_at=time.time() + 5))
            ),
            asyncio.ensure_future(
                first_event(trigger("team/svc0", "x", aws_conn_id="aws_other", timeout_at=time.time() + 5))
            ),
        ]
        await until(lambda: len(loop_state().pollers) >= 3)
        seen["clients"] = {(k.aws_conn_id, k.region_name) for k in loop_state().clients}
        seen["pollers"] = len(loop_state().pollers)
        return await asyncio.gather(*tasks)

    events = asyncio.run(scenario())
    assert seen["clients"] == {(None, "us-east-1"), (None, "us-west-2"), ("aws_other", "us-east-1")}
    assert seen["pollers"] == 3
    assert all(e["status"] == "timeout" for e in events)


def test_throttling_backs_off_the_whole_poller(served):
    from airflow_ecr_retag.testing import Fault

    served.inject("BatchGetImage", Fault.THROTTLE, times=2)
    digests = {f"t{i}": served.push("team/svc3", build_image("oci", f"th{i}"), [f"t{i}"]) for i in range(20)}

    async def scenario():
        no_retry = {"retries": {"mode": "standard", "total_max_attempts": 1}}
        return await asyncio.gather(
            *(
                first_event(trigger("team/svc3", f"t{i}", poke_interval=0.1, botocore_config=no_retry))
                for i in range(20)
            )
        )

    events = asyncio.run(scenario())
    assert [e["digest"] for e in events] == [digests[f"t{i}"] for i in range(20)]
    assert served.calls["BatchGetImage"] == 3  # two throttled polls for all 20, then one that answers all
