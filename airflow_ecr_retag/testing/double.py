"""A faithful Amazon ECR double built on moto.

moto provides the plumbing: request parsing and response serialisation from the botocore
model, repositories, layer uploads, credentials, the HTTP server. This module replaces the
image operations (PutImage, BatchGetImage, BatchDeleteImage, DescribeImages, ListImages)
with implementations that behave like ECR where this package depends on it, and adds a
per-operation call counter, a request log, fault injection and direct seeding.

The README's "Testing your own DAGs with the ECR double" lists the ECR behaviours reproduced
here and where plain moto differs; each has a pinning test in ``tests/test_double.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from botocore.exceptions import ConnectionClosedError
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ecr.models import ecr_backends
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.limits import DEFAULT_MAX_RESULTS, MAX_IMAGE_IDS, MAX_MANIFEST_CHARS, MAX_RESULTS, MAX_TAG_CHARS
from airflow_ecr_retag.core.manifests import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    PUT_IMAGE_MEDIA_TYPES,
    manifest_digest,
)
from airflow_ecr_retag.testing.images import BuiltImage, build_image

DEFAULT_REGION = "us-east-1"

#: Operations that change registry state; read-only callers must make none of these.
WRITE_OPERATIONS = frozenset(
    {"PutImage", "BatchDeleteImage", "InitiateLayerUpload", "UploadLayerPart", "CompleteLayerUpload",
     "CreateRepository", "DeleteRepository", "PutImageTagMutability"}
)

_DIGEST_RE = re.compile(r"^[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,299}$")
# ECR converts between these two single-platform formats when the stored one is not accepted.
_TRANSLATION = {
    DOCKER_MANIFEST: (OCI_MANIFEST, {DOCKER_CONFIG: OCI_CONFIG, DOCKER_LAYER: OCI_LAYER}),
    OCI_MANIFEST: (DOCKER_MANIFEST, {OCI_CONFIG: DOCKER_CONFIG, OCI_LAYER: DOCKER_LAYER}),
}


class EcrError(ServiceException):
    """An ECR error response, serialised by moto from the botocore model."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)


class Fault(str, Enum):
    """Kinds of injected failure."""

    #: ``ThrottlingException`` (HTTP 400): botocore retries it as throttling.
    THROTTLE = "throttle"
    #: ``ServerException`` (HTTP 500): botocore retries it as a transient error.
    SERVER_ERROR = "server_error"
    #: The connection is closed with no response: botocore retries it.
    DROPPED_CONNECTION = "dropped_connection"
    #: ``AccessDeniedException``: not retryable.
    ACCESS_DENIED = "access_denied"


_FAULT_ERRORS = {
    Fault.THROTTLE: (400, "ThrottlingException", "Rate exceeded"),
    Fault.SERVER_ERROR: (500, "ServerException", "Injected server error"),
    Fault.ACCESS_DENIED: (
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/test is not authorized to perform this action",
    ),
}


@dataclass
class _Injection:
    operation: str
    action: Fault | Callable[[EcrDouble], None]
    first_call: int
    times: int | None
    seen: int = 0
    fired: int = 0

    def due(self) -> bool:
        self.seen += 1
        if self.seen < self.first_call or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class RecordedCall:
    """One ECR request as the double received it (retries are separate calls).

    ``user_agent`` tells who called: the Amazon provider's hooks add ``Airflow/<version>`` and
    ``Caller/<operator class>``.
    """

    operation: str
    params: dict[str, Any]
    user_agent: str = ""
    #: When the double received it (``time.time()``).
    at: float = 0.0


@dataclass
class StoredImage:
    """An image in a repository of the double."""

    digest: str
    manifest: str
    media_type: str
    pushed_at: float
    tags: list[str] = field(default_factory=list)

    # The names moto's own repository code uses.
    @property
    def image_tags(self) -> list[str]:
        return self.tags

    def get_image_digest(self) -> str:
        return self.digest

    @property
    def children(self) -> list[str]:
        if self.media_type not in INDEX_MEDIA_TYPES:
            return []
        return [entry["digest"] for entry in json.loads(self.manifest).get("manifests", [])]

    @property
    def size(self) -> int:
        document = json.loads(self.manifest)
        return len(self.manifest) + sum(
            part.get("size", 0) for part in [document.get("config", {}), *document.get("layers", [])]
        )


