"""The ECR image operations, one handler each, as ECR performs them.

:class:`ImageOperationHandlers` is never instantiated: while a double is active its functions
are installed on moto's ``ECRResponse`` (:mod:`airflow_ecr_retag.testing.moto_install`), so
moto still parses each request and serialises the answer from the botocore model, and the
double decides what the answer is. Each handler reads its parameters, applies ECR's rules
(:mod:`airflow_ecr_retag.testing.request_rules`) in ECR's order, and reads or changes the
store (:mod:`airflow_ecr_retag.testing.store`) with the double's lock held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.manifests import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, manifest_digest
from airflow_ecr_retag.testing import image_status
from airflow_ecr_retag.testing import request_rules as rules
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.scanning import scan_on_push
from airflow_ecr_retag.testing.store import (
    RepoImages,
    StoredImage,
    delete_image,
    describe,
    ids_of,
    images_of,
    json_answer,
    move_tag,
    store_image,
    untag,
)

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble


class ImageOperationHandlers(ECRResponse):
    """moto's ECR responses with the image operations replaced. Every function defined here is
    installed on ``ECRResponse`` while a double is active."""

    #: The active double, set on ``ECRResponse`` by the installation.
    double: EcrDouble

    def _repo(self) -> Any:
        """The repository the request names (moto raises RepositoryNotFoundException for us)."""
        return self.ecr_backend._get_repository(self._get_param("repositoryName"), self._get_param("registryId"))

    def _listing(self) -> tuple[Any, list[StoredImage]]:
        """The repository and its images kept by ``filter.tagStatus`` and ``filter.imageStatus``
        (a snapshot, for paging)."""
        repository = self._repo()
        status = (self._get_param("filter") or {}).get("tagStatus", "ANY")
        statuses = image_status.status_filter((self._get_param("filter") or {}).get("imageStatus"))
        with self.double._lock:
            store = images_of(repository)
            images = image_status.keep_statuses(store, list(store.by_digest.values()), statuses, self.double.clock())
        if status == "TAGGED":
            images = [i for i in images if i.tags]
        elif status == "UNTAGGED":
            images = [i for i in images if not i.tags]
        return repository, images

    def put_image(self) -> ActionResult:
        """PutImage: see :func:`put_image`."""
        repository = self._repo()
        manifest: str = self._get_param("imageManifest")
        tag = self._get_param("imageTag")
        media_type = self._get_param("imageManifestMediaType")
        image = put_image(self.double, repository, manifest, media_type, tag, self._get_param("imageDigest"))
        image_id = {"imageDigest": image.digest, **({"imageTag": tag} if tag is not None else {})}
        return ActionResult({"image": _image_response(repository, image_id, manifest, image.media_type)})

    def batch_get_image(self) -> ActionResult:
        """BatchGetImage: each image id answered on its own, translated to an accepted media type."""
        repository = self._repo()
        image_ids = rules.check_id_count(self._get_param("imageIds"))
        accepted = self._get_param("acceptedMediaTypes") or list(MANIFEST_MEDIA_TYPES)
        images, failures = [], []
        with self.double._lock:
            store = images_of(repository)
            for image_id in image_ids:
                image, failure = _fetched(repository, store, image_id, accepted, self.double.clock())
                if failure:
                    failures.append(failure)
                else:
                    images.append(image)
        return ActionResult({"images": images, "failures": failures})

    def batch_delete_image(self) -> tuple[bytes, dict[str, Any]]:
        """BatchDeleteImage: each image id answered on its own; a tag goes alone unless it is the last."""
        repository = self._repo()
        image_ids = rules.check_id_count(self._get_param("imageIds"))
        deleted, failures = [], []
        with self.double._lock:
            store = images_of(repository)
            for image_id in image_ids:
                gone, failure = _delete(repository, store, image_id)
                deleted.extend(gone)
                if failure:
                    failures.append(failure)
        return json_answer({"imageIds": deleted, "failures": failures})

    def describe_images(self) -> tuple[bytes, dict[str, Any]]:
        """DescribeImages: the named images (all must exist), or a page of the filtered listing
        (serialised by :func:`~airflow_ecr_retag.testing.store.json_answer`: pages of 1,000)."""
        image_ids = self._get_param("imageIds")
        if image_ids is not None:
            if self._get_param("nextToken") is not None or self._get_param("maxResults") is not None:
                raise EcrError(
                    "InvalidParameterException",
                    "Invalid parameter: imageIds cannot be combined with nextToken or maxResults",
                )
            repository = self._repo()
            with self.double._lock:
                details = _details_for_ids(repository, images_of(repository), image_ids, self.double.clock())
            return json_answer({"imageDetails": details})
        repository, images = self._listing()
        page, token = rules.paginate(images, self._get_param("maxResults"), self._get_param("nextToken"))
        now = self.double.clock()
        details = [describe(repository, i, now) for i in page]
        return json_answer({"imageDetails": details, **({"nextToken": token} if token else {})})

    def list_images(self) -> ActionResult:
        """ListImages: a page of image ids, one per tag (see :func:`~airflow_ecr_retag.testing.store.ids_of`)."""
        _, images = self._listing()
        ids = [image_id for image in images for image_id in ids_of(image)]
        page, token = rules.paginate(ids, self._get_param("maxResults"), self._get_param("nextToken"))
        return ActionResult({"imageIds": page, **({"nextToken": token} if token else {})})


def put_image(
    double: EcrDouble, repository: Any, manifest: str, declared_type: str | None, tag: str | None, digest: str | None
) -> StoredImage:
    """Store a manifest (and move ``tag`` to it) as PutImage does, for the ECR API and ``/v2/`` alike:
    the parameters, then the manifest itself, then what it references, then the tag, in ECR's
    order; only then is anything stored. Raises :class:`EcrError` with ECR's code."""
    if tag is not None:
        rules.check_tag(tag, "imageTag")
    document = rules.parse_manifest(manifest)
    media_type = rules.resolve_media_type(document, declared_type)
    digest = rules.check_digest(manifest, digest)
    with double._lock:
        store = images_of(repository)
        if media_type in INDEX_MEDIA_TYPES:
            rules.check_children_present(store, document)
        else:
            rules.check_layers_present(repository, document)
        holder = store.by_tag.get(tag) if tag is not None else None
        rules.check_tag_overwritable(repository, tag, holder)
        existing = store.by_digest.get(digest)
        # Pushing an archived image again restores it: a change, never "already exists".
        archived = existing is not None and not image_status.pullable(existing, double.clock())
        rules.check_not_already_pushed(repository, digest, tag, None if archived else existing, holder)
        image = store_image(repository, manifest, media_type, None)
        if archived:
            image_status.restore_now(store, image, double.clock())
        if tag is not None:
            move_tag(repository, image, tag)
        scan_on_push(double, repository, image)
    return image


