"""ECR's rules for the layer calls, each a named check failing with ECR's own error.

Sources: the botocore model (parameter limits, error shapes and their documentation), the ECR
user guide's quotas page (part sizes and count), and ``ECR-NOTES`` (layer transfer).
:mod:`~airflow_ecr_retag.testing.layer_transfer` calls them in ECR's order.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_ecr_retag.core.limits import (
    MAX_LAYER_DIGESTS,
    MAX_LAYER_PART_API_BYTES,
    MAX_LAYER_PART_BYTES,
    MAX_LAYER_PARTS,
    MIN_LAYER_PART_BYTES,
)
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.upload_sessions import UploadSession

_DIGEST_RE = re.compile(r"^[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class InvalidLayerPart(EcrError):
    """InvalidLayerPartException, with the fields the botocore model gives it (resume from
    ``lastValidByteReceived`` + 1)."""

    def __init__(self, repository: Any, session: UploadSession, message: str):
        super().__init__("InvalidLayerPartException", message)
        self.registry_id = repository.registry_id
        self.repository_name = repository.name
        self.upload_id = session.upload_id
        self.last_valid_byte_received = session.last_byte


def is_sha256_digest(digest: Any) -> bool:
    return isinstance(digest, str) and bool(_SHA256_RE.match(digest))


def check_layer_digests(digests: Any) -> list[str]:
    """1 to MAX_LAYER_DIGESTS digests (BatchCheckLayerAvailability, CompleteLayerUpload)."""
    if not isinstance(digests, list) or not 1 <= len(digests) <= MAX_LAYER_DIGESTS:
        raise EcrError(
            "InvalidParameterException",
            "Invalid parameter at 'layerDigests' failed to satisfy constraint: "
            f"'Member must have length between 1 and {MAX_LAYER_DIGESTS}'",
        )
    return digests


def check_layer_digest(digest: Any) -> str:
    """GetDownloadUrlForLayer's ``layerDigest`` matches the model's digest pattern."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise EcrError(
            "InvalidParameterException",
            "Invalid parameter at 'layerDigest' failed to satisfy constraint: "
            "'must satisfy regular expression '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+''",
        )
    return digest


def layers_not_found(repository: Any, digests: list[str]) -> EcrError:
    return EcrError(
        "LayersNotFoundException",
        f"Layers with digests '[{', '.join(digests)}]' do not exist in the repository with name "
        f"'{repository.name}' in registry with id '{repository.registry_id}'",
    )


def layer_inaccessible(digest: str) -> EcrError:
    return EcrError(
        "LayerInaccessibleException",
        f"The layer '{digest}' is not available because it is not associated with an image. "
        "Unassociated image layers may be cleaned up at any time.",
    )


def upload_not_found(repository: Any, upload_id: Any) -> EcrError:
    return EcrError(
        "UploadNotFoundException",
        f"Upload with id '{upload_id}' does not exist in the repository with name '{repository.name}' "
        f"in registry with id '{repository.registry_id}'",
    )


def check_part(repository: Any, session: UploadSession, first: Any, last: Any, blob: bytes) -> None:
    """A part continues the upload exactly where it stopped, says how long it is, and fits
    ECR's part size and count (LimitExceededException past the quota's parts)."""
    if len(blob) > MAX_LAYER_PART_API_BYTES:
        raise EcrError(
            "InvalidParameterException",
            "Invalid parameter at 'layerPartBlob' failed to satisfy constraint: "
            f"'Member must have length less than or equal to {MAX_LAYER_PART_API_BYTES}'",
        )
    in_order = isinstance(first, int) and first == session.size
    if not in_order or not isinstance(last, int) or last - first + 1 != len(blob) or not blob:
        raise InvalidLayerPart(
            repository,
            session,
            "The layer part size is not valid, or the first byte specified is not consecutive to the "
            "last byte of a previous layer part upload.",
        )
    if len(blob) > MAX_LAYER_PART_BYTES:
        raise InvalidLayerPart(
            repository, session, f"The layer part size is not valid: parts are at most {MAX_LAYER_PART_BYTES} bytes."
        )
    if len(session.part_sizes) >= MAX_LAYER_PARTS:
        raise EcrError(
            "LimitExceededException",
            f"The upload with id '{session.upload_id}' already has the maximum of {MAX_LAYER_PARTS} layer parts.",
        )


def check_complete(session: UploadSession, digests: list[str], already_present: bool) -> None:
    """CompleteLayerUpload: parts were sent, each but the last big enough, the bytes hash to a
    given digest, and the repository does not have the layer yet."""
    if session.size == 0:
        raise EcrError("EmptyUploadException", "The specified layer upload does not contain any layer parts.")
    if any(size < MIN_LAYER_PART_BYTES for size in session.part_sizes[:-1]):
        raise EcrError("LayerPartTooSmallException", "Layer parts must be at least 5 MiB in size.")
    if session.digest not in digests:
        raise EcrError(
            "InvalidLayerException",
            f"The layer digest calculation performed by Amazon ECR upon receipt of the image layer "
            f"({session.digest}) does not match the digest specified.",
        )
    if already_present:
        raise EcrError(
            "LayerAlreadyExistsException",
            f"The image layer '{session.digest}' already exists in the associated repository.",
        )
