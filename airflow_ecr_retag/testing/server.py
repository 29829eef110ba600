"""The double over HTTP: moto's server on 127.0.0.1, the control API, and :class:`RemoteEcrDouble`.

The server is werkzeug's, run the way werkzeug documents for a server in a thread of one's own
(``make_server`` then ``serve_forever``), around moto's WSGI application built as moto's own
``moto_server`` and ``ThreadedMotoServer`` build it. moto's ``ThreadedMotoServer`` is not used:
it has no way to wrap the application (for the control API and dropped connections) or to
choose the request handler (for quiet logging) short of overriding its private ``_server_entry``.

Requests under ``/_ecr_double/`` go to the control API, which lets tests and benchmarks in
other processes seed and inspect the double; everything else is ECR.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ConnectionClosedError

from airflow_ecr_retag.testing.images import build_image

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

CONTROL_PREFIX = "/_ecr_double/"
_HOST = "127.0.0.1"


# ---------------------------------------------------------------------- control API
def _calls(double: EcrDouble, body: dict[str, Any]) -> Any:
    return {"calls": dict(double.calls), "requests": len(double.requests)}


def _reset_calls(double: EcrDouble, body: dict[str, Any]) -> Any:
    double.reset_calls()
    return {}


def _where(body: dict[str, Any]) -> dict[str, Any]:
    """The registry a control request names: ``registry_id`` and ``region_name``, both optional."""
    return {key: body[key] for key in ("registry_id", "region_name") if body.get(key)}


def _create_repository(double: EcrDouble, body: dict[str, Any]) -> Any:
    double.create_repository(body["repository"], mutability=body.get("mutability", "MUTABLE"), **_where(body))
    return {}


def _seed(double: EcrDouble, body: dict[str, Any]) -> Any:
    return {
        "digests": [
            double.push(
                body["repository"],
                build_image(
                    i.get("kind", "oci"), i["name"], layers=i.get("layers", 2), layer_bytes=i.get("layer_bytes")
                ),
                i.get("tags", []),
                pushed_at=i.get("pushed_at"),
                **_where(body),
            )
            for i in body["images"]
        ]
    }


def _seed_many(double: EcrDouble, body: dict[str, Any]) -> Any:
    return {"digests": double.seed_many(body["repository"], body["images"], **_where(body))}


def _move_tags(double: EcrDouble, body: dict[str, Any]) -> Any:
    for move in body["moves"]:
        double.move_tag(body["repository"], move["tag"], move["digest"], **_where(body))
    # The server's clock, so a test in another process can tell which requests came after the move.
    return {"at": time.time()}


def _tags(double: EcrDouble, body: dict[str, Any]) -> Any:
    return {"tags": double.tags(body["repository"], **_where(body))}


def _blobs(double: EcrDouble, body: dict[str, Any]) -> Any:
    return {"blobs": double.blobs_of(body["repository"], **_where(body))}


def _requests(double: EcrDouble, body: dict[str, Any]) -> Any:
    return {"requests": double.requests_for(body["operation"])}


def _registry(double: EcrDouble, body: dict[str, Any]) -> Any:
    user, password = double.registry_credentials(region_name=body.get("region_name"))
    return {"endpoint": double.registry_endpoint(**_where(body)), "user": user, "password": password}


def _caller_credentials(double: EcrDouble, body: dict[str, Any]) -> Any:
    key, secret = double.caller_credentials(registry_id=body["registry_id"])
    return {"access_key_id": key, "secret_access_key": secret}


def _memory(double: EcrDouble, body: dict[str, Any]) -> Any:
    """The server process's resident memory now and at its peak, in bytes (Linux; None elsewhere).
    ``reset_peak`` starts a new peak from now (``/proc/self/clear_refs``), for benchmarks."""
    try:
        if body.get("reset_peak"):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        return {"rss": None, "peak": None}
    return {name: int(fields[key].split()[0]) * 1024 for name, key in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def _cpu(double: EcrDouble, body: dict[str, Any]) -> Any:
    """The CPU seconds the server process has used (user and system), for benchmarks on a shared machine."""
    times = os.times()
    return {"seconds": times.user + times.system}


_CONTROL_ACTIONS: dict[str, Callable[[EcrDouble, dict[str, Any]], Any]] = {
    "calls": _calls,
    "reset-calls": _reset_calls,
    "create-repository": _create_repository,
    "seed": _seed,
    "seed-many": _seed_many,
    "move-tags": _move_tags,
    "tags": _tags,
    "blobs": _blobs,
    "requests": _requests,
    "registry": _registry,
    "caller-credentials": _caller_credentials,
    "memory": _memory,
    "cpu": _cpu,
}


def _control(double: EcrDouble, environ: dict, start_response: Any) -> list[bytes]:
    """The double's control API, for tests and benchmarks in other processes (see :class:`RemoteEcrDouble`)."""
    action = environ["PATH_INFO"][len(CONTROL_PREFIX) :]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
    perform = _CONTROL_ACTIONS.get(action)
    if perform is None:
        return _json_response(start_response, "404 Not Found", {"error": f"unknown action {action!r}"})
    try:
        result = perform(double, body)
    except Exception as error:  # reported to the caller, who is a test
        return _json_response(start_response, "400 Bad Request", {"error": f"{type(error).__name__}: {error}"})
    return _json_response(start_response, "200 OK", result)


def _json_response(start_response: Any, status: str, document: Any) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(document).encode()]


