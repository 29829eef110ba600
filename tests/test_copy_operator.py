"""EcrCopyImageOperator against the in-process ECR double: the target's state afterwards and the calls made.

The source is the caller's own account (123456789012) in us-east-1; the target another account
(210987654321) in eu-west-1, reached with ``registry_id`` or with that account's own credentials.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from helpers import AWS, make_context

from airflow_ecr_retag import EcrCopyImageOperator, EcrRetagOperator
from airflow_ecr_retag.core import blob_transfer
from airflow_ecr_retag.core.limits import MAX_LAYER_PART_BYTES, MIN_LAYER_PART_BYTES
from airflow_ecr_retag.core.manifests import OCI_MANIFEST, cosign_tags
from airflow_ecr_retag.exceptions import (
    BlobDigestMismatchError,
    EcrPermanentError,
    GuardFailedError,
    ImageNotFoundError,
    ImmutableTagError,
    TargetExistsError,
)
from airflow_ecr_retag.links import EcrImageLink
from airflow_ecr_retag.testing import EcrDouble, Fault, build_image, build_referrer
from airflow_ecr_retag.testing.blob_store import BytesBlob, read_all
from airflow_ecr_retag.testing.images import BuiltImage

REPO = "team/app"
PROD = "210987654321"
PROD_REGION = "eu-west-1"
IN_PROD = {"registry_id": PROD, "region_name": PROD_REGION}
MIB = 1 << 20


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    ecr_double.create_repository(REPO, **IN_PROD)
    return ecr_double


def operator(**kwargs):
    params = {
        "source_repository_name": REPO,
        "source_tag": "sha-1",
        "source_region_name": "us-east-1",
        "repository_name": REPO,
        "registry_id": PROD,
        "target_tags": ["v1.4.2", "prod"],
        "aws_conn_id": None,
        "region_name": PROD_REGION,
        **kwargs,
    }
    return EcrCopyImageOperator(task_id="copy", **params)


def run(**kwargs):
    context = make_context()
    digest = operator(**kwargs).execute(context)
    return digest, context["ti"].xcom


def every_part_of(image: BuiltImage) -> list[BuiltImage]:
    return [*(p for child in image.children for p in every_part_of(child)), image]


def blobs_of(image: BuiltImage) -> dict[str, int]:
    return {d: b.size for part in every_part_of(image) for d, b in part.blobs.items()}


def part_bytes(params: dict) -> int:
    """The size of an UploadLayerPart, as its byte range says (the double logs no part's bytes)."""
    return params["partLastByte"] - params["partFirstByte"] + 1


def puts(ecr) -> list[tuple[str, str | None]]:
    return [(p["imageDigest"], p.get("imageTag")) for p in ecr.requests_for("PutImage")]


# ---------------------------------------------------------------------- the copy
@pytest.mark.parametrize("kind", ["docker", "oci", "oci-no-mediatype", "oci-index", "docker-list"])
def test_every_kind_is_copied_byte_for_byte_with_every_platform(ecr, kind):
    image = build_image(kind, "app")
    digest = ecr.push(REPO, image, ["sha-1"])
    source_before = (ecr.tags(REPO), set(ecr.images(REPO)))
    ecr.reset_calls()

    returned, xcom = run()

    assert returned == digest == image.digest
    assert ecr.tags(REPO, **IN_PROD) == {"v1.4.2": digest, "prod": digest}
    copied = ecr.images(REPO, **IN_PROD)
    assert set(copied) == {part.digest for part in every_part_of(image)}  # every platform, by digest
    for part in every_part_of(image):
        assert copied[part.digest].manifest == part.manifest  # byte for byte
    assert ecr.blobs_of(REPO, **IN_PROD) == blobs_of(image)
    for blob_digest in blobs_of(image):
        assert ecr.blob_bytes(blob_digest) == read_all(
            next(p.blobs[blob_digest] for p in every_part_of(image) if blob_digest in p.blobs)
        )
    assert (ecr.tags(REPO), set(ecr.images(REPO))) == source_before  # the source is only read
    assert ecr.calls["BatchDeleteImage"] == 0
    report = xcom["copy"]
    blobs = blobs_of(image)
    assert report == {
        "repository_name": REPO,
        "registry_id": PROD,
        "digest": digest,
        "media_type": image.media_type,
        "image_uri": f"{PROD}.dkr.ecr.{PROD_REGION}.amazonaws.com/{REPO}@{digest}",
        "added": ["v1.4.2", "prod"],
        "unchanged": [],
        "moved": {},
        "source_image_uri": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}",
        "blobs": len(blobs),
        "blobs_copied": len(blobs),
        "blobs_present": 0,
        "bytes_copied": sum(blobs.values()),
        "manifests_copied": len(every_part_of(image)),
        "referrers_copied": 0,
    }


