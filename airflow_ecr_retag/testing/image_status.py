"""Image status and pull time: ``imageStatus``, UpdateImageStorageClass, ``lastRecordedPullTime``.

What ECR documents, and what the double does with it:

- UpdateImageStorageClass moves an image to the archive (``ARCHIVE``: ``imageStatus`` ARCHIVED)
  or back (``STANDARD``: ACTIVATING, then ACTIVE). ECR's restore "typically takes up to 20
  minutes"; the double's takes :attr:`EcrDouble.activation_seconds` (1,200 by default) on
  :attr:`EcrDouble.clock`, so a test advances the clock to see it end, or sets the delay to 0.
- Archived (and still activating) images cannot be pulled: BatchGetImage reports an
  ``ImageNotFound`` failure for them and ``/v2/`` answers 404 (the user guide: "Requests to pull
  the archived image will fail with a 404 error"). They are still described and listed, with
  ``filter.imageStatus`` (DescribeImages and ListImages list only ACTIVE images unless it says
  ARCHIVED, ACTIVATING or ANY), and DescribeImages by id describes them whatever their status.
  Pushing an archived image again restores it at once ("Restoring an image").
- ECR documents no rule for a transition to where the image already is or is going; the double
  answers ``ImageStorageClassUpdateNotSupportedException`` ("The requested image storage class
  update is not supported", the botocore model's description) for ARCHIVE of an image that is
  ARCHIVED or ACTIVATING and for STANDARD of one that is ACTIVE or ACTIVATING.
- ``lastRecordedPullTime``: ECR "refreshes the last image pull timestamp at least once every 24
  hours" on pulls. The double records every pull at the double's clock: each image a BatchGetImage
  returns (ECR does the same for the API call alone, containers-roadmap#2390) and each ``/v2/``
  manifest GET (not HEAD, which only checks that a manifest exists). Pull-time update exclusions
  (RegisterPullTimeUpdateExclusion) are not modelled. ``EcrDouble.set_last_pulled`` seeds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.testing import request_rules as rules
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.store import RepoImages, StoredImage, images_of

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

ACTIVE, ARCHIVED, ACTIVATING = "ACTIVE", "ARCHIVED", "ACTIVATING"
#: DescribeImages' and ListImages' ``filter.imageStatus`` values: which statuses each keeps.
STATUS_FILTERS: dict[str, frozenset[str]] = {
    ACTIVE: frozenset({ACTIVE}),
    ARCHIVED: frozenset({ARCHIVED}),
    ACTIVATING: frozenset({ACTIVATING}),
    "ANY": frozenset({ACTIVE, ARCHIVED, ACTIVATING}),
}
#: UpdateImageStorageClass ``targetStorageClass`` values, and the statuses each may start from.
TRANSITIONS: dict[str, frozenset[str]] = {"ARCHIVE": frozenset({ACTIVE}), "STANDARD": frozenset({ARCHIVED})}


def status_filter(value: Any, where: str = "filter.imageStatus") -> frozenset[str]:
    """The statuses a listing keeps: ACTIVE only when the filter names none."""
    if value is None:
        return STATUS_FILTERS[ACTIVE]
    if value not in STATUS_FILTERS:
        raise _not_one_of(where, STATUS_FILTERS)
    return STATUS_FILTERS[value]


def keep_statuses(
    store: RepoImages, images: list[StoredImage], statuses: frozenset[str], now: float
) -> list[StoredImage]:
    """The images (of ``store``) whose status at ``now`` is one of ``statuses``."""
    if statuses == STATUS_FILTERS["ANY"]:
        return images
    if not store.archived:
        # Nothing of the repository was ever archived: every image is ACTIVE (no walk over
        # 100,000 images for each page).
        return images if ACTIVE in statuses else []
    return [image for image in images if image.status_at(now) in statuses]


def pullable(image: StoredImage, now: float) -> bool:
    """Whether a pull of the image succeeds: only ACTIVE images can be pulled."""
    return image.status_at(now) == ACTIVE


def record_pull(image: StoredImage, now: float) -> None:
    """A pull of the image: ECR records its time (held under the double's lock)."""
    image.last_pulled = now


def archive(store: RepoImages, image: StoredImage, now: float) -> None:
    """Move the image to the archive (ARCHIVED from now)."""
    image.last_activated_at = image.activated_at(now)
    image.archived_at = image.last_archived_at = now
    image.restore_ends_at = None
    store.archived.add(image.digest)


def restore(image: StoredImage, now: float, seconds: float) -> None:
    """Start restoring an archived image: ACTIVATING for ``seconds``, then ACTIVE."""
    image.restore_ends_at = now + seconds


def restore_now(store: RepoImages, image: StoredImage, now: float) -> None:
    """Restore at once, as pushing an archived image again does."""
    image.last_activated_at = now
    image.archived_at = image.restore_ends_at = None
    store.archived.discard(image.digest)


def set_status(store: RepoImages, image: StoredImage, status: str, now: float, activation_seconds: float) -> None:
    """Put the image in ``status`` directly (a seed: no transition rule applies)."""
    if status == ACTIVE:
        if image.status_at(now) != ACTIVE:
            restore_now(store, image, now)
    elif status == ARCHIVED:
        archive(store, image, now)
    elif status == ACTIVATING:
        if image.status_at(now) == ACTIVE:
            archive(store, image, now)
        restore(image, now, activation_seconds)
    else:
        raise ValueError(f"status must be one of {ACTIVE}, {ARCHIVED}, {ACTIVATING}, not {status!r}")


def _not_one_of(where: str, allowed: dict[str, Any]) -> EcrError:
    return EcrError(
        "InvalidParameterException",
        f"Invalid parameter at '{where}' failed to satisfy constraint: "
        f"'Member must satisfy enum value set: [{', '.join(allowed)}]'",
    )


class ImageStatusHandlers(ECRResponse):
    """UpdateImageStorageClass, installed on ``ECRResponse`` while a double is active."""

    double: EcrDouble

    def update_image_storage_class(self) -> ActionResult:
        repository = self.ecr_backend._get_repository(self._get_param("repositoryName"), self._get_param("registryId"))
        target = self._get_param("targetStorageClass")
        if target not in TRANSITIONS:
            raise _not_one_of("targetStorageClass", TRANSITIONS)
        image_id = self._get_param("imageId") or {}
        with self.double._lock:
            store = images_of(repository)
            image, failure = rules.find_image(store, image_id)
            if failure:
                raise rules.image_not_found(repository, image_id)
            assert image is not None
            now = self.double.clock()
            if image.status_at(now) not in TRANSITIONS[target]:
                raise EcrError(
                    "ImageStorageClassUpdateNotSupportedException",
                    f"The requested image storage class update is not supported: image {image.digest} is "
                    f"{image.status_at(now)} and cannot move to storage class {target}",
                )
            if target == "ARCHIVE":
                archive(store, image, now)
            else:
                restore(image, now, self.double.activation_seconds)
            status = image.status_at(now)
        return ActionResult(
            {
                "registryId": repository.registry_id,
                "repositoryName": repository.name,
                "imageId": {
                    "imageDigest": image.digest,
                    **({"imageTag": image_id["imageTag"]} if "imageTag" in image_id else {}),
                },
                "imageStatus": status,
            }
        )
