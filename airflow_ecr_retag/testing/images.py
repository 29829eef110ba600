"""Realistic images for tests and demos, pushing them through the ECR API, and OCI layouts.

Every built image has its own config and layer blobs, with real bytes, so distinct names give
distinct digests: each layer is a gzip'd tar of one file (``tar`` only, and generated on the fly,
when ``layer_bytes`` asks for big ones: :mod:`~airflow_ecr_retag.testing.blob_store`). Manifests
are serialised with a three-space indent, as ``docker push`` does, so code that re-serialises
JSON changes the bytes and is caught by digest checks.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_ecr_retag.core.manifests import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_EMPTY_BLOB,
    OCI_EMPTY_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    manifest_digest,
)
from airflow_ecr_retag.testing.blob_store import Blob, BytesBlob, GeneratedBlob

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: The kinds of image :func:`build_image` makes.
IMAGE_KINDS = ("docker", "oci", "oci-no-mediatype", "oci-index", "docker-list")
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
#: The manifest annotation that tells apart the variants of one image (:func:`build_variant`).
VARIANT_ANNOTATION = "dev.airflow-ecr-retag.variant"


@dataclass(frozen=True)
class BuiltImage:
    """A manifest ready for PutImage, with the blobs and child manifests it references."""

    manifest: str
    media_type: str
    #: The config and layer blobs, by digest (``bytes(...)`` is not offered: a blob may be big;
    #: read one with ``blob_store.read_all`` or stream it with ``.chunks()``).
    blobs: dict[str, Blob] = field(default_factory=dict)
    children: tuple[BuiltImage, ...] = ()

    @property
    def digest(self) -> str:
        return manifest_digest(self.manifest)

    @property
    def has_media_type_field(self) -> bool:
        return "mediaType" in json.loads(self.manifest)


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=3)


def _tar_member(name: str, size: int) -> tuple[bytes, bytes]:
    """The header and the end (padding, then the two zero blocks) of a tar holding one file."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    padding = b"\0" * (-size % tarfile.BLOCKSIZE)
    return info.tobuf(format=tarfile.USTAR_FORMAT), padding + b"\0" * (2 * tarfile.BLOCKSIZE)


def _layer(identity: str, oci: bool, layer_bytes: int | None) -> tuple[Blob, str, str]:
    """One layer: the blob, its media type, and its diff id (the digest of the uncompressed tar)."""
    if layer_bytes is not None:
        header, end = _tar_member(f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}.bin", layer_bytes)
        blob = GeneratedBlob(identity.encode(), layer_bytes, header, end)
        return blob, OCI_LAYER_TAR if oci else DOCKER_LAYER_TAR, blob.digest
    content = identity.encode() * 8
    header, end = _tar_member("layer.txt", len(content))
    tar = header + content + end
    compressed = BytesBlob(gzip.compress(tar, mtime=0))
    return compressed, OCI_LAYER if oci else DOCKER_LAYER, "sha256:" + hashlib.sha256(tar).hexdigest()


def _single(
    name: str,
    *,
    oci: bool,
    with_media_type: bool = True,
    platform: str = "linux/amd64",
    layers: int = 2,
    layer_bytes: int | None = None,
) -> BuiltImage:
    os_name, arch = platform.split("/", 1)
    flavour = ("oci" if oci else "docker") + ("" if with_media_type else "-bare")
    built = [_layer(f"{name}|{flavour}|{platform}|layer-{i}|{layer_bytes}", oci, layer_bytes) for i in range(layers)]
    config = BytesBlob(
        json.dumps(
            {
                "architecture": arch,
                "os": os_name,
                "config": {"Labels": {"name": name, "flavour": flavour}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id for _, _, diff_id in built]},
            },
            sort_keys=True,
        ).encode()
    )
    document: dict[str, Any] = {"schemaVersion": 2}
    if not oci:
        document["mediaType"] = DOCKER_MANIFEST
    elif with_media_type:
        document["mediaType"] = OCI_MANIFEST
    document["config"] = _descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config)
    document["layers"] = [_descriptor(media_type, blob) for blob, media_type, _ in built]
    blobs: dict[str, Blob] = {config.digest: config, **{blob.digest: blob for blob, _, _ in built}}
    return BuiltImage(manifest=_dump(document), media_type=OCI_MANIFEST if oci else DOCKER_MANIFEST, blobs=blobs)


def _descriptor(media_type: str, blob: Blob) -> dict[str, Any]:
    return {"mediaType": media_type, "size": blob.size, "digest": blob.digest}


def _index(name: str, *, oci: bool, platforms: Iterable[str], layers: int, layer_bytes: int | None) -> BuiltImage:
    # The children are images of their own: their blobs differ from a single-platform build.
    children = tuple(
        _single(f"{name}+index", oci=oci, platform=p, layers=layers, layer_bytes=layer_bytes) for p in platforms
    )
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