def test_the_calls_of_a_copy_of_one_image(ecr):
    image = build_image("oci", "app")
    digest = ecr.push(REPO, image, ["sha-1"])
    ecr.reset_calls()
    run()
    assert dict(ecr.calls) == {
        # source: the image, its cosign tags, its referrers; target: the image and the tags in one read
        "BatchGetImage": 3,
        "ListImageReferrers": 1,
        "BatchCheckLayerAvailability": 1,
        # per blob (config and two layers)
        "GetDownloadUrlForLayer": 3,
        "LayerDownload": 3,
        "InitiateLayerUpload": 3,
        "UploadLayerPart": 3,
        "CompleteLayerUpload": 3,
        # the image by digest, then one per tag
        "PutImage": 3,
    }
    [check] = ecr.requests_for("BatchCheckLayerAvailability")
    assert sorted(check["layerDigests"]) == sorted(image.blobs) and check["registryId"] == PROD
    assert puts(ecr) == [(digest, None), (digest, "v1.4.2"), (digest, "prod")]
    for put in ecr.requests_for("PutImage"):
        assert put["imageManifest"] == image.manifest and put["imageManifestMediaType"] == image.media_type
    for call in ecr.requests:
        if call.operation in {"GetDownloadUrlForLayer", "ListImageReferrers"}:
            assert "registryId" not in call.params  # the source: the caller's own account
        elif call.operation not in {"BatchGetImage", "LayerDownload"}:
            assert call.params["registryId"] == PROD


def test_a_rerun_after_success_makes_reads_only_in_at_most_four_calls(ecr):
    ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    run()
    ecr.reset_calls()
    _, xcom = run()
    assert ecr.write_calls == 0 and ecr.calls["LayerDownload"] == 0
    assert ecr.total_calls <= 4
    assert dict(ecr.calls) == {"BatchGetImage": 3, "ListImageReferrers": 1}
    report = xcom["copy"]
    assert report["added"] == [] and report["unchanged"] == ["v1.4.2", "prod"]
    assert report["blobs_copied"] == report["bytes_copied"] == report["manifests_copied"] == 0
    assert report["blobs_present"] == report["blobs"] == 3


def test_with_source_digest_the_signature_tags_come_in_the_first_read(ecr):
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    run(source_digest=digest)
    ecr.reset_calls()
    run(source_digest=digest)
    assert dict(ecr.calls) == {"BatchGetImage": 2, "ListImageReferrers": 1}
    first = ecr.requests_for("BatchGetImage")[0]
    assert first["imageIds"] == [{"imageTag": "sha-1"}, *({"imageTag": t} for t in cosign_tags(digest))]


def test_without_copy_referrers_a_rerun_makes_two_reads(ecr):
    ecr.push(REPO, build_image("oci-index", "app"), ["sha-1"])
    run(copy_referrers=False)
    ecr.reset_calls()
    run(copy_referrers=False)
    assert dict(ecr.calls) == {"BatchGetImage": 3}  # the index, its children, the target


