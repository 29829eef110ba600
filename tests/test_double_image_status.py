"""The double's image status, archive and pull time, and DescribeRepositories paging (one test each).

Sources: the botocore model (ImageStatus, ImageStatusFilter, UpdateImageStorageClass and its
errors, ImageDetail.lastRecordedPullTime, DescribeRepositories' maxResults and nextToken), the
ECR user guide's "Archiving an image" and "Restoring an image" pages (ECR-NOTES, "Archive and
pull time"), and containers-roadmap#2390 (a BatchGetImage call refreshes lastRecordedPullTime).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from airflow_ecr_retag.testing import WRITE_OPERATIONS, RemoteEcrDouble, build_image, build_referrer
from tests.oci_client import OciClient

REPO = "team/app"


def code(error: pytest.ExceptionInfo) -> str:
    return error.value.response["Error"]["Code"]


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


@pytest.fixture
def client(ecr):
    return ecr.client()


def three_images(ecr):
    """ACTIVE, ARCHIVED and ACTIVATING, in that order."""
    digests = [ecr.push(REPO, build_image("oci", name), [f"{name}-tag"]) for name in ("live", "cold", "waking")]
    ecr.set_image_status(REPO, digests[1], "ARCHIVED")
    ecr.set_image_status(REPO, digests[2], "ACTIVATING")
    return digests


def listed(client, operation, **filter_):
    kwargs = {"filter": filter_} if filter_ else {}
    if operation == "describe_images":
        return {
            d["imageDigest"]: d["imageStatus"]
            for d in client.describe_images(repositoryName=REPO, **kwargs)["imageDetails"]
        }
    return {i["imageDigest"] for i in client.list_images(repositoryName=REPO, **kwargs)["imageIds"]}


# ---------------------------------------------------------------- the imageStatus filter
def test_describe_images_lists_only_active_images_unless_the_filter_says_otherwise(ecr, client):
    live, cold, waking = three_images(ecr)
    assert listed(client, "describe_images") == {live: "ACTIVE"}
    assert listed(client, "describe_images", imageStatus="ACTIVE") == {live: "ACTIVE"}
    assert listed(client, "describe_images", imageStatus="ARCHIVED") == {cold: "ARCHIVED"}
    assert listed(client, "describe_images", imageStatus="ACTIVATING") == {waking: "ACTIVATING"}
    assert listed(client, "describe_images", imageStatus="ANY") == {
        live: "ACTIVE",
        cold: "ARCHIVED",
        waking: "ACTIVATING",
    }
    assert listed(client, "describe_images", imageStatus="ANY", tagStatus="TAGGED") == {
        live: "ACTIVE",
        cold: "ARCHIVED",
        waking: "ACTIVATING",
    }


def test_list_images_takes_the_same_filter(ecr, client):
    live, cold, waking = three_images(ecr)
    assert listed(client, "list_images") == {live}
    assert listed(client, "list_images", imageStatus="ARCHIVED") == {cold}
    assert listed(client, "list_images", imageStatus="ANY") == {live, cold, waking}


def test_an_unknown_image_status_filter_is_invalid_parameter(ecr, client):
    three_images(ecr)
    with pytest.raises(ClientError) as error:
        client.describe_images(repositoryName=REPO, filter={"imageStatus": "FROZEN"})
    assert code(error) == "InvalidParameterException" and "filter.imageStatus" in str(error.value)


def test_describe_images_by_id_describes_an_image_whatever_its_status(ecr, client):
    live, cold, waking = three_images(ecr)
    details = client.describe_images(repositoryName=REPO, imageIds=[{"imageDigest": d} for d in (live, cold, waking)])
    assert [d["imageStatus"] for d in details["imageDetails"]] == ["ACTIVE", "ARCHIVED", "ACTIVATING"]


# ---------------------------------------------------------------- UpdateImageStorageClass
def test_archive_then_restore_goes_archived_activating_active_on_the_double_clock(ecr, client):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    start = ecr.clock()
    ecr.clock = lambda: start
    archived = client.update_image_storage_class(
        repositoryName=REPO, imageId={"imageTag": "v1"}, targetStorageClass="ARCHIVE"
    )
    assert archived["imageStatus"] == "ARCHIVED"
    assert archived["imageId"] == {"imageDigest": digest, "imageTag": "v1"}
    assert archived["repositoryName"] == REPO and archived["registryId"] == "123456789012"
    [detail] = client.describe_images(repositoryName=REPO, imageIds=[{"imageDigest": digest}])["imageDetails"]
    assert detail["lastArchivedAt"] == datetime.fromtimestamp(int(start * 1000) / 1000, tz=UTC)
    restored = client.update_image_storage_class(
        repositoryName=REPO, imageId={"imageDigest": digest}, targetStorageClass="STANDARD"
    )
    assert restored["imageStatus"] == "ACTIVATING"
    ecr.clock = lambda: start + ecr.activation_seconds - 1
    assert listed(client, "describe_images", imageStatus="ACTIVATING") == {digest: "ACTIVATING"}
    ecr.clock = lambda: start + ecr.activation_seconds
    assert listed(client, "describe_images") == {digest: "ACTIVE"}
    [detail] = client.describe_images(repositoryName=REPO)["imageDetails"]
    assert detail["lastActivatedAt"].timestamp() == pytest.approx(start + ecr.activation_seconds, abs=0.001)
    assert ecr.calls["UpdateImageStorageClass"] == 2 and "UpdateImageStorageClass" in WRITE_OPERATIONS


def test_activation_takes_20_minutes_by_default_and_can_be_made_instant(ecr, client):
    assert ecr.activation_seconds == 20 * 60  # ECR: "typically up to 20 minutes"
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    ecr.set_image_status(REPO, digest, "ARCHIVED")
    ecr.activation_seconds = 0
    restored = client.update_image_storage_class(
        repositoryName=REPO, imageId={"imageDigest": digest}, targetStorageClass="STANDARD"
    )
    assert restored["imageStatus"] == "ACTIVE"


@pytest.mark.parametrize(
    ("status", "target"),
    [("ARCHIVED", "ARCHIVE"), ("ACTIVATING", "ARCHIVE"), ("ACTIVE", "STANDARD"), ("ACTIVATING", "STANDARD")],
)
def test_a_transition_to_where_the_image_is_or_goes_is_not_supported(ecr, client, status, target):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    ecr.set_image_status(REPO, digest, status)
    with pytest.raises(ClientError) as error:
        client.update_image_storage_class(
            repositoryName=REPO, imageId={"imageDigest": digest}, targetStorageClass=target
        )
    assert code(error) == "ImageStorageClassUpdateNotSupportedException"
    assert listed(client, "describe_images", imageStatus="ANY") == {digest: status}


def test_update_image_storage_class_errors(ecr, client):
    ecr.push(REPO, build_image("oci", "a"), ["v1"])
    with pytest.raises(ClientError) as error:
        client.update_image_storage_class(repositoryName=REPO, imageId={"imageTag": "v1"}, targetStorageClass="GLACIER")
    assert code(error) == "InvalidParameterException"
    with pytest.raises(ClientError) as error:
        client.update_image_storage_class(
            repositoryName=REPO, imageId={"imageTag": "nope"}, targetStorageClass="ARCHIVE"
        )
    assert code(error) == "ImageNotFoundException"
    with pytest.raises(ClientError) as error:
        client.update_image_storage_class(
            repositoryName="team/none", imageId={"imageTag": "v1"}, targetStorageClass="ARCHIVE"
        )
    assert code(error) == "RepositoryNotFoundException"


# ---------------------------------------------------------------- what an archived image can do
@pytest.mark.parametrize("status", ["ARCHIVED", "ACTIVATING"])
def test_an_archived_image_cannot_be_pulled_by_either_api(ecr, client, status):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    ecr.set_image_status(REPO, digest, status)
    answer = client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "v1"}, {"imageDigest": digest}])
    assert answer["images"] == []
    assert [f["failureCode"] for f in answer["failures"]] == ["ImageNotFound", "ImageNotFound"]
    [data] = client.get_authorization_token()["authorizationData"]
    oci = OciClient.for_token(data)
    for method in ("GET", "HEAD"):
        assert oci.request(method, f"/v2/{REPO}/manifests/v1").status == 404


def test_pushing_an_archived_image_again_restores_it_at_once(ecr, client):
    image = build_image("oci", "a")
    digest = ecr.push(REPO, image, ["v1"])
    ecr.set_image_status(REPO, digest, "ARCHIVED")
    client.put_image(repositoryName=REPO, imageManifest=image.manifest, imageTag="v1")  # not ImageAlreadyExists
    assert listed(client, "describe_images") == {digest: "ACTIVE"}
    assert client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "v1"}])["images"]


def test_batch_delete_image_removes_tags_of_archived_images(ecr, client):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1", "old"])
    ecr.set_image_status(REPO, digest, "ARCHIVED")
    answer = client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageTag": "old"}])
    assert answer["failures"] == [] and ecr.tags(REPO) == {"v1": digest}


def test_referrers_carry_their_own_status(ecr, client):
    subject = build_image("oci", "app")
    ecr.push(REPO, subject, ["v1"])
    signature = build_referrer(subject)
    ecr.push(REPO, signature)
    ecr.set_image_status(REPO, signature.digest, "ARCHIVED")

    def referrers(status=None):
        query = {"filter": {"artifactStatus": status}} if status else {}
        answer = client.list_image_referrers(repositoryName=REPO, subjectId={"imageDigest": subject.digest}, **query)
        return [(r["digest"], r["artifactStatus"]) for r in answer["referrers"]]

    assert referrers() == []
    assert referrers("ARCHIVED") == referrers("ANY") == [(signature.digest, "ARCHIVED")]


# ---------------------------------------------------------------- lastRecordedPullTime
def pulled_at(client, digest):
    [detail] = client.describe_images(repositoryName=REPO, imageIds=[{"imageDigest": digest}])["imageDetails"]
    return detail.get("lastRecordedPullTime")


def test_batch_get_image_records_a_pull_at_the_double_clock(ecr, client):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    other = ecr.push(REPO, build_image("oci", "b"), ["v2"])
    assert pulled_at(client, digest) is None  # never pulled: ECR omits the field
    ecr.clock = lambda: 1_800_000_000.25
    client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "v1"}, {"imageTag": "missing"}])
    assert pulled_at(client, digest) == datetime.fromtimestamp(1_800_000_000.25, tz=UTC)
    assert pulled_at(client, other) is None


def test_a_v2_manifest_get_records_a_pull_and_a_head_does_not(ecr, client):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    [data] = client.get_authorization_token()["authorizationData"]
    oci = OciClient.for_token(data)
    later = int(ecr.clock()) + 60.0  # within the registry password's 12 hours
    ecr.clock = lambda: later
    assert oci.request("HEAD", f"/v2/{REPO}/manifests/v1").status == 200
    assert pulled_at(client, digest) is None
    assert oci.request("GET", f"/v2/{REPO}/manifests/{digest}").status == 200
    assert pulled_at(client, digest) == datetime.fromtimestamp(later, tz=UTC)


def test_set_last_pulled_seeds_the_pull_time(ecr, client):
    digest = ecr.push(REPO, build_image("oci", "a"), ["v1"])
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ecr.set_last_pulled(REPO, digest, when)
    assert pulled_at(client, digest) == when
    assert ecr.total_calls == 1  # the DescribeImages above: seeding is not counted
    ecr.set_last_pulled(REPO, digest, None)
    assert pulled_at(client, digest) is None


# ---------------------------------------------------------------- DescribeRepositories
def test_describe_repositories_paginates_1_to_1000_default_100(ecr, client):
    for i in range(249):
        ecr.create_repository(f"team/r{i:03d}")
    first = client.describe_repositories()
    assert len(first["repositories"]) == 100 and "nextToken" in first
    paginator = client.get_paginator("describe_repositories")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 120}))
    assert [len(p["repositories"]) for p in pages] == [120, 120, 10]
    names = [r["repositoryName"] for p in pages for r in p["repositories"]]
    assert len(set(names)) == 250 and names[0] == REPO
    with pytest.raises(ClientError) as error:
        client.describe_repositories(maxResults=1001)
    assert code(error) == "InvalidParameterException"


def test_describe_repositories_by_name(ecr, client):
    ecr.create_repository("team/other")
    answer = client.describe_repositories(repositoryNames=["team/other"])
    assert [r["repositoryName"] for r in answer["repositories"]] == ["team/other"]
    with pytest.raises(ClientError) as error:
        client.describe_repositories(repositoryNames=["team/other", "team/none"])
    assert code(error) == "RepositoryNotFoundException"
    with pytest.raises(ClientError) as error:
        client.describe_repositories(repositoryNames=["team/other"], maxResults=10)
    assert code(error) == "InvalidParameterException"


# ---------------------------------------------------------------- seeding many images
def test_seed_many_stores_distinct_images_with_their_tags_times_and_statuses(ecr, client):
    specs = [
        {"name": f"n{i}", "tags": [f"sha-{i}"], "pushed_at": 1_700_000_000 + i, "last_pulled": 1_750_000_000.0}
        for i in range(1500)
    ]
    specs[7]["status"] = "ARCHIVED"
    digests = ecr.seed_many(REPO, specs)
    assert len(set(digests)) == 1500 and ecr.tags(REPO)["sha-7"] == digests[7]
    assert len(listed(client, "describe_images", imageStatus="ANY")) == 100  # a page
    pages = list(client.get_paginator("describe_images").paginate(repositoryName=REPO, filter={"imageStatus": "ANY"}))
    details = {d["imageDigest"]: d for p in pages for d in p["imageDetails"]}
    assert details[digests[7]]["imageStatus"] == "ARCHIVED"
    assert details[digests[3]]["imagePushedAt"] == datetime.fromtimestamp(1_700_000_003, tz=UTC)
    assert details[digests[3]]["lastRecordedPullTime"] == datetime.fromtimestamp(1_750_000_000, tz=UTC)
    assert ecr.total_calls == 16  # the reads above; seeding is not counted


def test_seed_many_and_status_over_http(ecr_double_server):
    remote = RemoteEcrDouble(ecr_double_server.endpoint_url)
    remote.create_repository(REPO)
    digests = remote.seed_many(
        REPO, [{"name": "a", "tags": ["v1"]}, {"name": "b", "tags": ["v2"], "status": "ARCHIVED"}]
    )
    client = ecr_double_server.client()
    assert listed(client, "describe_images") == {digests[0]: "ACTIVE"}
    assert remote.tags(REPO) == {"v1": digests[0], "v2": digests[1]}
