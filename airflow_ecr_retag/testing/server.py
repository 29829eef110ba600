"""The double over HTTP: moto's server on 127.0.0.1 and the control API that :class:`RemoteEcrDouble` drives.

The server is werkzeug's, run the way werkzeug documents for a server in a thread of one's own
(``make_server`` then ``serve_forever``), around moto's WSGI application built as moto's own
``moto_server`` and ``ThreadedMotoServer`` build it. moto's ``ThreadedMotoServer`` is not used:
it has no way to wrap the application (for the control API and dropped connections) or to
choose the request handler (for quiet logging) short of overriding its private ``_server_entry``.

Requests under ``/_ecr_double/`` go to the control API, which lets tests and benchmarks in
other processes seed and inspect the double (:mod:`~airflow_ecr_retag.testing.remote_double`,
over the encoding of :mod:`~airflow_ecr_retag.testing.wire`); everything else is ECR.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ConnectionClosedError

from airflow_ecr_retag.testing import wire
from airflow_ecr_retag.testing.remote_double import RemoteEcrDouble
from airflow_ecr_retag.testing.wire import CONTROL_PREFIX, SHARED_METHODS, SHARED_PROPERTIES, SHARED_SETTINGS

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

# RemoteEcrDouble lives in remote_double.py; imported from here as it always was.
__all__ = ["CONTROL_PREFIX", "RemoteEcrDouble", "RunningServer", "dropping_connections", "serving"]

_HOST = "127.0.0.1"


# ---------------------------------------------------------------------- control API
def _call(double: EcrDouble, body: dict[str, Any]) -> Any:
    """One helper of the shared API (``wire.SHARED_METHODS``), or a shared attribute's value."""
    name = body["name"]
    if name in SHARED_PROPERTIES or name in SHARED_SETTINGS:
        return {"result": wire.encode(getattr(double, name))}
    if name not in SHARED_METHODS:
        raise ValueError(f"{name!r} is not a helper a served double runs for another process")
    result = getattr(double, name)(*wire.decode(body.get("args", [])), **wire.decode(body.get("kwargs", {})))
    return {"result": wire.encode(result)}


def _set(double: EcrDouble, body: dict[str, Any]) -> Any:
    """Set one of ``wire.SHARED_SETTINGS`` (``scan_seconds``, ...)."""
    if body["name"] not in SHARED_SETTINGS:
        raise ValueError(f"{body['name']!r} is not a setting of the double")
    setattr(double, body["name"], wire.decode(body["value"]))
    return {}


def _registry(double: EcrDouble, body: dict[str, Any]) -> Any:
    where = {key: body[key] for key in ("registry_id", "region_name") if body.get(key)}
    user, password = double.registry_credentials(region_name=body.get("region_name"))
    return {"endpoint": double.registry_endpoint(**where), "user": user, "password": password}


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
    "call": _call,
    "set": _set,
    "registry": _registry,
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
    except Exception as error:  # reported to the caller, who is a test: RemoteEcrDouble raises it again
        try:
            arguments = wire.encode(list(error.args))
        except TypeError:  # arguments JSON cannot carry: the message alone
            arguments = [str(error)]
        answer = {"error": str(error), "type": type(error).__name__, "args": arguments}
        return _json_response(start_response, "400 Bad Request", answer)
    return _json_response(start_response, "200 OK", result)


def _json_response(start_response: Any, status: str, document: Any) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(document).encode()]


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