def test_only_the_missing_blobs_move(ecr):
    image = build_image("oci", "app", layers=10, layer_bytes=64 * 1024)
    ecr.push(REPO, image, ["sha-1"])
    # The target already has an earlier build: the same 8 base layers, another config.
    earlier = build_image("oci", "app", layers=8, layer_bytes=64 * 1024)
    ecr.push(REPO, earlier, ["v1.4.1"], **IN_PROD)
    shared = set(image.blobs) & set(earlier.blobs)
    assert len(shared) == 8
    missing = {d: b.size for d, b in image.blobs.items() if d not in shared}
    ecr.reset_calls()

    _, xcom = run()

    report = xcom["copy"]
    assert (report["blobs"], report["blobs_copied"], report["blobs_present"]) == (11, 3, 8)
    assert report["bytes_copied"] == sum(missing.values())
    assert sum(part_bytes(p) for p in ecr.requests_for("UploadLayerPart")) == sum(missing.values())
    assert {p["layerDigest"] for p in ecr.requests_for("GetDownloadUrlForLayer")} == set(missing)
    assert set(ecr.blobs_of(REPO, **IN_PROD)) == set(image.blobs) | set(earlier.blobs)


def test_a_blob_another_repository_of_the_target_registry_has_is_still_uploaded(ecr):
    image = build_image("oci", "app")
    ecr.push(REPO, image, ["sha-1"])
    ecr.create_repository("team/base", **IN_PROD)
    ecr.push("team/base", image, ["v1"], **IN_PROD)  # UNAVAILABLE in team/app: ECR has no API mount
    ecr.reset_calls()
    _, xcom = run()
    assert xcom["copy"]["blobs_copied"] == 3 and ecr.calls["CompleteLayerUpload"] == 3


def test_parts_are_consecutive_within_ecrs_sizes_and_the_layer_is_streamed(ecr):
    image = build_image("oci", "big", layers=1, layer_bytes=25 * MIB)
    ecr.push(REPO, image, ["sha-1"])
    ecr.reset_calls()
    run(copy_referrers=False)
    layer = max(image.blobs.values(), key=lambda b: b.size)
    parts = parts_of_the_biggest_upload(ecr)
    # Parts of 5 MiB, the quotas page's minimum: the least memory a part in flight can take.
    assert [p["partFirstByte"] for p in parts] == list(range(0, layer.size, MIN_LAYER_PART_BYTES))
    for part in parts:  # the range says what was sent (the double logs the size, not the bytes)
        sent = int(re.match(r"<(\d+) bytes", part["layerPartBlob"]).group(1))
        assert abs(sent - part_bytes(part)) <= 2  # base64 padding
    sizes = [part_bytes(p) for p in parts]
    assert all(MIN_LAYER_PART_BYTES <= s <= MAX_LAYER_PART_BYTES for s in sizes[:-1])
    assert sum(sizes) == layer.size
    assert ecr.blobs_of(REPO, **IN_PROD)[layer.digest] == layer.size


def parts_of_the_biggest_upload(ecr) -> list[dict]:
    uploads: dict[str, list[dict]] = {}
    for part in ecr.requests_for("UploadLayerPart"):
        uploads.setdefault(part["uploadId"], []).append(part)
    return max(uploads.values(), key=lambda parts: sum(part_bytes(p) for p in parts))


def test_two_connections_reach_two_accounts_by_their_credentials(ecr, monkeypatch):
    key, secret = ecr.caller_credentials(registry_id=PROD)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_BUILD", json.dumps({"conn_type": "aws", "extra": {"region_name": "us-east-1"}})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_PROD",
        json.dumps({"conn_type": "aws", "login": key, "password": secret, "extra": {"region_name": PROD_REGION}}),
    )
    digest = ecr.push(REPO, build_image("oci-index", "app"), ["sha-1"])
    ecr.reset_calls()
    returned, xcom = run(
        source_aws_conn_id="aws_build",
        aws_conn_id="aws_prod",
        registry_id=None,
        source_region_name=None,
        region_name=None,
    )
    assert returned == digest
    assert ecr.tags(REPO, **IN_PROD) == {"v1.4.2": digest, "prod": digest}
    assert xcom["copy"]["registry_id"] == PROD and xcom["copy"]["image_uri"].startswith(
        f"{PROD}.dkr.ecr.{PROD_REGION}."
    )
    assert all("registryId" not in call.params for call in ecr.requests)  # each side is its caller's own account


