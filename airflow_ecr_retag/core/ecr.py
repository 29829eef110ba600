"""ECR primitives over a boto3 (or aiobotocore) ECR client: the one home of every ECR call the package makes.

Read: :func:`fetch_images` (BatchGetImage, 100 references a call, all manifest media types
accepted so ECR never translates) and :func:`fetch_images_async` for the triggers,
:func:`describe_image`, :func:`describe_images` (by digest, 100 a call) and
:func:`describe_images_async`, :func:`describe_all` (the DescribeImages paginator) and
:func:`describe_pages_async` for the watchers, :func:`list_repositories` (the DescribeRepositories paginator),
:func:`describe_repositories` (by name, for tag mutability, with :func:`tag_is_immutable`),
:func:`scan_findings_pages` and :func:`scan_findings_pages_async` (the DescribeImageScanFindings
paginator). Write: :func:`put_tag`, :func:`remove_tags`, :func:`start_image_scan` (and
:func:`start_image_scan_async`).

For copies between repositories (:mod:`~airflow_ecr_retag.core.image_copy`): reads
:func:`available_layers` (BatchCheckLayerAvailability, 100 digests a call), :func:`download_url`
(GetDownloadUrlForLayer), :func:`list_referrers` (ListImageReferrers, every page); writes
:func:`start_layer_upload`, :func:`upload_layer_part`, :func:`complete_layer_upload`,
:func:`put_manifest` (PutImage by digest, untagged) and :func:`create_repository`.

Optional API arguments go through :func:`pruned`, so ``registry_id=None`` means the caller's own
registry.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core.errors import DigestMismatchError, ImmutableTagError, ManifestTooLargeError, error_code
from airflow_ecr_retag.core.limits import (
    MAX_IMAGE_IDS,
    MAX_LAYER_DIGESTS,
    MAX_LAYER_PART_BYTES,
    MAX_LAYER_PARTS,
    MAX_MANIFEST_CHARS,
    MAX_REFERRERS_RESULTS,
    MAX_REPOSITORY_NAMES,
    MAX_REPOSITORY_RESULTS,
    MAX_RESULTS,
    MIN_LAYER_PART_BYTES,
)
from airflow_ecr_retag.core.manifests import MANIFEST_MEDIA_TYPES, declared_media_type, manifest_digest

#: DescribeImages page size used for whole-repository reads: the most ECR allows.
DESCRIBE_PAGE_SIZE = MAX_RESULTS
#: DescribeImageScanFindings page size: the most ECR allows, so most scans are one call.
SCAN_FINDINGS_PAGE_SIZE = MAX_RESULTS
#: ``imageStatus`` values (ImageDetail), and the DescribeImages ``filter.imageStatus`` that reads
#: every image: without a filter ECR returns only ACTIVE images.
IMAGE_ACTIVE, IMAGE_ARCHIVED, IMAGE_ACTIVATING = "ACTIVE", "ARCHIVED", "ACTIVATING"
ANY_IMAGE_STATUS = "ANY"


def pruned(**params: Any) -> dict[str, Any]:
    """The API arguments that are set (not None).

    What Airflow's ``prune_dict`` does in its default mode for these flat argument dicts; the
    core stays Airflow-free, so it is not imported.
    """
    return {name: value for name, value in params.items() if value is not None}


def chunks(items: Sequence[Any], size: int = MAX_IMAGE_IDS) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ref(tag: str | None = None, digest: str | None = None) -> dict[str, str]:
    """An ECR ``imageId`` reference."""
    return pruned(imageTag=tag, imageDigest=digest)


def ref_key(image_id: dict[str, str]) -> tuple[str, str]:
    """How a BatchGetImage answer is matched to its request: by tag when one was asked for."""
    if "imageTag" in image_id:
        return ("tag", image_id["imageTag"])
    return ("digest", image_id.get("imageDigest", ""))


@dataclass(frozen=True)
class FetchedImage:
    """A manifest as ECR returned it: the exact string, never re-serialised."""

    digest: str
    manifest: str
    media_type: str
    registry_id: str

    def verify(self, what: str) -> None:
        """Check the manifest before re-putting it: sha256 must be the digest, the size within ECR's limit."""
        if len(self.manifest) > MAX_MANIFEST_CHARS:
            raise ManifestTooLargeError(
                f"imageManifest: {what} has a manifest of {len(self.manifest):,} characters, over ECR's "
                f"{MAX_MANIFEST_CHARS:,}-character PutImage limit; nothing was written"
            )
        actual = manifest_digest(self.manifest)
        if actual != self.digest:
            raise DigestMismatchError(
                f"{what}: ECR reported {self.digest} but the manifest bytes hash to {actual}; "
                "refusing to write a different image"
            )


