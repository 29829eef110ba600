"""ECR's rules for image requests, each a named check that fails with ECR's own error.

The handlers (:mod:`airflow_ecr_retag.testing.handlers`) call these in the order ECR applies
them, so a request breaking two rules gets the error ECR would give. Messages and codes are
ECR's, byte for byte: code under test matches on them.

Checks that read the store are called with the double's lock held.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

from moto.core.exceptions import ServiceException

from airflow_ecr_retag.core.limits import (
    DEFAULT_MAX_RESULTS,
    MAX_IMAGE_IDS,
    MAX_MANIFEST_CHARS,
    MAX_RESULTS,
    MAX_TAG_CHARS,
)
from airflow_ecr_retag.core.manifests import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    PUT_IMAGE_MEDIA_TYPES,
    manifest_digest,
)
from airflow_ecr_retag.testing.store import RepoImages, StoredImage

_DIGEST_RE = re.compile(r"^[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+$")
# A word character, then up to MAX_TAG_CHARS - 1 more of the tag grammar.
_TAG_RE = re.compile(rf"^[\w][\w.-]{{0,{MAX_TAG_CHARS - 1}}}$")
# ECR converts between these two single-platform formats when the stored one is not accepted.
_TRANSLATION = {
    DOCKER_MANIFEST: (OCI_MANIFEST, {DOCKER_CONFIG: OCI_CONFIG, DOCKER_LAYER: OCI_LAYER}),
    OCI_MANIFEST: (DOCKER_MANIFEST, {OCI_CONFIG: DOCKER_CONFIG, OCI_LAYER: DOCKER_LAYER}),
}
# What ECR answers for a manifest it cannot read, and for one whose media type it cannot tell.
_INVALID_JSON = "Invalid parameter at 'ImageManifest' failed to satisfy constraint: 'Invalid JSON syntax'"


class EcrError(ServiceException):
    """An ECR error response, serialised by moto from the botocore model."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)


def _too_long(where: str, limit: int) -> EcrError:
    return EcrError(
        "InvalidParameterException",
        f"Invalid parameter at '{where}' failed to satisfy constraint: "
        f"'Member must have length less than or equal to {limit}'",
    )


def is_image_digest(digest: str) -> bool:
    """Whether ``digest`` has the shape of an image digest (the botocore model's pattern)."""
    return bool(_DIGEST_RE.match(digest))


def is_image_tag(tag: str) -> bool:
    """Whether ``tag`` is a tag ECR accepts: a word character, then up to MAX_TAG_CHARS - 1 more."""
    return bool(_TAG_RE.match(tag))


def failure(image_id: dict, code: str, reason: str) -> dict:
    """One entry of a batch response's ``failures``: batch calls report per image, not raise."""
    return {"imageId": dict(image_id), "failureCode": code, "failureReason": reason}


# ---------------------------------------------------------------------- parameters
def check_tag(tag: Any, where: str) -> None:
    """A tag parameter is a string of 1 to MAX_TAG_CHARS characters."""
    if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_CHARS:
        raise _too_long(where, MAX_TAG_CHARS)


def check_id_count(image_ids: list | None, where: str = "imageIds") -> list:
    """At most MAX_IMAGE_IDS image ids a call, each tag in them a valid tag parameter."""
    image_ids = image_ids or []
    if len(image_ids) > MAX_IMAGE_IDS:
        raise _too_long(where, MAX_IMAGE_IDS)
    for image_id in image_ids:
        if "imageTag" in image_id:
            check_tag(image_id["imageTag"], f"{where}.imageTag")
    return image_ids


def paginate(
    items: list, max_results: Any, next_token: Any, *, limit: int = MAX_RESULTS, default: int = DEFAULT_MAX_RESULTS
) -> tuple[list, str | None]:
    """One page of ``items`` and the token for the next (None on the last page); ``maxResults``
    is 1 to ``limit``, ``default`` when not given.

    The token is opaque to callers, as ECR's is; the double's encodes the offset.
    """
    if max_results is None:
        max_results = default
    if not isinstance(max_results, int) or not 1 <= max_results <= limit:
        raise EcrError(
            "InvalidParameterException",
            "Invalid parameter at 'maxResults' failed to satisfy constraint: "
            f"'Member must have value less than or equal to {limit}'",
        )
    start = 0
    if next_token:
        try:
            start = int(json.loads(base64.b64decode(next_token))["offset"])
        except (ValueError, KeyError, TypeError):
            raise EcrError("InvalidParameterException", "Invalid parameter at 'nextToken': invalid token") from None
    page = items[start : start + max_results]
    end = start + len(page)
    token = base64.b64encode(json.dumps({"offset": end}).encode()).decode() if end < len(items) else None
    return page, token


