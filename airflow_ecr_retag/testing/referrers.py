"""OCI 1.1 referrers: images whose manifest names another in ``subject`` (signatures, SBOMs, ...).

One query behind both APIs: ListImageReferrers (ECR) and ``GET /v2/<name>/referrers/<digest>``
(:mod:`~airflow_ecr_retag.testing.distribution_manifests`). A referrer's ``artifactType`` is the
manifest's own, or for an image manifest without one its config's media type (the distribution
spec's rule); an index without one has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.limits import DEFAULT_REFERRERS_RESULTS, MAX_REFERRER_ARTIFACT_TYPES, MAX_REFERRERS_RESULTS
from airflow_ecr_retag.core.manifests import INDEX_MEDIA_TYPES
from airflow_ecr_retag.testing import image_status
from airflow_ecr_retag.testing import request_rules as rules
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.store import StoredImage, images_of

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble


def artifact_type(image: StoredImage) -> str | None:
    declared = image.document.get("artifactType")
    if declared:
        return declared
    if image.media_type in INDEX_MEDIA_TYPES:
        return None
    return (image.document.get("config") or {}).get("mediaType")


def descriptor(image: StoredImage) -> dict[str, Any]:
    """The image as an entry of a referrers list: its descriptor, artifact type and annotations."""
    entry: dict[str, Any] = {
        "mediaType": image.media_type,
        "size": len(image.manifest.encode()),
        "digest": image.digest,
    }
    kind = artifact_type(image)
    if kind:
        entry["artifactType"] = kind
    annotations = image.document.get("annotations")
    if isinstance(annotations, dict) and annotations:
        entry["annotations"] = annotations
    return entry


def referrers(double: EcrDouble, repository: Any, subject: str, artifact_types: list[str]) -> list[StoredImage]:
    """The repository's referrers of ``subject``, of one of ``artifact_types`` when any are given."""
    with double._lock:
        found = images_of(repository).referrers_of(subject)
    return [image for image in found if not artifact_types or artifact_type(image) in artifact_types]


class ReferrerHandlers(ECRResponse):
    """ListImageReferrers, installed on ``ECRResponse`` while a double is active."""

    double: EcrDouble

    def list_image_referrers(self) -> ActionResult:
        repository = self.ecr_backend._get_repository(self._get_param("repositoryName"), self._get_param("registryId"))
        subject = (self._get_param("subjectId") or {}).get("imageDigest")
        if not isinstance(subject, str) or not rules.is_image_digest(subject):
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'subjectId.imageDigest' failed to satisfy constraint: "
                "'must satisfy regular expression '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+''",
            )
        query = self._get_param("filter") or {}
        kinds = query.get("artifactTypes") or []
        if len(kinds) > MAX_REFERRER_ARTIFACT_TYPES:
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'filter.artifactTypes' failed to satisfy constraint: "
                f"'Member must have length less than or equal to {MAX_REFERRER_ARTIFACT_TYPES}'",
            )
        statuses = image_status.status_filter(query.get("artifactStatus"), "filter.artifactStatus")
        now = self.double.clock()
        found = referrers(self.double, repository, subject, kinds)
        with self.double._lock:
            found = image_status.keep_statuses(images_of(repository), found, statuses, now)
        page, token = rules.paginate(
            found,
            self._get_param("maxResults"),
            self._get_param("nextToken"),
            limit=MAX_REFERRERS_RESULTS,
            default=DEFAULT_REFERRERS_RESULTS,
        )
        entries = [{**descriptor(image), "artifactStatus": image.status_at(now)} for image in page]
        return ActionResult({"referrers": entries, **({"nextToken": token} if token else {})})
