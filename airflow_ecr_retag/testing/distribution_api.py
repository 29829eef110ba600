"""The OCI distribution API (``/v2/``) of one registry of the double, on the store the ECR API uses.

Each registry (account and Region) is served on its own loopback listener
(:mod:`~airflow_ecr_retag.testing.registry_listeners`). A request goes through, in order:

1. the route: :data:`ROUTES` names its operation (:data:`OPERATIONS`), under which it is counted
   and logged, and ``inject`` / ``before_call`` reach it, as for ECR calls;
2. ECR's authentication: HTTP Basic with user ``AWS`` and a GetAuthorizationToken password
   (:mod:`~airflow_ecr_retag.testing.registry_auth`); without one, ``401`` and a
   ``WWW-Authenticate: Basic`` challenge;
3. the repository name and the registry's repository (``NAME_INVALID``, ``NAME_UNKNOWN``);
4. the handler (:mod:`~airflow_ecr_retag.testing.distribution_manifests`,
   :mod:`~airflow_ecr_retag.testing.distribution_blobs`), which raises :class:`V2Error` for the
   spec's error codes and maps PutImage's rules to them (:data:`ECR_TO_OCI`).

A new endpoint is a row of :data:`ROUTES` and a handler taking a :class:`V2Request`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moto.ecr.exceptions import RepositoryNotFoundException
from werkzeug.wrappers import Request, Response

from airflow_ecr_retag.testing import registry_auth
from airflow_ecr_retag.testing.recording import Fault
from airflow_ecr_retag.testing.request_rules import EcrError

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble
    from airflow_ecr_retag.testing.registries import Registry

# The distribution spec's repository name grammar (ECR's too).
NAME_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")


class V2Error(Exception):
    """An error response of the distribution API: status, the spec's code, a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> Response:
        body = json.dumps({"errors": [{"code": self.code, "message": self.message, "detail": None}]})
        return Response(body, self.status, headers=self.headers, content_type="application/json")


#: PutImage's ECR errors as ``/v2/`` manifest pushes answer them: status and the spec's code
#: (``TAG_INVALID`` is the legacy Docker code the spec lets registries send, and the one ECR sends).
ECR_TO_OCI: dict[str, tuple[int, str]] = {
    "InvalidParameterException": (400, "MANIFEST_INVALID"),
    "ImageDigestDoesNotMatchException": (400, "DIGEST_INVALID"),
    "LayersNotFoundException": (400, "MANIFEST_BLOB_UNKNOWN"),
    "ReferencedImagesNotFoundException": (400, "MANIFEST_BLOB_UNKNOWN"),
    "ImageTagAlreadyExistsException": (400, "TAG_INVALID"),
    "RepositoryNotFoundException": (404, "NAME_UNKNOWN"),
}


def from_ecr_error(error: EcrError) -> V2Error:
    status, code = ECR_TO_OCI.get(error.code, (400, "UNSUPPORTED"))
    return V2Error(status, code, error.message)


@dataclass
class V2Request:
    """One ``/v2/`` request, routed: the double, the registry, the repository and the path's parts."""

    double: EcrDouble
    registry: Registry
    http: Request
    operation: str
    name: str = ""
    reference: str = ""
    repository: Any = None

    def location(self, suffix: str) -> str:
        return f"/v2/{self.name}/{suffix}"


Handler = Callable[[V2Request], Response]