def fetch_images(
    client: Any, repository_name: str, refs: Sequence[dict[str, str]], registry_id: str | None = None
) -> tuple[dict[tuple[str, str], FetchedImage], dict[tuple[str, str], dict[str, Any]]]:
    """BatchGetImage for ``refs`` (100 a call), keyed by :func:`ref_key`: images and per-item failures."""
    wanted = {ref_key(r) for r in refs}
    found: dict[tuple[str, str], FetchedImage] = {}
    failures: dict[tuple[str, str], dict[str, Any]] = {}
    for batch in chunks(list(refs)):
        response = client.batch_get_image(**batch_get_params(repository_name, batch, registry_id))
        batch_found, batch_failures = parse_batch_get(response, wanted, registry_id)
        found.update(batch_found)
        failures.update(batch_failures)
    return found, failures


async def fetch_images_async(
    client: Any, repository_name: str, refs: Sequence[dict[str, str]], registry_id: str | None = None
) -> tuple[dict[tuple[str, str], FetchedImage], dict[tuple[str, str], dict[str, Any]]]:
    """:func:`fetch_images` for an aiobotocore client, for at most 100 references (one call)."""
    if len(refs) > MAX_IMAGE_IDS:
        raise ValueError(f"at most {MAX_IMAGE_IDS} references per BatchGetImage call, got {len(refs)}")
    response = await client.batch_get_image(**batch_get_params(repository_name, refs, registry_id))
    return parse_batch_get(response, {ref_key(r) for r in refs}, registry_id)


def batch_get_params(
    repository_name: str, refs: Sequence[dict[str, str]], registry_id: str | None = None
) -> dict[str, Any]:
    """BatchGetImage arguments, accepting every manifest media type so ECR never translates."""
    return pruned(
        registryId=registry_id,
        repositoryName=repository_name,
        imageIds=list(refs),
        acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES),
    )


def parse_batch_get(
    response: dict[str, Any], wanted: set[tuple[str, str]], registry_id: str | None = None
) -> tuple[dict[tuple[str, str], FetchedImage], dict[tuple[str, str], dict[str, Any]]]:
    """Match a BatchGetImage answer to the requested references."""
    found: dict[tuple[str, str], FetchedImage] = {}
    failures: dict[tuple[str, str], dict[str, Any]] = {}
    for image in response.get("images", []):
        manifest = image["imageManifest"]
        found[_answer_key(image["imageId"], wanted)] = FetchedImage(
            digest=image["imageId"].get("imageDigest") or manifest_digest(manifest),
            manifest=manifest,
            media_type=image.get("imageManifestMediaType") or declared_media_type(manifest) or "",
            registry_id=image.get("registryId", registry_id or ""),
        )
    for failure in response.get("failures", []):
        failures[_answer_key(failure.get("imageId", {}), wanted)] = failure
    return found, failures


def _answer_key(image_id: dict[str, str], wanted: set[tuple[str, str]]) -> tuple[str, str]:
    key = ref_key(image_id)
    if key in wanted:
        return key
    return ("digest", image_id.get("imageDigest", ""))