class _RepoImages:
    """The images of one repository, indexed by digest and by tag."""

    def __init__(self) -> None:
        self.by_digest: dict[str, StoredImage] = {}
        self.by_tag: dict[str, StoredImage] = {}

    def referenced_by_index(self, digest: str) -> bool:
        return any(digest in image.children for image in self.by_digest.values() if image.media_type in INDEX_MEDIA_TYPES)


def _now() -> float:
    return time.time()


def _wildcard(pattern: str) -> re.Pattern[str]:
    # ECR exclusion filters: '*' matches any run of characters; nothing else is special.
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")


def _tag_is_immutable(repository: Any, tag: str) -> bool:
    mode = str(getattr(repository.image_tag_mutability, "value", repository.image_tag_mutability))
    filters = [f["filter"] for f in (repository.image_tag_mutability_exclusion_filters or []) if f.get("filterType", "WILDCARD") == "WILDCARD"]
    excluded = any(_wildcard(f).match(tag) for f in filters)
    if mode == "IMMUTABLE":
        return True
    if mode == "IMMUTABLE_WITH_EXCLUSION":
        return not excluded
    if mode == "MUTABLE_WITH_EXCLUSION":
        return excluded
    return False


def _check_tag(tag: Any, where: str) -> None:
    if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_CHARS:
        raise EcrError(
            "InvalidParameterException",
            f"Invalid parameter at '{where}' failed to satisfy constraint: "
            f"'Member must have length less than or equal to {MAX_TAG_CHARS}'",
        )


def _check_id_count(image_ids: list | None, where: str = "imageIds") -> list:
    image_ids = image_ids or []
    if len(image_ids) > MAX_IMAGE_IDS:
        raise EcrError(
            "InvalidParameterException",
            f"Invalid parameter at '{where}' failed to satisfy constraint: "
            f"'Member must have length less than or equal to {MAX_IMAGE_IDS}'",
        )
    for image_id in image_ids:
        if "imageTag" in image_id:
            _check_tag(image_id["imageTag"], f"{where}.imageTag")
    return image_ids


