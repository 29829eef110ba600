"""Benchmark 5: the ECR double's blob throughput on loopback, and its memory while it streams.

Against the double's server in its own process: one image seeded with a generated layer
(``layer_bytes``), downloaded through GetDownloadUrlForLayer's URL and through ``/v2/`` (a 307 to
that URL, followed as registry clients do), then uploaded through the ECR layer calls (10 MiB
parts) and through ``/v2/`` (POST, then one streamed PUT). The client hashes what it reads, as a
registry client does, and never holds a whole blob. The server's peak resident memory is reset
before each transfer and read after it (``/proc/self/clear_refs``, ``VmHWM``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import time
import urllib.parse
from collections.abc import Iterable

import boto3

from airflow_ecr_retag.testing.blob_store import GeneratedBlob
from benchmarks.common import table

MIB = 1 << 20
REPO = "bench/blobs"
PIECE = MIB


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=600), path


def _download(url: str, headers: dict[str, str], follow: bool) -> tuple[int, str]:
    """GET ``url`` (following one redirect when asked), hashing the body as it streams."""
    connection, path = _connection(url)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    if follow and response.status in (301, 302, 307):
        response.read()
        connection.close()
        return _download(response.headers["Location"], {}, follow=False)
    hasher, size = hashlib.sha256(), 0
    while piece := response.read(PIECE):
        hasher.update(piece)
        size += len(piece)
    connection.close()
    return size, "sha256:" + hasher.hexdigest()


def _send(
    url: str, method: str, body: Iterable[bytes], length: int, headers: dict[str, str]
) -> http.client.HTTPResponse:
    connection, path = _connection(url)
    connection.putrequest(method, path)
    for name, value in {**headers, "Content-Length": str(length), "Content-Type": "application/octet-stream"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    for piece in body:
        connection.send(piece)
    response = connection.getresponse()
    response.read()
    return response


def _measured(remote, transfer) -> dict:
    remote.memory(reset_peak=True)
    before = remote.memory()["rss"]
    started = time.perf_counter()
    outcome = transfer()
    seconds = time.perf_counter() - started
    peak = remote.memory()["peak"]
    growth = peak - before if peak is not None and before is not None else None
    return {**outcome, "seconds": seconds, "rss_growth": growth}


def run(endpoint: str, remote, layer_mib: int = 1024, upload_mib: int = 256) -> dict:
    client = boto3.client("ecr", endpoint_url=endpoint)
    remote.create_repository(REPO)
    remote.seed(REPO, [{"kind": "oci", "name": f"blobs-{layer_mib}", "tags": ["big"], "layer_bytes": layer_mib * MIB}])
    manifest = json.loads(
        client.batch_get_image(repositoryName=REPO, imageIds=[{"imageTag": "big"}])["images"][0]["imageManifest"]
    )
    layer = max(manifest["layers"], key=lambda d: d["size"])
    registry, user, password = remote.registry()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def via_download_url() -> dict:
        url = client.get_download_url_for_layer(repositoryName=REPO, layerDigest=layer["digest"])["downloadUrl"]
        size, digest = _download(url, {}, follow=False)
        return {"bytes": size, "digest_ok": digest == layer["digest"]}

    def via_v2() -> dict:
        size, digest = _download(f"{registry}/v2/{REPO}/blobs/{layer['digest']}", auth, follow=True)
        return {"bytes": size, "digest_ok": digest == layer["digest"]}

    upload = GeneratedBlob(f"upload-{upload_mib}".encode(), upload_mib * MIB)
    results = {
        "layer_bytes": layer["size"],
        "GetDownloadUrlForLayer URL": _measured(remote, via_download_url),
        "/v2/ GET blob (307, then the URL)": _measured(remote, via_v2),
        "ECR layer calls (10 MiB parts)": _measured(remote, lambda: _upload_ecr(client, upload)),
        "/v2/ POST then streamed PUT": _measured(remote, lambda: _upload_v2(registry, auth, upload)),
    }
    return results


def _upload_ecr(client, blob: GeneratedBlob) -> dict:
    upload_id = client.initiate_layer_upload(repositoryName=REPO)["uploadId"]
    part_size, first = 10 * MIB, 0
    while first < blob.size:
        part = b"".join(blob.chunks(first, first + part_size))
        client.upload_layer_part(
            repositoryName=REPO,
            uploadId=upload_id,
            partFirstByte=first,
            partLastByte=first + len(part) - 1,
            layerPartBlob=part,
        )
        first += len(part)
    done = client.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[blob.digest])
    return {"bytes": blob.size, "digest_ok": done["layerDigest"] == blob.digest}


def _upload_v2(registry: str, auth: dict[str, str], blob: GeneratedBlob) -> dict:
    started = _send(f"{registry}/v2/{REPO}/blobs/uploads/", "POST", [], 0, auth)
    location = started.headers["Location"]
    finished = _send(f"{registry}{location}?digest={blob.digest}", "PUT", blob.chunks(), blob.size, auth)
    ok = finished.status == 201 and finished.headers.get("Docker-Content-Digest") == blob.digest
    return {"bytes": blob.size, "digest_ok": ok}


def report(results: dict) -> str:
    rows = []
    for name, outcome in results.items():
        if not isinstance(outcome, dict):
            continue
        mib = outcome["bytes"] / MIB
        growth = outcome["rss_growth"]
        rows.append(
            [
                name,
                f"{mib:,.0f} MiB",
                f"{outcome['seconds']:.2f} s",
                f"{mib / outcome['seconds']:,.0f} MiB/s",
                "-" if growth is None else f"{growth / MIB:+.1f} MiB",
                "yes" if outcome["digest_ok"] else "NO",
            ]
        )
    return table(["transfer", "size", "time", "throughput", "server peak RSS growth", "digest verified"], rows)
