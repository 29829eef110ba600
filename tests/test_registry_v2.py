"""The double's OCI distribution API (``/v2/``): ECR's auth, one store with the ECR API, the spec's
answers and error codes (opencontainers/distribution-spec ``spec.md``), one test each."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import urllib.error
import urllib.parse

import pytest

from airflow_ecr_retag.core.manifests import DOCKER_MANIFEST, MANIFEST_MEDIA_TYPES, OCI_INDEX, OCI_MANIFEST
from airflow_ecr_retag.testing import WRITE_OPERATIONS, EcrDouble, Fault, build_image, build_referrer
from tests.oci_client import OciClient

REPO = "team/app"


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


@pytest.fixture
def oci(ecr):
    [data] = ecr.client().get_authorization_token()["authorizationData"]
    return OciClient.for_token(data)


# ---------------------------------------------------------------- auth
def test_get_authorization_token_gives_aws_basic_credentials_and_the_registry_endpoint(ecr):
    [data] = ecr.client().get_authorization_token()["authorizationData"]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    assert user == "AWS" and password
    assert data["proxyEndpoint"] == ecr.registry_endpoint()
    assert data["proxyEndpoint"].startswith("http://127.0.0.1:")


def test_v2_without_credentials_is_401_with_a_basic_challenge(ecr, oci):
    anonymous = OciClient(oci.endpoint)
    answer = anonymous.request("GET", "/v2/")
    assert answer.status == 401 and answer.error_code == "UNAUTHORIZED"
    assert answer.headers["WWW-Authenticate"].startswith('Basic realm="https://123456789012.dkr.ecr.us-east-1.')
    assert oci.request("GET", "/v2/").status == 200
    assert OciClient(oci.endpoint, "AWS", "made-up").request("GET", "/v2/").status == 401


def test_an_expired_registry_password_is_denied(ecr, oci):
    real_clock = ecr.clock
    ecr.clock = lambda: real_clock() + 12 * 3600 + 1
    answer = oci.request("GET", "/v2/")
    assert answer.status == 403 and answer.error_code == "DENIED"


# ---------------------------------------------------------------- one store
def test_an_image_pushed_over_v2_is_the_image_the_ecr_api_sees(ecr, oci):
    image = build_image("oci", "pushed")
    answer = oci.push_image(REPO, image, "v1")
    assert answer.status == 201 and answer.headers["Docker-Content-Digest"] == image.digest
    client = ecr.client()
    [detail] = client.describe_images(repositoryName=REPO)["imageDetails"]
    assert (detail["imageDigest"], detail["imageTags"]) == (image.digest, ["v1"])
    assert detail["imageSizeInBytes"] == len(image.manifest) + sum(b.size for b in image.blobs.values())
    got = client.batch_get_image(
        repositoryName=REPO, imageIds=[{"imageTag": "v1"}], acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES)
    )
    assert got["images"][0]["imageManifest"] == image.manifest
    assert set(ecr.blobs_of(REPO)) == set(image.blobs)


def test_an_image_pushed_through_the_ecr_api_is_pulled_over_v2_with_its_blobs(ecr, oci):
    image = build_image("docker", "seeded")
    ecr.push(REPO, image, ["v1"])
    answer = oci.request("GET", f"/v2/{REPO}/manifests/v1", headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)})
    assert answer.status == 200 and answer.body == image.manifest.encode()
    assert answer.headers["Docker-Content-Digest"] == image.digest
    assert answer.headers["Content-Type"] == DOCKER_MANIFEST
    for digest, blob in image.blobs.items():
        redirect = oci.request("GET", f"/v2/{REPO}/blobs/{digest}")
        assert redirect.status == 307  # as ECR redirects to S3
        pulled = oci.request("GET", redirect.headers["Location"])
        assert pulled.body == b"".join(blob.chunks())
        head = oci.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
        assert (head.status, head.headers["Content-Length"]) == (200, str(blob.size))


def test_manifest_head_and_get_by_digest(ecr, oci):
    image = build_image("oci-index", "multi")
    ecr.push(REPO, image, ["v1"])
    head = oci.request("HEAD", f"/v2/{REPO}/manifests/{image.digest}")
    assert head.status == 200 and head.headers["Content-Length"] == str(len(image.manifest.encode()))
    assert head.headers["Docker-Content-Digest"] == image.digest and head.body == b""
    child = image.children[0]
    assert oci.request("GET", f"/v2/{REPO}/manifests/{child.digest}").body == child.manifest.encode()
    missing = oci.request("GET", f"/v2/{REPO}/manifests/nope")
    assert missing.status == 404 and missing.error_code == "MANIFEST_UNKNOWN"


def test_accept_negotiation_follows_the_batch_get_image_rule(ecr, oci):
    image = build_image("oci", "a")
    ecr.push(REPO, image, ["t"])
    by_tag = oci.request("GET", f"/v2/{REPO}/manifests/t", headers={"Accept": DOCKER_MANIFEST})
    assert by_tag.status == 200 and by_tag.headers["Content-Type"] == DOCKER_MANIFEST
    assert by_tag.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(by_tag.body).hexdigest()
    assert by_tag.headers["Docker-Content-Digest"] != image.digest  # translated: new bytes
    by_digest = oci.request("GET", f"/v2/{REPO}/manifests/{image.digest}", headers={"Accept": DOCKER_MANIFEST})
    assert by_digest.status == 404  # no translation by digest
    index = build_image("oci-index", "i")
    ecr.push(REPO, index, ["multi"])
    refused = oci.request("GET", f"/v2/{REPO}/manifests/multi", headers={"Accept": OCI_MANIFEST})
    assert refused.status == 404 and refused.error_code == "MANIFEST_UNKNOWN"


# ---------------------------------------------------------------- manifest pushes
def test_a_manifest_whose_blobs_are_missing_is_manifest_blob_unknown(ecr, oci):
    image = build_image("oci", "a")
    answer = oci.request("PUT", f"/v2/{REPO}/manifests/v1", image.manifest.encode(), {"Content-Type": OCI_MANIFEST})
    assert answer.status == 400 and answer.error_code == "MANIFEST_BLOB_UNKNOWN"
    index = build_image("oci-index", "i")
    answer = oci.request("PUT", f"/v2/{REPO}/manifests/v2", index.manifest.encode(), {"Content-Type": OCI_INDEX})
    assert answer.status == 400 and answer.error_code == "MANIFEST_BLOB_UNKNOWN"
    assert ecr.images(REPO) == {}


def test_manifest_push_keeps_the_immutability_rules_of_put_image(ecr):
    ecr.create_repository("locked", mutability="IMMUTABLE")
    [data] = ecr.client().get_authorization_token()["authorizationData"]
    oci = OciClient.for_token(data)
    first, second = build_image("oci", "a"), build_image("oci", "b")
    assert oci.push_image("locked", first, "v1").status == 201
    for again in (first, second):  # even at the same digest, as PutImage (containers-roadmap#2179)
        answer = oci.push_image("locked", again, "v1")
        assert answer.status == 400 and answer.error_code == "TAG_INVALID"
    assert ecr.tags("locked") == {"v1": first.digest}
    assert oci.push_image(REPO, first, "v1").status == 201
    assert oci.push_image(REPO, first, "v1").status == 201  # mutable: the same push again succeeds


@pytest.mark.parametrize(
    ("reference", "body", "content_type", "status", "error"),
    [
        ("sha256:" + "0" * 64, None, OCI_MANIFEST, 400, "DIGEST_INVALID"),
        ("v1", b"{not json", OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        ("v1", b"\xff\xfe", OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        ("v1", None, "application/x-unknown", 400, "MANIFEST_INVALID"),
        ("bad tag!", None, OCI_MANIFEST, 400, "TAG_INVALID"),
        ("sha256:zz", None, OCI_MANIFEST, 400, "DIGEST_INVALID"),
    ],
)
def test_bad_manifest_pushes_get_the_spec_error_and_change_nothing(
    ecr, oci, reference, body, content_type, status, error
):
    image = build_image("oci", "a")
    for blob in image.blobs.values():
        oci.push_blob(REPO, b"".join(blob.chunks()))
    path = f"/v2/{REPO}/manifests/{urllib.parse.quote(reference)}"
    answer = oci.request("PUT", path, body or image.manifest.encode(), {"Content-Type": content_type})
    assert (answer.status, answer.error_code) == (status, error)
    assert ecr.images(REPO) == {}


def test_manifest_over_4_mib_is_413(ecr, oci):
    answer = oci.request("PUT", f"/v2/{REPO}/manifests/big", b"{" + b" " * 4_194_304 + b"}")
    assert answer.status == 413 and ecr.images(REPO) == {}


# ---------------------------------------------------------------- uploads
def test_chunked_upload_in_order_then_put(ecr, oci):
    data = b"0123456789" * 1000
    start = oci.request("POST", f"/v2/{REPO}/blobs/uploads/")
    location = start.headers["Location"]
    first = oci.request("PATCH", location, data[:4000], {"Content-Range": "0-3999"})
    assert first.status == 202 and first.headers["Range"] == "0-3999"
    skipped = oci.request("PATCH", first.headers["Location"], data[5000:], {"Content-Range": "5000-9999"})
    assert skipped.status == 416 and skipped.headers["Range"] == "0-3999"
    assert oci.request("GET", location).headers["Range"] == "0-3999"
    second = oci.request("PATCH", location, data[4000:9000], {"Content-Range": "4000-8999"})
    assert second.status == 202
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    done = oci.request("PUT", f"{location}?digest={digest}", data[9000:], {"Content-Range": "9000-9999"})
    assert done.status == 201 and done.headers["Docker-Content-Digest"] == digest
    assert ecr.blob_bytes(digest) == data and ecr.blobs_of(REPO) == {digest: len(data)}


def test_an_upload_whose_digest_does_not_match_leaves_no_blob(ecr, oci):
    location = oci.request("POST", f"/v2/{REPO}/blobs/uploads/").headers["Location"]
    answer = oci.request("PUT", f"{location}?digest=sha256:{'1' * 64}", b"some bytes")
    assert answer.status == 400 and answer.error_code == "DIGEST_INVALID"
    assert ecr.blobs_of(REPO) == {}
    assert oci.request("DELETE", location).status == 204
    gone = oci.request("GET", location)
    assert gone.status == 404 and gone.error_code == "BLOB_UPLOAD_UNKNOWN"


def test_an_interrupted_chunk_is_rolled_back(ecr, oci):
    location = oci.request("POST", f"/v2/{REPO}/blobs/uploads/").headers["Location"]
    host, port = urllib.parse.urlsplit(oci.endpoint).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {oci.auth}\r\n"
            "Content-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            + b"x" * 1000
        )
        sock.shutdown(socket.SHUT_WR)  # the client goes away mid-chunk
        sock.recv(65536)
    status = oci.request("GET", location)
    assert status.status == 204 and status.headers["Range"] == "0-0"
    data = b"whole"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert oci.request("PUT", f"{location}?digest={digest}", data).status == 201  # nothing of the cut chunk
    assert ecr.blob_bytes(digest) == data


def test_blob_mount_needs_blob_mounting_enabled_and_a_referencing_image(ecr, oci):
    ecr.create_repository("team/base")
    base = build_image("oci", "base")
    ecr.push("team/base", base, ["v1"])
    unreferenced = ecr.put_blob("team/base", b"loose blob")
    layer = next(iter(base.blobs))
    mount = f"/v2/{REPO}/blobs/uploads/?mount={layer}&from=team/base"
    assert oci.request("POST", mount).status == 202  # BLOB_MOUNTING is DISABLED by default
    client = ecr.client()
    assert client.get_account_setting(name="BLOB_MOUNTING")["value"] == "DISABLED"
    client.put_account_setting(name="BLOB_MOUNTING", value="ENABLED")
    assert client.get_account_setting(name="BLOB_MOUNTING")["value"] == "ENABLED"
    mounted = oci.request("POST", mount)
    assert mounted.status == 201 and mounted.headers["Docker-Content-Digest"] == layer
    assert layer in ecr.blobs_of(REPO)
    loose = oci.request("POST", f"/v2/{REPO}/blobs/uploads/?mount={unreferenced}&from=team/base")
    assert loose.status == 202 and unreferenced not in ecr.blobs_of(REPO)
    assert oci.request("POST", f"/v2/{REPO}/blobs/uploads/?mount={layer}&from=team/missing").status == 202


def test_put_account_setting_refuses_unknown_names_and_values(ecr):
    client = ecr.client()
    for name, value in [("BLOB_MOUNTING", "MAYBE"), ("NO_SUCH_SETTING", "ENABLED")]:
        with pytest.raises(client.exceptions.InvalidParameterException):
            client.put_account_setting(name=name, value=value)
    assert client.get_account_setting(name="BLOB_MOUNTING")["value"] == "DISABLED"


# ---------------------------------------------------------------- tags, referrers
def test_tags_list_is_sorted_and_paginated_with_n_last_and_link(ecr, oci):
    image = build_image("oci", "a")
    ecr.push(REPO, image, ["c", "a", "b", "d"])
    assert oci.request("GET", f"/v2/{REPO}/tags/list").json() == {"name": REPO, "tags": ["a", "b", "c", "d"]}
    page = oci.request("GET", f"/v2/{REPO}/tags/list?n=2")
    assert page.json()["tags"] == ["a", "b"] and 'rel="next"' in page.headers["Link"]
    rest = oci.request("GET", f"/v2/{REPO}/tags/list?n=2&last=b")
    assert rest.json()["tags"] == ["c", "d"] and "Link" not in rest.headers
    assert oci.request("GET", f"/v2/{REPO}/tags/list?n=0").json()["tags"] == []


def test_referrers_through_both_apis(ecr, oci):
    subject = build_image("oci", "app")
    ecr.push(REPO, subject, ["v1"])
    signature = build_referrer(subject, "application/vnd.dev.cosign.signature", "sig", annotations={"by": "ci"})
    sbom = build_referrer(subject, "application/spdx+json", "sbom")
    assert oci.push_image(REPO, signature).headers["OCI-Subject"] == subject.digest
    ecr.push(REPO, sbom)
    listing = oci.request("GET", f"/v2/{REPO}/referrers/{subject.digest}")
    assert listing.headers["Content-Type"] == OCI_INDEX
    entries = {m["digest"]: m for m in listing.json()["manifests"]}
    assert set(entries) == {signature.digest, sbom.digest}
    assert entries[signature.digest]["artifactType"] == "application/vnd.dev.cosign.signature"
    assert entries[signature.digest]["annotations"] == {"by": "ci"}
    only = oci.request("GET", f"/v2/{REPO}/referrers/{subject.digest}?artifactType=application/spdx%2Bjson")
    assert [m["digest"] for m in only.json()["manifests"]] == [sbom.digest]
    assert only.headers["OCI-Filters-Applied"] == "artifactType"
    client = ecr.client()
    listed = client.list_image_referrers(repositoryName=REPO, subjectId={"imageDigest": subject.digest})
    assert {r["digest"] for r in listed["referrers"]} == {signature.digest, sbom.digest}
    filtered = client.list_image_referrers(
        repositoryName=REPO,
        subjectId={"imageDigest": subject.digest},
        filter={"artifactTypes": ["application/spdx+json"]},
    )
    assert [(r["digest"], r["artifactStatus"]) for r in filtered["referrers"]] == [(sbom.digest, "ACTIVE")]
    assert oci.request("GET", f"/v2/{REPO}/referrers/not-a-digest").status == 400


def test_list_image_referrers_paginates_1_to_50_default_20(ecr):
    subject = build_image("oci", "app")
    ecr.push(REPO, subject)
    for i in range(25):
        ecr.push(REPO, build_referrer(subject, name=f"sig-{i}"))
    client = ecr.client()
    first = client.list_image_referrers(repositoryName=REPO, subjectId={"imageDigest": subject.digest})
    assert len(first["referrers"]) == 20 and "nextToken" in first
    rest = client.list_image_referrers(
        repositoryName=REPO, subjectId={"imageDigest": subject.digest}, nextToken=first["nextToken"]
    )
    assert len(rest["referrers"]) == 5 and "nextToken" not in rest
    for bad in [{"maxResults": 51}, {"filter": {"artifactTypes": [f"t/{i}" for i in range(6)]}}]:
        with pytest.raises(client.exceptions.InvalidParameterException):
            ecr.client(config=_unchecked()).list_image_referrers(
                repositoryName=REPO, subjectId={"imageDigest": subject.digest}, **bad
            )


def _unchecked():
    import botocore.config

    return botocore.config.Config(parameter_validation=False)


# ---------------------------------------------------------------- routing, errors, faults
def test_bad_names_unknown_repositories_and_routes(ecr, oci):
    assert oci.request("GET", "/v2/Team/App/tags/list").error_code == "NAME_INVALID"
    unknown = oci.request("GET", "/v2/team/nope/tags/list")
    assert unknown.status == 404 and unknown.error_code == "NAME_UNKNOWN"
    assert oci.request("GET", "/v2/_catalog").status == 404
    assert oci.request("DELETE", f"/v2/{REPO}/manifests/v1").status == 405
    assert oci.request("GET", f"/v2/{REPO}/blobs/sha256:{'9' * 64}").error_code == "BLOB_UNKNOWN"


def test_v2_requests_are_counted_by_operation_and_take_faults(ecr, oci):
    image = build_image("oci", "a")
    ecr.inject("V2PutManifest", Fault.THROTTLE)
    throttled = oci.push_image(REPO, image, "v1")
    assert throttled.status == 429 and throttled.error_code == "TOOMANYREQUESTS"
    assert (
        oci.request("PUT", f"/v2/{REPO}/manifests/v1", image.manifest.encode(), {"Content-Type": OCI_MANIFEST}).status
        == 201
    )
    assert ecr.calls["V2PutManifest"] == 2 and ecr.calls["V2StartUpload"] == 3 and ecr.calls["V2FinishUpload"] == 3
    assert {"V2PutManifest", "V2StartUpload", "V2PatchUpload", "V2FinishUpload"} <= WRITE_OPERATIONS
    assert ecr.requests_for("V2PutManifest")[0]["path"] == f"/v2/{REPO}/manifests/v1"
    ecr.inject("V2GetManifest", Fault.DROPPED_CONNECTION)
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
        oci.request("GET", f"/v2/{REPO}/manifests/v1")
    assert oci.request("GET", f"/v2/{REPO}/manifests/v1").status == 200


def test_the_served_double_answers_v2_on_the_same_store():
    with EcrDouble(server=True) as ecr:
        ecr.create_repository(REPO)
        client = ecr.client()
        [data] = client.get_authorization_token()["authorizationData"]
        image = build_image("oci", "served")
        assert OciClient.for_token(data).push_image(REPO, image, "v1").status == 201
        assert json.loads(
            client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "v1"}])["images"][0]["imageManifest"]
        ) == json.loads(image.manifest)