def _paginate(items: list, max_results: Any, next_token: Any) -> tuple[list, str | None]:
    if max_results is None:
        max_results = DEFAULT_MAX_RESULTS
    if not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS:
        raise EcrError(
            "InvalidParameterException",
            "Invalid parameter at 'maxResults' failed to satisfy constraint: "
            f"'Member must have value less than or equal to {MAX_RESULTS}'",
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


def _translate(image: StoredImage) -> tuple[str, str]:
    target, renames = _TRANSLATION[image.media_type]
    document = json.loads(image.manifest)
    document["mediaType"] = target
    document["config"]["mediaType"] = renames.get(document["config"]["mediaType"], document["config"]["mediaType"])
    for layer in document.get("layers", []):
        layer["mediaType"] = renames.get(layer["mediaType"], layer["mediaType"])
    return json.dumps(document, separators=(",", ":")), target


def _failure(image_id: dict, code: str, reason: str) -> dict:
    return {"imageId": dict(image_id), "failureCode": code, "failureReason": reason}


class EcrDouble:
    """The ECR double: use as a context manager, in-process or as a local HTTP server.

    :param server: also serve the double over HTTP on 127.0.0.1 with a free port; clients in
        other processes reach it through ``AWS_ENDPOINT_URL_ECR`` (:attr:`endpoint_url`).
    :param region_name: the default region for :meth:`client` and the helpers.

    .. code-block:: python

        with EcrDouble() as ecr:
            ecr.create_repository("team/app")
            digest = ecr.push("team/app", build_image("oci-index"), tags=["sha-1"])
            ...  # code under test, using boto3 as usual
            assert ecr.tags("team/app") == {"sha-1": digest}
            assert ecr.calls["PutImage"] == 0
    """

    #: Callables given every :class:`RecordedCall` of every double in the process (for suite-wide checks).
    observers: list[Callable[[RecordedCall], None]] = []

    def __init__(self, *, server: bool = False, region_name: str = DEFAULT_REGION):
        self.region_name = region_name
        self.serve = server
        self.calls: Counter[str] = Counter()
        self.requests: list[RecordedCall] = []
        self.endpoint_url: str | None = None
        self._injections: list[_Injection] = []
        self._lock = threading.RLock()
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> EcrDouble:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(mock_aws())
            stack.enter_context(_installed(self))
            if self.serve:
                self.endpoint_url = stack.enter_context(_serving(self))
            self._stack = stack
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = None
        self.endpoint_url = None

    # ------------------------------------------------------------------ clients
    def client(self, region_name: str | None = None, **kwargs: Any) -> Any:
        """A boto3 ECR client bound to the double (over HTTP when serving)."""
        import boto3

        if self.endpoint_url and "endpoint_url" not in kwargs:
            kwargs["endpoint_url"] = self.endpoint_url
        return boto3.client("ecr", region_name=region_name or self.region_name, **kwargs)

    def environ(self) -> dict[str, str]:
        """Environment variables that point another process at this double's server."""
        if not self.endpoint_url:
            raise RuntimeError("the double is not serving: use EcrDouble(server=True)")
        return {
            "AWS_ENDPOINT_URL_ECR": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region_name,
        }

    # ------------------------------------------------------------------ counter
    @property
    def write_calls(self) -> int:
        """How many calls changed or could have changed registry state."""
        return sum(n for op, n in self.calls.items() if op in WRITE_OPERATIONS)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def reset_calls(self) -> None:
        """Forget counted calls and recorded requests (seeding through the API counts too)."""
        with self._lock:
            self.calls.clear()
            self.requests.clear()

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        return [call.params for call in self.requests if call.operation == operation]

    # ------------------------------------------------------------------ faults
    def inject(self, operation: str, fault: Fault | str, *, call: int = 1, times: int | None = 1) -> None:
        """Make calls of ``operation`` fail.

        :param operation: the ECR operation name, for example ``"PutImage"``, or ``"*"``.
        :param fault: a :class:`Fault` (or its value).
        :param call: the first failing call, counted from now (1 = the next one).
        :param times: how many calls fail from then on; ``None`` makes every later call fail.
        """
        with self._lock:
            self._injections.append(_Injection(operation, Fault(fault), call, times))

    def before_call(self, operation: str, action: Callable[[EcrDouble], None], *, call: int = 1, times: int | None = 1) -> None:
        """Run ``action(double)`` just before the Nth call of ``operation`` is served.

        This is how tests stage a concurrent actor: a tag moved by someone else between a
        task's read and its write.
        """
        with self._lock:
            self._injections.append(_Injection(operation, action, call, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._injections.clear()

    def _on_request(self, handler: ECRResponse) -> Any:
        operation = handler._get_action()
        try:
            params = json.loads(handler.body) if handler.body else {}
        except ValueError:
            params = {}
        recorded = RecordedCall(operation, params, str(handler.headers.get("User-Agent", "")), time.time())
        with self._lock:
            self.calls[operation] += 1
            self.requests.append(recorded)
            due = [i for i in self._injections if i.operation in (operation, "*") and i.due()]
        for observer in EcrDouble.observers:
            observer(recorded)
        for injection in due:
            if callable(injection.action) and not isinstance(injection.action, Fault):
                injection.action(self)
            elif injection.action is Fault.DROPPED_CONNECTION:
                raise ConnectionClosedError(endpoint_url=handler.uri or "ecr")
            else:
                status, code, message = _FAULT_ERRORS[injection.action]
                body = json.dumps({"__type": code, "message": message})
                return status, {"status": status, "Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}, body
        return None

    # ------------------------------------------------------------------ state
    def _repository(self, name: str, registry_id: str | None = None, region_name: str | None = None, account_id: str = DEFAULT_ACCOUNT_ID) -> Any:
        backend = ecr_backends[account_id][region_name or self.region_name]
        return backend._get_repository(name, registry_id)

    def create_repository(self, name: str, *, mutability: str = "MUTABLE", exclusion_filters: Iterable[str] = (), registry_id: str | None = None, region_name: str | None = None) -> None:
        """Create a repository directly (not counted). Exclusion filters are WILDCARD patterns."""
        backend = ecr_backends[DEFAULT_ACCOUNT_ID][region_name or self.region_name]
        filters = [{"filterType": "WILDCARD", "filter": f} for f in exclusion_filters]
        backend.create_repository(
            repository_name=name, registry_id=registry_id, encryption_config=None, image_scan_config=None,
            image_tag_mutability=mutability, image_tag_mutability_exclusion_filters=filters or None, tags=[],
        )

    def push(self, repository_name: str, image: BuiltImage, tags: Iterable[str] = (), *, pushed_at: datetime | float | None = None, registry_id: str | None = None, region_name: str | None = None) -> str:
        """Store an image directly, with its blobs and children, as a push would (not counted).

        Tags already on other images move here; mutability is not checked (a seed, not a
        PutImage). Returns the digest.
        """
        repository = self._repository(repository_name, registry_id, region_name)
        if isinstance(pushed_at, datetime):
            pushed_at = pushed_at.timestamp()
        with self._lock:
            for child in image.children:
                self.push(repository_name, child, pushed_at=pushed_at, registry_id=registry_id, region_name=region_name)
            for digest, data in image.blobs.items():
                repository.layers[digest] = len(data)
            stored = _store(repository, image.manifest, image.media_type, pushed_at)
            for tag in tags:
                _move_tag(repository, stored, tag)
        return stored.digest

    def images(self, repository_name: str, **where: Any) -> dict[str, StoredImage]:
        """The repository's images by digest (a snapshot)."""
        with self._lock:
            return dict(_images(self._repository(repository_name, **where)).by_digest)

    def tags(self, repository_name: str, **where: Any) -> dict[str, str]:
        """The repository's tags, each with the digest it points at (a snapshot)."""
        with self._lock:
            return {tag: image.digest for tag, image in _images(self._repository(repository_name, **where)).by_tag.items()}

    def set_pushed_at(self, repository_name: str, digest: str, pushed_at: datetime | float, **where: Any) -> None:
        if isinstance(pushed_at, datetime):
            pushed_at = pushed_at.timestamp()
        with self._lock:
            _images(self._repository(repository_name, **where)).by_digest[digest].pushed_at = pushed_at

    def delete_tag(self, repository_name: str, tag: str, **where: Any) -> None:
        """Remove ``tag`` directly, as another actor's BatchDeleteImage by tag would: the image
        goes too when it was its last tag (not counted)."""
        with self._lock:
            repository = self._repository(repository_name, **where)
            image = _images(repository).by_tag.pop(tag)
            image.tags.remove(tag)
            if not image.tags:
                _delete_image(repository, image)

    def move_tag(self, repository_name: str, tag: str, digest: str, **where: Any) -> None:
        """Point ``tag`` at ``digest`` directly, as another actor's push would (not counted)."""
        with self._lock:
            repository = self._repository(repository_name, **where)
            _move_tag(repository, _images(repository).by_digest[digest], tag)


# ---------------------------------------------------------------------- registry logic
def _images(repository: Any) -> _RepoImages:
    # Kept on moto's Repository object, so deleting the repository drops its images.
    store = getattr(repository, "_double_images", None)
    if store is None:
        store = repository._double_images = _RepoImages()
        repository.images = []
    return store


def _store(repository: Any, manifest: str, media_type: str, pushed_at: float | None) -> StoredImage:
    store = _images(repository)
    digest = manifest_digest(manifest)
    image = store.by_digest.get(digest)
    if image is None:
        image = StoredImage(digest, manifest, media_type, pushed_at if pushed_at is not None else _now())
        store.by_digest[digest] = image
        repository.images.append(image)
    return image


def _move_tag(repository: Any, image: StoredImage, tag: str) -> None:
    store = _images(repository)
    previous = store.by_tag.get(tag)
    if previous is image:
        return
    if previous is not None:
        # ECR keeps the previous image, untagged if this was its last tag.
        previous.tags.remove(tag)
    image.tags.append(tag)
    store.by_tag[tag] = image


def _delete_image(repository: Any, image: StoredImage) -> None:
    store = _images(repository)
    for tag in image.tags:
        store.by_tag.pop(tag, None)
    del store.by_digest[image.digest]
    repository.images.remove(image)


def _image_ids(image: StoredImage) -> list[dict[str, str]]:
    return [{"imageDigest": image.digest, "imageTag": t} for t in image.tags] or [{"imageDigest": image.digest}]


def _describe(repository: Any, image: StoredImage) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "registryId": repository.registry_id,
        "repositoryName": repository.name,
        "imageDigest": image.digest,
        "imageSizeInBytes": image.size,
        "imagePushedAt": datetime.fromtimestamp(image.pushed_at, tz=timezone.utc),
        "imageManifestMediaType": image.media_type,
        "imageStatus": "ACTIVE",
    }
    if image.tags:
        detail["imageTags"] = list(image.tags)
    config = json.loads(image.manifest).get("config")
    if config:
        detail["artifactMediaType"] = config.get("mediaType")
    return detail


class _Handlers(ECRResponse):
    """ECR image operations as ECR performs them. Methods replace moto's while installed."""

    double: EcrDouble

    def _repo(self) -> Any:
        return self.ecr_backend._get_repository(self._get_param("repositoryName"), self._get_param("registryId"))

    def put_image(self) -> ActionResult:
        repository = self._repo()
        manifest: str = self._get_param("imageManifest")
        declared_type = self._get_param("imageManifestMediaType")
        tag = self._get_param("imageTag")
        expected_digest = self._get_param("imageDigest")
        if tag is not None:
            _check_tag(tag, "imageTag")
        if len(manifest) > MAX_MANIFEST_CHARS:
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'imageManifest' failed to satisfy constraint: "
                f"'Member must have length less than or equal to {MAX_MANIFEST_CHARS}'",
            )
        try:
            document = json.loads(manifest)
            if not isinstance(document, dict):
                raise ValueError
        except ValueError:
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'ImageManifest' failed to satisfy constraint: 'Invalid JSON syntax'",
            ) from None
        field_type = document.get("mediaType")
        if field_type is None and declared_type is None:
            # What ECR answers for an OCI manifest without mediaType and no parameter.
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'ImageManifest' failed to satisfy constraint: 'Invalid JSON syntax'",
            )
        if field_type is not None and declared_type is not None and field_type != declared_type:
            raise EcrError(
                "InvalidParameterException",
                f"Invalid parameter at 'imageManifestMediaType': '{declared_type}' does not match "
                f"the manifest's mediaType '{field_type}'",
            )
        media_type = declared_type or field_type
        if media_type not in PUT_IMAGE_MEDIA_TYPES:
            raise EcrError("InvalidParameterException", f"Invalid parameter at 'imageManifestMediaType': unsupported media type '{media_type}'")
        digest = manifest_digest(manifest)
        if expected_digest is not None and expected_digest != digest:
            raise EcrError(
                "ImageDigestDoesNotMatchException",
                f"The digest '{expected_digest}' does not match the digest '{digest}' Amazon ECR calculated for the image.",
            )
        with self.double._lock:
            store = _images(repository)
            if media_type in INDEX_MEDIA_TYPES:
                missing = [d for d in (e.get("digest") for e in document.get("manifests", [])) if d not in store.by_digest]
                if missing:
                    raise EcrError(
                        "ReferencedImagesNotFoundException",
                        f"The following referenced images were not found: {', '.join(missing)}",
                    )
            else:
                blobs = [document.get("config", {}).get("digest")] + [layer.get("digest") for layer in document.get("layers", [])]
                absent = [b for b in blobs if b and b not in repository.layers]
                if absent:
                    raise EcrError(
                        "LayersNotFoundException",
                        f"Layers with digests '[{', '.join(absent)}]' required for pushing image into repository "
                        f"with name '{repository.name}' in registry with id '{repository.registry_id}' do not exist",
                    )
            existing = store.by_digest.get(digest)
            holder = store.by_tag.get(tag) if tag is not None else None
            if holder is not None and _tag_is_immutable(repository, tag):
                # Raised even when the tag already points at this digest (containers-roadmap#2179).
                raise EcrError(
                    "ImageTagAlreadyExistsException",
                    f"The image tag '{tag}' already exists in the '{repository.name}' repository and cannot be "
                    "overwritten because the tag is immutable.",
                )
            if existing is not None and (tag is None or holder is existing):
                raise EcrError(
                    "ImageAlreadyExistsException",
                    f"Image with digest '{digest}' and tag '{tag}' already exists in the repository with name "
                    f"'{repository.name}' in registry with id '{repository.registry_id}'",
                )
            image = _store(repository, manifest, media_type, None)
            if tag is not None:
                _move_tag(repository, image, tag)
        image_id = {"imageDigest": digest, **({"imageTag": tag} if tag is not None else {})}
        return ActionResult({"image": {
            "registryId": repository.registry_id, "repositoryName": repository.name, "imageId": image_id,
            "imageManifest": manifest, "imageManifestMediaType": media_type,
        }})

    def _find(self, store: _RepoImages, image_id: dict) -> tuple[StoredImage | None, dict | None]:
        tag, digest = image_id.get("imageTag"), image_id.get("imageDigest")
        if tag is None and digest is None:
            return None, _failure(image_id, "MissingDigestAndTag", "Invalid request parameters: both tag and digest cannot be null")
        if digest is not None and not _DIGEST_RE.match(digest):
            return None, _failure(image_id, "InvalidImageDigest", "Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'")
        if tag is not None and not _TAG_RE.match(tag):
            return None, _failure(image_id, "InvalidImageTag", "Invalid request parameters: image tag should satisfy the regex '[a-zA-Z0-9-_.]+'")
        by_tag = store.by_tag.get(tag) if tag is not None else None
        by_digest = store.by_digest.get(digest) if digest is not None else None
        if tag is not None and digest is not None:
            if by_tag is None or by_digest is None:
                return None, _failure(image_id, "ImageNotFound", "Requested image not found")
            if by_tag is not by_digest:
                return None, _failure(image_id, "ImageTagDoesNotMatchDigest", "Invalid request parameters: given tag does not map to the given digest")
            return by_tag, None
        image = by_tag or by_digest
        if image is None:
            return None, _failure(image_id, "ImageNotFound", "Requested image not found")
        return image, None

    def batch_get_image(self) -> ActionResult:
        repository = self._repo()
        image_ids = _check_id_count(self._get_param("imageIds"))
        accepted = self._get_param("acceptedMediaTypes") or list(MANIFEST_MEDIA_TYPES)
        images, failures = [], []
        with self.double._lock:
            store = _images(repository)
            for image_id in image_ids:
                image, failure = self._find(store, image_id)
                if failure:
                    failures.append(failure)
                    continue
                assert image is not None
                manifest, media_type = image.manifest, image.media_type
                if media_type not in accepted:
                    target = _TRANSLATION.get(media_type, (None,))[0]
                    if target not in accepted:
                        failures.append(_failure(image_id, "ImageNotFound", f"Requested image's manifest media type '{media_type}' is not in acceptedMediaTypes"))
                        continue
                    manifest, media_type = _translate(image)
                echoed = {"imageDigest": manifest_digest(manifest), **({"imageTag": image_id["imageTag"]} if "imageTag" in image_id else {})}
                images.append({
                    "registryId": repository.registry_id, "repositoryName": repository.name, "imageId": echoed,
                    "imageManifest": manifest, "imageManifestMediaType": media_type,
                })
        return ActionResult({"images": images, "failures": failures})

    def batch_delete_image(self) -> ActionResult:
        repository = self._repo()
        image_ids = _check_id_count(self._get_param("imageIds"))
        deleted, failures = [], []
        with self.double._lock:
            store = _images(repository)
            for image_id in image_ids:
                image, failure = self._find(store, image_id)
                if failure:
                    failures.append(failure)
                    continue
                assert image is not None
                by_tag_only = "imageDigest" not in image_id
                if by_tag_only and len(image.tags) > 1:
                    tag = image_id["imageTag"]
                    image.tags.remove(tag)
                    del store.by_tag[tag]
                    deleted.append({"imageDigest": image.digest, "imageTag": tag})
                    continue
                # Deleting by digest, by tag and digest, or the image's last tag: the image goes.
                if store.referenced_by_index(image.digest):
                    failures.append(_failure(image_id, "ImageReferencedByManifestList", f"Requested image {image.digest} is referenced by an image index"))
                    continue
                deleted.extend([{"imageDigest": image.digest, "imageTag": image_id["imageTag"]}] if by_tag_only else _image_ids(image))
                _delete_image(repository, image)
        return ActionResult({"imageIds": deleted, "failures": failures})

    def _listing(self) -> tuple[Any, list[StoredImage]]:
        repository = self._repo()
        status = (self._get_param("filter") or {}).get("tagStatus", "ANY")
        with self.double._lock:
            images = list(_images(repository).by_digest.values())
        if status == "TAGGED":
            images = [i for i in images if i.tags]
        elif status == "UNTAGGED":
            images = [i for i in images if not i.tags]
        return repository, images

    def describe_images(self) -> ActionResult:
        image_ids = self._get_param("imageIds")
        if image_ids is not None:
            if self._get_param("nextToken") is not None or self._get_param("maxResults") is not None:
                raise EcrError("InvalidParameterException", "Invalid parameter: imageIds cannot be combined with nextToken or maxResults")
            repository = self._repo()
            details = []
            with self.double._lock:
                store = _images(repository)
                for image_id in _check_id_count(image_ids):
                    image, failure = self._find(store, image_id)
                    if failure:
                        shown = ", ".join(f"{k}:'{v}'" for k, v in image_id.items())
                        raise EcrError(
                            "ImageNotFoundException",
                            f"The image with imageId {{{shown}}} does not exist within the repository with name "
                            f"'{repository.name}' in the registry with id '{repository.registry_id}'",
                        )
                    if image is not None and all(d["imageDigest"] != image.digest for d in details):
                        details.append(_describe(repository, image))
            return ActionResult({"imageDetails": details})
        repository, images = self._listing()
        page, token = _paginate(images, self._get_param("maxResults"), self._get_param("nextToken"))
        return ActionResult({"imageDetails": [_describe(repository, i) for i in page], **({"nextToken": token} if token else {})})

    def list_images(self) -> ActionResult:
        _, images = self._listing()
        ids = [image_id for image in images for image_id in _image_ids(image)]
        page, token = _paginate(ids, self._get_param("maxResults"), self._get_param("nextToken"))
        return ActionResult({"imageIds": page, **({"nextToken": token} if token else {})})


