"""One API, two front doors: EcrDouble in the test's process and RemoteEcrDouble for a served double.

Every test here runs the same assertions through both (the ``door`` fixture), so a helper, a
counter or an error that reads differently on one of them fails here. The shared names are
``wire.SHARED_METHODS``, ``SHARED_PROPERTIES`` and ``SHARED_SETTINGS``; the first test holds both
classes to them, signature by signature.
"""

from __future__ import annotations

import inspect
from collections import Counter
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from airflow_ecr_retag.testing import (
    EcrDouble,
    Fault,
    RecordedCall,
    RemoteEcrDouble,
    StagedCall,
    StoredImage,
    Vulnerability,
    build_image,
)
from airflow_ecr_retag.testing.wire import SHARED_METHODS, SHARED_PROPERTIES, SHARED_SETTINGS

REPO = "team/app"
NO_RETRIES = {"retries": {"mode": "standard", "total_max_attempts": 1}}


@pytest.fixture(params=["in_process", "remote"])
def door(request):
    """The same double behind either front door: the in-process EcrDouble, or a RemoteEcrDouble
    driving a served one over the control API."""
    if request.param == "in_process":
        double = request.getfixturevalue("ecr_double")
    else:
        double = RemoteEcrDouble(request.getfixturevalue("ecr_double_server").endpoint_url)
    double.create_repository(REPO)
    return double


def client_of(door, **config):
    from botocore.config import Config

    return door.client(config=Config(**config)) if config else door.client()


def parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_both_front_doors_offer_every_shared_helper_with_the_same_signature():
    for name in sorted(SHARED_METHODS):
        assert parameters(getattr(EcrDouble, name)) == parameters(getattr(RemoteEcrDouble, name)), name
    for name in SHARED_PROPERTIES | SHARED_SETTINGS:
        assert isinstance(getattr(RemoteEcrDouble, name), property), name


def test_seeding_and_reading_the_state(door):
    index = build_image("oci-index", "release")
    digest = door.push(REPO, index, ["sha-1"], pushed_at=datetime(2026, 1, 2, tzinfo=UTC))
    [old, other] = door.seed(REPO, [{"name": "old", "tags": ["prod"]}, {"kind": "docker", "name": "other"}])
    [many] = door.seed_many(REPO, [{"name": "bulk", "tags": ["bulk-1"], "last_pulled": 1_750_000_000}])
    assert digest == index.digest
    door.move_tag(REPO, "latest", digest)
    at = door.move_tags(REPO, [{"tag": "prod", "digest": digest}, {"tag": "rc", "digest": old}])
    door.delete_tag(REPO, "bulk-1")  # its last tag: the image goes too, as BatchDeleteImage by tag
    assert door.tags(REPO) == {"sha-1": digest, "latest": digest, "prod": digest, "rc": old}
    images = door.images(REPO)
    assert set(images) == {digest, old, other, *(c.digest for c in index.children)} and many not in images
    assert isinstance(images[digest], StoredImage)
    assert images[digest].manifest == index.manifest and images[digest].media_type == index.media_type
    assert sorted(images[digest].tags) == ["latest", "prod", "sha-1"]
    assert images[digest].pushed_at == datetime(2026, 1, 2, tzinfo=UTC).timestamp()
    assert isinstance(at, float)
    door.set_pushed_at(REPO, old, datetime(2025, 6, 1, tzinfo=UTC))
    door.set_last_pulled(REPO, old, 1_760_000_000.0)
    door.set_image_status(REPO, other, "ARCHIVED")
    images = door.images(REPO)
    assert images[old].pushed_at == datetime(2025, 6, 1, tzinfo=UTC).timestamp()
    assert images[old].last_pulled == 1_760_000_000.0 and images[other].archived_at is not None
    blob = door.put_blob(REPO, b"layer bytes")
    assert door.blobs_of(REPO)[blob] == len(b"layer bytes") and door.blob_bytes(blob) == b"layer bytes"
    assert door.calls == Counter() and door.total_calls == 0  # seeding is not counted


