"""EcrTagSensor in poke mode (in-process double) and deferrable mode (double's HTTP server, real aiobotocore)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSensorTimeout
from helpers import AWS, PollRecorder, make_context

from airflow_ecr_retag import EcrTagSensor
from airflow_ecr_retag.core.tag_poller import loop_state
from airflow_ecr_retag.exceptions import EcrPermanentError, InvalidInputError
from airflow_ecr_retag.testing import Fault, build_image
from airflow_ecr_retag.triggers.tag import EcrTagTrigger

REPO = "team/app"


def sensor(**kwargs):
    params = {"repository_name": REPO, "tag": "sha-1", "poke_interval": 0.1, "timeout": 30, **AWS, **kwargs}
    return EcrTagSensor(task_id="wait", **params)


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


# ---------------------------------------------------------------- poke mode
def test_poke_found_returns_the_digest_in_one_call(ecr):
    digest = ecr.push(REPO, build_image("oci-index"), ["sha-1"])
    ecr.reset_calls()
    result = sensor().poke(make_context())
    assert result.is_done and result.xcom_value == digest
    assert dict(ecr.calls) == {"BatchGetImage": 1}


def test_poke_not_yet(ecr):
    result = sensor().poke(make_context())
    assert not result.is_done and result.xcom_value is None
    assert dict(ecr.calls) == {"BatchGetImage": 1}


def test_poke_tag_at_another_digest_is_not_yet(ecr):
    expected = ecr.push(REPO, build_image("oci", "expected"))
    ecr.push(REPO, build_image("oci", "other"), ["prod"])
    assert not sensor(tag="prod", expected_digest=expected).poke(make_context()).is_done
    ecr.move_tag(REPO, "prod", expected)
    assert sensor(tag="prod", expected_digest=expected).poke(make_context()).xcom_value == expected


def test_execute_in_poke_mode_pushes_the_digest(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["sha-1"])
    assert sensor().execute(make_context()) == digest


@pytest.mark.timing
def test_execute_waits_until_the_tag_appears(ecr):
    image = build_image("oci", "later")
    # CI pushes the tag after the sensor's second poke and before its third.
    ecr.before_call("BatchGetImage", lambda d: d.push(REPO, image, ["sha-1"]), call=3)
    result = sensor().execute(make_context())
    assert result == image.digest
    assert ecr.calls["BatchGetImage"] == 3  # one call per poke: two "not yet", one found


def test_missing_repository_fails_at_once(ecr):
    with pytest.raises(EcrPermanentError) as error:
        sensor(repository_name="nope/repo").execute(make_context())
    assert error.value.code == "RepositoryNotFoundException"
    assert ecr.calls["BatchGetImage"] == 1


def test_access_denied_fails_at_once(ecr):
    ecr.inject("BatchGetImage", Fault.ACCESS_DENIED, times=None)
    with pytest.raises(AirflowFailException, match="AccessDeniedException"):
        sensor().execute(make_context())
    assert ecr.calls["BatchGetImage"] == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"repository_name": "Team/App"}, "repository_name"),
        ({"tag": ""}, "tag"),
        ({"tag": "bad tag"}, "tag"),
        ({"expected_digest": "sha256:abc"}, "expected_digest"),
        ({"registry_id": "12345"}, "registry_id"),
    ],
)
def test_bad_input_fails_before_any_call(ecr, overrides, field):
    with pytest.raises(InvalidInputError) as error:
        sensor(**overrides).execute(make_context())
    assert error.value.field == field
    assert ecr.total_calls == 0


def test_poke_mode_does_not_import_aiobotocore():
    code = "import sys; import airflow_ecr_retag.sensors.tag_sensor; print('aiobotocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------- deferrable mode
def run_trigger(trigger, *, during=None, limit=30):
    """Run the trigger to its first event in a fresh event loop; ``during`` runs in a thread meanwhile."""

    async def first_event():
        async for event in trigger.run():
            return event.payload
        return None

    worker = threading.Thread(target=during) if during else None
    if worker:
        worker.start()
    try:
        return asyncio.run(asyncio.wait_for(first_event(), limit))
    finally:
        if worker:
            worker.join()


@pytest.fixture
def served(ecr_double_server):
    ecr_double_server.create_repository(REPO)
    return ecr_double_server


@pytest.mark.timing
def test_deferrable_defers_with_a_serializable_trigger(served):
    from airflow.providers.common.compat.sdk import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        sensor(deferrable=True, timeout=600).execute(make_context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, EcrTagTrigger)
    assert deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_ecr_retag.triggers.tag.EcrTagTrigger"
    rebuilt = EcrTagTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["poke_interval"] == 0.1 and kwargs["timeout_at"] > time.time() + 500
    assert served.calls["BatchGetImage"] == 1  # the check before deferring


def test_deferrable_returns_at_once_when_the_tag_is_there(served):
    digest = served.push(REPO, build_image("oci"), ["sha-1"])
    assert sensor(deferrable=True).execute(make_context()) == digest


def trigger_for(served, **kwargs):
    params = {
        "repository_name": REPO,
        "tag": "sha-1",
        "poke_interval": 0.2,
        "timeout_at": time.time() + 30,
        "aws_conn_id": None,
        "region_name": "us-east-1",
    }
    return EcrTagTrigger(**{**params, **kwargs})


@pytest.mark.timing
def test_trigger_succeeds_when_the_tag_is_pushed_while_it_polls(served):
    image = build_image("oci-index", "later")
    # The tag is pushed after the trigger's second poll, before its third.
    served.before_call("BatchGetImage", lambda d: d.push(REPO, image, ["sha-1"]), call=3)
    event = run_trigger(trigger_for(served))
    assert event == {"status": "success", "digest": image.digest, "tag": "sha-1", "repository_name": REPO}
    assert served.calls["BatchGetImage"] == 3


@pytest.mark.timing
def test_trigger_waits_for_the_expected_digest(served):
    expected = served.push(REPO, build_image("oci", "expected"))
    served.push(REPO, build_image("oci", "other"), ["prod"])

    def move_later():
        time.sleep(0.8)
        served.move_tag(REPO, "prod", expected)

    event = run_trigger(trigger_for(served, tag="prod", expected_digest=expected), during=move_later)
    assert event["status"] == "success" and event["digest"] == expected


def test_trigger_error_event_for_a_missing_repository(served):
    event = run_trigger(trigger_for(served, repository_name="nope/repo"))
    assert event["status"] == "error"
    assert event["code"] == "RepositoryNotFoundException"
    assert served.calls["BatchGetImage"] == 1


@pytest.mark.timing
@pytest.mark.parametrize("fault", [Fault.THROTTLE, Fault.SERVER_ERROR, Fault.DROPPED_CONNECTION])
def test_trigger_survives_transient_errors_and_keeps_polling(served, fault):
    # botocore's own retries off, so the trigger's loop is what survives the errors.
    served.inject("BatchGetImage", fault, times=3)
    digest = served.push(REPO, build_image("oci"), ["sha-1"])
    trigger = trigger_for(
        served, poke_interval=0.05, botocore_config={"retries": {"mode": "standard", "total_max_attempts": 1}}
    )
    event = run_trigger(trigger)
    assert event == {"status": "success", "digest": digest, "tag": "sha-1", "repository_name": REPO}
    assert served.calls["BatchGetImage"] == 4


@pytest.mark.timing
def test_trigger_times_out(served):
    event = run_trigger(trigger_for(served, timeout_at=time.time() + 0.5))
    assert event["status"] == "timeout"


@pytest.mark.timing
def test_trigger_stops_cleanly_on_cancellation(served, monkeypatch):
    recorder = PollRecorder(monkeypatch)

    async def cancel_midway():
        task = asyncio.ensure_future(trigger_for(served).run().__anext__())
        while len(recorder.times("start")) < 2:  # cancelled while it polls
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = loop_state()
        left = dict(state.pollers), dict(state.clients)
        await asyncio.sleep(0.6)  # three intervals with the loop still running
        return left

    pollers, clients = asyncio.run(cancel_midway())
    assert pollers == {} and clients == {}  # the poller stopped and the shared client was closed
    [leave] = recorder.times("leave")
    starts = recorder.times("start")
    assert all(start < leave for start in starts)  # no poll started after the trigger left
    # A poll started just before the cancellation may still be on the wire and reach the server
    # late; the only one that may never arrive is the last, cancelled before it was sent.
    assert len(starts) - 1 <= served.calls["BatchGetImage"] <= len(starts)


@pytest.mark.timing
def test_trigger_honours_poke_interval(served, monkeypatch):
    recorder = PollRecorder(monkeypatch)
    interval = 0.5
    event = run_trigger(trigger_for(served, poke_interval=interval, timeout_at=time.time() + 2.6))
    assert event["status"] == "timeout"
    starts, ends = recorder.times("start"), recorder.times("end")
    assert len(starts) >= 3, starts
    # Due an interval after the previous poll was sent, on the poller's clock: never sooner...
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= interval - 1e-9 for gap in gaps), gaps
    # ...and not left idle past that (or past the previous answer, if it came later).
    lateness = [nxt - max(start + interval, end) for start, end, nxt in zip(starts, ends, starts[1:], strict=False)]
    assert all(late <= 0.3 for late in lateness), lateness


def test_execute_complete_returns_the_digest_or_fails():
    s = sensor(deferrable=True)
    assert (
        s.execute_complete(make_context(), {"status": "success", "digest": "sha256:" + "a" * 64})
        == "sha256:" + "a" * 64
    )
    with pytest.raises(EcrPermanentError, match="RepositoryNotFoundException"):
        s.execute_complete(
            make_context(), {"status": "error", "code": "RepositoryNotFoundException", "message": "gone"}
        )
    with pytest.raises(AirflowSensorTimeout):
        s.execute_complete(make_context(), {"status": "timeout", "message": "late"})
    with pytest.raises(Exception, match="event is None"):
        s.execute_complete(make_context(), None)
    with pytest.raises(EcrPermanentError):
        s.execute_complete(make_context(), {"status": "success"})  # no digest: not a valid event
