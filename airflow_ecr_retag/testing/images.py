"""Realistic image manifests for tests and demos, and pushing them through the ECR API.

Every built image has its own config and layer blobs, so distinct names give distinct
digests. Manifests are serialised with a three-space indent, as ``docker push`` does, so
code that re-serialises JSON changes the bytes and is caught by digest checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_ecr_retag.core.manifests import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    manifest_digest,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

#: The kinds of image :func:`build_image` makes.
IMAGE_KINDS = ("docker", "oci", "oci-no-mediatype", "oci-index", "docker-list")
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")


@dataclass(frozen=True)
class BuiltImage:
    """A manifest ready for PutImage, with the blobs and child manifests it references."""

    manifest: str
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    children: tuple[BuiltImage, ...] = ()

    @property
    def digest(self) -> str:
        return manifest_digest(self.manifest)

    @property
    def has_media_type_field(self) -> bool:
        return "mediaType" in json.loads(self.manifest)


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=3)


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def _single(
    name: str, *, oci: bool, with_media_type: bool = True, platform: str = "linux/amd64", layers: int = 2
) -> BuiltImage:
    os_name, arch = platform.split("/", 1)
    flavour = ("oci" if oci else "docker") + ("" if with_media_type else "-bare")
    layer_blobs = [f"{name}|{flavour}|{platform}|layer-{i}".encode() * 8 for i in range(layers)]
    diff_ids = ["sha256:" + hashlib.sha256(b"diff" + data).hexdigest() for data in layer_blobs]
    config = json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "config": {"Labels": {"name": name, "flavour": flavour}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    config_digest, config_size = _blob(config)
    document: dict[str, Any] = {"schemaVersion": 2}
    if not oci:
        document["mediaType"] = DOCKER_MANIFEST
    elif with_media_type:
        document["mediaType"] = OCI_MANIFEST
    document["config"] = {
        "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
        "size": config_size,
        "digest": config_digest,
    }
    document["layers"] = []
    blobs = {config_digest: config}
    for data in layer_blobs:
        digest, size = _blob(data)
        blobs[digest] = data
        document["layers"].append({"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": size, "digest": digest})
    return BuiltImage(manifest=_dump(document), media_type=OCI_MANIFEST if oci else DOCKER_MANIFEST, blobs=blobs)


def _index(name: str, *, oci: bool, platforms: Iterable[str]) -> BuiltImage:
    # The children are images of their own: their blobs differ from a single-platform build.
    children = tuple(_single(f"{name}+index", oci=oci, platform=p) for p in platforms)
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": child.media_type,
                "size": len(child.manifest.encode()),
                "digest": child.digest,
                "platform": {"architecture": p.split("/", 1)[1], "os": p.split("/", 1)[0]},
            }
            for child, p in zip(children, platforms, strict=True)
        ],
    }
    return BuiltImage(manifest=_dump(document), media_type=media_type, children=children)


def build_image(kind: str = "oci", name: str = "app", *, platforms: Iterable[str] = DEFAULT_PLATFORMS) -> BuiltImage:
    """Build a realistic image of one of :data:`IMAGE_KINDS`.

    :param kind: ``docker`` (Docker v2 schema 2), ``oci``, ``oci-no-mediatype`` (an OCI
        manifest without the optional top-level ``mediaType``), ``oci-index`` or
        ``docker-list`` (multi-arch, with one child per platform).
    :param name: distinct names give distinct blobs and so distinct digests.
    :param platforms: the platforms of a multi-arch image.
    """
    platforms = tuple(platforms)
    if kind == "docker":
        return _single(name, oci=False)
    if kind == "oci":
        return _single(name, oci=True)
    if kind == "oci-no-mediatype":
        return _single(name, oci=True, with_media_type=False)
    if kind == "oci-index":
        return _index(name, oci=True, platforms=platforms)
    if kind == "docker-list":
        return _index(name, oci=False, platforms=platforms)
    raise ValueError(f"kind must be one of {', '.join(IMAGE_KINDS)}, not {kind!r}")


def push_image(
    client: Any, repository_name: str, image: BuiltImage, tags: Iterable[str] = (), *, registry_id: str | None = None
) -> str:
    """Push an image through the ECR API, as ``docker push`` would: blobs, children, then tags.

    Works against the double (in-process or over HTTP) and against real ECR. Blobs already
    in the repository are not uploaded again. Returns the image digest.
    """
    registry = {"registryId": registry_id} if registry_id else {}
    for child in image.children:
        push_image(client, repository_name, child, registry_id=registry_id)
    if image.blobs:
        available = client.batch_check_layer_availability(
            repositoryName=repository_name, layerDigests=list(image.blobs), **registry
        )
        present = {
            layer["layerDigest"] for layer in available["layers"] if layer.get("layerAvailability") == "AVAILABLE"
        }
        for digest, data in image.blobs.items():
            if digest in present:
                continue
            upload = client.initiate_layer_upload(repositoryName=repository_name, **registry)
            client.upload_layer_part(
                repositoryName=repository_name,
                uploadId=upload["uploadId"],
                partFirstByte=0,
                partLastByte=len(data) - 1,
                layerPartBlob=data,
                **registry,
            )
            client.complete_layer_upload(
                repositoryName=repository_name, uploadId=upload["uploadId"], layerDigests=[digest], **registry
            )
    put = {
        "repositoryName": repository_name,
        "imageManifest": image.manifest,
        "imageManifestMediaType": image.media_type,
        "imageDigest": image.digest,
        **registry,
    }
    for tag in list(tags) or [None]:
        with contextlib.suppress(client.exceptions.ImageAlreadyExistsException):
            client.put_image(**put, **({"imageTag": tag} if tag else {}))
    return image.digest
