"""The ECR double reproduces the ECR behaviours this package depends on (one test each)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import botocore.config
import pytest
from botocore.exceptions import ClientError

from airflow_ecr_retag.core.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from airflow_ecr_retag.testing import EcrDouble, Fault, build_image, push_image

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


def put(client, image, tag=None, **extra):
    params = {"repositoryName": REPO, "imageManifest": image.manifest, **extra}
    if tag:
        params["imageTag"] = tag
    return client.put_image(**params)


# ---------------------------------------------------------------- digests
@pytest.mark.parametrize("kind", ["docker", "oci", "oci-no-mediatype", "oci-index", "docker-list"])
def test_digest_is_sha256_of_exact_manifest_bytes(ecr, client, kind):
    image = build_image(kind, name=kind)
    push_image(client, REPO, image, ["t"])
    expected = "sha256:" + hashlib.sha256(image.manifest.encode()).hexdigest()
    assert ecr.tags(REPO)["t"] == expected


def test_reserialised_manifest_is_a_different_image(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["original"])
    compact = json.dumps(json.loads(image.manifest))
    response = client.put_image(repositoryName=REPO, imageManifest=compact, imageTag="compact")
    assert response["image"]["imageId"]["imageDigest"] != image.digest
    assert len(ecr.images(REPO)) == 2


# ---------------------------------------------------------------- PutImage
def test_put_image_checks_image_digest(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image)
    with pytest.raises(ClientError) as error:
        put(client, image, "x", imageDigest="sha256:" + "0" * 64)
    assert code(error) == "ImageDigestDoesNotMatchException"
    assert "x" not in ecr.tags(REPO)


def test_put_image_requires_media_type_when_manifest_has_none(ecr, client):
    image = build_image("oci-no-mediatype", "a")
    push_image(client, REPO, image)  # with imageManifestMediaType: accepted
    with pytest.raises(ClientError) as error:
        put(client, image, "x")
    assert code(error) == "InvalidParameterException"
    assert "Invalid JSON syntax" in str(error.value)
    put(client, image, "y", imageManifestMediaType=OCI_MANIFEST)
    assert ecr.tags(REPO)["y"] == image.digest


def test_put_image_media_type_must_agree_with_manifest(ecr, client):
    image = build_image("docker", "a")
    push_image(client, REPO, image)
    with pytest.raises(ClientError) as error:
        put(client, image, "x", imageManifestMediaType=OCI_MANIFEST)
    assert code(error) == "InvalidParameterException"


def test_same_manifest_and_tag_is_image_already_exists(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["v1"])
    with pytest.raises(ClientError) as error:
        put(client, image, "v1")
    assert code(error) == "ImageAlreadyExistsException"


def test_immutable_repository_refuses_existing_tag_even_at_same_digest(ecr):
    ecr.create_repository("locked", mutability="IMMUTABLE")
    client = ecr.client()
    image, other = build_image("oci", "a"), build_image("oci", "b")
    push_image(client, "locked", image, ["v1"])
    push_image(client, "locked", other)
    for candidate in (image, other):
        with pytest.raises(ClientError) as error:
            client.put_image(repositoryName="locked", imageManifest=candidate.manifest, imageTag="v1")
        assert code(error) == "ImageTagAlreadyExistsException"
    assert ecr.tags("locked") == {"v1": image.digest}


@pytest.mark.parametrize(
    ("mode", "tag", "immutable"),
    [
        ("IMMUTABLE_WITH_EXCLUSION", "latest", False),  # excluded by 'latest'
        ("IMMUTABLE_WITH_EXCLUSION", "dev-123", False),  # excluded by 'dev-*'
        ("IMMUTABLE_WITH_EXCLUSION", "v1", True),
        ("IMMUTABLE_WITH_EXCLUSION", "devx", True),  # '*' is not '?' and '-' is literal
        ("MUTABLE_WITH_EXCLUSION", "dev-123", True),
        ("MUTABLE_WITH_EXCLUSION", "v1", False),
        ("MUTABLE_WITH_EXCLUSION", "latest2", False),  # a filter matches the whole tag
    ],
)
def test_exclusion_filters_are_wildcards(ecr, mode, tag, immutable):
    ecr.create_repository("mixed", mutability=mode, exclusion_filters=["latest", "dev-*"])
    client = ecr.client()
    first, second = build_image("oci", "a"), build_image("oci", "b")
    push_image(client, "mixed", first, [tag])
    push_image(client, "mixed", second)
    if immutable:
        with pytest.raises(ClientError) as error:
            client.put_image(repositoryName="mixed", imageManifest=second.manifest, imageTag=tag)
        assert code(error) == "ImageTagAlreadyExistsException"
    else:
        client.put_image(repositoryName="mixed", imageManifest=second.manifest, imageTag=tag)
        assert ecr.tags("mixed")[tag] == second.digest


def test_exclusion_filter_with_star_is_accepted_by_create_repository(ecr):
    client = ecr.client()
    client.create_repository(
        repositoryName="wild",
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": "*-rc"}],
    )
    image, other = build_image("oci", "a"), build_image("oci", "b")
    push_image(client, "wild", image, ["1.0-rc"])
    push_image(client, "wild", other, ["1.0-rc"])  # mutable through the filter: moves
    assert ecr.tags("wild") == {"1.0-rc": other.digest}


def test_moving_a_tag_leaves_the_old_image_untagged_not_deleted(ecr, client):
    old, new = build_image("oci", "old"), build_image("oci", "new")
    push_image(client, REPO, old, ["latest"])
    push_image(client, REPO, new, ["latest"])
    images = ecr.images(REPO)
    assert images[old.digest].tags == []
    assert ecr.tags(REPO) == {"latest": new.digest}
    untagged = client.describe_images(repositoryName=REPO, filter={"tagStatus": "UNTAGGED"})["imageDetails"]
    assert [d["imageDigest"] for d in untagged] == [old.digest]


def test_put_into_missing_repository_is_repository_not_found(ecr, client):
    with pytest.raises(ClientError) as error:
        client.put_image(repositoryName="nope", imageManifest=build_image().manifest, imageTag="x")
    assert code(error) == "RepositoryNotFoundException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_missing_repository_over_http_is_not_a_500(ecr_double_server):
    client = ecr_double_server.client()
    with pytest.raises(ClientError) as error:
        client.put_image(repositoryName="nope", imageManifest=build_image().manifest, imageTag="x")
    assert code(error) == "RepositoryNotFoundException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
def test_index_with_absent_children_is_referenced_images_not_found(ecr, client, kind):
    index = build_image(kind, "multi")
    with pytest.raises(ClientError) as error:
        put(client, index, "v1")
    assert code(error) == "ReferencedImagesNotFoundException"
    assert ecr.images(REPO) == {}


def test_manifest_whose_layers_were_never_uploaded_is_layers_not_found(ecr, client):
    with pytest.raises(ClientError) as error:
        put(client, build_image("oci", "never-uploaded"), "v1")
    assert code(error) == "LayersNotFoundException"


# ---------------------------------------------------------------- BatchGetImage
def test_batch_get_image_echoes_the_requested_reference(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["a1", "a2", "a3"])
    response = client.batch_get_image(
        repositoryName=REPO,
        imageIds=[{"imageTag": "a2"}, {"imageDigest": image.digest}],
        acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES),
    )
    assert [i["imageId"] for i in response["images"]] == [
        {"imageDigest": image.digest, "imageTag": "a2"},
        {"imageDigest": image.digest},
    ]


@pytest.mark.parametrize(
    ("stored", "asked", "served"), [("docker", OCI_MANIFEST, OCI_MANIFEST), ("oci", DOCKER_MANIFEST, DOCKER_MANIFEST)]
)
def test_unaccepted_single_manifest_is_translated_with_a_new_digest(ecr, client, stored, asked, served):
    image = build_image(stored, "a")
    push_image(client, REPO, image, ["t"])
    response = client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "t"}], acceptedMediaTypes=[asked])
    [got] = response["images"]
    assert got["imageManifestMediaType"] == served
    assert got["imageManifest"] != image.manifest
    assert got["imageId"]["imageDigest"] != image.digest
    assert json.loads(got["imageManifest"])["mediaType"] == served
    # All four accepted: the stored bytes come back untouched.
    exact = client.batch_get_image(
        repositoryName=REPO, imageIds=[{"imageTag": "t"}], acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES)
    )
    assert exact["images"][0]["imageManifest"] == image.manifest


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
def test_unaccepted_index_is_a_failure(ecr, client, kind):
    image = build_image(kind, "m")
    push_image(client, REPO, image, ["t"])
    response = client.batch_get_image(
        repositoryName=REPO, imageIds=[{"imageTag": "t"}], acceptedMediaTypes=[OCI_MANIFEST, DOCKER_MANIFEST]
    )
    assert response["images"] == []
    assert response["failures"][0]["imageId"] == {"imageTag": "t"}


def test_tag_and_digest_that_disagree_is_image_tag_does_not_match_digest(ecr, client):
    a, b = build_image("oci", "a"), build_image("oci", "b")
    push_image(client, REPO, a, ["a"])
    push_image(client, REPO, b, ["b"])
    response = client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "a", "imageDigest": b.digest}])
    assert response["images"] == []
    assert response["failures"][0]["failureCode"] == "ImageTagDoesNotMatchDigest"


def test_missing_references_are_per_item_failures(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["here"])
    response = client.batch_get_image(
        repositoryName=REPO,
        imageIds=[{"imageTag": "here"}, {"imageTag": "gone"}, {"imageDigest": "sha256:" + "1" * 64}],
    )
    assert len(response["images"]) == 1
    assert [(f["imageId"], f["failureCode"]) for f in response["failures"]] == [
        ({"imageTag": "gone"}, "ImageNotFound"),
        ({"imageDigest": "sha256:" + "1" * 64}, "ImageNotFound"),
    ]


@pytest.mark.parametrize("operation", ["batch_get_image", "batch_delete_image"])
def test_more_than_100_image_ids_is_invalid_parameter(ecr, client, operation):
    ids = [{"imageTag": f"t{i}"} for i in range(101)]
    with pytest.raises(ClientError) as error:
        getattr(client, operation)(repositoryName=REPO, imageIds=ids)
    assert code(error) == "InvalidParameterException"
    getattr(client, operation)(repositoryName=REPO, imageIds=ids[:100])  # 100 is fine


# ---------------------------------------------------------------- BatchDeleteImage
def test_delete_by_tag_removes_only_that_tag(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["keep", "drop"])
    response = client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageTag": "drop"}])
    assert response["imageIds"] == [{"imageDigest": image.digest, "imageTag": "drop"}]
    assert ecr.tags(REPO) == {"keep": image.digest}


def test_delete_of_last_tag_deletes_the_image(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["only"])
    client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageTag": "only"}])
    assert ecr.images(REPO) == {}


def test_delete_by_digest_deletes_image_with_all_tags(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image, ["a", "b", "c"])
    response = client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageDigest": image.digest}])
    assert sorted(i["imageTag"] for i in response["imageIds"]) == ["a", "b", "c"]
    assert ecr.images(REPO) == {} and ecr.tags(REPO) == {}


def test_deleting_a_child_of_an_index_is_image_referenced_by_manifest_list(ecr, client):
    index = build_image("oci-index", "m")
    push_image(client, REPO, index, ["v1"])
    child = index.children[0].digest
    response = client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageDigest": child}])
    assert response["failures"][0]["failureCode"] == "ImageReferencedByManifestList"
    assert child in ecr.images(REPO)


def test_delete_missing_tag_is_a_per_item_failure(ecr, client):
    response = client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageTag": "gone"}])
    assert response["failures"][0]["failureCode"] == "ImageNotFound"


# ---------------------------------------------------------------- DescribeImages / ListImages
def seed_many(ecr, count):
    for i in range(count):
        ecr.push(REPO, build_image("oci", f"img{i}"), tags=[f"t{i}"])


@pytest.mark.parametrize(("operation", "key"), [("describe_images", "imageDetails"), ("list_images", "imageIds")])
def test_pagination_with_max_results_and_next_token(ecr, client, operation, key):
    seed_many(ecr, 250)
    first = getattr(client, operation)(repositoryName=REPO)
    assert len(first[key]) == 100 and "nextToken" in first  # default page is 100
    pages = list(client.get_paginator(operation).paginate(repositoryName=REPO, PaginationConfig={"PageSize": 60}))
    assert [len(p[key]) for p in pages] == [60, 60, 60, 60, 10]
    with pytest.raises(ClientError) as error:
        getattr(client, operation)(repositoryName=REPO, maxResults=1001)
    assert code(error) == "InvalidParameterException"


def test_tag_status_filter(ecr, client):
    old, new = build_image("oci", "old"), build_image("oci", "new")
    push_image(client, REPO, old, ["x"])
    push_image(client, REPO, new, ["x"])

    def digests(op, key, status):
        return [i["imageDigest"] for i in getattr(client, op)(repositoryName=REPO, filter={"tagStatus": status})[key]]

    assert digests("describe_images", "imageDetails", "TAGGED") == [new.digest]
    assert digests("describe_images", "imageDetails", "UNTAGGED") == [old.digest]
    assert digests("list_images", "imageIds", "UNTAGGED") == [old.digest]
    assert sorted(digests("list_images", "imageIds", "ANY")) == sorted([old.digest, new.digest])


def test_image_pushed_at_is_kept_across_retags(ecr, client):
    image = build_image("oci", "a")
    pushed = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ecr.push(REPO, image, ["first"], pushed_at=pushed)
    client.put_image(repositoryName=REPO, imageManifest=image.manifest, imageTag="second")
    [detail] = client.describe_images(repositoryName=REPO)["imageDetails"]
    assert sorted(detail["imageTags"]) == ["first", "second"]
    assert detail["imagePushedAt"] == pushed


def test_describe_images_with_missing_id_raises_image_not_found(ecr, client):
    push_image(client, REPO, build_image("oci", "a"), ["here"])
    with pytest.raises(ClientError) as error:
        client.describe_images(repositoryName=REPO, imageIds=[{"imageTag": "here"}, {"imageTag": "gone"}])
    assert code(error) == "ImageNotFoundException"


def test_describe_images_cannot_combine_image_ids_with_next_token(ecr, client):
    with pytest.raises(ClientError) as error:
        client.describe_images(
            repositoryName=REPO, imageIds=[{"imageTag": "x"}], nextToken=base64.b64encode(b'{"offset": 1}').decode()
        )
    assert code(error) == "InvalidParameterException"


# ---------------------------------------------------------------- limits
def test_tag_over_300_characters_is_refused(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image)
    with pytest.raises(ClientError) as error:
        put(client, image, "t" * 301)
    assert code(error) == "InvalidParameterException"
    put(client, image, "t" * 300)
    assert "t" * 300 in ecr.tags(REPO)


def test_manifest_over_4_mib_is_refused(ecr, client):
    image = build_image("oci", "a")
    push_image(client, REPO, image)
    document = json.loads(image.manifest)
    document["annotations"] = {"padding": "x" * 4_194_304}
    with pytest.raises(ClientError) as error:
        client.put_image(repositoryName=REPO, imageManifest=json.dumps(document), imageTag="big")
    assert code(error) == "InvalidParameterException"
    assert "4194304" in str(error.value)


# ---------------------------------------------------------------- helpers
def test_seeded_images_have_distinct_config_and_layer_digests():
    images = [build_image(kind, name="same") for kind in ("docker", "oci", "oci-no-mediatype")]
    multi = [build_image(kind, name="same") for kind in ("oci-index", "docker-list")]
    singles = images + [child for m in multi for child in m.children]
    blobs = [digest for image in singles for digest in image.blobs]
    assert len(blobs) == len(set(blobs))
    assert len({i.digest for i in singles + multi}) == len(singles + multi)
    assert not build_image("oci-no-mediatype").has_media_type_field
    assert [json.loads(m.manifest)["mediaType"] for m in multi] == [OCI_INDEX, DOCKER_MANIFEST_LIST]
    assert all(len(m.children) == 2 for m in multi)


def test_counter_counts_each_operation(ecr, client):
    image = build_image("oci", "a")
    ecr.push(REPO, image, ["a"])
    client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "a"}])
    client.put_image(repositoryName=REPO, imageManifest=image.manifest, imageTag="b")
    client.put_image(repositoryName=REPO, imageManifest=image.manifest, imageTag="c")
    assert dict(ecr.calls) == {"BatchGetImage": 1, "PutImage": 2}
    assert ecr.write_calls == 2
    assert ecr.requests_for("PutImage")[1]["imageTag"] == "c"
    ecr.reset_calls()
    assert ecr.total_calls == 0


@pytest.mark.parametrize("fault", [Fault.THROTTLE, Fault.SERVER_ERROR, Fault.DROPPED_CONNECTION])
@pytest.mark.parametrize("serve", [False, True], ids=["in-process", "server"])
def test_fault_on_nth_call_is_retried_by_botocore(fault, serve):
    with EcrDouble(server=serve) as ecr:
        ecr.create_repository(REPO)
        client = ecr.client(config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 3}))
        ecr.inject("DescribeImages", fault, call=2)
        client.describe_images(repositoryName=REPO)  # call 1: fine
        client.describe_images(repositoryName=REPO)  # call 2 fails once, its retry succeeds
        assert ecr.calls["DescribeImages"] == 3


@pytest.mark.parametrize(
    ("fault", "expected"), [(Fault.ACCESS_DENIED, "AccessDeniedException"), (Fault.SERVER_ERROR, "ServerException")]
)
def test_fault_on_every_call_fails(ecr, fault, expected):
    client = ecr.client(config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 2}))
    ecr.inject("*", fault, times=None)
    with pytest.raises(ClientError) as error:
        client.describe_images(repositoryName=REPO)
    assert code(error) == expected


def test_before_call_stages_a_concurrent_actor(ecr, client):
    a, b = build_image("oci", "a"), build_image("oci", "b")
    ecr.push(REPO, a, ["prod"])
    ecr.push(REPO, b)
    ecr.before_call("BatchDeleteImage", lambda double: double.move_tag(REPO, "prod", b.digest))
    client.batch_delete_image(repositoryName=REPO, imageIds=[{"imageTag": "other"}])
    assert ecr.tags(REPO) == {"prod": b.digest}


def test_server_is_reached_from_a_subprocess_through_aws_endpoint_url_ecr(ecr_double_server):
    ecr = ecr_double_server
    ecr.create_repository(REPO)
    image = build_image("oci-index", "sub")
    ecr.push(REPO, image, ["sha-1"])
    script = (
        "import boto3, json; c = boto3.client('ecr');"
        "r = c.batch_get_image(repositoryName='team/app', imageIds=[{'imageTag': 'sha-1'}],"
        " acceptedMediaTypes=['application/vnd.oci.image.index.v1+json']);"
        "print(json.dumps(r['images'][0]['imageId']))"
    )
    env = {**os.environ, **ecr.environ()}
    env.pop("AWS_ENDPOINT_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout) == {"imageDigest": image.digest, "imageTag": "sha-1"}
    assert ecr.calls["BatchGetImage"] == 1
    assert ecr.endpoint_url.startswith("http://127.0.0.1:")


def test_serve_command_prints_endpoint_and_serves(tmp_path):
    endpoint_file = tmp_path / "endpoint"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_ecr_retag.testing",
            "serve",
            "--seed",
            "team/app:v1:oci",
            "--endpoint-file",
            str(endpoint_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[1].startswith("ECR double listening on http://127.0.0.1:")
        import boto3

        client = boto3.client(
            "ecr",
            endpoint_url=endpoint_file.read_text(),
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        tags = [i.get("imageTag") for i in client.list_images(repositoryName="team/app")["imageIds"]]
        assert tags == ["v1"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_pushed_at_can_be_set_for_age_based_tests(ecr):
    image = build_image("oci", "a")
    digest = ecr.push(REPO, image, ["old"])
    week_ago = datetime.now(UTC) - timedelta(days=7)
    ecr.set_pushed_at(REPO, digest, week_ago)
    assert abs(ecr.images(REPO)[digest].pushed_at - week_ago.timestamp()) < 1