def test_the_same_repository_is_exactly_ecrretagoperators_promotion():
    def seeded(double):
        double.create_repository(REPO)
        double.push(REPO, build_image("oci", "previous"), ["prod"])
        double.push(REPO, build_image("oci-index", "app"), ["sha-1"])
        double.reset_calls()

    with EcrDouble() as ecr:
        seeded(ecr)
        EcrRetagOperator(
            task_id="promote", repository_name=REPO, source_tag="sha-1", target_tags=["v1.4.2", "prod"], **AWS
        ).execute(make_context())
        promotion = [(c.operation, c.params) for c in ecr.requests]
        promoted = ecr.tags(REPO)
    with EcrDouble() as ecr:
        seeded(ecr)
        context = make_context()
        EcrCopyImageOperator(
            task_id="copy",
            source_repository_name=REPO,
            source_tag="sha-1",
            repository_name=REPO,
            target_tags=["v1.4.2", "prod"],
            **AWS,
        ).execute(context)
        assert [(c.operation, c.params) for c in ecr.requests] == promotion  # call for call
        assert ecr.tags(REPO) == promoted
    report = context["ti"].xcom["copy"]
    assert report["bytes_copied"] == report["blobs_copied"] == report["manifests_copied"] == 0
    assert report["moved"] and report["source_image_uri"] == report["image_uri"]


# ---------------------------------------------------------------------- platforms, referrers, signatures
def test_an_index_goes_in_children_first_and_its_tags_last(ecr):
    index = build_image("oci-index", "app")
    ecr.push(REPO, index, ["sha-1"])
    ecr.reset_calls()
    run()
    children = [c.digest for c in index.children]
    assert puts(ecr) == [
        (children[0], None),
        (children[1], None),
        (index.digest, None),
        (index.digest, "v1.4.2"),
        (index.digest, "prod"),
    ]
    last_upload = max(i for i, c in enumerate(ecr.requests) if c.operation == "CompleteLayerUpload")
    first_put = min(i for i, c in enumerate(ecr.requests) if c.operation == "PutImage")
    assert last_upload < first_put  # no manifest before its blobs


def test_one_platform_is_copied_by_its_childs_digest(ecr):
    index = build_image("oci-index", "app")
    ecr.push(REPO, index, ["sha-1"])
    arm = index.children[1]
    returned, _ = run(source_tag=None, source_digest=arm.digest, target_tags=["arm64"])
    assert returned == arm.digest
    assert ecr.tags(REPO, **IN_PROD) == {"arm64": arm.digest}
    assert set(ecr.images(REPO, **IN_PROD)) == {arm.digest}


def test_referrers_are_copied_after_their_subject_recursively_and_across_pages(ecr, monkeypatch):
    monkeypatch.setattr("airflow_ecr_retag.core.ecr.MAX_REFERRERS_RESULTS", 2)  # pages of 2: follow nextToken
    index = build_image("oci-index", "app")
    ecr.push(REPO, index, ["sha-1"])
    signatures = [build_referrer(index, name=f"signature-{i}") for i in range(3)]
    sbom = build_referrer(index.children[0], "application/spdx+json", "sbom")
    signed_sbom = build_referrer(sbom, name="signature-of-the-sbom")
    for artifact in [*signatures, sbom, signed_sbom]:
        ecr.push(REPO, artifact)
    ecr.reset_calls()

    _, xcom = run()

    artifacts = {a.digest for a in [*signatures, sbom, signed_sbom]}
    assert set(ecr.images(REPO, **IN_PROD)) == {p.digest for p in every_part_of(index)} | artifacts
    order = [digest for digest, tag in puts(ecr) if tag is None]
    for artifact, subject in [*((s, index) for s in signatures), (sbom, index.children[0]), (signed_sbom, sbom)]:
        assert order.index(subject.digest) < order.index(artifact.digest)
    assert xcom["copy"]["referrers_copied"] == 5 and xcom["copy"]["manifests_copied"] == 3
    pages = [p for p in ecr.requests_for("ListImageReferrers") if p["subjectId"]["imageDigest"] == index.digest]
    assert len(pages) == 2 and pages[1]["nextToken"] and all(p["maxResults"] == 2 for p in pages)
    # The referrers are listed in the target as they were in the source.
    listed = ecr.client(region_name=PROD_REGION).list_image_referrers(
        registryId=PROD, repositoryName=REPO, subjectId={"imageDigest": index.digest}
    )["referrers"]
    assert {r["digest"] for r in listed} == {s.digest for s in signatures}