def describe_image(
    client: Any, repository_name: str, digest: str, registry_id: str | None = None
) -> dict[str, Any] | None:
    """DescribeImages for one digest: the image's details (with its current tags), or None."""
    return describe_images(client, repository_name, [digest], registry_id).get(digest)


def describe_images(
    client: Any, repository_name: str, digests: Sequence[str], registry_id: str | None = None
) -> dict[str, dict[str, Any]]:
    """DescribeImages by digest, 100 a call: each image's details; images that are gone are absent."""
    details: dict[str, dict[str, Any]] = {}

    def read(batch: Sequence[str]) -> None:
        try:
            response = client.describe_images(
                **pruned(
                    registryId=registry_id, repositoryName=repository_name, imageIds=[ref(digest=d) for d in batch]
                )
            )
        except Exception as error:
            if error_code(error) != "ImageNotFoundException":
                raise
            # One id in the batch is gone and ECR fails the whole call: find it by halving.
            if len(batch) > 1:
                middle = len(batch) // 2
                read(batch[:middle])
                read(batch[middle:])
            return
        for detail in response.get("imageDetails", []):
            details[detail["imageDigest"]] = detail

    for batch in chunks(list(digests)):
        read(batch)
    return details


async def describe_images_async(
    client: Any, repository_name: str, digests: Sequence[str], registry_id: str | None = None
) -> dict[str, dict[str, Any]]:
    """DescribeImages by digest for an aiobotocore client, one call (at most 100 digests): each image's details.

    If one of the images is gone ECR fails the whole call (``ImageNotFoundException``): the answer
    is then empty, and the caller reads again at its next poll, when the tag has moved on.
    """
    if len(digests) > MAX_IMAGE_IDS:
        raise ValueError(f"at most {MAX_IMAGE_IDS} digests per DescribeImages call, got {len(digests)}")
    try:
        response = await client.describe_images(
            **pruned(registryId=registry_id, repositoryName=repository_name, imageIds=[ref(digest=d) for d in digests])
        )
    except Exception as error:
        if error_code(error) != "ImageNotFoundException":
            raise
        return {}
    return {detail["imageDigest"]: detail for detail in response.get("imageDetails", [])}


def describe_pages_async(
    client: Any, repository_name: str, registry_id: str | None = None, page_size: int = DESCRIBE_PAGE_SIZE
) -> AsyncIterator[dict[str, Any]]:
    """The DescribeImages paginator (ACTIVE images) for an aiobotocore client: ``async for page in ...``."""
    paginator = client.get_paginator("describe_images")
    return paginator.paginate(
        **pruned(registryId=registry_id, repositoryName=repository_name), PaginationConfig={"PageSize": page_size}
    )