def _routes() -> list[tuple[re.Pattern[str], dict[str, tuple[str, Handler]]]]:
    from airflow_ecr_retag.testing import distribution_blobs as blobs
    from airflow_ecr_retag.testing import distribution_manifests as manifests

    def route(pattern: str) -> re.Pattern[str]:
        return re.compile(f"^/v2/{pattern}$")

    return [
        (route("?"), {"GET": ("V2CheckApi", lambda request: Response("{}", 200, content_type="application/json"))}),
        (
            route("(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
            {
                "GET": ("V2GetManifest", manifests.get_manifest),
                "HEAD": ("V2HeadManifest", manifests.get_manifest),
                "PUT": ("V2PutManifest", manifests.put_manifest),
                "DELETE": ("V2DeleteManifest", _unsupported),
            },
        ),
        (route("(?P<name>.+)/blobs/uploads/?"), {"POST": ("V2StartUpload", blobs.start_upload)}),
        (
            route("(?P<name>.+)/blobs/uploads/(?P<reference>[^/]+)"),
            {
                "PATCH": ("V2PatchUpload", blobs.patch_upload),
                "PUT": ("V2FinishUpload", blobs.finish_upload),
                "GET": ("V2UploadStatus", blobs.upload_status),
                "DELETE": ("V2CancelUpload", blobs.cancel_upload),
            },
        ),
        (
            route("(?P<name>.+)/blobs/(?P<reference>[^/]+)"),
            {
                "GET": ("V2GetBlob", blobs.get_blob),
                "HEAD": ("V2HeadBlob", blobs.get_blob),
                "DELETE": ("V2DeleteBlob", _unsupported),
            },
        ),
        (route("(?P<name>.+)/tags/list"), {"GET": ("V2ListTags", manifests.list_tags)}),
        (route("(?P<name>.+)/referrers/(?P<reference>[^/]+)"), {"GET": ("V2ListReferrers", manifests.list_referrers)}),
    ]


def _unsupported(request: V2Request) -> Response:
    raise V2Error(405, "UNSUPPORTED", f"{request.http.method} is not supported on this endpoint by the double")


def operations() -> frozenset[str]:
    """Every operation name a ``/v2/`` request is counted under."""
    return frozenset(op for _, methods in _routes() for op, _ in methods.values()) | {"V2Unsupported"}


_FAULTS = {
    Fault.THROTTLE: V2Error(429, "TOOMANYREQUESTS", "Rate exceeded", {"Retry-After": "1"}),
    Fault.SERVER_ERROR: V2Error(500, "UNKNOWN", "Injected server error"),
    Fault.ACCESS_DENIED: V2Error(403, "DENIED", "User: arn:aws:iam::123456789012:user/test is not authorized"),
}


def application(double: EcrDouble, registry: Registry) -> Callable[[dict, Any], Iterable[bytes]]:
    """The WSGI application of ``registry``'s ``/v2/`` listener."""
    routes = _routes()

    def serve(environ: dict, start_response: Any) -> Iterable[bytes]:
        http = Request(environ)
        try:
            response = _dispatch(double, registry, routes, http)
        except V2Error as error:
            response = error.response()
        return response(environ, start_response)

    return serve


def _dispatch(double: EcrDouble, registry: Registry, routes: list, http: Request) -> Response:
    request = _route(double, registry, routes, http)
    params = {"method": http.method, "path": http.path, "query": http.query_string.decode(), "region": registry.region}
    fault = double.on_http_request(
        request.operation, {"registryId": registry.account, **params}, http.user_agent.string
    )
    if fault is Fault.DROPPED_CONNECTION:
        from botocore.exceptions import ConnectionClosedError

        raise ConnectionClosedError(endpoint_url=http.host_url)
    if fault is not None:
        raise _FAULTS[fault]
    _authenticate(double, registry, http)
    if request.handler is None:
        raise V2Error(404 if request.operation == "V2Unsupported" else 405, "UNSUPPORTED", "unsupported request")
    if request.name:
        request.repository = _repository(registry, request.name)
    return request.handler(request)


@dataclass
class _Routed(V2Request):
    handler: Handler | None = None


def _route(double: EcrDouble, registry: Registry, routes: list, http: Request) -> _Routed:
    for pattern, methods in routes:
        match = pattern.match(http.path)
        if match is None:
            continue
        operation, handler = methods.get(http.method, ("V2Unsupported", None))
        parts = match.groupdict()
        return _Routed(
            double, registry, http, operation, parts.get("name", ""), parts.get("reference", ""), None, handler
        )
    return _Routed(double, registry, http, "V2Unsupported")


def _authenticate(double: EcrDouble, registry: Registry, http: Request) -> None:
    refusal = registry_auth.check_credentials(double, registry, http.headers.get("Authorization"))
    if refusal == "expired":
        raise V2Error(403, "DENIED", "Your authorization token has expired. Reauthenticate and try again.")
    if refusal is not None:
        challenge = f'Basic realm="https://{registry.host}/",service="ecr.amazonaws.com"'
        raise V2Error(401, "UNAUTHORIZED", "Not Authorized", {"WWW-Authenticate": challenge})


def _repository(registry: Registry, name: str) -> Any:
    if not NAME_RE.match(name) or not 2 <= len(name) <= 256:
        raise V2Error(400, "NAME_INVALID", f"Invalid repository name '{name}'")
    try:
        return registry.repository(name)
    except RepositoryNotFoundException:
        raise V2Error(
            404,
            "NAME_UNKNOWN",
            f"The repository with name '{name}' does not exist in the registry with id '{registry.account}'",
        ) from None