def test_cosign_signature_tags_are_copied_with_their_tags(ecr):
    image = build_image("oci", "app")
    digest = ecr.push(REPO, image, ["sha-1"])
    sig_tag, att_tag, _ = cosign_tags(digest)
    signature, attestation = build_image("oci", "cosign-signature"), build_image("oci", "cosign-attestation")
    ecr.push(REPO, signature, [sig_tag])
    ecr.push(REPO, attestation, [att_tag])
    ecr.reset_calls()
    _, xcom = run()
    target = ecr.tags(REPO, **IN_PROD)
    assert target[sig_tag] == signature.digest and target[att_tag] == attestation.digest
    assert xcom["copy"]["referrers_copied"] == 2
    assert set(blobs_of(signature)) <= set(ecr.blobs_of(REPO, **IN_PROD))
    # Signatures are in place before the target tags are set.
    assert [tag for _, tag in puts(ecr) if tag][-2:] == ["v1.4.2", "prod"]


def test_a_signature_tag_the_target_holds_elsewhere_is_left_alone(ecr, caplog):
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    sig_tag = cosign_tags(digest)[0]
    ecr.push(REPO, build_image("oci", "build-signature"), [sig_tag])
    theirs = ecr.push(REPO, build_image("oci", "prod-signature"), [sig_tag], **IN_PROD)
    with caplog.at_level(logging.WARNING):
        _, xcom = run()
    assert ecr.tags(REPO, **IN_PROD)[sig_tag] == theirs
    assert xcom["copy"]["referrers_copied"] == 0


def test_referrers_are_not_copied_when_asked_not_to(ecr):
    index = build_image("oci", "app")
    ecr.push(REPO, index, ["sha-1"])
    ecr.push(REPO, build_referrer(index))
    ecr.reset_calls()
    run(copy_referrers=False)
    assert ecr.calls["ListImageReferrers"] == 0 and set(ecr.images(REPO, **IN_PROD)) == {index.digest}


# ---------------------------------------------------------------------- the transfer
def test_a_part_whose_answer_was_lost_is_resumed_from_the_last_valid_byte(ecr):
    image = build_image("oci", "big", layers=1, layer_bytes=25 * MIB)
    ecr.push(REPO, image, ["sha-1"])
    task = operator(copy_referrers=False)
    lost = {"left": 1}

    def lose_the_answer(response, operation, **_):
        # botocore's retry decision for a part that landed: as if its answer never arrived.
        if response is not None and response[1].get("lastByteReceived", -1) >= 10 * MIB and lost["left"]:
            lost["left"] -= 1
            return 0
        return None

    task.hook.conn.meta.events.register("needs-retry.ecr.UploadLayerPart", lose_the_answer)
    task.execute(make_context())
    assert lost["left"] == 0
    firsts = [p["partFirstByte"] for p in parts_of_the_biggest_upload(ecr)]
    # The third part went twice (ECR refused the repeat, with lastValidByteReceived), then the fourth.
    assert firsts == [0, 5 * MIB, 10 * MIB, 10 * MIB, 15 * MIB, 20 * MIB, 25 * MIB]
    layer = max(image.blobs.values(), key=lambda b: b.size)
    assert ecr.blobs_of(REPO, **IN_PROD)[layer.digest] == layer.size
    assert ecr.tags(REPO, **IN_PROD)["prod"] == image.digest