def describe_all(
    client: Any, repository_name: str, registry_id: str | None = None, image_status: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Every image of the repository, a DescribeImages page (1000 images) at a time: the ACTIVE
    ones, or those of ``filter.imageStatus`` ``image_status`` (:data:`ANY_IMAGE_STATUS`: all)."""
    paginator = client.get_paginator("describe_images")
    status_filter = {"imageStatus": image_status} if image_status is not None else None
    for page in paginator.paginate(
        **pruned(registryId=registry_id, repositoryName=repository_name, filter=status_filter),
        PaginationConfig={"PageSize": DESCRIBE_PAGE_SIZE},
    ):
        yield page.get("imageDetails", [])


def list_repositories(client: Any, registry_id: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Every repository of the registry, a DescribeRepositories page (1000 repositories) at a time."""
    paginator = client.get_paginator("describe_repositories")
    for page in paginator.paginate(
        **pruned(registryId=registry_id), PaginationConfig={"PageSize": MAX_REPOSITORY_RESULTS}
    ):
        yield page.get("repositories", [])


def current_digest(client: Any, repository_name: str, tag: str, registry_id: str | None = None) -> str | None:
    """Where ``tag`` points now (one BatchGetImage), or None."""
    found, _ = fetch_images(client, repository_name, [ref(tag=tag)], registry_id)
    image = found.get(("tag", tag))
    return image.digest if image else None


def put_tag(client: Any, repository_name: str, image: FetchedImage, tag: str, registry_id: str | None = None) -> bool:
    """Put ``image``'s manifest, byte for byte, under ``tag``.

    Returns True if this call set the tag, False if it already pointed at the image
    (``ImageAlreadyExistsException``, or ``ImageTagAlreadyExistsException`` in an immutable
    repository when a re-read shows the same digest): both are success, so a retry converges.
    """
    try:
        client.put_image(
            **pruned(
                registryId=registry_id,
                repositoryName=repository_name,
                imageManifest=image.manifest,
                imageManifestMediaType=image.media_type,
                imageDigest=image.digest,
                imageTag=tag,
            )
        )
        return True
    except Exception as error:
        code = error_code(error)
        if code == "ImageAlreadyExistsException":
            return False
        if code != "ImageTagAlreadyExistsException":
            raise
    holder = current_digest(client, repository_name, tag, registry_id)
    if holder == image.digest:
        return False
    raise immutable_tag_error(repository_name, tag, holder, image.digest)


def immutable_tag_error(repository_name: str, tag: str, holder: str | None, digest: str) -> ImmutableTagError:
    return ImmutableTagError(
        f"target tag {tag!r} is immutable in repository {repository_name!r} and points at {holder}, "
        f"not {digest}; ECR refuses to move it"
    )


def describe_repositories(
    client: Any, repository_names: Sequence[str], registry_id: str | None = None
) -> dict[str, dict[str, Any]]:
    """DescribeRepositories by name (100 a call): each repository's details, with its tag mutability."""
    details: dict[str, dict[str, Any]] = {}
    for batch in chunks(list(repository_names), MAX_REPOSITORY_NAMES):
        response = client.describe_repositories(**pruned(registryId=registry_id, repositoryNames=list(batch)))
        for detail in response.get("repositories", []):
            details[detail["repositoryName"]] = detail
    return details


def tag_is_immutable(repository: dict[str, Any], tag: str) -> bool:
    """Whether ECR refuses to move ``tag`` in a repository (a DescribeRepositories entry).

    ``imageTagMutability`` with its WILDCARD ``imageTagMutabilityExclusionFilters``: under
    ``IMMUTABLE_WITH_EXCLUSION`` a tag matching a filter stays mutable; under
    ``MUTABLE_WITH_EXCLUSION`` a tag matching a filter is immutable. In a filter, ``*``
    matches any run of characters and nothing else is special.
    """
    mode = repository.get("imageTagMutability", "MUTABLE")
    excluded = any(
        _wildcard_match(f.get("filter", ""), tag)
        for f in repository.get("imageTagMutabilityExclusionFilters", [])
        if f.get("filterType", "WILDCARD") == "WILDCARD"
    )
    if mode == "IMMUTABLE":
        return True
    if mode == "IMMUTABLE_WITH_EXCLUSION":
        return not excluded
    if mode == "MUTABLE_WITH_EXCLUSION":
        return excluded
    return False


def _wildcard_match(pattern: str, tag: str) -> bool:
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), tag) is not None


def remove_tags(
    client: Any, repository_name: str, tags: Iterable[str], registry_id: str | None = None
) -> Iterator[tuple[list[dict[str, str]], list[dict[str, Any]]]]:
    """BatchDeleteImage by tag, 100 a call. Yields (removed ids, failures) per call.

    By tag only: with a digest too the call's meaning is undocumented (it may delete the
    whole image), so it is never used as a compare-and-delete.
    """
    for batch in chunks(list(tags)):
        response = client.batch_delete_image(
            **pruned(registryId=registry_id, repositoryName=repository_name, imageIds=[ref(tag=t) for t in batch])
        )
        yield response.get("imageIds", []), response.get("failures", [])


