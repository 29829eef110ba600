"""A faithful Amazon ECR double built on moto: :class:`EcrDouble`, the front door.

moto provides the plumbing: request parsing and response serialisation from the botocore
model, repositories, layer uploads, credentials, the HTTP server. The double replaces the
image operations (PutImage, BatchGetImage, BatchDeleteImage, DescribeImages, ListImages)
with implementations that behave like ECR where this package depends on it, and adds a
per-operation call counter, a request log, fault injection and direct seeding.

The parts, each in its own module of this package:

- :mod:`~airflow_ecr_retag.testing.store`: the registry state (images by digest and by tag);
- :mod:`~airflow_ecr_retag.testing.request_rules` and :mod:`~airflow_ecr_retag.testing.handlers`:
  ECR's rules and the image operations that apply them;
- :mod:`~airflow_ecr_retag.testing.moto_install`: patching moto while a double is active;
- :mod:`~airflow_ecr_retag.testing.recording`: the call counter, request log and faults;
- :mod:`~airflow_ecr_retag.testing.server`: the HTTP server and its control API;
- :mod:`~airflow_ecr_retag.testing.remote_double`: :class:`RemoteEcrDouble`, the same API for a double
  served by another process (over :mod:`~airflow_ecr_retag.testing.wire`).

The README's "Testing your own DAGs with the ECR double" lists the ECR behaviours reproduced
here and where plain moto differs; each has a pinning test in ``tests/test_double.py``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ClassVar

from moto import mock_aws

from airflow_ecr_retag.testing import blob_urls, image_status, registries, registry_auth, store
from airflow_ecr_retag.testing.blob_store import Blob, BlobStore, BytesBlob, read_all
from airflow_ecr_retag.testing.images import BuiltImage, build_image, build_variant
from airflow_ecr_retag.testing.moto_install import installed
from airflow_ecr_retag.testing.recording import (
    WRITE_OPERATIONS,
    CallRecording,
    Fault,
    RecordedCall,
    ecr_fault_response,
    first_fault,
)
from airflow_ecr_retag.testing.registries import ACCOUNT_SETTINGS, CALLER_ACCOUNT, Registry
from airflow_ecr_retag.testing.registry_listeners import Listeners
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.scanning import ScanSeeding, scan_on_push
from airflow_ecr_retag.testing.server import CONTROL_PREFIX, RemoteEcrDouble, serving
from airflow_ecr_retag.testing.store import StoredImage
from airflow_ecr_retag.testing.upload_sessions import UploadSessions
from airflow_ecr_retag.testing.wire import client_environ

# Importable from here as they always were.
__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_REGION",
    "WRITE_OPERATIONS",
    "EcrDouble",
    "EcrError",
    "Fault",
    "RecordedCall",
    "RemoteEcrDouble",
    "StoredImage",
]

DEFAULT_REGION = "us-east-1"
#: How long a GetDownloadUrlForLayer URL stays valid by default. ECR documents no lifetime (on a
#: 403, ask again); an hour is what the double chooses.
DEFAULT_DOWNLOAD_URL_SECONDS = 3600
#: How long a restore from the archive stays ACTIVATING by default: ECR's "typically up to 20 minutes".
DEFAULT_ACTIVATION_SECONDS = 20 * 60


class EcrDouble(CallRecording, ScanSeeding):
    """The ECR double: use as a context manager, in-process or as a local HTTP server.

    :param server: also serve the double over HTTP on 127.0.0.1 with a free port; clients in
        other processes reach it through ``AWS_ENDPOINT_URL_ECR`` (:attr:`endpoint_url`).
    :param region_name: the default region for :meth:`client` and the helpers.

    Counting, the request log and faults (``calls``, ``requests``, ``write_calls``,
    ``total_calls``, ``reset_calls``, ``requests_for``, ``inject``, ``before_call``,
    ``clear_faults``) come from :class:`~airflow_ecr_retag.testing.recording.CallRecording`;
    scanning (``scan_seconds``, ``set_registry_scanning``, ``add_findings``, ``set_scan``,
    ``scan_status``) from :class:`~airflow_ecr_retag.testing.scanning.ScanSeeding`.

    .. code-block:: python

        with EcrDouble() as ecr:
            ecr.create_repository("team/app")
            digest = ecr.push("team/app", build_image("oci-index"), tags=["sha-1"])
            ...  # code under test, using boto3 as usual
            assert ecr.tags("team/app") == {"sha-1": digest}
            assert ecr.calls["PutImage"] == 0
    """

    #: Callables given every :class:`RecordedCall` of every double in the process (for suite-wide checks).
    observers: ClassVar[list[Callable[[RecordedCall], None]]] = []

    def __init__(self, *, server: bool = False, region_name: str = DEFAULT_REGION):
        super().__init__()
        self.region_name = region_name
        self.serve = server
        self.endpoint_url: str | None = None
        #: The double's clock, for the expiry of blob URLs and registry passwords, the progress of
        #: scans, the end of a restore from the archive and recorded pull times: replace it
        #: (``ecr.clock = lambda: time.time() + 7200``) to test what happens after one expires.
        self.clock: Callable[[], float] = time.time
        #: How long an image restored with UpdateImageStorageClass stays ACTIVATING, in seconds of
        #: :attr:`clock` (0: ACTIVE at once).
        self.activation_seconds: float = DEFAULT_ACTIVATION_SECONDS
        #: How long a presigned blob URL is valid, in seconds.
        self.download_url_seconds = DEFAULT_DOWNLOAD_URL_SECONDS
        #: Signs blob URLs and registry passwords; a new one per double.
        self.url_secret = secrets.token_bytes(32)
        #: Every blob's bytes, by digest, and the uploads in progress (shared by both APIs).
        self.blobs = BlobStore()
        self.uploads = UploadSessions(self.blobs)
        self.listeners = Listeners(self)
        # Guards the store as well as the counter: requests arrive on the server's threads.
        self._lock = threading.RLock()
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> EcrDouble:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(mock_aws())
            stack.enter_context(installed(self))
            if self.serve:
                self.endpoint_url = stack.enter_context(serving(self))
            self._stack = stack
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.listeners.close()
        if self._stack is not None:
            self._stack.close()
        self._stack = None
        self.endpoint_url = None
        self.blobs.close()

    def _on_request(self, operation: str, params: dict[str, Any], user_agent: str, endpoint_url: str) -> Any:
        """Every ECR request, before moto dispatches it: counted, logged, shown to the observers,
        then failed or preceded by an action if an injection is due. Returns the injected error
        response, or None to let the request through."""
        fault = self.on_http_request(operation, params, user_agent)
        return ecr_fault_response(fault, endpoint_url) if fault is not None else None

    def on_http_request(self, operation: str, params: dict[str, Any], user_agent: str) -> Fault | None:
        """Every request of any protocol (ECR, ``/v2/``, blob URLs): counted, logged, shown to the
        observers, then preceded by the actions due; returns the fault it must fail with, if any."""
        recorded, due = self._record(operation, params, user_agent)
        for observer in EcrDouble.observers:
            observer(recorded)
        return first_fault(due, self)

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
            raise RuntimeError("the double is not serving: use EcrDouble(server=True) or the ecr_double_server fixture")
        return client_environ(self.endpoint_url, self.region_name)

    def advance_clock(self, seconds: float) -> float:
        """Move :attr:`clock` forward by ``seconds`` (scans finish, restores end, blob URLs and
        registry passwords expire, as if that time had passed); returns the double's time now."""
        earlier = self.clock
        self.clock = lambda: earlier() + seconds
        return self.clock()

    # ------------------------------------------------------------------ registries
    def registry(self, registry_id: str | None = None, region_name: str | None = None) -> Registry:
        """An account's registry in a Region (the caller's own account and the double's Region by default)."""
        return Registry(registry_id or CALLER_ACCOUNT, region_name or self.region_name)

    def registry_endpoint(self, *, registry_id: str | None = None, region_name: str | None = None) -> str:
        """The ``http://127.0.0.1:<port>`` address of a registry's OCI ``/v2/`` API (its listener
        starts now if it has not yet), what GetAuthorizationToken's ``proxyEndpoint`` gives."""
        return self.listeners.registry_endpoint(self.registry(registry_id, region_name))

    def registry_credentials(self, *, region_name: str | None = None) -> tuple[str, str]:
        """The user name and password for the ``/v2/`` registries of a Region, as
        ``aws ecr get-login-password`` gives them (``skopeo --creds AWS:<password>``)."""
        return registry_auth.REGISTRY_USER, registry_auth.registry_password(self, region_name or self.region_name)

    def caller_credentials(self, *, registry_id: str) -> tuple[str, str]:
        """An access key id and secret that call as ``registry_id``'s own account: a client (or an
        Airflow connection, ``login`` and ``password``) with them reaches that account's registry
        without a ``registryId``, as another AWS account's credentials would."""
        with self._lock:
            return registries.caller_credentials(registry_id)

    def download_url(self, registry: Registry, repository_name: str, digest: str) -> str:
        """A presigned-style URL of a blob on the blob listener (as GetDownloadUrlForLayer returns)."""
        path = blob_urls.blob_path(registry.account, registry.region, repository_name, digest)
        return blob_urls.presign(self, self.listeners.blob_endpoint(), path)

    def set_account_setting(
        self, name: str, value: str, *, registry_id: str | None = None, region_name: str | None = None
    ) -> None:
        """Set an account setting directly (``BLOB_MOUNTING`` to ``ENABLED``), as PutAccountSetting would
        (not counted)."""
        if value not in ACCOUNT_SETTINGS[name][1]:
            raise ValueError(f"{name} takes one of {sorted(ACCOUNT_SETTINGS[name][1])}, not {value!r}")
        with self._lock:
            registries.set_account_setting(self.registry(registry_id, region_name), name, value)

    # ------------------------------------------------------------------ state
    def _repository(self, name: str, registry_id: str | None = None, region_name: str | None = None) -> Any:
        return self.registry(registry_id, region_name).repository(name)

    def create_repository(
        self,
        name: str,
        *,
        mutability: str = "MUTABLE",
        exclusion_filters: Iterable[str] = (),
        scan_on_push: bool = False,
        registry_id: str | None = None,
        region_name: str | None = None,
    ) -> None:
        """Create a repository directly (not counted), in the ``registry_id`` account's registry of
        ``region_name`` (the caller's account and the double's Region by default). Exclusion
        filters are WILDCARD patterns; ``scan_on_push`` is the repository's ``scanOnPush``."""
        registry = self.registry(registry_id, region_name)
        filters = [{"filterType": "WILDCARD", "filter": f} for f in exclusion_filters]
        registry.backend.create_repository(
            repository_name=name,
            registry_id=registry.account,
            encryption_config=None,
            image_scan_config={"scanOnPush": scan_on_push},
            image_tag_mutability=mutability,
            image_tag_mutability_exclusion_filters=filters or None,
            tags=[],
        )

    def push(
        self,
        repository_name: str,
        image: BuiltImage,
        tags: Iterable[str] = (),
        *,
        pushed_at: datetime | float | None = None,
        registry_id: str | None = None,
        region_name: str | None = None,
    ) -> str:
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
            for blob in image.blobs.values():
                store.record_blob(repository, self.blobs.add(blob))
            stored = store.store_image(repository, image.manifest, image.media_type, pushed_at)
            for tag in tags:
                store.move_tag(repository, stored, tag)
            scan_on_push(self, repository, stored)
        return stored.digest

    def put_blob(self, repository_name: str, content: bytes | Blob, **where: Any) -> str:
        """Put a blob into a repository directly, as a finished upload would (not counted); returns its digest."""
        blob = BytesBlob(content) if isinstance(content, bytes) else content
        with self._lock:
            store.record_blob(self._repository(repository_name, **where), self.blobs.add(blob))
        return blob.digest

    def blobs_of(self, repository_name: str, **where: Any) -> dict[str, int]:
        """The blobs a repository has, digest -> size (a snapshot)."""
        with self._lock:
            return dict(self._repository(repository_name, **where).layers)

    def blob_bytes(self, digest: str) -> bytes:
        """A stored blob's whole content (for small blobs; ``ecr.blobs.get(digest).chunks()`` streams)."""
        blob = self.blobs.get(digest)
        if blob is None:
            raise KeyError(digest)
        return read_all(blob)

    def images(self, repository_name: str, **where: Any) -> dict[str, StoredImage]:
        """The repository's images by digest (a snapshot)."""
        with self._lock:
            return dict(store.images_of(self._repository(repository_name, **where)).by_digest)

    def tags(self, repository_name: str, **where: Any) -> dict[str, str]:
        """The repository's tags, each with the digest it points at (a snapshot)."""
        with self._lock:
            by_tag = store.images_of(self._repository(repository_name, **where)).by_tag
            return {tag: image.digest for tag, image in by_tag.items()}

    def set_pushed_at(self, repository_name: str, digest: str, pushed_at: datetime | float, **where: Any) -> None:
        """Set an image's ``imagePushedAt`` directly (not counted): what hygiene's age rules read."""
        if isinstance(pushed_at, datetime):
            pushed_at = pushed_at.timestamp()
        with self._lock:
            store.images_of(self._repository(repository_name, **where)).by_digest[digest].pushed_at = pushed_at

    def set_last_pulled(
        self, repository_name: str, digest: str, pulled_at: datetime | float | None, **where: Any
    ) -> None:
        """Set an image's ``lastRecordedPullTime`` directly, as if it was pulled then (None: never)."""
        if isinstance(pulled_at, datetime):
            pulled_at = pulled_at.timestamp()
        with self._lock:
            store.images_of(self._repository(repository_name, **where)).by_digest[digest].last_pulled = pulled_at

    def set_image_status(self, repository_name: str, digest: str, status: str, **where: Any) -> None:
        """Put an image in ``imageStatus`` ACTIVE, ARCHIVED or ACTIVATING (restoring for
        :attr:`activation_seconds` from now) directly, as UpdateImageStorageClass would (not counted)."""
        with self._lock:
            images = store.images_of(self._repository(repository_name, **where))
            image_status.set_status(images, images.by_digest[digest], status, self.clock(), self.activation_seconds)

    def seed(self, repository_name: str, images: Iterable[dict[str, Any]], **where: Any) -> list[str]:
        """Build and push images directly (not counted): each ``{"kind", "name", "tags", "pushed_at",
        "layers", "layer_bytes"}`` (only ``name`` is required; ``kind`` is ``oci`` and ``layers`` 2 by
        default), as :func:`~airflow_ecr_retag.testing.images.build_image` and :meth:`push` would.
        Returns the digests."""
        return [
            self.push(
                repository_name,
                build_image(
                    spec.get("kind", "oci"),
                    spec["name"],
                    layers=spec.get("layers", 2),
                    layer_bytes=spec.get("layer_bytes"),
                ),
                spec.get("tags", ()),
                pushed_at=spec.get("pushed_at"),
                **where,
            )
            for spec in images
        ]

    def seed_many(self, repository_name: str, images: Iterable[dict[str, Any]], **where: Any) -> list[str]:
        """Store many small single-platform images directly (not counted), fast enough for a
        repository of 100,000: one shared config and layer, each manifest told apart by an
        annotation (:func:`~airflow_ecr_retag.testing.images.build_variant`).

        Each of ``images`` is a dict with ``name`` (distinct names give distinct images), and
        optionally ``tags``, ``pushed_at``, ``last_pulled`` (epoch seconds) and ``status``
        (ACTIVE, ARCHIVED, ACTIVATING). Returns the digests, in order.
        """
        repository = self._repository(repository_name, **where)
        base = build_image("oci", "seed-many")
        digests = []
        with self._lock:
            for blob in base.blobs.values():
                store.record_blob(repository, self.blobs.add(blob))
            for spec in images:
                variant = build_variant(base, spec["name"])
                stored = store.store_image(repository, variant.manifest, variant.media_type, spec.get("pushed_at"))
                for tag in spec.get("tags", ()):
                    store.move_tag(repository, stored, tag)
                stored.last_pulled = spec.get("last_pulled", stored.last_pulled)
                if spec.get("status"):
                    image_status.set_status(
                        store.images_of(repository), stored, spec["status"], self.clock(), self.activation_seconds
                    )
                stored.size  # noqa: B018 - parsed now, not by the first DescribeImages page that shows it
                digests.append(stored.digest)
        return digests

    def delete_tag(self, repository_name: str, tag: str, **where: Any) -> None:
        """Remove ``tag`` directly, as another actor's BatchDeleteImage by tag would: the image
        goes too when it was its last tag (not counted)."""
        with self._lock:
            repository = self._repository(repository_name, **where)
            image = store.untag(repository, tag)
            if not image.tags:
                store.delete_image(repository, image)

    def move_tag(self, repository_name: str, tag: str, digest: str, **where: Any) -> None:
        """Point ``tag`` at ``digest`` directly, as another actor's push would (not counted)."""
        with self._lock:
            repository = self._repository(repository_name, **where)
            store.move_tag(repository, store.images_of(repository).by_digest[digest], tag)

    def move_tags(self, repository_name: str, moves: Iterable[dict[str, str]], **where: Any) -> float:
        """Point tags at digests directly, at once (``[{"tag": "prod", "digest": "sha256:..."}]``), as
        other actors' pushes would (not counted); returns the double's time (``time.time()``) after the
        moves, to tell which requests came after them."""
        with self._lock:
            for move in moves:
                self.move_tag(repository_name, move["tag"], move["digest"], **where)
        return time.time()