def _image_response(repository: Any, image_id: dict, manifest: str, media_type: str) -> dict[str, Any]:
    """An image as PutImage and BatchGetImage return it."""
    return {
        "registryId": repository.registry_id,
        "repositoryName": repository.name,
        "imageId": image_id,
        "imageManifest": manifest,
        "imageManifestMediaType": media_type,
    }


def _fetched(
    repository: Any, store: RepoImages, image_id: dict, accepted: list[str], now: float
) -> tuple[dict | None, dict | None]:
    """BatchGetImage for one image id: the image as served (a pull, recorded), or the failure reported for it."""
    image, failure = rules.find_image(store, image_id)
    if failure:
        return None, failure
    assert image is not None
    if not image_status.pullable(image, now):
        return None, rules.failure(image_id, "ImageNotFound", f"Requested image is {image.status_at(now)}")
    served = rules.manifest_as_accepted(image, accepted, by_digest="imageDigest" in image_id)
    if served is None:
        reason = f"Requested image's manifest media type '{image.media_type}' is not in acceptedMediaTypes"
        return None, rules.failure(image_id, "ImageNotFound", reason)
    manifest, media_type = served
    image_status.record_pull(image, now)
    # The digest of the bytes served: a translated manifest has a new one.
    echoed_tag = {"imageTag": image_id["imageTag"]} if "imageTag" in image_id else {}
    echoed = {"imageDigest": manifest_digest(manifest), **echoed_tag}
    return _image_response(repository, echoed, manifest, media_type), None


def _delete(repository: Any, store: RepoImages, image_id: dict) -> tuple[list[dict[str, str]], dict | None]:
    """BatchDeleteImage for one image id: the ids deleted, or the failure reported for it."""
    image, failure = rules.find_image(store, image_id)
    if failure:
        return [], failure
    assert image is not None
    by_tag_only = "imageDigest" not in image_id
    if by_tag_only and len(image.tags) > 1:
        # Only the tag goes: the image keeps its other tags.
        untag(repository, image_id["imageTag"])
        return [{"imageDigest": image.digest, "imageTag": image_id["imageTag"]}], None
    # Deleting by digest, by tag and digest, or the image's last tag: the image goes.
    if store.referenced_by_index(image.digest):
        reason = f"Requested image {image.digest} is referenced by an image index"
        return [], rules.failure(image_id, "ImageReferencedByManifestList", reason)
    deleted = [{"imageDigest": image.digest, "imageTag": image_id["imageTag"]}] if by_tag_only else ids_of(image)
    delete_image(repository, image)
    return deleted, None


def _details_for_ids(repository: Any, store: RepoImages, image_ids: list, now: float) -> list[dict[str, Any]]:
    """DescribeImages by image ids: each image once, however many ids name it, whatever its
    status; an id naming nothing fails the whole call, as ECR does."""
    details: list[dict[str, Any]] = []
    for image_id in rules.check_id_count(image_ids):
        image, failure = rules.find_image(store, image_id)
        if failure:
            raise rules.image_not_found(repository, image_id)
        if image is not None and all(d["imageDigest"] != image.digest for d in details):
            details.append(describe(repository, image, now))
    return details
