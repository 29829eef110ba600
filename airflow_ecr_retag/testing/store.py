"""The double's registry state: each repository's images, indexed by digest and by tag.

moto keeps repositories, blobs and layer uploads; the double keeps the images itself, on moto's
``Repository`` object, so that deleting a repository drops its images with it. moto's own code
still reads ``repository.images``, so that list is kept in step with the index (and
:class:`StoredImage` answers to the names moto uses).

Nothing here locks: every caller holds the double's lock (``EcrDouble._lock``) around a read or
a change, so a request and a direct seed never see half an update.
"""

from __future__ import annotations

import calendar
import functools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_ecr_retag.core.manifests import INDEX_MEDIA_TYPES, manifest_digest

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.blob_store import Blob


@dataclass
class StoredImage:
    """An image in a repository of the double."""

    digest: str
    manifest: str
    media_type: str
    pushed_at: float
    tags: list[str] = field(default_factory=list)
    #: Its vulnerabilities and latest scan (``scan_rules.ImageScan``), once it has either.
    scan: Any = None
    # Storage class and pulls (the rules are image_status.py's). In the archive since
    # ``archived_at``; a restore asked for ends at ``restore_ends_at`` (ACTIVATING until then).
    archived_at: float | None = None
    restore_ends_at: float | None = None
    last_activated_at: float | None = None
    last_archived_at: float | None = None
    #: When ECR last recorded a pull (``lastRecordedPullTime``); None: never pulled.
    last_pulled: float | None = None

    # The names moto's own repository code uses.
    @property
    def image_tags(self) -> list[str]:
        return self.tags

    def get_image_digest(self) -> str:
        return self.digest

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        """The manifest, parsed (once: the manifest never changes)."""
        return json.loads(self.manifest)

    @property
    def children(self) -> list[str]:
        if self.media_type not in INDEX_MEDIA_TYPES:
            return []
        return [entry["digest"] for entry in self.document.get("manifests", [])]

    @property
    def blob_descriptors(self) -> list[dict[str, Any]]:
        """The config and layer descriptors of a single-platform manifest (none for an index)."""
        if self.media_type in INDEX_MEDIA_TYPES:
            return []
        config = self.document.get("config")
        return [d for d in [config, *self.document.get("layers", [])] if isinstance(d, dict) and "digest" in d]

    @property
    def subject(self) -> str | None:
        """The digest of the image this one refers to (OCI 1.1 ``subject``), if any."""
        subject = self.document.get("subject")
        return subject.get("digest") if isinstance(subject, dict) else None

    @functools.cached_property
    def size(self) -> int:
        """The manifest and its blobs, in bytes (once: the manifest never changes)."""
        return len(self.manifest) + sum(part.get("size", 0) for part in self.blob_descriptors)

    def status_at(self, now: float) -> str:
        """``imageStatus`` at ``now``: ACTIVE, ARCHIVED, or ACTIVATING while a restore runs."""
        if self.archived_at is None:
            return "ACTIVE"
        if self.restore_ends_at is None:
            return "ARCHIVED"
        return "ACTIVATING" if now < self.restore_ends_at else "ACTIVE"

    def activated_at(self, now: float) -> float | None:
        """``lastActivatedAt`` at ``now``: when the last restore finished (None if none has)."""
        if self.restore_ends_at is not None and now >= self.restore_ends_at:
            return self.restore_ends_at
        return self.last_activated_at


class RepoImages:
    """The images of one repository, indexed by digest and by tag."""

    def __init__(self) -> None:
        self.by_digest: dict[str, StoredImage] = {}
        self.by_tag: dict[str, StoredImage] = {}
        #: The digests of images ever archived and not pushed again (their status needs the clock).
        self.archived: set[str] = set()

    def referenced_by_index(self, digest: str) -> bool:
        """Whether an image index in this repository lists ``digest`` (ECR then refuses to delete it)."""
        indexes = (image for image in self.by_digest.values() if image.media_type in INDEX_MEDIA_TYPES)
        return any(digest in index.children for index in indexes)

    def referenced_blobs(self) -> set[str]:
        """Every blob an image of this repository references (config or layer)."""
        return {d["digest"] for image in self.by_digest.values() for d in image.blob_descriptors}

    def blob_media_types(self) -> dict[str, str]:
        """Each referenced blob's media type, as the manifests describe it."""
        return {
            d["digest"]: d.get("mediaType", "")
            for image in self.by_digest.values()
            for d in image.blob_descriptors
            if d.get("mediaType")
        }

    def referrers_of(self, digest: str) -> list[StoredImage]:
        """The images whose ``subject`` is ``digest``, oldest push first."""
        found = [image for image in self.by_digest.values() if image.subject == digest]
        return sorted(found, key=lambda image: (image.pushed_at, image.digest))