def build_image(
    kind: str = "oci",
    name: str = "app",
    *,
    platforms: Iterable[str] = DEFAULT_PLATFORMS,
    layers: int = 2,
    layer_bytes: int | None = None,
) -> BuiltImage:
    """Build a realistic image of one of :data:`IMAGE_KINDS`.

    :param kind: ``docker`` (Docker v2 schema 2), ``oci``, ``oci-no-mediatype`` (an OCI
        manifest without the optional top-level ``mediaType``), ``oci-index`` or
        ``docker-list`` (multi-arch, with one child per platform).
    :param name: distinct names give distinct blobs and so distinct digests.
    :param platforms: the platforms of a multi-arch image.
    :param layers: how many layers each image (each platform's) has. Layer ``i`` of two builds of
        one name, kind and ``layer_bytes`` is the same blob whatever ``layers`` is, so a build with
        fewer layers shares its base layers with one with more (as successive builds do).
    :param layer_bytes: make each layer an uncompressed tar of one generated file of this many
        bytes, made on the fly (a 1 GiB layer holds no memory; building one hashes it once, about a
        second per GiB). By default layers are small gzip'd tars.
    """
    platforms = tuple(platforms)
    if kind == "docker":
        return _single(name, oci=False, layers=layers, layer_bytes=layer_bytes)
    if kind == "oci":
        return _single(name, oci=True, layers=layers, layer_bytes=layer_bytes)
    if kind == "oci-no-mediatype":
        return _single(name, oci=True, with_media_type=False, layers=layers, layer_bytes=layer_bytes)
    if kind == "oci-index":
        return _index(name, oci=True, platforms=platforms, layers=layers, layer_bytes=layer_bytes)
    if kind == "docker-list":
        return _index(name, oci=False, platforms=platforms, layers=layers, layer_bytes=layer_bytes)
    raise ValueError(f"kind must be one of {', '.join(IMAGE_KINDS)}, not {kind!r}")


def build_variant(image: BuiltImage, name: str) -> BuiltImage:
    """``image`` (single-platform) with an annotation naming it: the same blobs, a new digest.

    What seeding a repository of 100,000 images needs: distinct images, each built in
    microseconds, sharing one config and one layer.
    """
    if image.children:
        raise ValueError("build_variant takes a single-platform image, not an index")
    document = json.loads(image.manifest)
    document["annotations"] = {**document.get("annotations", {}), VARIANT_ANNOTATION: name}
    return BuiltImage(manifest=_dump(document), media_type=image.media_type, blobs=image.blobs)


def build_referrer(
    subject: BuiltImage,
    artifact_type: str = "application/vnd.example.signature.v1+json",
    name: str = "signature",
    *,
    annotations: dict[str, str] | None = None,
) -> BuiltImage:
    """An OCI 1.1 artifact that refers to ``subject`` (a signature, an SBOM, ...): an OCI manifest
    with ``artifactType``, the empty config, one small layer and ``subject``."""
    empty, payload = BytesBlob(OCI_EMPTY_BLOB), BytesBlob(json.dumps({"name": name, "of": subject.digest}).encode())
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _descriptor(OCI_EMPTY_CONFIG, empty),
        "layers": [_descriptor(artifact_type, payload)],
        "subject": {"mediaType": subject.media_type, "size": len(subject.manifest.encode()), "digest": subject.digest},
    }
    if annotations:
        document["annotations"] = dict(annotations)
    blobs: dict[str, Blob] = {empty.digest: empty, payload.digest: payload}
    return BuiltImage(manifest=_dump(document), media_type=OCI_MANIFEST, blobs=blobs)


def write_oci_layout(image: BuiltImage, directory: str | Path, tag: str) -> Path:
    """Write ``image`` (its blobs, children and manifest) as an OCI image layout tagged ``tag``,
    the directory ``skopeo copy oci:<directory>:<tag> ...`` and ``crane push`` read. Returns it."""
    root = Path(directory)
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for part in _all_parts(image):
        for blob in part.blobs.values():
            _write_blob(root, blob.digest, blob.chunks())
        _write_blob(root, part.digest, [part.manifest.encode()])
    index_path = root / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] != tag]
    entry = {"mediaType": image.media_type, "size": len(image.manifest.encode()), "digest": image.digest}
    index["manifests"].append({**entry, "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))
    return root


def _all_parts(image: BuiltImage) -> Iterator[BuiltImage]:
    for child in image.children:
        yield from _all_parts(child)
    yield image


def _write_blob(root: Path, digest: str, pieces: Iterable[bytes]) -> None:
    path = root / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.exists():
        with path.open("wb") as handle:
            for piece in pieces:
                handle.write(piece)


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
        for digest, blob in image.blobs.items():
            if digest not in present:
                _upload_layer(client, repository_name, blob, registry)
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


def _upload_layer(client: Any, repository_name: str, blob: Blob, registry: dict[str, str]) -> None:
    """InitiateLayerUpload, the parts in ``partSize`` pieces, CompleteLayerUpload."""
    upload = client.initiate_layer_upload(repositoryName=repository_name, **registry)
    first = 0
    for part in _parts(blob.chunks(), upload["partSize"]):
        client.upload_layer_part(
            repositoryName=repository_name,
            uploadId=upload["uploadId"],
            partFirstByte=first,
            partLastByte=first + len(part) - 1,
            layerPartBlob=part,
            **registry,
        )
        first += len(part)
    client.complete_layer_upload(
        repositoryName=repository_name, uploadId=upload["uploadId"], layerDigests=[blob.digest], **registry
    )


def _parts(pieces: Iterable[bytes], part_size: int) -> Iterator[bytes]:
    """``pieces`` regrouped into parts of ``part_size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= part_size:
            yield bytes(buffer[:part_size])
            del buffer[:part_size]
    if buffer:
        yield bytes(buffer)