class RemoteEcrDouble:
    """Drive a double served by another process (``python -m airflow_ecr_retag.testing serve``).

    :param endpoint_url: the server's endpoint, as printed by ``serve``.
    """

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url.rstrip("/")

    def _post(self, action: str, **body: Any) -> Any:
        import urllib.request

        request = urllib.request.Request(
            f"{self.endpoint_url}{CONTROL_PREFIX}{action}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def calls(self) -> Counter[str]:
        return Counter(self._post("calls")["calls"])

    def reset_calls(self) -> None:
        self._post("reset-calls")

    def create_repository(self, repository: str, mutability: str = "MUTABLE", **where: str) -> None:
        """``where``: ``registry_id`` and ``region_name``, as on :class:`EcrDouble`'s helpers."""
        self._post("create-repository", repository=repository, mutability=mutability, **where)

    def seed(self, repository: str, images: list[dict[str, Any]], **where: str) -> list[str]:
        """Push images directly (not counted): each
        ``{"kind", "name", "tags", "pushed_at", "layers", "layer_bytes"}``."""
        return self._post("seed", repository=repository, images=images, **where)["digests"]

    def seed_many(self, repository: str, images: list[dict[str, Any]], **where: str) -> list[str]:
        """Store many small images fast (not counted), as :meth:`EcrDouble.seed_many`: each
        ``{"name", "tags", "pushed_at", "last_pulled", "status"}``."""
        return self._post("seed-many", repository=repository, images=images, **where)["digests"]

    def move_tags(self, repository: str, moves: list[dict[str, str]], **where: str) -> float:
        """Point tags at digests directly, as other actors' pushes would; returns the server's time."""
        return self._post("move-tags", repository=repository, moves=moves, **where)["at"]

    def tags(self, repository: str, **where: str) -> dict[str, str]:
        return self._post("tags", repository=repository, **where)["tags"]

    def blobs_of(self, repository: str, **where: str) -> dict[str, int]:
        """The blobs a repository has, digest -> size."""
        return self._post("blobs", repository=repository, **where)["blobs"]

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        """The parameters of every call of ``operation`` since the last reset, as the double logged them."""
        return self._post("requests", operation=operation)["requests"]

    def memory(self, *, reset_peak: bool = False) -> dict[str, int | None]:
        """The server's resident memory (``rss``) and its peak (``peak``), in bytes."""
        return self._post("memory", reset_peak=reset_peak)

    def cpu_seconds(self) -> float:
        """The CPU time the server process has used so far, in seconds."""
        return self._post("cpu")["seconds"]

    def registry(self, **where: str) -> tuple[str, str, str]:
        """A registry's ``/v2/`` endpoint, user and password (``where``: ``registry_id``, ``region_name``)."""
        answer = self._post("registry", **where)
        return answer["endpoint"], answer["user"], answer["password"]

    def caller_credentials(self, *, registry_id: str) -> tuple[str, str]:
        """An access key id and secret that call as ``registry_id``'s own account (see
        :meth:`EcrDouble.caller_credentials <airflow_ecr_retag.testing.double.EcrDouble.caller_credentials>`)."""
        answer = self._post("caller-credentials", registry_id=registry_id)
        return answer["access_key_id"], answer["secret_access_key"]


# ---------------------------------------------------------------------- the server
class _Dropped(Exception):
    """Raised through werkzeug after the socket was shut, so no response is written."""


def _application(double: EcrDouble) -> Callable[[dict, Any], Any]:
    """moto's WSGI application, with the control API in front and dropped connections made real."""
    # Imported here: moto's server application needs Flask, which in-process doubles never load.
    # These are public names of moto's WSGI module, the ones its `moto_server` command (moto/server.py)
    # serves; moto's docs describe only ThreadedMotoServer, so a moto upgrade past 5.2 is checked here.
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    moto_app = dropping_connections(DomainDispatcherApplication(create_backend_app))

    def application(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
            return _control(double, environ, start_response)
        return moto_app(environ, start_response)

    return application


def dropping_connections(app: Callable[[dict, Any], Any]) -> Callable[[dict, Any], Any]:
    """``app``, where a ``ConnectionClosedError`` (Fault.DROPPED_CONNECTION) closes the client's
    connection with no response, as a network failure would."""

    def application(environ: dict, start_response: Any) -> Any:
        try:
            return app(environ, start_response)
        except ConnectionClosedError:
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            raise _Dropped() from None

    return application


@functools.cache
def _quiet_request_handler(for_moto: bool) -> type:
    """werkzeug's request handler minus its logging; for moto, moto's (it keeps header names moto needs)."""
    if for_moto:
        from moto.moto_server.werkzeug_app import MotoRequestHandler as base
    else:
        from werkzeug.serving import WSGIRequestHandler as base

    class QuietRequestHandler(base):  # type: ignore[valid-type,misc]
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

        def run_wsgi(self) -> None:
            try:
                super().run_wsgi()
            except (_Dropped, OSError):
                self.close_connection = True

        def log_error(self, *args: Any) -> None:
            pass

    return QuietRequestHandler


class RunningServer:
    """A werkzeug server on 127.0.0.1 with a free port, serving from its own thread."""

    def __init__(self, app: Callable[[dict, Any], Any], name: str, *, for_moto: bool = False):
        from werkzeug.serving import make_server

        # Bound and listening on return, so clients may connect before the thread runs (and a bind
        # error is raised here, where ThreadedMotoServer.start would have waited forever).
        self._server = make_server(_HOST, 0, app, threaded=True, request_handler=_quiet_request_handler(for_moto))
        # A dropped connection is deliberate: keep werkzeug from printing it as an error.
        self._server.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        # Close the listening socket too, so the port is free and late clients are refused.
        self._server.server_close()


@contextlib.contextmanager
def serving(double: EcrDouble) -> Iterator[str]:
    """Serve moto on 127.0.0.1 with a free port, dropping connections on request; yields the endpoint."""
    server = RunningServer(_application(double), "ecr-double-server", for_moto=True)
    try:
        yield server.url
    finally:
        server.stop()