# ---------------------------------------------------------------------- finding images
def find_image(store: RepoImages, image_id: dict) -> tuple[StoredImage | None, dict | None]:
    """The image an image id names, or the failure ECR reports for it (exactly one is None).

    A tag and a digest together must name the same image.
    """
    tag, digest = image_id.get("imageTag"), image_id.get("imageDigest")
    malformed = _malformed_id_failure(image_id, tag, digest)
    if malformed:
        return None, malformed
    by_tag = store.by_tag.get(tag) if tag is not None else None
    by_digest = store.by_digest.get(digest) if digest is not None else None
    if tag is not None and digest is not None:
        if by_tag is None or by_digest is None:
            return None, failure(image_id, "ImageNotFound", "Requested image not found")
        if by_tag is not by_digest:
            return None, failure(
                image_id,
                "ImageTagDoesNotMatchDigest",
                "Invalid request parameters: given tag does not map to the given digest",
            )
        return by_tag, None
    image = by_tag or by_digest
    if image is None:
        return None, failure(image_id, "ImageNotFound", "Requested image not found")
    return image, None


def _malformed_id_failure(image_id: dict, tag: str | None, digest: str | None) -> dict | None:
    if tag is None and digest is None:
        return failure(
            image_id, "MissingDigestAndTag", "Invalid request parameters: both tag and digest cannot be null"
        )
    if digest is not None and not _DIGEST_RE.match(digest):
        return failure(
            image_id,
            "InvalidImageDigest",
            "Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'",
        )
    if tag is not None and not _TAG_RE.match(tag):
        return failure(
            image_id,
            "InvalidImageTag",
            "Invalid request parameters: image tag should satisfy the regex '[a-zA-Z0-9-_.]+'",
        )
    return None


def image_not_found(repository: Any, image_id: dict) -> EcrError:
    """What DescribeImages raises for an image id naming nothing (it has no per-image failures)."""
    shown = ", ".join(f"{k}:'{v}'" for k, v in image_id.items())
    return EcrError(
        "ImageNotFoundException",
        f"The image with imageId {{{shown}}} does not exist within the repository with name "
        f"'{repository.name}' in the registry with id '{repository.registry_id}'",
    )


# ---------------------------------------------------------------------- BatchGetImage
def manifest_as_accepted(
    image: StoredImage, accepted: Sequence[str], *, by_digest: bool = False
) -> tuple[str, str] | None:
    """The manifest and media type served for the accepted media types (BatchGetImage's
    ``acceptedMediaTypes``, ``/v2/``'s ``Accept``), or None when ECR refuses.

    Pulled by tag, a stored type that is not accepted is translated Docker <-> OCI if the other
    one is accepted: new bytes, so a new digest. Indexes are never translated, and neither is an
    image pulled by digest ("If you pull an image by digest, there is no translation available",
    the user guide's "Container image manifest format support").
    """
    if image.media_type in accepted:
        return image.manifest, image.media_type
    target = _TRANSLATION.get(image.media_type, (None,))[0]
    if by_digest or target not in accepted:
        return None
    return _translate(image)


def _translate(image: StoredImage) -> tuple[str, str]:
    target, renames = _TRANSLATION[image.media_type]
    document = json.loads(image.manifest)
    document["mediaType"] = target
    document["config"]["mediaType"] = renames.get(document["config"]["mediaType"], document["config"]["mediaType"])
    for layer in document.get("layers", []):
        layer["mediaType"] = renames.get(layer["mediaType"], layer["mediaType"])
    return json.dumps(document, separators=(",", ":")), target


# ---------------------------------------------------------------------- PutImage
def parse_manifest(manifest: str) -> dict[str, Any]:
    """The manifest is at most MAX_MANIFEST_CHARS characters of JSON with an object at the top."""
    if len(manifest) > MAX_MANIFEST_CHARS:
        raise _too_long("imageManifest", MAX_MANIFEST_CHARS)
    try:
        document = json.loads(manifest)
        if not isinstance(document, dict):
            raise ValueError
    except ValueError:
        raise EcrError("InvalidParameterException", _INVALID_JSON) from None
    return document