def test_an_expired_download_url_is_fetched_again(ecr):
    image = build_image("oci", "app")
    ecr.push(REPO, image, ["sha-1"])
    ecr.reset_calls()
    # An hour passes between the first URL's issue and its use.
    ecr.before_call("LayerDownload", lambda d: setattr(d, "clock", lambda: time.time() + 7200))
    run(max_concurrency=1)
    assert ecr.calls["GetDownloadUrlForLayer"] == 4 and ecr.calls["LayerDownload"] == 4
    assert ecr.tags(REPO, **IN_PROD)["prod"] == image.digest


def test_a_download_cut_mid_body_resumes_with_a_range(ecr, monkeypatch):
    from airflow_ecr_retag.testing import blob_urls

    image = build_image("oci", "big", layers=1, layer_bytes=3 * MIB)
    ecr.push(REPO, image, ["sha-1"])
    serve, cut, ranges = blob_urls._serve_blob, {"left": 1}, []

    def cut_after_one_piece(blob, environ, start_response):
        pieces = serve(blob, environ, start_response)
        if blob.size < MIB:
            return pieces
        ranges.append(environ.get("HTTP_RANGE"))
        if not cut["left"]:
            return pieces
        cut["left"] -= 1

        def first_piece_then_gone():
            first = next(iter(pieces))
            cut["at"] = len(first)
            yield first
            raise ConnectionResetError("cut")

        return first_piece_then_gone()

    monkeypatch.setattr(blob_urls, "_serve_blob", cut_after_one_piece)
    ecr.reset_calls()
    run(copy_referrers=False)
    assert cut["left"] == 0 and ecr.calls["LayerDownload"] == 3  # config, layer (cut), layer again
    assert ranges == [None, f"bytes={cut['at']}-"]  # from the first byte it did not get
    layer = max(image.blobs.values(), key=lambda b: b.size)
    assert ecr.blobs_of(REPO, **IN_PROD)[layer.digest] == layer.size
    assert ecr.tags(REPO, **IN_PROD)["prod"] == image.digest


def test_a_blob_that_does_not_hash_to_its_digest_fails_with_nothing_tagged(ecr):
    image = build_image("oci", "app")
    layer_digest, layer = next((d, b) for d, b in image.blobs.items() if b.size > 100)

    class Corrupted:
        digest, size = layer_digest, layer.size

        def chunks(self, start=0, end=None):
            data = bytes(reversed(read_all(layer)))
            return BytesBlob(data).chunks(start, end)

    tampered = BuiltImage(image.manifest, image.media_type, {**image.blobs, layer_digest: Corrupted()})
    ecr.push(REPO, tampered, ["sha-1"])
    ecr.reset_calls()
    with pytest.raises(BlobDigestMismatchError, match=layer_digest) as error:
        run()
    assert isinstance(error.value, AirflowFailException)
    assert ecr.tags(REPO, **IN_PROD) == {} and ecr.calls["PutImage"] == 0
    completed = [p["layerDigests"] for p in ecr.requests_for("CompleteLayerUpload")]
    assert [layer_digest] not in completed


def test_a_layer_a_concurrent_copy_completed_first_is_success(ecr):
    image = build_image("oci", "app")
    ecr.push(REPO, image, ["sha-1"])
    config = json.loads(image.manifest)["config"]["digest"]
    ecr.before_call("CompleteLayerUpload", lambda d: d.put_blob(REPO, image.blobs[config], **IN_PROD), call=1)
    _, xcom = run(max_concurrency=1)
    assert ecr.tags(REPO, **IN_PROD)["prod"] == image.digest
    report = xcom["copy"]
    assert report["blobs_copied"] == 2 and report["blobs_present"] == 1  # the other copy moved that one


@pytest.mark.timing
def test_at_most_max_concurrency_blobs_are_in_flight(ecr, monkeypatch):
    image = build_image("oci-index", "app")  # 6 blobs
    ecr.push(REPO, image, ["sha-1"])
    run_one = blob_transfer._Transfer.run
    in_flight, peak, started, lock = [0], [0], [0], threading.Lock()
    # The first two transfers wait for each other: with fewer than two threads this times out.
    together = threading.Barrier(2, timeout=60)

    def counted(transfer):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            started[0] += 1
            first_two = started[0] <= 2
        try:
            if first_two:
                together.wait()
            return run_one(transfer)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(blob_transfer._Transfer, "run", counted)
    run(max_concurrency=2)
    assert peak[0] == 2 and started[0] == 6
    assert ecr.tags(REPO, **IN_PROD)["prod"] == image.digest