def images_of(repository: Any) -> RepoImages:
    """The index of a moto repository's images, created empty on first use."""
    store = getattr(repository, "_double_images", None)
    if store is None:
        store = repository._double_images = RepoImages()
        # moto's own code (DeleteRepository's "not empty" check, for one) reads this list: from now on
        # it holds exactly the index's images.
        repository.images = []
    return store


def record_blob(repository: Any, blob: Blob) -> None:
    """Make a blob present in the repository, as a completed layer upload would (moto keeps each
    blob's size by digest; the bytes are in the double's blob store)."""
    repository.layers[blob.digest] = blob.size


def store_image(repository: Any, manifest: str, media_type: str, pushed_at: float | None) -> StoredImage:
    """The image with this manifest, stored now (pushed now unless ``pushed_at``) unless already there."""
    store = images_of(repository)
    digest = manifest_digest(manifest)
    image = store.by_digest.get(digest)
    if image is None:
        image = StoredImage(digest, manifest, media_type, pushed_at if pushed_at is not None else time.time())
        store.by_digest[digest] = image
        repository.images.append(image)
    return image


def move_tag(repository: Any, image: StoredImage, tag: str) -> None:
    """Point ``tag`` at ``image``, taking it off the image it was on."""
    store = images_of(repository)
    previous = store.by_tag.get(tag)
    if previous is image:
        return
    if previous is not None:
        # ECR keeps the previous image, untagged if this was its last tag.
        previous.tags.remove(tag)
    image.tags.append(tag)
    store.by_tag[tag] = image


def untag(repository: Any, tag: str) -> StoredImage:
    """Take ``tag`` off its image and return that image, which stays even if it is now untagged.

    Raises ``KeyError`` when no image has the tag.
    """
    image = images_of(repository).by_tag.pop(tag)
    image.tags.remove(tag)
    return image


def delete_image(repository: Any, image: StoredImage) -> None:
    """Remove ``image`` and every tag on it."""
    store = images_of(repository)
    for tag in image.tags:
        store.by_tag.pop(tag, None)
    del store.by_digest[image.digest]
    store.archived.discard(image.digest)
    repository.images.remove(image)


def ids_of(image: StoredImage) -> list[dict[str, str]]:
    """The image's ids as ListImages and BatchDeleteImage give them: one per tag, or the bare digest."""
    return [{"imageDigest": image.digest, "imageTag": t} for t in image.tags] or [{"imageDigest": image.digest}]


def _when(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


def describe(repository: Any, image: StoredImage, now: float | None = None) -> dict[str, Any]:
    """The image as one entry of DescribeImages' ``imageDetails``, its status as of ``now``
    (the double's clock; ``time.time()`` when not given)."""
    now = time.time() if now is None else now
    detail: dict[str, Any] = {
        "registryId": repository.registry_id,
        "repositoryName": repository.name,
        "imageDigest": image.digest,
        "imageSizeInBytes": image.size,
        "imagePushedAt": datetime.fromtimestamp(image.pushed_at, tz=UTC),
        "imageManifestMediaType": image.media_type,
        "imageStatus": image.status_at(now),
    }
    times = {
        "lastRecordedPullTime": _when(image.last_pulled),
        "lastArchivedAt": _when(image.last_archived_at),
        "lastActivatedAt": _when(image.activated_at(now)),
    }
    detail.update({name: value for name, value in times.items() if value is not None})
    if image.tags:
        detail["imageTags"] = list(image.tags)
    config = image.document.get("config")
    if config:
        detail["artifactMediaType"] = config.get("mediaType")
    return detail


def json_answer(document: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A response document as moto's serialiser writes it for ECR's JSON protocol (timestamps as
    epoch seconds, to the millisecond), as a moto response (body, headers), without the walk of
    the botocore shape per member that costs about a millisecond per ImageDetail (a page of 1,000
    would take a second). Bytes, so moto's XML request-id rewrite skips the megabyte of a page."""

    def timestamp(value: Any) -> float:
        if not isinstance(value, datetime):
            raise TypeError(f"{type(value).__name__} is not JSON serialisable")
        return calendar.timegm(value.utctimetuple()) + (value.microsecond // 1000) / 1000.0

    body = json.dumps(document, default=timestamp, separators=(",", ":")).encode()
    return body, {"status": 200, "Content-Type": "application/x-amz-json-1.1"}
