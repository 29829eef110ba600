"""A minimal OCI distribution client over urllib, for the ``/v2/`` tests (no redirects followed
unless asked, so tests see what the registry answered)."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return self.json()["errors"][0]["code"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class OciClient:
    def __init__(self, endpoint: str, user: str | None = None, password: str | None = None):
        self.endpoint = endpoint.rstrip("/")
        self.auth = None
        if user is not None:
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    @classmethod
    def for_token(cls, authorization_data: dict) -> OciClient:
        user, password = base64.b64decode(authorization_data["authorizationToken"]).decode().split(":", 1)
        return cls(authorization_data["proxyEndpoint"], user, password)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, follow=False):
        url = path if path.startswith("http") else f"{self.endpoint}{path}"
        all_headers = {**({"Authorization": self.auth} if self.auth else {}), **(headers or {})}
        request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=60) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), error.read())

    # ------------------------------------------------------------ pushing
    def push_blob(self, name: str, data: bytes) -> str:
        """POST then monolithic PUT; returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self.request("POST", f"/v2/{name}/blobs/uploads/")
        assert started.status == 202, started
        finished = self.request("PUT", f"{started.headers['Location']}?digest={digest}", data)
        assert finished.status == 201, finished
        return digest

    def push_image(self, name: str, image, tag: str | None = None) -> Answer:
        """Every blob and child, then the manifest (by tag, or by digest without one)."""
        for child in image.children:
            self.push_image(name, child)
        for blob in image.blobs.values():
            self.push_blob(name, b"".join(blob.chunks()))
        reference = tag or image.digest
        headers = {"Content-Type": image.media_type}
        return self.request("PUT", f"/v2/{name}/manifests/{reference}", image.manifest.encode(), headers)
