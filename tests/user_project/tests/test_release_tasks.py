"""The release's tasks one by one, in-process: each operator's execute (or a sensor's poke) against ecr_double."""

from __future__ import annotations

import pytest
from airflow.exceptions import AirflowFailException

from airflow_ecr_retag import EcrRetagOperator, EcrTagHygieneOperator, EcrTagSensor
from airflow_ecr_retag.exceptions import EcrPermanentError, GuardFailedError
from airflow_ecr_retag.testing import Fault, build_image

REPO = "shop/web"


class TaskInstance:
    """What the operators use of the task context: ti.xcom_push."""

    def __init__(self):
        self.xcoms = {}

    def xcom_push(self, key, value):
        self.xcoms[key] = value


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


def promote(**kwargs):
    return EcrRetagOperator(
        task_id="promote", repository_name=REPO, source_tag="sha-1", target_tags=["v1", "prod"], **kwargs
    )


def test_promotion_re_puts_the_manifest_under_the_new_tags(ecr, capfd):
    digest = ecr.push(REPO, build_image("oci-index", "web"), ["sha-1"])
    ti = TaskInstance()
    assert promote(source_digest=digest).execute({"ti": ti}) == digest
    assert ecr.tags(REPO) == {"sha-1": digest, "v1": digest, "prod": digest}
    assert dict(ecr.calls) == {"BatchGetImage": 1, "PutImage": 2}
    assert ti.xcoms["promotion"]["added"] == ["v1", "prod"]
    out, err = capfd.readouterr()
    assert "outside of the Task Runner" not in out + err  # the plugin's unit-test mode
    assert "Unable to find AWS Connection" not in out + err  # the fixture's aws_default


def test_a_re_pushed_ci_tag_fails_the_guard_and_writes_nothing(ecr):
    tested = ecr.push(REPO, build_image("oci", "tested"), ["sha-1"])
    ecr.push(REPO, build_image("oci", "re-pushed"), ["sha-1"])
    with pytest.raises(GuardFailedError) as failure:
        promote(source_digest=tested).execute({"ti": TaskInstance()})
    assert isinstance(failure.value, AirflowFailException)  # no Airflow retries
    assert ecr.calls["PutImage"] == 0 and "prod" not in ecr.tags(REPO)


def test_access_denied_fails_at_once(ecr):
    ecr.push(REPO, build_image("oci", "web"), ["sha-1"])
    ecr.inject("PutImage", Fault.ACCESS_DENIED, times=None)
    with pytest.raises(EcrPermanentError, match="AccessDeniedException"):
        promote().execute({"ti": TaskInstance()})
    assert ecr.calls["PutImage"] == 1  # not retried


def test_a_throttled_write_is_retried_by_botocore(ecr):
    digest = ecr.push(REPO, build_image("oci", "web"), ["sha-1"])
    ecr.inject("PutImage", Fault.THROTTLE, call=2)  # the second PutImage, once
    promote().execute({"ti": TaskInstance()})
    assert ecr.tags(REPO)["prod"] == digest and ecr.calls["PutImage"] == 3


def test_the_sensor_pokes_until_the_tag_is_there(ecr):
    sensor = EcrTagSensor(task_id="wait", repository_name=REPO, tag="sha-2")
    assert not sensor.poke({"ti": TaskInstance()})
    digest = ecr.push(REPO, build_image("oci", "web"), ["sha-2"])
    assert sensor.poke({"ti": TaskInstance()}).xcom_value == digest
    assert ecr.calls["BatchGetImage"] == 2


def test_hygiene_keeps_an_images_last_tag(ecr):
    both = ecr.push(REPO, build_image("oci", "both"), ["sha-1", "v1"])
    only = ecr.push(REPO, build_image("oci", "only"), ["sha-2"])
    hygiene = EcrTagHygieneOperator(task_id="hygiene", repository_name=REPO, rules=[{"tag_pattern": "sha-*"}])
    report = hygiene.execute({"ti": TaskInstance()})
    assert ecr.tags(REPO) == {"v1": both, "sha-2": only}
    assert report["skipped_last_tag"] == [{"tag": "sha-2", "digest": only}]
    assert set(ecr.images(REPO)) == {both, only}  # no image deleted
