"""EcrTagEventTrigger, the asset watcher: its events, its memory and its calls (real aiobotocore over HTTP).

Each test runs watchers against the double's server and moves tags the way another actor
would (``move_tag``, ``push``, ``delete_tag``), waiting for the watcher's polls between
actions by the double's call counter: what is asserted is what the watcher announced, what it
remembered, and which ECR calls it made.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import pytest

from airflow_ecr_retag import exceptions
from airflow_ecr_retag.core import tag_watch
from airflow_ecr_retag.testing import build_image
from airflow_ecr_retag.triggers import EcrTagEventTrigger, EcrTagTrigger

REPO = "team/app"
INTERVAL = 0.2
ACCOUNT = "123456789012"


def watcher(tags, repository_name=REPO, **kwargs):
    params = {"poke_interval": INTERVAL, "aws_conn_id": None, "region_name": "us-east-1"}
    return EcrTagEventTrigger(repository_name=repository_name, tags=tags, **{**params, **kwargs})


class StateStore:
    """Stands in for the asset state store a triggerer gives a watcher: a JSON value per key."""

    def __init__(self):
        self.values: dict[str, object] = {}
        self.writes: list[tuple[str, object]] = []

    async def aget(self, key, default=None):
        return json.loads(json.dumps(self.values[key])) if key in self.values else default

    async def aset(self, key, value):
        self.values[key] = json.loads(json.dumps(value))
        self.writes.append((key, value))


class Running:
    """A watcher's ``run()`` in the background, its events collected."""

    def __init__(self, trigger):
        self.events: list[dict] = []
        self._task = asyncio.ensure_future(self._consume(trigger))

    async def _consume(self, trigger):
        async for event in trigger.run():
            self.events.append(event.payload)

    async def stop(self):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until(condition, what="condition", limit=30.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"not reached: {what}"
        await asyncio.sleep(0.02)


async def polls(double, operation="BatchGetImage", n=2):
    """Wait until the double has served ``n`` more calls of ``operation``: that many polls saw the current state."""
    start = double.calls[operation]
    await until(lambda: double.calls[operation] >= start + n, f"{n} more {operation}")


def moves(events):
    return [(e["tag"], e["previous_digest"], e["digest"]) for e in events]


@pytest.fixture
def served(ecr_double_server):
    ecr_double_server.create_repository(REPO)
    return ecr_double_server


@pytest.mark.timing
def test_a_tag_that_appears_moves_disappears_and_reappears_is_announced_at_each_new_digest(served):
    a = served.push(REPO, build_image("oci", "a"))
    b = served.push(REPO, build_image("oci-index", "b"), ["keep-b"])

    async def scenario():
        running = Running(watcher(["prod"]))
        await polls(served)  # the baseline: prod does not exist
        served.move_tag(REPO, "prod", a)  # appears
        await until(lambda: len(running.events) == 1, "the appearance")
        served.move_tag(REPO, "prod", b)  # moves
        await until(lambda: len(running.events) == 2, "the move")
        served.delete_tag(REPO, "prod")  # disappears: nothing announced, but remembered
        await polls(served)
        announced_while_gone = len(running.events)
        served.move_tag(REPO, "prod", b)  # reappears at the digest it had
        await until(lambda: len(running.events) == 3, "the reappearance")
        await polls(served)
        await running.stop()
        return running.events, announced_while_gone

    events, announced_while_gone = asyncio.run(scenario())
    assert announced_while_gone == 2
    assert moves(events) == [("prod", None, a), ("prod", a, b), ("prod", None, b)]
    pushed_at = {d: image.pushed_at for d, image in served.images(REPO).items()}
    for event in events:
        assert event["repository_name"] == REPO and event["registry_id"] == ACCOUNT
        assert event["image_uri"] == f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{event['digest']}"
        assert datetime.fromisoformat(event["image_pushed_at"]).timestamp() == pytest.approx(
            pushed_at[event["digest"]], abs=0.01
        )
    # Each poll is one BatchGetImage for the tag; a digest not seen before costs one DescribeImages
    # (b's return reads nothing: its push time is remembered).
    assert all(call["imageIds"] == [{"imageTag": "prod"}] for call in served.requests_for("BatchGetImage"))
    assert [call["imageIds"] for call in served.requests_for("DescribeImages")] == [
        [{"imageDigest": a}],
        [{"imageDigest": b}],
    ]
    assert served.write_calls == 0


@pytest.mark.timing
def test_a_glob_announces_new_and_moved_matching_tags_from_one_listing_per_interval(served):
    a = served.push(REPO, build_image("oci", "a"), ["v1.0.0", "latest"])
    b = served.push(REPO, build_image("oci", "b"))

    async def scenario():
        running = Running(watcher(["v*"]))
        await polls(served, "DescribeImages")  # the baseline: v1.0.0 at a
        served.push(REPO, build_image("docker", "c"), ["v1.1.0"])  # a new matching tag
        await until(lambda: len(running.events) == 1, "the new version")
        served.move_tag(REPO, "v1.0.0", b)
        await until(lambda: len(running.events) == 2, "the moved version")
        served.move_tag(REPO, "latest", b)  # not matched
        served.push(REPO, build_image("oci", "d"), ["pr-7"])
        await polls(served, "DescribeImages", 3)
        await running.stop()
        return running.events

    events = asyncio.run(scenario())
    c = served.tags(REPO)["v1.1.0"]
    assert moves(events) == [("v1.1.0", None, c), ("v1.0.0", a, b)]
    assert served.calls["BatchGetImage"] == 0  # the listing has every tag and its push time
    # One listing (one DescribeImages page: the repository holds fewer than 100 images) per interval.
    assert all(call.get("maxResults") == tag_watch.LISTING_PAGE_SIZE for call in served.requests_for("DescribeImages"))


@pytest.mark.timing
def test_tags_of_one_repository_share_one_batch_get_image_per_round_with_every_watcher_and_wait(served):
    old = served.push(REPO, build_image("oci", "old"), ["prod", "staging", "qa", "canary"])
    new = served.push(REPO, build_image("oci-index", "new"))

    async def scenario():
        three = Running(watcher(["prod", "staging", "qa"]))
        canary = Running(watcher(["canary"]))
        wait = asyncio.ensure_future(
            first_event(
                EcrTagTrigger(
                    repository_name=REPO, tag="sha-9", poke_interval=INTERVAL, aws_conn_id=None, region_name="us-east-1"
                )
            )
        )
        await polls(served, n=3)
        for tag in ("prod", "staging", "qa"):
            served.move_tag(REPO, tag, new)  # all in one interval
        await until(lambda: len(three.events) == 3, "three moves")
        describes = served.calls["DescribeImages"]
        served.push(REPO, build_image("oci", "sha-9"), ["sha-9"])
        await wait
        await polls(served)
        await three.stop()
        await canary.stop()
        return three.events, canary.events, describes

    three, canary, describes = asyncio.run(scenario())
    assert sorted(moves(three)) == [("prod", old, new), ("qa", old, new), ("staging", old, new)]
    assert canary == []
    # Every round asked for the five tags of the repository in one call, whoever asked for them.
    rounds = [sorted(r["imageTag"] for r in call["imageIds"]) for call in served.requests_for("BatchGetImage")]
    full = sorted(["prod", "staging", "qa", "canary", "sha-9"])
    assert rounds.count(full) >= 3, rounds
    assert all(set(r) <= set(full) for r in rounds)
    # The push time of old is read once for both watchers, that of new once for its three tags.
    assert describes == 2
    assert [call["imageIds"] for call in served.requests_for("DescribeImages")][:2] == [
        [{"imageDigest": old}],
        [{"imageDigest": new}],
    ]


async def first_event(trigger):
    async for event in trigger.run():
        return event.payload


@pytest.mark.timing
def test_the_memory_in_the_state_store_announces_a_change_made_while_stopped_once_and_nothing_after(served):
    a = served.push(REPO, build_image("oci", "a"), ["prod"])
    b = served.push(REPO, build_image("oci", "b"))
    store = StateStore()
    key = f"airflow_ecr_retag.tags:-/{REPO}:prod"

    async def run_once(until_events=0, quiet_polls=3):
        trigger = watcher(["prod"])
        trigger.asset_state_store = store
        running = Running(trigger)
        await until(lambda: len(running.events) >= until_events, "the events")
        await polls(served, n=quiet_polls)
        await running.stop()
        return running.events

    first = asyncio.run(run_once())
    assert first == [] and store.values == {key: {"tags": {"prod": a}}}  # the baseline, remembered
    served.move_tag(REPO, "prod", b)  # while no watcher runs
    second = asyncio.run(run_once(until_events=1))
    assert moves(second) == [("prod", a, b)]
    assert store.values == {key: {"tags": {"prod": b}}}
    writes = len(store.writes)
    third = asyncio.run(run_once())
    assert third == [] and len(store.writes) == writes  # nothing changed: nothing announced, nothing written


@pytest.mark.timing
def test_in_ack_mode_the_memory_is_written_only_once_airflow_has_stored_the_event(served):
    shared_stream = pytest.importorskip("airflow.triggers.shared_stream", reason="shared streams are Airflow 3.3's")
    SharedStreamManager = shared_stream.SharedStreamManager

    a = served.push(REPO, build_image("oci", "a"), ["prod"])
    b = served.push(REPO, build_image("oci", "b"))
    store = StateStore()
    key = f"airflow_ecr_retag.tags:-/{REPO}:prod"

    async def scenario():
        manager = SharedStreamManager()
        trigger = watcher(["prod"])
        trigger.asset_state_store = store
        stream_key = trigger.shared_stream_key()
        events, seqs = [], []

        async def run_like_the_triggerer():
            stream = manager.subscribe(trigger_id=1, trigger=trigger, key=stream_key)
            async for event in trigger.filter_shared_stream(stream):
                seqs.append(manager.bind_pending_event(trigger_id=1, key=stream_key))
                events.append(event.payload)

        running = asyncio.ensure_future(run_like_the_triggerer())
        await until(lambda: key in store.values, "the baseline")
        baseline = store.values[key]
        served.move_tag(REPO, "prod", b)
        await until(lambda: events, "the event")
        await polls(served, n=3)
        before_confirmation = store.values[key]
        manager.confirm_persisted([seqs[0]])
        await until(lambda: store.values[key] != before_confirmation, "the write after the confirmation")
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await manager.stop_all()
        return baseline, before_confirmation, events, seqs

    baseline, before_confirmation, events, seqs = asyncio.run(scenario())
    assert baseline == {"tags": {"prod": a}}
    assert moves(events) == [("prod", a, b)] and seqs[0] is not None
    assert before_confirmation == {"tags": {"prod": a}}  # not yet stored by Airflow: not yet remembered
    assert store.values[key] == {"tags": {"prod": b}}


@pytest.mark.timing
def test_a_missing_repository_is_logged_and_watched_until_it_exists(served, monkeypatch, capsys):
    monkeypatch.setattr(tag_watch, "MAX_BACKOFF_SECONDS", 0.3)

    async def scenario():
        running = Running(watcher(["prod"], repository_name="team/later"))
        await polls(served, n=2)  # each refused with RepositoryNotFoundException
        served.create_repository("team/later")
        await polls(served, n=2)  # the baseline: the repository exists, prod does not
        a = served.push("team/later", build_image("oci", "a"), ["prod"])
        await until(lambda: running.events, "the appearance")
        await running.stop()
        return running.events, a

    events, a = asyncio.run(scenario())
    assert moves(events) == [("prod", None, a)]
    logged = capsys.readouterr().out  # the trigger's log (Airflow's structlog writes to stdout)
    assert "Watching team/later:prod failed" in logged and "RepositoryNotFoundException" in logged


def test_serialized_kwargs_are_deterministic_and_rebuild_the_same_watcher():
    from airflow.sdk import Asset, AssetWatcher
    from airflow.triggers.base import BaseEventTrigger

    one, two = watcher(["prod", "v*"]), watcher(["prod", "v*"])
    classpath, kwargs = one.serialize()
    assert classpath == "airflow_ecr_retag.triggers.tag_event_trigger.EcrTagEventTrigger"
    assert one.serialize() == two.serialize() == EcrTagEventTrigger(**kwargs).serialize()
    assert BaseEventTrigger.hash(*one.serialize()) == BaseEventTrigger.hash(*two.serialize())
    assert BaseEventTrigger.hash(*one.serialize()) != BaseEventTrigger.hash(*watcher(["v*", "prod"]).serialize())
    assert json.loads(json.dumps(kwargs)) == kwargs
    Asset("ecr://team/app:prod", watchers=[AssetWatcher(name="w", trigger=one)])


@pytest.mark.parametrize(
    ("arguments", "field", "rule"),
    [
        ({"tags": []}, "tags", "at least one"),
        ({"tags": "prod"}, None, None),
        ({"tags": ["prod", "prod"]}, "tags", "must not repeat"),
        ({"tags": ["pr od"]}, "tags[0]", "whitespace"),
        ({"tags": ["v*", "release/*"]}, "tags[1]", "glob of tag characters"),
        ({"tags": ["prod"], "repository_name": "Team/App"}, "repository_name", "ECR repository name"),
        ({"tags": ["prod"], "registry_id": "12345"}, "registry_id", "12-digit"),
        ({"tags": ["prod"], "poke_interval": 0}, "poke_interval", "greater than 0"),
    ],
)
def test_bad_input_fails_the_dag_import_naming_the_field(arguments, field, rule):
    params = {"repository_name": REPO, **arguments}
    if field is None:  # one tag given as a string is a list of one
        assert EcrTagEventTrigger(**params).tags == ["prod"]
        return
    with pytest.raises(exceptions.InvalidInputError) as error:
        EcrTagEventTrigger(**params)
    assert error.value.field == field and rule in error.value.rule


@pytest.mark.parametrize("code", ["UpstreamUnavailable", "UpstreamTooManyRequests", "KmsError"])
def test_a_transient_per_image_failure_is_not_a_disappearance(code):
    from airflow_ecr_retag.core import ecr
    from airflow_ecr_retag.core.tag_wait import TagWait

    image = ecr.FetchedImage("sha256:" + "a" * 64, "{}", "application/vnd.oci.image.manifest.v1+json", ACCOUNT)

    async def sightings():
        sighting = tag_watch._Sighting(TagWait(REPO, "prod", None, None), INTERVAL, asyncio.Queue())
        return [
            sighting.receive(image, None),
            sighting.receive(None, {"failureCode": code, "failureReason": "try later"}),
            sighting.receive(image, None),  # the same digest again: nothing to announce
            sighting.receive(None, {"failureCode": "ImageNotFound", "failureReason": "gone"}),
            sighting.receive(image, None),
        ]

    seen = asyncio.run(sightings())
    assert [s and s["digest"] for s in seen] == [image.digest, None, None, None, image.digest]
    assert [s is None for s in seen] == [False, True, True, False, False]


def test_a_memory_that_cannot_be_read_yet_is_read_again_not_replaced_by_a_new_baseline(caplog):
    import logging

    from airflow_ecr_retag.triggers.tag_event_trigger import _StateStore

    watch = tag_watch.TagWatch(REPO, ("prod",), None)
    remembered = {"prod": "sha256:" + "a" * 64}

    class Unreachable(StateStore):
        failures = 2

        async def aget(self, key, default=None):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the supervisor is not answering")
            return await super().aget(key, default)

    store = Unreachable()
    store.values[watch.memory_key("prod")] = {"tags": remembered}
    log = logging.getLogger("test.watcher")
    with caplog.at_level(logging.WARNING, logger="test.watcher"):
        loaded = asyncio.run(_StateStore(store, watch).load(log, backoff_limit=0.01))
    assert loaded == {"prod": remembered}
    assert store.failures == 0
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"Could not read the memory of {watch.describe()} from the asset state store"
    ] * 2


def test_a_log_line_lists_at_most_ten_tags_of_a_glob():
    from airflow_ecr_retag.triggers.tag_event_trigger import _listing

    tags = {f"v{n:05d}": "sha256:" + "b" * 64 for n in range(10_000)}
    line = _listing(tags)
    assert line.startswith("v00000 at sha256:") and line.endswith(" and 9,990 more")
    assert line.count(" at ") == 10
    assert _listing({}) == "no tag"