_REPLACED = ("put_image", "batch_get_image", "batch_delete_image", "describe_images", "list_images")
_install_lock = threading.Lock()


@contextlib.contextmanager
def _installed(double: EcrDouble) -> Iterator[None]:
    """Route moto's ECR image operations, counting and faults through ``double``."""
    original_call_action = ECRResponse.call_action

    def call_action(handler: ECRResponse) -> Any:
        injected = double._on_request(handler)
        return injected if injected is not None else original_call_action(handler)

    with _install_lock:
        if getattr(ECRResponse, "_double_installed", False):
            raise RuntimeError("another EcrDouble is already active in this process")
        saved = {name: ECRResponse.__dict__[name] for name in _REPLACED}
        for name in _REPLACED:
            setattr(ECRResponse, name, _Handlers.__dict__[name])
        ECRResponse._repo = _Handlers._repo  # type: ignore[attr-defined]
        ECRResponse._find = _Handlers._find  # type: ignore[attr-defined]
        ECRResponse._listing = _Handlers._listing  # type: ignore[attr-defined]
        ECRResponse.double = double  # type: ignore[attr-defined]
        ECRResponse.call_action = call_action  # type: ignore[method-assign]
        ECRResponse._double_installed = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with _install_lock:
            for name, method in saved.items():
                setattr(ECRResponse, name, method)
            for name in ("_repo", "_find", "_listing", "double", "_double_installed"):
                delattr(ECRResponse, name)
            ECRResponse.call_action = original_call_action  # type: ignore[method-assign]


