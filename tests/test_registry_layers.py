"""The double's layer calls and blob URLs behave as ECR documents them (one test each).

Sources: the botocore model (limits, error shapes), the ECR user guide's quotas page (part sizes
5-10 MiB, 4,200 parts) and ECR-NOTES "Layer transfer".
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import botocore.config
import pytest
from botocore.exceptions import ClientError

from airflow_ecr_retag.core.limits import MAX_LAYER_PART_BYTES, MIN_LAYER_PART_BYTES
from airflow_ecr_retag.testing import EcrDouble, Fault, build_image, push_image
from airflow_ecr_retag.testing.blob_store import read_all

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


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def upload(client, data_parts: list[bytes], digest: str | None = None, repo: str = REPO) -> dict:
    upload_id = client.initiate_layer_upload(repositoryName=repo)["uploadId"]
    first = 0
    for part in data_parts:
        client.upload_layer_part(
            repositoryName=repo,
            uploadId=upload_id,
            partFirstByte=first,
            partLastByte=first + len(part) - 1,
            layerPartBlob=part,
        )
        first += len(part)
    whole = b"".join(data_parts)
    digest = digest or "sha256:" + hashlib.sha256(whole).hexdigest()
    return client.complete_layer_upload(repositoryName=repo, uploadId=upload_id, layerDigests=[digest])


# ---------------------------------------------------------------- blobs
def test_seeded_images_have_their_blobs_with_real_bytes(ecr):
    image = build_image("oci", "a")
    ecr.push(REPO, image, ["v1"])
    assert ecr.blobs_of(REPO) == {digest: blob.size for digest, blob in image.blobs.items()}
    for digest in image.blobs:
        assert "sha256:" + hashlib.sha256(ecr.blob_bytes(digest)).hexdigest() == digest


def test_generated_layers_are_streamed_and_deterministic():
    big = build_image("oci", "big", layer_bytes=3 * 1024 * 1024 + 5)
    again = build_image("oci", "big", layer_bytes=3 * 1024 * 1024 + 5)
    assert big.digest == again.digest
    layer = next(b for b in big.blobs.values() if b.size > 3 * 1024 * 1024)
    whole = read_all(layer)
    assert "sha256:" + hashlib.sha256(whole).hexdigest() == layer.digest
    assert b"".join(layer.chunks(1000, 2_100_000)) == whole[1000:2_100_000]  # any range, made on demand


# ---------------------------------------------------------------- BatchCheckLayerAvailability
def test_batch_check_layer_availability_reports_each_digest(ecr, client):
    image = build_image("oci", "a")
    ecr.push(REPO, image)
    ecr.create_repository("team/other")
    only_elsewhere = ecr.put_blob("team/other", b"other bytes")
    present = next(iter(image.blobs))
    missing = "sha256:" + "1" * 64
    response = client.batch_check_layer_availability(
        repositoryName=REPO, layerDigests=[present, only_elsewhere, missing, "sha256:nothex"]
    )
    assert [(x["layerDigest"], x["layerAvailability"]) for x in response["layers"]] == [
        (present, "AVAILABLE"),
        (only_elsewhere, "UNAVAILABLE"),
    ]
    assert response["layers"][0]["layerSize"] == image.blobs[present].size
    assert [(f["layerDigest"], f["failureCode"]) for f in response["failures"]] == [
        (missing, "MissingLayerDigest"),
        ("sha256:nothex", "InvalidLayerDigest"),
    ]


@pytest.mark.parametrize("count", [0, 101])
def test_layer_digest_lists_hold_1_to_100(ecr, count):
    unchecked = ecr.client(config=botocore.config.Config(parameter_validation=False))  # as another SDK might send
    digests = ["sha256:" + f"{i:064x}" for i in range(count)]
    with pytest.raises(ClientError) as error:
        unchecked.batch_check_layer_availability(repositoryName=REPO, layerDigests=digests)
    assert code(error) == "InvalidParameterException"
    upload_id = unchecked.initiate_layer_upload(repositoryName=REPO)["uploadId"]
    with pytest.raises(ClientError) as error:
        unchecked.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=digests)
    assert code(error) == "InvalidParameterException"


# ---------------------------------------------------------------- uploads
def test_upload_in_parts_makes_the_layer_available(ecr, client):
    data = [b"a" * MIN_LAYER_PART_BYTES, b"tail"]
    response = upload(client, data)
    digest = "sha256:" + hashlib.sha256(b"".join(data)).hexdigest()
    assert response["layerDigest"] == digest
    assert ecr.blobs_of(REPO) == {digest: MIN_LAYER_PART_BYTES + 4}
    assert ecr.blob_bytes(digest) == b"".join(data)


def test_initiate_layer_upload_gives_an_upload_id_and_part_size(client):
    response = client.initiate_layer_upload(repositoryName=REPO)
    assert response["partSize"] == MAX_LAYER_PART_BYTES
    assert len(response["uploadId"]) == 36


def test_a_part_out_of_order_is_invalid_layer_part_with_last_valid_byte(ecr, client):
    upload_id = client.initiate_layer_upload(repositoryName=REPO)["uploadId"]
    client.upload_layer_part(
        repositoryName=REPO, uploadId=upload_id, partFirstByte=0, partLastByte=9, layerPartBlob=b"0123456789"
    )
    with pytest.raises(ClientError) as error:
        client.upload_layer_part(
            repositoryName=REPO, uploadId=upload_id, partFirstByte=20, partLastByte=21, layerPartBlob=b"xx"
        )
    assert code(error) == "InvalidLayerPartException"
    assert error.value.response["lastValidByteReceived"] == 9
    assert error.value.response["uploadId"] == upload_id


def test_a_part_over_10_mib_is_refused(client):
    upload_id = client.initiate_layer_upload(repositoryName=REPO)["uploadId"]
    part = b"x" * (MAX_LAYER_PART_BYTES + 1)
    with pytest.raises(ClientError) as error:
        client.upload_layer_part(
            repositoryName=REPO, uploadId=upload_id, partFirstByte=0, partLastByte=len(part) - 1, layerPartBlob=part
        )
    assert code(error) == "InvalidLayerPartException"


def test_parts_but_the_last_must_be_5_mib(ecr, client):
    with pytest.raises(ClientError) as error:
        upload(client, [b"small", b"tail"])
    assert code(error) == "LayerPartTooSmallException"
    assert ecr.blobs_of(REPO) == {}


def test_bytes_that_do_not_hash_to_the_digest_are_invalid_layer(ecr, client):
    with pytest.raises(ClientError) as error:
        upload(client, [b"some bytes"], digest="sha256:" + "2" * 64)
    assert code(error) == "InvalidLayerException"
    assert ecr.blobs_of(REPO) == {}
    assert ecr.blobs.get("sha256:" + hashlib.sha256(b"some bytes").hexdigest()) is None  # nothing visible


def test_completing_an_empty_upload_is_empty_upload(client):
    upload_id = client.initiate_layer_upload(repositoryName=REPO)["uploadId"]
    with pytest.raises(ClientError) as error:
        client.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=["sha256:" + "3" * 64])
    assert code(error) == "EmptyUploadException"


def test_uploading_a_layer_the_repository_has_is_layer_already_exists(client):
    upload(client, [b"once"])
    with pytest.raises(ClientError) as error:
        upload(client, [b"once"])
    assert code(error) == "LayerAlreadyExistsException"


def test_an_unknown_upload_id_is_upload_not_found(ecr, client):
    ecr.create_repository("team/other")
    upload_id = client.initiate_layer_upload(repositoryName="team/other")["uploadId"]
    with pytest.raises(ClientError) as error:  # another repository's upload
        client.upload_layer_part(
            repositoryName=REPO, uploadId=upload_id, partFirstByte=0, partLastByte=0, layerPartBlob=b"x"
        )
    assert code(error) == "UploadNotFoundException"


def test_push_image_uploads_big_layers_in_parts(ecr, client):
    image = build_image("oci", "big", layer_bytes=12 * 1024 * 1024)
    push_image(client, REPO, image, ["v1"])
    assert ecr.tags(REPO) == {"v1": image.digest}
    assert ecr.calls["UploadLayerPart"] == 2 * 2 + 1  # two 12 MiB layers in 10 MiB parts, and the config
    assert set(ecr.blobs_of(REPO)) == set(image.blobs)


# ---------------------------------------------------------------- GetDownloadUrlForLayer
def test_download_url_serves_the_layer_bytes_to_a_plain_http_client(ecr, client):
    image = build_image("oci", "a")
    ecr.push(REPO, image, ["v1"])
    for digest, blob in image.blobs.items():
        url = client.get_download_url_for_layer(repositoryName=REPO, layerDigest=digest)["downloadUrl"]
        assert url.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in url
        status, body, _ = fetch(url)
        assert (status, body) == (200, read_all(blob))


def test_download_url_honours_range_requests(ecr, client):
    image = build_image("oci", "r", layer_bytes=2 * 1024 * 1024)
    ecr.push(REPO, image)
    layer = max(image.blobs.values(), key=lambda b: b.size)
    url = client.get_download_url_for_layer(repositoryName=REPO, layerDigest=layer.digest)["downloadUrl"]
    status, body, headers = fetch(url, {"Range": "bytes=100-1099"})
    assert (status, len(body)) == (206, 1000)
    assert body == b"".join(layer.chunks(100, 1100))
    assert headers["Content-Range"] == f"bytes 100-1099/{layer.size}"


def test_download_url_expires_with_403_as_s3_answers(ecr, client):
    ecr.push(REPO, build_image("oci", "a"))
    digest = next(iter(build_image("oci", "a").blobs))
    url = client.get_download_url_for_layer(repositoryName=REPO, layerDigest=digest)["downloadUrl"]
    real_clock = ecr.clock
    ecr.clock = lambda: real_clock() + ecr.download_url_seconds + 1
    status, body, _ = fetch(url)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body and b"Request has expired" in body
    ecr.clock = real_clock
    assert fetch(url)[0] == 200
    status, body, _ = fetch(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert status == 403 and b"SignatureDoesNotMatch" in body


def test_download_url_only_for_layers_an_image_references(ecr, client):
    unreferenced = ecr.put_blob(REPO, b"uploaded, never used")
    with pytest.raises(ClientError) as error:
        client.get_download_url_for_layer(repositoryName=REPO, layerDigest=unreferenced)
    assert code(error) == "LayerInaccessibleException"
    with pytest.raises(ClientError) as error:
        client.get_download_url_for_layer(repositoryName=REPO, layerDigest="sha256:" + "4" * 64)
    assert code(error) == "LayersNotFoundException"


def test_blob_url_requests_are_counted_and_can_fail(ecr, client):
    image = build_image("oci", "a")
    ecr.push(REPO, image)
    digest = next(iter(image.blobs))
    url = client.get_download_url_for_layer(repositoryName=REPO, layerDigest=digest)["downloadUrl"]
    ecr.inject("LayerDownload", Fault.THROTTLE)
    status, body, _ = fetch(url)
    assert status == 503 and b"SlowDown" in body
    assert fetch(url)[0] == 200
    assert ecr.calls["LayerDownload"] == 2 and ecr.calls["GetDownloadUrlForLayer"] == 1


@pytest.mark.parametrize("operation", ["BatchCheckLayerAvailability", "InitiateLayerUpload", "GetDownloadUrlForLayer"])
def test_layer_calls_take_injected_faults(ecr, client, operation):
    ecr.push(REPO, build_image("oci", "a"))
    ecr.inject(operation, Fault.ACCESS_DENIED)
    calls = {
        "BatchCheckLayerAvailability": lambda: client.batch_check_layer_availability(
            repositoryName=REPO, layerDigests=["sha256:" + "5" * 64]
        ),
        "InitiateLayerUpload": lambda: client.initiate_layer_upload(repositoryName=REPO),
        "GetDownloadUrlForLayer": lambda: client.get_download_url_for_layer(
            repositoryName=REPO, layerDigest=next(iter(build_image("oci", "a").blobs))
        ),
    }
    with pytest.raises(ClientError) as error:
        calls[operation]()
    assert code(error) == "AccessDeniedException"
    calls[operation]()  # once only
    assert ecr.calls[operation] == 2


def test_the_server_serves_blob_urls_too():
    with EcrDouble(server=True) as ecr:
        ecr.create_repository(REPO)
        image = build_image("docker", "s")
        ecr.push(REPO, image, ["v1"])
        client = ecr.client()
        for digest, blob in image.blobs.items():
            url = client.get_download_url_for_layer(repositoryName=REPO, layerDigest=digest)["downloadUrl"]
            assert fetch(url)[:2] == (200, read_all(blob))