def _scan_params(repository_name: str, digest: str, registry_id: str | None) -> dict[str, Any]:
    return pruned(registryId=registry_id, repositoryName=repository_name, imageId=ref(digest=digest))


def scan_findings_pages(
    client: Any, repository_name: str, digest: str, registry_id: str | None = None
) -> Iterator[dict[str, Any]]:
    """The image's scan, a DescribeImageScanFindings page (1000 findings) at a time, lazily: a caller
    that stops after the first page (the scan is not finished) makes one call."""
    paginator = client.get_paginator("describe_image_scan_findings")
    yield from paginator.paginate(
        **_scan_params(repository_name, digest, registry_id), PaginationConfig={"PageSize": SCAN_FINDINGS_PAGE_SIZE}
    )


def scan_findings_pages_async(
    client: Any, repository_name: str, digest: str, registry_id: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """:func:`scan_findings_pages` for an aiobotocore client (its paginators iterate with ``async for``)."""
    paginator = client.get_paginator("describe_image_scan_findings")
    return paginator.paginate(
        **_scan_params(repository_name, digest, registry_id), PaginationConfig={"PageSize": SCAN_FINDINGS_PAGE_SIZE}
    )


def start_image_scan(client: Any, repository_name: str, digest: str, registry_id: str | None = None) -> dict[str, Any]:
    """StartImageScan (basic scanning): the scan status ECR answers with."""
    return client.start_image_scan(**_scan_params(repository_name, digest, registry_id)).get("imageScanStatus", {})


async def start_image_scan_async(
    client: Any, repository_name: str, digest: str, registry_id: str | None = None
) -> dict[str, Any]:
    """:func:`start_image_scan` for an aiobotocore client."""
    response = await client.start_image_scan(**_scan_params(repository_name, digest, registry_id))
    return response.get("imageScanStatus", {})


# ---------------------------------------------------------------------- layers and referrers
def available_layers(
    client: Any, repository_name: str, digests: Sequence[str], registry_id: str | None = None
) -> set[str]:
    """BatchCheckLayerAvailability, 100 digests a call: the digests the repository has (AVAILABLE).

    UNAVAILABLE (only another repository of the registry has it), ARCHIVED and the per-digest
    failures (``MissingLayerDigest``) all mean: upload it.
    """
    available: set[str] = set()
    for batch in chunks(list(digests), MAX_LAYER_DIGESTS):
        response = client.batch_check_layer_availability(
            **pruned(registryId=registry_id, repositoryName=repository_name, layerDigests=list(batch))
        )
        available |= {
            layer["layerDigest"]
            for layer in response.get("layers", [])
            if layer.get("layerAvailability") == "AVAILABLE"
        }
    return available


def download_url(client: Any, repository_name: str, digest: str, registry_id: str | None = None) -> str:
    """GetDownloadUrlForLayer: a presigned URL of the blob (no credentials needed to fetch it)."""
    response = client.get_download_url_for_layer(
        **pruned(registryId=registry_id, repositoryName=repository_name, layerDigest=digest)
    )
    return response["downloadUrl"]


def list_referrers(
    client: Any, repository_name: str, digest: str, registry_id: str | None = None
) -> list[dict[str, Any]]:
    """ListImageReferrers for ``digest``, every page (``nextToken``; botocore has no paginator for it):
    the descriptors (``digest``, ``mediaType``, ``artifactType``, ...) of the images that refer to it."""
    referrers: list[dict[str, Any]] = []
    token = None
    while True:
        response = client.list_image_referrers(
            **pruned(
                registryId=registry_id,
                repositoryName=repository_name,
                subjectId={"imageDigest": digest},
                maxResults=MAX_REFERRERS_RESULTS,
                nextToken=token,
            )
        )
        referrers += response.get("referrers", [])
        token = response.get("nextToken")
        if not token:
            return referrers


@dataclass(frozen=True)
class LayerUpload:
    """An upload started by InitiateLayerUpload."""

    upload_id: str
    #: The largest part to send: ECR's ``partSize``, within the quotas page's 5-10 MiB.
    max_part_size: int

    def part_size(self, blob_size: int) -> int:
        """The part size for a blob: the smallest the quotas allow (every part but the last at least
        5 MiB) that keeps it within 4,200 parts, so a blob in flight holds as little as it can."""
        needed = -(-blob_size // MAX_LAYER_PARTS)
        return min(self.max_part_size, max(MIN_LAYER_PART_BYTES, needed))


def start_layer_upload(client: Any, repository_name: str, registry_id: str | None = None) -> LayerUpload:
    """InitiateLayerUpload: the upload id, and ECR's ``partSize`` kept within the quotas page's 5-10 MiB."""
    response = client.initiate_layer_upload(**pruned(registryId=registry_id, repositoryName=repository_name))
    offered = response.get("partSize") or MAX_LAYER_PART_BYTES
    return LayerUpload(response["uploadId"], min(MAX_LAYER_PART_BYTES, max(MIN_LAYER_PART_BYTES, offered)))


def upload_layer_part(
    client: Any,
    repository_name: str,
    upload_id: str,
    first_byte: int,
    data: bytes | bytearray,
    registry_id: str | None = None,
) -> None:
    """UploadLayerPart: ``data`` as the bytes ``first_byte`` to ``first_byte + len(data) - 1``.

    ECR answers a part that does not continue the upload with ``InvalidLayerPartException`` and
    ``lastValidByteReceived``: see :func:`last_valid_byte`.
    """
    client.upload_layer_part(
        **pruned(
            registryId=registry_id,
            repositoryName=repository_name,
            uploadId=upload_id,
            partFirstByte=first_byte,
            partLastByte=first_byte + len(data) - 1,
            layerPartBlob=data,
        )
    )


def last_valid_byte(error: BaseException) -> int | None:
    """For an ``InvalidLayerPartException``, the offset of the last byte ECR holds (-1: none); else None."""
    if error_code(error) != "InvalidLayerPartException":
        return None
    value = getattr(error, "response", {}).get("lastValidByteReceived")
    return value if isinstance(value, int) else None


def complete_layer_upload(
    client: Any, repository_name: str, upload_id: str, digest: str, registry_id: str | None = None
) -> bool:
    """CompleteLayerUpload. True if this upload made the layer; False if the repository already had
    it (``LayerAlreadyExistsException``: a concurrent copy got there first), which is success too."""
    try:
        client.complete_layer_upload(
            **pruned(registryId=registry_id, repositoryName=repository_name, uploadId=upload_id, layerDigests=[digest])
        )
        return True
    except Exception as error:
        if error_code(error) != "LayerAlreadyExistsException":
            raise
        return False


def put_manifest(client: Any, repository_name: str, image: FetchedImage, registry_id: str | None = None) -> str | None:
    """PutImage of ``image``'s manifest, byte for byte, by digest and untagged (an index's child, a
    referrer, an image its referrers need in place before its tags).

    Returns the registry id ECR answered with, or None when the image was already there
    (``ImageAlreadyExistsException``: success, so a retry converges).
    """
    try:
        response = client.put_image(
            **pruned(
                registryId=registry_id,
                repositoryName=repository_name,
                imageManifest=image.manifest,
                imageManifestMediaType=image.media_type,
                imageDigest=image.digest,
            )
        )
    except Exception as error:
        if error_code(error) != "ImageAlreadyExistsException":
            raise
        return None
    return response.get("image", {}).get("registryId")


def create_repository(client: Any, repository_name: str, registry_id: str | None = None) -> str | None:
    """CreateRepository with ECR's defaults; an existing repository (a concurrent run made it) is
    success. Returns the registry id ECR answered with, if it did."""
    try:
        response = client.create_repository(**pruned(registryId=registry_id, repositoryName=repository_name))
    except Exception as error:
        if error_code(error) != "RepositoryAlreadyExistsException":
            raise
        return None
    return response.get("repository", {}).get("registryId")