def test_what_was_called_reads_alike(door):
    digest = door.push(REPO, build_image("oci", "app"), ["sha-1"])
    client = client_of(door)
    client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "sha-1"}])
    image = client.batch_get_image(repositoryName=REPO, imageIds=[{"imageDigest": digest}])["images"][0]
    client.put_image(repositoryName=REPO, imageManifest=image["imageManifest"], imageTag="prod")
    calls = door.calls
    assert isinstance(calls, Counter) and dict(calls) == {"BatchGetImage": 2, "PutImage": 1}
    assert calls["PutImage"] == 1 and calls["DeleteRepository"] == 0
    assert door.calls() == calls  # the older spelling, from when RemoteEcrDouble's calls was a method
    assert door.write_calls == 1 and door.total_calls == 3
    requests = door.requests
    assert [type(r) for r in requests] == [RecordedCall] * 3
    assert [r.operation for r in requests] == ["BatchGetImage", "BatchGetImage", "PutImage"]
    assert requests[2].params["imageTag"] == "prod" and "Boto3/" in requests[2].user_agent
    assert door.requests_for("BatchGetImage")[1]["imageIds"] == [{"imageDigest": digest}]
    door.reset_calls()
    assert door.calls == Counter() and door.requests == []


def test_inject_fails_the_nth_call_from_now_for_times_calls(door):
    door.push(REPO, build_image("oci", "app"), ["sha-1"])
    client = client_of(door, **NO_RETRIES)
    door.inject("BatchGetImage", Fault.ACCESS_DENIED, call=2, times=2)

    def read():
        try:
            client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "sha-1"}])
            return "ok"
        except ClientError as error:
            return error.response["Error"]["Code"]

    assert [read() for _ in range(4)] == ["ok", "AccessDeniedException", "AccessDeniedException", "ok"]
    door.inject("*", "throttle", times=None)  # a Fault's value works too; "*": every operation
    assert read() == "ThrottlingException"
    door.clear_faults()
    assert read() == "ok"
    assert door.calls["BatchGetImage"] == 6  # failed calls are counted too


def test_before_call_stages_another_actor_between_a_read_and_a_write(door):
    first = door.push(REPO, build_image("oci", "first"), ["sha-1"])
    second = door.push(REPO, build_image("oci", "second"))
    client = client_of(door)
    # Just before the 2nd BatchGetImage from now, every time from then on, someone moves sha-1.
    door.before_call("BatchGetImage", StagedCall("move_tag", REPO, "sha-1", second), call=2, times=None)
    seen = [
        client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "sha-1"}])["images"][0]["imageId"]
        for _ in range(3)
    ]
    assert [s["imageDigest"] for s in seen] == [first, second, second]
    assert door.tags(REPO)["sha-1"] == second


def test_scanning_and_settings(door):
    door.create_repository("team/scanned", scan_on_push=True)
    door.scan_seconds = 60
    assert door.scan_seconds == 60
    digest = door.push("team/scanned", build_image("oci", "app"), ["sha-1"])
    assert door.scan_status("team/scanned", digest) == "IN_PROGRESS"
    door.add_findings("team/scanned", digest, [Vulnerability("CVE-2024-3094", "CRITICAL", "xz-utils", "5.6.0")])
    door.advance_clock(61)
    assert door.scan_status("team/scanned", digest) == "COMPLETE"
    findings = client_of(door).describe_image_scan_findings(
        repositoryName="team/scanned", imageId={"imageDigest": digest}
    )
    assert findings["imageScanFindings"]["findingSeverityCounts"] == {"CRITICAL": 1}
    door.set_scan("team/scanned", digest, "FAILED", description="boom")
    assert door.scan_status("team/scanned", digest) == "FAILED"


def test_a_helpers_error_is_the_same_type_on_both(door):
    with pytest.raises(KeyError):
        door.move_tag(REPO, "prod", "sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="BLOB_MOUNTING takes one of"):
        door.set_account_setting("BLOB_MOUNTING", "SOMETIMES")


def test_a_served_double_takes_a_staged_call_not_a_function(ecr_double_server):
    remote = RemoteEcrDouble(ecr_double_server.endpoint_url)
    with pytest.raises(TypeError, match=r'StagedCall\("move_tag"'):
        remote.before_call("PutImage", lambda double: None)
