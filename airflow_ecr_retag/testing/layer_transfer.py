"""The ECR layer calls, one handler each: BatchCheckLayerAvailability, GetDownloadUrlForLayer,
InitiateLayerUpload, UploadLayerPart, CompleteLayerUpload.

Installed on moto's ``ECRResponse`` like :class:`~airflow_ecr_retag.testing.handlers.ImageOperationHandlers`
(they replace moto's own, which keep the bytes in memory and check no part sizes). A repository
has a blob once an upload into it completes, a mount or a seed puts it there (moto's
``repository.layers``, digest -> size); the bytes live in the double's blob store and upload
sessions (:mod:`~airflow_ecr_retag.testing.blob_store`, :mod:`~airflow_ecr_retag.testing.upload_sessions`).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.limits import MAX_LAYER_PART_BYTES
from airflow_ecr_retag.testing import layer_rules as rules
from airflow_ecr_retag.testing.store import images_of, record_blob
from airflow_ecr_retag.testing.upload_sessions import UploadKey, UploadSession

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble
    from airflow_ecr_retag.testing.registries import Registry


class LayerTransferHandlers(ECRResponse):
    """moto's ECR responses with the layer calls replaced (installed while a double is active)."""

    double: EcrDouble
    registry: Registry

    def _layer_repo(self) -> Any:
        return self.ecr_backend._get_repository(self._get_param("repositoryName"), self._get_param("registryId"))

    def batch_check_layer_availability(self) -> ActionResult:
        """Each digest AVAILABLE in this repository, UNAVAILABLE when only another repository of
        the registry has it, or a failure: malformed (InvalidLayerDigest) or unknown (MissingLayerDigest)."""
        repository = self._layer_repo()
        digests = rules.check_layer_digests(self._get_param("layerDigests"))
        layers, failures = [], []
        with self.double._lock:
            elsewhere = {d for other in self.ecr_backend.repositories.values() for d in other.layers}
            for digest in digests:
                if not rules.is_sha256_digest(digest):
                    failures.append(_layer_failure(digest, "InvalidLayerDigest", f"Invalid layer digest '{digest}'"))
                elif digest in repository.layers:
                    layers.append(_available(repository, digest))
                elif digest in elsewhere:
                    layers.append({"layerDigest": digest, "layerAvailability": "UNAVAILABLE"})
                else:
                    failures.append(_layer_failure(digest, "MissingLayerDigest", "Could not find layer"))
        return ActionResult({"layers": layers, "failures": failures})

    def get_download_url_for_layer(self) -> ActionResult:
        """A presigned-style URL of the blob listener, for a layer an image of this repository references."""
        repository = self._layer_repo()
        digest = rules.check_layer_digest(self._get_param("layerDigest"))
        with self.double._lock:
            if digest not in repository.layers:
                raise rules.layers_not_found(repository, [digest])
            if digest not in images_of(repository).referenced_blobs():
                raise rules.layer_inaccessible(digest)
        url = self.double.download_url(self.registry, repository.name, digest)
        return ActionResult({"downloadUrl": url, "layerDigest": digest})

    def initiate_layer_upload(self) -> ActionResult:
        repository = self._layer_repo()
        session = self.double.uploads.start(self._upload_key(repository))
        return ActionResult({"uploadId": session.upload_id, "partSize": MAX_LAYER_PART_BYTES})

    def upload_layer_part(self) -> ActionResult:
        """One part, in order, of ECR's sizes; the bytes go to the upload's spill file."""
        repository = self._layer_repo()
        session = self._session(repository)
        blob = self._get_param("layerPartBlob") or b""
        if isinstance(blob, str):  # the JSON protocol sends it base64-encoded
            blob = base64.b64decode(blob)
        rules.check_part(repository, session, self._get_param("partFirstByte"), self._get_param("partLastByte"), blob)
        session.append([blob], len(blob))
        return ActionResult(
            {
                "registryId": repository.registry_id,
                "repositoryName": repository.name,
                "uploadId": session.upload_id,
                "lastByteReceived": session.last_byte,
            }
        )

    def complete_layer_upload(self) -> ActionResult:
        """The upload's bytes must hash to a given digest; only then is the layer in the repository."""
        repository = self._layer_repo()
        session = self._session(repository)
        digests = rules.check_layer_digests(self._get_param("layerDigests"))
        with self.double._lock:
            rules.check_complete(session, digests, session.digest in repository.layers)
            blob = self.double.uploads.finish(session)
            record_blob(repository, blob)
        return ActionResult(
            {
                "registryId": repository.registry_id,
                "repositoryName": repository.name,
                "uploadId": session.upload_id,
                "layerDigest": blob.digest,
            }
        )

    def _upload_key(self, repository: Any) -> UploadKey:
        return UploadKey(repository.registry_id, self.region, repository.name)

    def _session(self, repository: Any) -> UploadSession:
        upload_id = self._get_param("uploadId")
        session = self.double.uploads.find(upload_id, self._upload_key(repository))
        if session is None:
            raise rules.upload_not_found(repository, upload_id)
        return session


def _available(repository: Any, digest: str) -> dict[str, Any]:
    entry = {"layerDigest": digest, "layerAvailability": "AVAILABLE", "layerSize": repository.layers[digest]}
    media_type = images_of(repository).blob_media_types().get(digest)
    return {**entry, **({"mediaType": media_type} if media_type else {})}


def _layer_failure(digest: str, code: str, reason: str) -> dict[str, str]:
    return {"layerDigest": digest, "failureCode": code, "failureReason": reason}
