"""Manifest media types and digests: the one home of this knowledge in the package.

Airflow-free and boto-free, so the operators, the sensor, the trigger and the ECR double
all share it.
"""

from __future__ import annotations

import hashlib
import json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: Every media type ECR stores for images. BatchGetImage must accept all of them, or ECR
#: translates Docker <-> OCI manifests (new bytes, new digest) or refuses indexes.
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_MEDIA_TYPES: frozenset[str] = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
#: Docker's old schema 1, which ECR still stores when pushed but nothing here produces.
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"
#: Every manifest media type PutImage accepts.
PUT_IMAGE_MEDIA_TYPES: frozenset[str] = frozenset(
    {*MANIFEST_MEDIA_TYPES, DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED_MANIFEST}
)

#: Config and layer blob media types of single-platform images.
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Uncompressed layers (OCI and Docker).
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

#: OCI 1.1 artifacts: the empty config descriptor's media type and its one blob, ``{}``.
OCI_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_BLOB = b"{}"


def manifest_digest(manifest: str) -> str:
    """Return ``sha256:<hex>`` of the manifest's exact UTF-8 bytes, as ECR computes it."""
    return "sha256:" + hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def declared_media_type(manifest: str) -> str | None:
    """Return the manifest's top-level ``mediaType``, or None (it is optional in OCI)."""
    try:
        parsed = json.loads(manifest)
    except ValueError:
        return None
    value = parsed.get("mediaType") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None


#: cosign's tag-based scheme: the signature, attestation and SBOM of ``sha256:<hex>`` are images
#: in the same repository tagged ``sha256-<hex>`` plus one of these (newer cosign writes OCI 1.1
#: referrers instead).
COSIGN_TAG_SUFFIXES: tuple[str, ...] = (".sig", ".att", ".sbom")


def cosign_tags(digest: str) -> list[str]:
    """The tags cosign's tag-based scheme gives the signature, attestation and SBOM of ``digest``."""
    algorithm, _, hex_digest = digest.partition(":")
    return [f"{algorithm}-{hex_digest}{suffix}" for suffix in COSIGN_TAG_SUFFIXES]


def parsed(manifest: str) -> dict:
    """The manifest as a JSON object ({} if it is not one)."""
    try:
        document = json.loads(manifest)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def child_digests(document: dict, media_type: str) -> list[str]:
    """The manifests an index or manifest list lists, in its order (none for an image manifest)."""
    if media_type not in INDEX_MEDIA_TYPES:
        return []
    return [entry["digest"] for entry in document.get("manifests", []) if isinstance(entry, dict) and "digest" in entry]


def blob_descriptors(document: dict, media_type: str) -> list[dict]:
    """The config and layer descriptors of an image manifest (none for an index), each with
    ``digest`` and ``size``."""
    if media_type in INDEX_MEDIA_TYPES:
        return []
    candidates = [document.get("config"), *document.get("layers", [])]
    return [d for d in candidates if isinstance(d, dict) and isinstance(d.get("digest"), str)]