CONTROL_PREFIX = "/_ecr_double/"


def _control(double: EcrDouble, environ: dict, start_response: Any) -> list[bytes]:
    """The double's control API, for tests and benchmarks in other processes (see :class:`RemoteEcrDouble`)."""
    action = environ["PATH_INFO"][len(CONTROL_PREFIX):]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
    try:
        if action == "calls":
            result: Any = {"calls": dict(double.calls), "requests": len(double.requests)}
        elif action == "reset-calls":
            double.reset_calls()
            result = {}
        elif action == "create-repository":
            double.create_repository(body["repository"], mutability=body.get("mutability", "MUTABLE"))
            result = {}
        elif action == "seed":
            result = {"digests": [
                double.push(body["repository"], build_image(i.get("kind", "oci"), i["name"]), i.get("tags", []), pushed_at=i.get("pushed_at"))
                for i in body["images"]
            ]}
        elif action == "move-tags":
            for move in body["moves"]:
                double.move_tag(body["repository"], move["tag"], move["digest"])
            result = {"at": time.time()}
        elif action == "tags":
            result = {"tags": double.tags(body["repository"])}
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [json.dumps({"error": f"unknown action {action!r}"}).encode()]
    except Exception as error:  # reported to the caller, who is a test
        start_response("400 Bad Request", [("Content-Type", "application/json")])
        return [json.dumps({"error": f"{type(error).__name__}: {error}"}).encode()]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(result).encode()]


