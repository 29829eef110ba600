"""Presigned-style blob URLs: what GetDownloadUrlForLayer returns and ``/v2/`` blob pulls redirect to.

ECR answers both with a presigned Amazon S3 URL, fetched with no credentials; the double's
stand-in for S3 is its *blob listener*, a loopback HTTP server of its own (started on first need,
in-process and serving doubles alike; see :mod:`~airflow_ecr_retag.testing.registry_listeners`).
A URL carries its issue time, lifetime and an HMAC signature under a secret of the double, as
S3's ``X-Amz-*`` query parameters do, and is answered as S3 answers:

- ``200`` (``206`` for a ``Range``) with the blob's bytes, streamed in pieces;
- ``403 AccessDenied`` "Request has expired" once the lifetime is over
  (:attr:`EcrDouble.download_url_seconds <airflow_ecr_retag.testing.double.EcrDouble.download_url_seconds>`,
  on the double's :attr:`~airflow_ecr_retag.testing.double.EcrDouble.clock`);
- ``403 SignatureDoesNotMatch`` for a URL that was altered; ``416 InvalidRange``; errors in S3's XML.

Each request is counted as :data:`BLOB_URL_OPERATION` and can be failed with ``inject``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from airflow_ecr_retag.testing.recording import Fault

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.blob_store import Blob
    from airflow_ecr_retag.testing.double import EcrDouble

#: The operation name under which the double counts (and faults) blob URL requests.
BLOB_URL_OPERATION = "LayerDownload"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_FAULTS = {
    Fault.THROTTLE: ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    Fault.SERVER_ERROR: ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
    Fault.ACCESS_DENIED: ("403 Forbidden", "AccessDenied", "Access Denied"),
}


def presign(double: EcrDouble, endpoint: str, path: str) -> str:
    """A URL of ``path`` on the blob listener, valid for the double's ``download_url_seconds``."""
    issued = time.strftime(_DATE_FORMAT, time.gmtime(double.clock()))
    expires = str(double.download_url_seconds)
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Date": issued,
        "X-Amz-Expires": expires,
        "X-Amz-Signature": _signature(double, path, issued, expires),
    }
    return f"{endpoint}{urllib.parse.quote(path)}?{urllib.parse.urlencode(query)}"


def blob_path(account: str, region: str, repository: str, digest: str) -> str:
    return f"/{account}/{region}/{repository}/{digest}"


def _signature(double: EcrDouble, path: str, issued: str, expires: str) -> str:
    message = f"{path}\n{issued}\n{expires}".encode()
    return hmac.new(double.url_secret, message, hashlib.sha256).hexdigest()


def application(double: EcrDouble) -> Callable[[dict, Any], Iterable[bytes]]:
    """The blob listener's WSGI application."""

    def serve(environ: dict, start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        params = {"path": path, **{k: v for k, v in query.items() if k != "X-Amz-Signature"}}
        fault = double.on_http_request(BLOB_URL_OPERATION, params, environ.get("HTTP_USER_AGENT", ""))
        if fault is not None:
            return _fault(fault, start_response)
        refusal = _check_url(double, path, query)
        if refusal is not None:
            return _error(start_response, *refusal)
        blob = double.blobs.get(path.rsplit("/", 1)[-1])
        if blob is None:
            return _error(start_response, "404 Not Found", "NoSuchKey", "The specified key does not exist.")
        return _serve_blob(blob, environ, start_response)

    return serve


def _check_url(double: EcrDouble, path: str, query: dict[str, str]) -> tuple[str, str, str] | None:
    """What S3 refuses a URL for: an altered or incomplete signature, then an expired one."""
    issued, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
    expected = _signature(double, path, issued, expires)
    if not hmac.compare_digest(expected, query.get("X-Amz-Signature", "")):
        return (
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    issued_at = calendar.timegm(time.strptime(issued, _DATE_FORMAT))
    if double.clock() > issued_at + int(expires):
        return "403 Forbidden", "AccessDenied", "Request has expired"
    return None


def _serve_blob(blob: Blob, environ: dict, start_response: Any) -> Iterable[bytes]:
    start, end = 0, blob.size
    status = "200 OK"
    wanted = environ.get("HTTP_RANGE")
    if wanted:
        span = _range(wanted, blob.size)
        if span is None:
            unsatisfiable = "The requested range is not satisfiable"
            return _error(start_response, "416 Requested Range Not Satisfiable", "InvalidRange", unsatisfiable)
        start, end = span
        status = "206 Partial Content"
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(end - start)),
        ("Accept-Ranges", "bytes"),
        ("ETag", f'"{blob.digest.split(":", 1)[-1][:32]}"'),
    ]
    if status.startswith("206"):
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{blob.size}"))
    start_response(status, headers)
    if environ.get("REQUEST_METHOD") == "HEAD":
        return []
    return blob.chunks(start, end)


def _range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as [start, end) within ``size``, or None when it cannot be served."""
    match = _RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(size, int(last) + 1) if last else size
    return (start, end) if start < end else None


def _fault(fault: Fault, start_response: Any) -> Iterable[bytes]:
    if fault is Fault.DROPPED_CONNECTION:
        from botocore.exceptions import ConnectionClosedError

        raise ConnectionClosedError(endpoint_url="blob listener")
    return _error(start_response, *_FAULTS[fault])


def _error(start_response: Any, status: str, code: str, message: str) -> list[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]