# ---------------------------------------------------------------------- what fails fast
def test_a_missing_target_repository_fails_unless_create_repository(ecr):
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    with pytest.raises(EcrPermanentError, match=r"target repository 'team/new'.*create_repository=True"):
        run(repository_name="team/new")
    assert ecr.write_calls == 0
    run(repository_name="team/new", create_repository=True)
    assert ecr.tags("team/new", **IN_PROD) == {"v1.4.2": digest, "prod": digest}
    assert ecr.requests_for("CreateRepository") == [{"registryId": PROD, "repositoryName": "team/new"}]


def test_a_missing_source_image_or_repository_fails_with_nothing_written(ecr):
    with pytest.raises(ImageNotFoundError, match="source_tag 'sha-1' not found in repository 'team/app'"):
        run()
    with pytest.raises(EcrPermanentError, match="source repository 'team/none'"):
        run(source_repository_name="team/none")
    assert ecr.write_calls == 0


def test_a_failed_guard_writes_nothing(ecr):
    ecr.push(REPO, build_image("oci", "tested"), ["sha-1"])
    tested = ecr.tags(REPO)["sha-1"]
    ecr.move_tag(REPO, "sha-1", ecr.push(REPO, build_image("oci", "re-pushed")))
    ecr.reset_calls()
    with pytest.raises(GuardFailedError, match=tested):
        run(source_digest=tested)
    assert ecr.write_calls == 0 and ecr.tags(REPO, **IN_PROD) == {}


def test_overwrite_false_refuses_before_any_byte_moves(ecr):
    ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    ecr.push(REPO, build_image("oci", "old"), ["prod"], **IN_PROD)
    ecr.reset_calls()
    with pytest.raises(TargetExistsError, match="prod"):
        run(overwrite=False)
    assert ecr.write_calls == 0 and ecr.calls["LayerDownload"] == 0


def test_an_immutable_conflict_fails_before_any_byte_moves(ecr):
    ecr.create_repository("team/locked", mutability="IMMUTABLE", **IN_PROD)
    other = ecr.push("team/locked", build_image("oci", "old"), ["prod"], **IN_PROD)
    ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    ecr.reset_calls()
    with pytest.raises(ImmutableTagError, match=other):
        run(repository_name="team/locked")
    assert ecr.write_calls == 0 and ecr.calls["DescribeRepositories"] == 1
    assert ecr.tags("team/locked", **IN_PROD) == {"prod": other}


def test_a_moved_tag_is_reported_for_roll_back(ecr):
    old = ecr.push(REPO, build_image("oci", "old"), ["prod"], **IN_PROD)
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    ecr.reset_calls()
    _, xcom = run()
    assert xcom["copy"]["moved"] == {"prod": old} and ecr.tags(REPO, **IN_PROD)["prod"] == digest
    assert ecr.calls["DescribeRepositories"] == 1  # mutability, read because a tag moves


@pytest.mark.parametrize("operation", ["InitiateLayerUpload", "GetDownloadUrlForLayer", "LayerDownload", "PutImage"])
def test_access_denied_fails_at_once_with_nothing_tagged(ecr, operation):
    ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    ecr.inject(operation, Fault.ACCESS_DENIED, times=None)
    with pytest.raises(AirflowFailException, match="AccessDenied"):
        run()
    assert ecr.tags(REPO, **IN_PROD) == {}


def test_putimage_throttling_is_retried_through_botocore_config(ecr):
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    ecr.inject("PutImage", Fault.THROTTLE, times=2)
    task = operator(botocore_config={"retries": {"mode": "adaptive", "max_attempts": 5}})
    task.execute(make_context())
    assert ecr.tags(REPO, **IN_PROD)["prod"] == digest
    assert task.hook.conn.meta.config.retries["mode"] == task.source_hook.conn.meta.config.retries["mode"] == "adaptive"


