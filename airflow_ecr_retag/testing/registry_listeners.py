"""The double's loopback listeners: one per registry for the OCI ``/v2/`` API, one for blob URLs.

A client reaches an account's registry in a Region at its own address,
``http://127.0.0.1:<port>``, the stand-in for ``https://<account>.dkr.ecr.<region>.amazonaws.com``:
GetAuthorizationToken's ``proxyEndpoint`` gives it, as ECR's does, and so does
:meth:`EcrDouble.registry_endpoint <airflow_ecr_retag.testing.double.EcrDouble.registry_endpoint>`.
One port per registry, not host-name routing on one port, because ``*.localhost`` names do not
resolve everywhere (glibc without nss-myhostname, Go's resolver in skopeo), and a registry client
addresses a registry by host and port only.

Every listener runs in the process of its double (in-process or serving), on its own thread,
started on first need and stopped with the double; all of them read and write the one store.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from airflow_ecr_retag.testing import blob_urls, distribution_api
from airflow_ecr_retag.testing.server import RunningServer, dropping_connections

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble
    from airflow_ecr_retag.testing.registries import Registry


class Listeners:
    """The listeners of one double, each started the first time it is asked for."""

    def __init__(self, double: EcrDouble):
        self._double = double
        self._registries: dict[Registry, RunningServer] = {}
        self._blob_server: RunningServer | None = None
        self._lock = threading.Lock()

    def registry_endpoint(self, registry: Registry) -> str:
        """The ``/v2/`` address of ``registry``."""
        with self._lock:
            server = self._registries.get(registry)
            if server is None:
                app = dropping_connections(distribution_api.application(self._double, registry))
                server = self._registries[registry] = RunningServer(
                    app, f"ecr-double-{registry.account}-{registry.region}"
                )
            return server.url

    def blob_endpoint(self) -> str:
        """The blob listener's address (the double's S3)."""
        with self._lock:
            if self._blob_server is None:
                app = dropping_connections(blob_urls.application(self._double))
                self._blob_server = RunningServer(app, "ecr-double-blobs")
            return self._blob_server.url

    def registry_at(self, url: str) -> Registry | None:
        """The registry served at ``url`` (an address this double gave out), if any."""
        with self._lock:
            return next((registry for registry, server in self._registries.items() if server.url == url), None)

    def close(self) -> None:
        with self._lock:
            servers = [*self._registries.values(), *([self._blob_server] if self._blob_server else [])]
            self._registries.clear()
            self._blob_server = None
        for server in servers:
            server.stop()