class RemoteEcrDouble:
    """Drive a double served by another process (``python -m airflow_ecr_retag.testing serve``).

    :param endpoint_url: the server's endpoint, as printed by ``serve``.
    """

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url.rstrip("/")

    def _post(self, action: str, **body: Any) -> Any:
        import urllib.request

        request = urllib.request.Request(
            f"{self.endpoint_url}{CONTROL_PREFIX}{action}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def calls(self) -> Counter[str]:
        return Counter(self._post("calls")["calls"])

    def reset_calls(self) -> None:
        self._post("reset-calls")

    def create_repository(self, repository: str, mutability: str = "MUTABLE") -> None:
        self._post("create-repository", repository=repository, mutability=mutability)

    def seed(self, repository: str, images: list[dict[str, Any]]) -> list[str]:
        """Push images directly (not counted): each ``{"kind", "name", "tags", "pushed_at"}``."""
        return self._post("seed", repository=repository, images=images)["digests"]

    def move_tags(self, repository: str, moves: list[dict[str, str]]) -> float:
        """Point tags at digests directly, as other actors' pushes would; returns the server's time."""
        return self._post("move-tags", repository=repository, moves=moves)["at"]

    def tags(self, repository: str) -> dict[str, str]:
        return self._post("tags", repository=repository)["tags"]


@contextlib.contextmanager
def _serving(double: EcrDouble) -> Iterator[str]:
    """Serve moto on 127.0.0.1 with a free port, dropping connections on request."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    class _Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            from werkzeug.serving import make_server

            from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

            app = DomainDispatcherApplication(create_backend_app)

            def dropping_app(environ: dict, start_response: Any) -> Any:
                if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
                    return _control(double, environ, start_response)
                try:
                    return app(environ, start_response)
                except ConnectionClosedError:
                    sock = environ.get("werkzeug.socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    raise _Dropped() from None

            self._server = make_server(self._ip_address, self._port, dropping_app, True, request_handler=_QuietHandler.wrap(MotoRequestHandler))
            # A dropped connection is deliberate: keep werkzeug from printing it as an error.
            self._server.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
            self._server_ready_event.set()
            self._server.serve_forever()

    server = _Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class _Dropped(Exception):
    """Raised through werkzeug after the socket was shut, so no response is written."""


class _QuietHandler:
    @staticmethod
    def wrap(base: type) -> type:
        class Handler(base):  # type: ignore[misc, valid-type]
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

            def run_wsgi(self) -> None:
                try:
                    super().run_wsgi()
                except (_Dropped, OSError):
                    self.close_connection = True

            def log_error(self, *args: Any) -> None:
                pass

        return Handler
