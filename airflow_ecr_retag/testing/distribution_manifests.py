"""``/v2/`` manifests, tags and referrers, on the store PutImage and BatchGetImage use.

- GET / HEAD ``/v2/<name>/manifests/<tag-or-digest>``: the stored bytes, or the translation
  BatchGetImage would serve for the ``Accept`` header (the same rule,
  :func:`~airflow_ecr_retag.testing.request_rules.manifest_as_accepted`), with
  ``Docker-Content-Digest`` of the bytes served;
- PUT: PutImage's rules in PutImage's order (:func:`~airflow_ecr_retag.testing.handlers.put_image`),
  their errors as the spec's codes; a push that changes nothing succeeds, as a re-push does;
- ``/v2/<name>/tags/list`` (``n``, ``last``, ``Link``) and ``/v2/<name>/referrers/<digest>``
  (``artifactType``).
"""

from __future__ import annotations

import json

from werkzeug.wrappers import Response

from airflow_ecr_retag.core.limits import MAX_MANIFEST_CHARS
from airflow_ecr_retag.core.manifests import MANIFEST_MEDIA_TYPES, OCI_INDEX, manifest_digest
from airflow_ecr_retag.testing import image_status, referrers
from airflow_ecr_retag.testing import request_rules as rules
from airflow_ecr_retag.testing.distribution_api import V2Error, V2Request, from_ecr_error
from airflow_ecr_retag.testing.handlers import put_image
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.store import StoredImage, images_of


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _check_reference(reference: str) -> None:
    if _is_digest(reference):
        if not rules.is_image_digest(reference):
            raise V2Error(400, "DIGEST_INVALID", f"Invalid digest '{reference}'")
    elif not rules.is_image_tag(reference):
        raise V2Error(400, "TAG_INVALID", f"Invalid tag '{reference}'")


def _accepted(header: str | None) -> list[str]:
    """The media types of an ``Accept`` header (parameters dropped); every type when it has none."""
    types = [part.split(";", 1)[0].strip() for part in (header or "").split(",")]
    types = [t for t in types if t and t != "*/*"]
    return types or list(MANIFEST_MEDIA_TYPES)


def get_manifest(request: V2Request) -> Response:
    reference = request.reference
    _check_reference(reference)
    image_id = {"imageDigest": reference} if _is_digest(reference) else {"imageTag": reference}
    with request.double._lock:
        image, _ = rules.find_image(images_of(request.repository), image_id)
        now = request.double.clock()
        if image is not None and not image_status.pullable(image, now):
            raise V2Error(404, "MANIFEST_UNKNOWN", f"Requested image is {image.status_at(now)}")
    if image is None:
        raise V2Error(404, "MANIFEST_UNKNOWN", "Requested image not found")
    accepted = _accepted(request.http.headers.get("Accept"))
    if image.media_type not in MANIFEST_MEDIA_TYPES:
        accepted.append(image.media_type)  # schema 1 and the like: served as stored
    served = rules.manifest_as_accepted(image, accepted, by_digest=_is_digest(reference))
    if served is None:
        reason = f"Requested image's manifest media type '{image.media_type}' is not in the Accept header"
        raise V2Error(404, "MANIFEST_UNKNOWN", reason)
    manifest, media_type = served
    body = manifest.encode()
    headers = {"Docker-Content-Digest": manifest_digest(manifest), "Content-Length": str(len(body))}
    if request.http.method == "HEAD":
        return Response(None, 200, headers=headers, content_type=media_type)
    with request.double._lock:
        image_status.record_pull(image, now)
    return Response(body, 200, headers=headers, content_type=media_type)


def put_manifest(request: V2Request) -> Response:
    reference = request.reference
    _check_reference(reference)
    raw = request.http.stream.read(MAX_MANIFEST_CHARS * 4 + 1)
    try:
        manifest = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise V2Error(400, "MANIFEST_INVALID", "The manifest is not UTF-8 text") from None
    if len(manifest) > MAX_MANIFEST_CHARS:
        raise V2Error(413, "MANIFEST_INVALID", f"Manifests are at most {MAX_MANIFEST_CHARS} characters")
    declared = (request.http.headers.get("Content-Type") or "").split(";", 1)[0].strip() or None
    tag, digest = (None, reference) if _is_digest(reference) else (reference, None)
    image = _put(request, manifest, declared, tag, digest)
    headers = {"Location": request.location(f"manifests/{image.digest}"), "Docker-Content-Digest": image.digest}
    if image.subject:
        headers["OCI-Subject"] = image.subject
    return Response(b"", 201, headers=headers)


def _put(request: V2Request, manifest: str, declared: str | None, tag: str | None, digest: str | None) -> StoredImage:
    try:
        return put_image(request.double, request.repository, manifest, declared, tag, digest)
    except EcrError as error:
        if error.code != "ImageAlreadyExistsException":
            raise from_ecr_error(error) from None
    # The same manifest (and tag) again: nothing to change, and a registry push succeeds.
    with request.double._lock:
        return images_of(request.repository).by_digest[manifest_digest(manifest)]


def list_tags(request: V2Request) -> Response:
    with request.double._lock:
        tags = sorted(images_of(request.repository).by_tag)
    last = request.http.args.get("last")
    if last:
        tags = [t for t in tags if t > last]
    count = request.http.args.get("n")
    headers = {}
    if count is not None:
        if not count.isdigit():
            raise V2Error(400, "UNSUPPORTED", f"n must be a non-negative integer, not '{count}'")
        more = len(tags) > int(count) > 0
        tags = tags[: int(count)]
        if more:
            headers["Link"] = f'<{request.location("tags/list")}?n={count}&last={tags[-1]}>; rel="next"'
    body = json.dumps({"name": request.name, "tags": tags})
    return Response(body, 200, headers=headers, content_type="application/json")


def list_referrers(request: V2Request) -> Response:
    subject = request.reference
    if not rules.is_image_digest(subject):
        raise V2Error(400, "DIGEST_INVALID", f"Invalid digest '{subject}'")
    kind = request.http.args.get("artifactType")
    found = referrers.referrers(request.double, request.repository, subject, [kind] if kind else [])
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [referrers.descriptor(i) for i in found]}
    headers = {"OCI-Filters-Applied": "artifactType"} if kind else {}
    return Response(json.dumps(index), 200, headers=headers, content_type=OCI_INDEX)
