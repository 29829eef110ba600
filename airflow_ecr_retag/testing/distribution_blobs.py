"""``/v2/`` blobs and uploads, on the blob store and upload sessions the ECR layer calls use.

- GET ``/v2/<name>/blobs/<digest>``: ``307`` to a presigned blob URL, as ECR redirects to S3,
  for a blob an image of the repository references (GetDownloadUrlForLayer's rule); HEAD: ``200``
  with ``Content-Length`` for any blob the repository has (BatchCheckLayerAvailability's);
- uploads: POST (``202`` and a ``Location``), PATCH (in order, else ``416``), PUT ``?digest=``
  (with or without a last chunk), GET (status), DELETE (cancel). A chunk cut short is undone and
  a blob is visible only once its PUT's digest matches: an interrupted upload shows nothing;
- cross-repository mount, POST ``?mount=<digest>&from=<repository>``: ``201`` only when the
  account setting ``BLOB_MOUNTING`` is ``ENABLED``, the source is in the same registry (account
  and Region) and one of its images references the blob; otherwise ``202`` and an upload, as ECR
  does (user guide "blob-mounting", containers-roadmap#2860).
"""

from __future__ import annotations

from typing import Any

from moto.ecr.exceptions import RepositoryNotFoundException
from werkzeug.wrappers import Response

from airflow_ecr_retag.testing.distribution_api import V2Error, V2Request
from airflow_ecr_retag.testing.layer_rules import is_sha256_digest
from airflow_ecr_retag.testing.registries import account_setting
from airflow_ecr_retag.testing.store import images_of, record_blob
from airflow_ecr_retag.testing.upload_sessions import IncompleteChunk, UploadKey, UploadSession, read_stream


def _digest(value: str | None) -> str:
    if not value or not is_sha256_digest(value):
        raise V2Error(400, "DIGEST_INVALID", f"Invalid or unsupported digest '{value}' (sha256 only)")
    return value


def get_blob(request: V2Request) -> Response:
    digest = _digest(request.reference)
    repository = request.repository
    with request.double._lock:
        size = repository.layers.get(digest)
        referenced = digest in images_of(repository).referenced_blobs()
    if size is None:
        raise V2Error(404, "BLOB_UNKNOWN", f"Blob {digest} is not in repository '{repository.name}'")
    headers = {"Docker-Content-Digest": digest}
    if request.http.method == "HEAD":
        headers["Content-Length"] = str(size)
        return Response(None, 200, headers=headers, content_type="application/octet-stream")
    if not referenced:
        raise V2Error(404, "BLOB_UNKNOWN", f"Blob {digest} is not referenced by an image of '{repository.name}'")
    headers["Location"] = request.double.download_url(request.registry, repository.name, digest)
    return Response(b"", 307, headers=headers)


def start_upload(request: V2Request) -> Response:
    mount, source = request.http.args.get("mount"), request.http.args.get("from")
    if mount is not None:
        _digest(mount)
        if source and _mount(request, mount, source):
            return _created(request, mount)
    session = request.double.uploads.start(_key(request))
    return _session_response(request, session, 202)


def _mount(request: V2Request, digest: str, source_name: str) -> bool:
    """Whether ``digest`` can be mounted from ``source_name`` (then it is)."""
    if account_setting(request.registry, "BLOB_MOUNTING") != "ENABLED":
        return False
    try:
        source = request.registry.repository(source_name)
    except RepositoryNotFoundException:
        return False
    with request.double._lock:
        if digest not in images_of(source).referenced_blobs() or request.double.blobs.get(digest) is None:
            return False
        request.repository.layers[digest] = source.layers[digest]
    return True


def patch_upload(request: V2Request) -> Response:
    session = _session(request)
    _append(request, session)
    return _session_response(request, session, 202)


def finish_upload(request: V2Request) -> Response:
    session = _session(request)
    digest = _digest(request.http.args.get("digest"))
    if request.http.content_length or request.http.headers.get("Transfer-Encoding") == "chunked":
        _append(request, session)
    if session.digest != digest:
        raise V2Error(400, "DIGEST_INVALID", f"The uploaded bytes hash to {session.digest}, not {digest}")
    with request.double._lock:
        blob = request.double.uploads.finish(session)
        record_blob(request.repository, blob)
    return _created(request, digest)


def upload_status(request: V2Request) -> Response:
    return _session_response(request, _session(request), 204)


def cancel_upload(request: V2Request) -> Response:
    request.double.uploads.drop(_session(request))
    return Response(None, 204)


def _append(request: V2Request, session: UploadSession) -> None:
    """Add the request body to the upload: where the upload stopped (``Content-Range``, if given,
    must say so), with the length the request announced."""
    length = request.http.content_length
    span = request.http.headers.get("Content-Range")
    if span:
        first, _, last = span.removeprefix("bytes ").partition("-")
        if not (first.isdigit() and last.isdigit()) or int(first) != session.size:
            raise V2Error(416, "BLOB_UPLOAD_INVALID", f"Chunks must continue at byte {session.size}", _range(session))
        if length is not None and int(last) - int(first) + 1 != length:
            raise V2Error(400, "SIZE_INVALID", "Content-Range and Content-Length disagree")
    try:
        session.append(read_stream(request.http.stream, length), length)
    except IncompleteChunk as error:
        raise V2Error(400, "BLOB_UPLOAD_INVALID", f"The chunk was cut short: {error}") from None


def _session(request: V2Request) -> UploadSession:
    session = request.double.uploads.find(request.reference, _key(request))
    if session is None:
        raise V2Error(404, "BLOB_UPLOAD_UNKNOWN", f"Upload {request.reference} is not in progress")
    return session


def _key(request: V2Request) -> UploadKey:
    return UploadKey(request.registry.account, request.registry.region, request.name)


def _range(session: UploadSession) -> dict[str, str]:
    return {"Range": f"0-{max(session.last_byte, 0)}"}


def _session_response(request: V2Request, session: UploadSession, status: int) -> Response:
    headers: dict[str, Any] = {
        "Location": request.location(f"blobs/uploads/{session.upload_id}"),
        "Docker-Upload-UUID": session.upload_id,
        **_range(session),
    }
    return Response(None, status, headers=headers)


def _created(request: V2Request, digest: str) -> Response:
    headers = {"Location": request.location(f"blobs/{digest}"), "Docker-Content-Digest": digest}
    return Response(b"", 201, headers=headers)