# ---------------------------------------------------------------------- the Airflow side
def test_the_console_link_points_at_the_target_image(ecr):
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    _, xcom = run()
    assert EcrImageLink().format_link(**xcom["ecr_image"]) == (
        f"https://console.aws.amazon.com/ecr/repositories/private/{PROD}/{REPO}/_/image/{digest}/details"
        f"?region={PROD_REGION}"
    )


def test_templated_fields(ecr):
    from airflow.sdk.definitions.param import ParamsDict

    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-9"])
    task = operator(source_tag="sha-{{ params.sha }}", target_tags="{{ params.tags }}", registry_id="{{ params.prod }}")
    assert {
        "source_repository_name",
        "source_tag",
        "source_digest",
        "source_registry_id",
        "source_region_name",
        "source_aws_conn_id",
        "repository_name",
        "target_tags",
        "registry_id",
        "aws_conn_id",
        "region_name",
    } <= set(task.template_fields)
    context = {**make_context(), "params": ParamsDict({"sha": "9", "tags": ["v2", "prod"], "prod": PROD})}
    task.render_template_fields(context)
    assert task.execute(context) == digest
    assert ecr.tags(REPO, **IN_PROD) == {"v2": digest, "prod": digest}


def test_logs_say_what_moved(ecr, capsys, caplog):
    image = build_image("oci", "app")
    digest = ecr.push(REPO, image, ["sha-1"])
    with caplog.at_level(logging.INFO):
        run()
    text = capsys.readouterr().out + caplog.text
    assert f"Tag prod: added at {digest}" in text
    for blob in image.blobs:
        assert f"Blob {blob}: copied" in text
    assert "3 of 3 blobs moved" in text


def test_the_copy_report_rolls_back_with_ecrrollbackoperator(ecr):
    from airflow_ecr_retag import EcrRollbackOperator

    old = ecr.push(REPO, build_image("oci", "old"), ["prod"], **IN_PROD)
    digest = ecr.push(REPO, build_image("oci", "app"), ["sha-1"])
    _, xcom = run()
    report = EcrRollbackOperator(
        task_id="rollback", promotions=xcom["copy"], aws_conn_id=None, region_name=PROD_REGION
    ).execute(make_context())
    # prod is back; v1.4.2 is the copy's last tag, which a roll-back never removes (the image would go).
    assert ecr.tags(REPO, **IN_PROD) == {"prod": old, "v1.4.2": digest}
    assert [e["tag"] for e in report["restored"]] == ["prod"]
    assert [(e["tag"], e["reason"]) for e in report["left_alone"]] == [("v1.4.2", "last_tag")]


def test_an_artifact_media_type_is_kept(ecr):
    index = build_image("oci", "app")
    ecr.push(REPO, index, ["sha-1"])
    signature = build_referrer(index)
    ecr.push(REPO, signature)
    run()
    assert ecr.images(REPO, **IN_PROD)[signature.digest].media_type == OCI_MANIFEST


def test_each_asset_outlet_event_carries_the_copied_image(ecr):
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from airflow_ecr_retag import ecr_image_asset

    digest = ecr.push(REPO, build_image("oci-index", "app"), ["sha-1"])
    old = ecr.push(REPO, build_image("oci", "old"), ["prod"], **IN_PROD)
    prod = Asset(ecr_image_asset(REPO, "prod", PROD))
    context = make_context()
    context["outlet_events"] = events = OutletEventAccessors()
    events[prod].extra["ticket"] = "REL-42"  # set by the user's own code
    assert operator(outlets=[prod]).execute(context) == digest
    assert events[prod].extra == {
        "ticket": "REL-42",
        "digest": digest,
        "image_uri": f"{PROD}.dkr.ecr.{PROD_REGION}.amazonaws.com/{REPO}@{digest}",
        "tags": ["v1.4.2", "prod"],
        "moved": {"prod": old},
    }
    assert ecr.tags(REPO, **IN_PROD) == {"v1.4.2": digest, "prod": digest}
