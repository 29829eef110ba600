"""Moving layer and config blobs between two ECR repositories (any accounts, any Regions).

ECR has no copy call, and a blob moves only through the ECR API: GetDownloadUrlForLayer on the
source gives a presigned URL, which is streamed (pieces of at most :data:`CHUNK_BYTES`, gathered
into one upload part at a time: never a whole blob in memory) and hashed while it streams; the
bytes go up with InitiateLayerUpload, UploadLayerPart (consecutive parts of 5 MiB, the quotas
page's minimum, larger only for a layer that would need more than 4,200 of them: see
:meth:`~airflow_ecr_retag.core.ecr.LayerUpload.part_size`) and CompleteLayerUpload.

What can go wrong, and what happens:

- a part whose answer was lost and that botocore sent again: ECR answers
  ``InvalidLayerPartException`` with ``lastValidByteReceived``, and the upload resumes from there;
- ``LayerAlreadyExistsException`` at the end: a concurrent copy made the layer first; success;
- the URL expired (HTTP 403): a new one is asked for, once per failure; a new URL refused too is
  access denied (a permanent error);
- 5xx, S3's ``SlowDown`` and connections refused or dropped before an answer: urllib3's retries
  (:data:`DOWNLOAD_RETRIES`); a connection cut mid-body: the download resumes with ``Range`` from
  the last byte received (at most :data:`MAX_DOWNLOAD_RESUMES` times in a row);
- bytes that do not hash to the digest, or more or fewer of them than the manifest says:
  :class:`~airflow_ecr_retag.core.errors.BlobDigestMismatchError` before CompleteLayerUpload, and
  every other transfer of the copy stops at its next part.

:func:`copy_blobs` runs up to ``max_concurrency`` transfers at once on threads; both boto3 clients
are shared by them (botocore clients are thread-safe) and one urllib3 pool serves the downloads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.util import Retry, Timeout

from airflow_ecr_retag.core import ecr
from airflow_ecr_retag.core.errors import BlobDigestMismatchError, EcrPermanentError, is_permanent

_module_log = logging.getLogger(__name__)

#: Downloads are read in pieces of at most this many bytes.
CHUNK_BYTES = 1 << 20
#: A download cut mid-body is resumed (``Range``) at most this many times in a row without progress.
MAX_DOWNLOAD_RESUMES = 5
#: A transfer starts over with a new upload at most this many times, when ECR reports holding
#: bytes this transfer never sent (an upload it lost or expired).
MAX_UPLOAD_RESTARTS = 2
#: urllib3's retries for a download request: connections refused or dropped before an answer, 5xx
#: and S3's ``503 SlowDown`` (its ``Retry-After`` respected), with exponential backoff.
DOWNLOAD_RETRIES = Retry(
    total=5,
    backoff_factor=0.25,
    status_forcelist=(500, 502, 503, 504),
    allowed_methods=frozenset({"GET"}),
    raise_on_status=False,
)
DOWNLOAD_TIMEOUT = Timeout(connect=60, read=300)
#: Blobs over this size get progress lines in the task log, one per this many bytes.
PROGRESS_BYTES = 256 << 20


@dataclass(frozen=True)
class Repository:
    """One end of a copy: a client and the repository it reaches (``registry_id`` None: the caller's)."""

    client: Any
    repository_name: str
    registry_id: str | None


@dataclass(frozen=True)
class Blob:
    """A blob to move, as a manifest describes it."""

    digest: str
    size: int


@dataclass
class BlobOutcome:
    """What a transfer did."""

    digest: str
    size: int
    #: False when the target had it at the end after all (``LayerAlreadyExistsException``).
    copied: bool = False
    parts: int = 0
    #: Parts resumed from ECR's ``lastValidByteReceived``.
    resumed: int = 0
    #: GetDownloadUrlForLayer calls (1, plus one per expired or refused URL).
    url_fetches: int = 0
    #: Downloads resumed with ``Range`` after a connection was cut mid-body.
    download_resumes: int = 0


class _Cancelled(Exception):
    """Another transfer of the copy failed: this one stops at its next part."""


class _UploadLost(Exception):
    """ECR reports holding bytes this upload never sent: start the blob over with a new upload."""


def copy_blobs(
    source: Repository,
    target: Repository,
    blobs: Sequence[Blob],
    *,
    max_concurrency: int,
    verify: bool | str | None = None,
    log: logging.Logger | Any = _module_log,
) -> list[BlobOutcome]:
    """Copy ``blobs`` from ``source`` to ``target``, up to ``max_concurrency`` at a time; outcomes in
    ``blobs`` order. The first failure stops the others at their next part and is raised (one a retry
    cannot fix in preference); nothing is completed after it.

    :param verify: TLS verification of the presigned URLs, as botocore's ``verify``: None or True
        for botocore's CA bundle, False for none, or a CA bundle's path.
    """
    if not blobs:
        return []
    downloads = _Downloads(max_concurrency, verify)
    cancelled = threading.Event()
    outcomes: dict[str, BlobOutcome] = {}
    failures: list[BaseException] = []
    try:
        with ThreadPoolExecutor(max_workers=min(max_concurrency, len(blobs)), thread_name_prefix="ecr-blob") as pool:
            futures = [pool.submit(_Transfer(source, target, blob, downloads, cancelled, log).run) for blob in blobs]
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except _Cancelled:
                    continue
                except Exception as error:
                    cancelled.set()
                    failures.append(error)
                    continue
                outcomes[outcome.digest] = outcome
    finally:
        downloads.close()
    if failures:
        raise next((f for f in failures if is_permanent(f)), failures[0])
    return [outcomes[blob.digest] for blob in blobs]


class _Downloads:
    """The urllib3 pools the downloads share: direct, or through the proxy the environment names
    (``HTTPS_PROXY``, ``NO_PROXY``, as botocore honours them)."""

    def __init__(self, max_concurrency: int, verify: bool | str | None):
        tls: dict[str, Any]
        if verify is False:
            tls = {"cert_reqs": "CERT_NONE"}
        else:
            from botocore.httpsession import get_cert_path

            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": get_cert_path(True if verify is None else verify)}
        self._options = {"maxsize": max_concurrency, "retries": DOWNLOAD_RETRIES, "timeout": DOWNLOAD_TIMEOUT, **tls}
        self._pools: dict[str | None, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def get(self, url: str, offset: int) -> urllib3.BaseHTTPResponse:
        """GET ``url`` from byte ``offset`` on, unread (the caller streams the body)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self._pool(url).request(
            "GET", url, headers=headers, preload_content=False, decode_content=False, redirect=False
        )

    def _pool(self, url: str) -> urllib3.PoolManager:
        parts = urllib.parse.urlsplit(url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
            proxy = None
        with self._lock:
            pool = self._pools.get(proxy)
            if pool is None:
                pool = urllib3.ProxyManager(proxy, **self._options) if proxy else urllib3.PoolManager(**self._options)
                self._pools[proxy] = pool
            return pool

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.clear()
            self._pools.clear()


class _Transfer:
    """One blob, source to target."""

    def __init__(
        self,
        source: Repository,
        target: Repository,
        blob: Blob,
        downloads: _Downloads,
        cancelled: threading.Event,
        log: Any,
    ):
        self.source, self.target, self.blob = source, target, blob
        self.downloads, self.cancelled, self.log = downloads, cancelled, log
        self.outcome = BlobOutcome(blob.digest, blob.size)

    def run(self) -> BlobOutcome:
        for _ in range(MAX_UPLOAD_RESTARTS + 1):
            self._check_cancelled()
            upload = ecr.start_layer_upload(self.target.client, self.target.repository_name, self.target.registry_id)
            try:
                self._send(upload)
            except _UploadLost as lost:
                self.log.warning("Blob %s: %s; starting it over", self.blob.digest, lost)
                continue
            self._check_cancelled()
            self.outcome.copied = ecr.complete_layer_upload(
                self.target.client,
                self.target.repository_name,
                upload.upload_id,
                self.blob.digest,
                self.target.registry_id,
            )
            self._log_done()
            return self.outcome
        raise ConnectionError(
            f"blob {self.blob.digest}: ECR lost the upload's parts {MAX_UPLOAD_RESTARTS + 1} times in a row"
        )

    def _log_done(self) -> None:
        outcome = self.outcome
        if not outcome.copied:
            self.log.info(
                "Blob %s: already in the target when the upload completed (another copy made it); not counted",
                self.blob.digest,
            )
            return
        extra = [
            f"{n} {what}"
            for n, what in (
                (outcome.resumed, "part(s) resumed"),
                (outcome.url_fetches - 1, "URL(s) fetched again"),
                (outcome.download_resumes, "download resume(s)"),
            )
            if n
        ]
        self.log.info(
            "Blob %s: copied %s in %d part(s)%s",
            self.blob.digest,
            mib(self.blob.size),
            outcome.parts,
            f" ({', '.join(extra)})" if extra else "",
        )

    # ------------------------------------------------------------------ upload
    def _send(self, upload: ecr.LayerUpload) -> None:
        """Stream the blob into ``upload``: full parts as they fill, the digest checked before the last."""
        hasher, received = hashlib.sha256(), 0
        part, part_size = bytearray(), upload.part_size(self.blob.size)
        self._sent = 0
        self.outcome.parts = self.outcome.resumed = 0
        next_progress = PROGRESS_BYTES
        for piece in self._download():
            hasher.update(piece)
            received += len(piece)
            view = memoryview(piece)
            while view:
                room = part_size - len(part)
                part += view[:room]
                view = view[room:]
                if len(part) == part_size:
                    part = self._put_part(upload, part)
            if self.blob.size > PROGRESS_BYTES and received >= next_progress:
                self.log.info("Blob %s: %s of %s read", self.blob.digest, mib(received), mib(self.blob.size))
                next_progress += PROGRESS_BYTES
        actual = "sha256:" + hasher.hexdigest()
        if actual != self.blob.digest:
            raise BlobDigestMismatchError(
                f"blob {self.blob.digest} of source repository {self.source.repository_name!r}: its bytes hash to "
                f"{actual}; the copy stopped before completing it and nothing was tagged"
            )
        while part:
            part = self._put_part(upload, part)

    def _put_part(self, upload: ecr.LayerUpload, part: bytearray) -> bytearray:
        """Send ``part`` (the bytes from ``self._sent`` on). Returns what is left to send: nothing, or
        after a resume inside the part its tail, which starts the next part (so that no part but the
        last is short)."""
        self._check_cancelled()
        try:
            ecr.upload_layer_part(
                self.target.client,
                self.target.repository_name,
                upload.upload_id,
                self._sent,
                part,
                self.target.registry_id,
            )
        except Exception as error:
            held = ecr.last_valid_byte(error)
            if held is None:
                raise
            resume = held + 1
            if not self._sent < resume <= self._sent + len(part):
                if resume == self._sent:
                    raise  # ECR has exactly what was sent before this part and refuses it: not a lost answer
                raise _UploadLost(f"ECR holds {resume:,} bytes, this upload sent {self._sent:,}") from error
            # The part (or its start) arrived, its answer did not, botocore sent it again.
            self.outcome.resumed += 1
            taken = resume - self._sent
            self._sent = resume
            self.outcome.parts += 1
            return part[taken:]
        self._sent += len(part)
        self.outcome.parts += 1
        return bytearray()

    def _check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()

    # ------------------------------------------------------------------ download
    def _url(self) -> str:
        self.outcome.url_fetches += 1
        return ecr.download_url(
            self.source.client, self.source.repository_name, self.blob.digest, self.source.registry_id
        )

    def _download(self) -> Iterator[bytes]:
        """The blob's bytes, from its presigned URL, in pieces; resumed with ``Range`` if cut."""
        size, offset, cuts = self.blob.size, 0, 0
        url, refused_before = self._url(), False
        while offset < size:
            try:
                response = self.downloads.get(url, offset)
            except urllib3.exceptions.HTTPError as error:  # urllib3's retries are spent
                raise ConnectionError(f"downloading blob {self.blob.digest}: {error}") from error
            complete = False
            try:
                if response.status == 403:
                    code, message = _s3_error(response)
                    if refused_before:
                        raise EcrPermanentError(
                            code or "AccessDenied",
                            f"downloading blob {self.blob.digest} of {self.source.repository_name!r}: a new "
                            f"download URL was refused too: {message}",
                        )
                    # Expired (ECR documents no lifetime) or refused: ask for a new URL, once.
                    self.log.info(
                        "Blob %s: download URL refused (%s %s): fetching a new one", self.blob.digest, code, message
                    )
                    url, refused_before = self._url(), True
                    continue
                skip = self._check_answer(response, offset)
                refused_before = False
                for piece in response.stream(CHUNK_BYTES, decode_content=False):
                    if skip:
                        dropped = min(skip, len(piece))
                        piece, skip = piece[dropped:], skip - dropped
                        if not piece:
                            continue
                    offset += len(piece)
                    cuts = 0
                    if offset > size:
                        raise BlobDigestMismatchError(
                            f"blob {self.blob.digest}: the source served more than the {size:,} bytes its "
                            "manifest gives; the copy stopped before completing it and nothing was tagged"
                        )
                    yield piece
                complete = True
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError) as error:
                cuts += 1
                if cuts > MAX_DOWNLOAD_RESUMES:
                    raise ConnectionError(
                        f"downloading blob {self.blob.digest}: cut {cuts} times in a row at byte {offset:,}: {error}"
                    ) from error
                self.outcome.download_resumes += 1
            finally:
                if not complete:
                    response.close()
                response.release_conn()
            if complete and offset < size:
                raise BlobDigestMismatchError(
                    f"blob {self.blob.digest}: the source served {offset:,} of the {size:,} bytes its manifest "
                    "gives; the copy stopped before completing it and nothing was tagged"
                )

    def _check_answer(self, response: urllib3.BaseHTTPResponse, offset: int) -> int:
        """Raise for an answer that is not the blob; the bytes to skip (a server ignoring ``Range``)."""
        if response.status == 206:
            start = (response.headers.get("Content-Range") or "").removeprefix("bytes ").split("-", 1)[0]
            if start != str(offset):
                raise ConnectionError(f"downloading blob {self.blob.digest}: asked for byte {offset}, got {start!r}")
            return 0
        if response.status == 200:
            return offset
        code, message = _s3_error(response)
        if response.status == 416:
            raise BlobDigestMismatchError(
                f"blob {self.blob.digest}: the source has fewer than the {self.blob.size:,} bytes its manifest "
                "gives; the copy stopped before completing it and nothing was tagged"
            )
        if response.status >= 500:  # urllib3's retries are spent: a later retry of the task may succeed
            raise ConnectionError(f"downloading blob {self.blob.digest}: HTTP {response.status} {code} {message}")
        raise EcrPermanentError(
            code or f"HTTP{response.status}",
            f"downloading blob {self.blob.digest} of {self.source.repository_name!r}: HTTP {response.status} {message}",
        )


def _s3_error(response: urllib3.BaseHTTPResponse) -> tuple[str, str]:
    """An S3 error answer's ``Code`` and ``Message`` (its XML body is small)."""
    body = response.read(64 * 1024, decode_content=True)
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", body[:200].decode("utf-8", "replace").strip()
    return root.findtext("Code") or "", root.findtext("Message") or ""


def mib(size: int) -> str:
    """A size for log lines."""
    if size < 1 << 20:
        return f"{size / 1024:,.1f} KiB"
    return f"{size / (1 << 20):,.1f} MiB"