def resolve_media_type(document: dict[str, Any], declared_type: str | None) -> str:
    """The image's media type: the parameter or the manifest's field, which must agree, and one
    PutImage accepts."""
    field_type = document.get("mediaType")
    if field_type is None and declared_type is None:
        # What ECR answers for an OCI manifest without mediaType and no parameter.
        raise EcrError("InvalidParameterException", _INVALID_JSON)
    if field_type is not None and declared_type is not None and field_type != declared_type:
        raise EcrError(
            "InvalidParameterException",
            f"Invalid parameter at 'imageManifestMediaType': '{declared_type}' does not match "
            f"the manifest's mediaType '{field_type}'",
        )
    media_type = declared_type or field_type
    if media_type not in PUT_IMAGE_MEDIA_TYPES:
        raise EcrError(
            "InvalidParameterException",
            f"Invalid parameter at 'imageManifestMediaType': unsupported media type '{media_type}'",
        )
    return media_type


def check_digest(manifest: str, expected_digest: str | None) -> str:
    """The manifest's digest, which must be ``imageDigest`` when that is given."""
    digest = manifest_digest(manifest)
    if expected_digest is not None and expected_digest != digest:
        raise EcrError(
            "ImageDigestDoesNotMatchException",
            f"The digest '{expected_digest}' does not match the digest '{digest}' Amazon ECR calculated for the image.",
        )
    return digest


def check_children_present(store: RepoImages, document: dict[str, Any]) -> None:
    """Every manifest an index lists is already in the repository."""
    missing = [d for d in (e.get("digest") for e in document.get("manifests", [])) if d not in store.by_digest]
    if missing:
        raise EcrError(
            "ReferencedImagesNotFoundException",
            f"The following referenced images were not found: {', '.join(missing)}",
        )


def check_layers_present(repository: Any, document: dict[str, Any]) -> None:
    """Every blob (config and layers) a single-platform manifest references was uploaded."""
    blobs = [document.get("config", {}).get("digest")] + [layer.get("digest") for layer in document.get("layers", [])]
    absent = [b for b in blobs if b and b not in repository.layers]
    if absent:
        raise EcrError(
            "LayersNotFoundException",
            f"Layers with digests '[{', '.join(absent)}]' required for pushing image into repository "
            f"with name '{repository.name}' in registry with id '{repository.registry_id}' do not exist",
        )


def check_tag_overwritable(repository: Any, tag: str | None, holder: StoredImage | None) -> None:
    """A tag already in use may move only if the repository's mutability settings let it."""
    if holder is not None and tag_is_immutable(repository, tag):
        # Raised even when the tag already points at this digest (containers-roadmap#2179).
        raise EcrError(
            "ImageTagAlreadyExistsException",
            f"The image tag '{tag}' already exists in the '{repository.name}' repository and cannot be "
            "overwritten because the tag is immutable.",
        )


def check_not_already_pushed(
    repository: Any, digest: str, tag: str | None, existing: StoredImage | None, holder: StoredImage | None
) -> None:
    """A push must change something: a new image, or a tag not yet on it."""
    if existing is not None and (tag is None or holder is existing):
        raise EcrError(
            "ImageAlreadyExistsException",
            f"Image with digest '{digest}' and tag '{tag}' already exists in the repository with name "
            f"'{repository.name}' in registry with id '{repository.registry_id}'",
        )


def tag_is_immutable(repository: Any, tag: Any) -> bool:
    """Whether the repository's tag mutability, with its WILDCARD exclusion filters, freezes ``tag``."""
    mode = str(getattr(repository.image_tag_mutability, "value", repository.image_tag_mutability))
    filters = [
        f["filter"]
        for f in (repository.image_tag_mutability_exclusion_filters or [])
        if f.get("filterType", "WILDCARD") == "WILDCARD"
    ]
    excluded = any(_wildcard(f).match(tag) for f in filters)
    if mode == "IMMUTABLE":
        return True
    if mode == "IMMUTABLE_WITH_EXCLUSION":
        return not excluded
    if mode == "MUTABLE_WITH_EXCLUSION":
        return excluded
    return False


def _wildcard(pattern: str) -> re.Pattern[str]:
    # ECR exclusion filters: '*' matches any run of characters; nothing else is special.
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")
