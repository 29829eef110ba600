"""Image scanning in the double: StartImageScan, DescribeImageScanFindings, scans on push, and seeding.

- A registry scans BASIC or ENHANCED (PutRegistryScanningConfiguration and
  GetRegistryScanningConfiguration are moto's, on the registry's backend; or
  :meth:`ScanSeeding.set_registry_scanning`); a repository has ``scanOnPush`` (CreateRepository,
  PutImageScanningConfiguration, or ``create_repository(scan_on_push=True)``).
- A push of a new image starts the scan its registry's rules call for (:func:`scan_on_push`);
  StartImageScan starts a basic one, once per image per 24 hours, a scan on push included.
- A scan is IN_PROGRESS for :attr:`ScanSeeding.scan_seconds` of the double's clock
  (``EcrDouble.clock``: replace it to finish a scan without waiting), then COMPLETE (basic, or
  enhanced on push) or ACTIVE (enhanced, continuous).
- DescribeImageScanFindings reports the image's vulnerabilities (:meth:`ScanSeeding.add_findings`)
  as basic ``findings`` or enhanced ``enhancedFindings``, with ``findingSeverityCounts``, a page at a
  time (``maxResults`` 1-1000, default 100, ``nextToken``).

The rules are in :mod:`~airflow_ecr_retag.testing.scan_rules`; each scan is state of its image
(``StoredImage.scan``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.limits import BASIC_SCANS_PER_INTERVAL
from airflow_ecr_retag.testing import request_rules as rules
from airflow_ecr_retag.testing.registries import Registry, basic_scans_started, scanning_configuration
from airflow_ecr_retag.testing.scan_rules import (
    BASIC,
    ENHANCED,
    SCAN_STATUSES,
    STATUS_DESCRIPTIONS,
    Vulnerability,
    check_can_start,
    findings,
    push_scan,
    quota_left,
    scan_not_found,
    scan_of,
    scannable,
    severity_counts,
)
from airflow_ecr_retag.testing.store import StoredImage, images_of

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

#: The scan frequency of every repository when :meth:`ScanSeeding.set_registry_scanning` turns on
#: enhanced scanning without rules (what the console offers first).
_ENHANCED_DEFAULT_RULES = [
    {"scanFrequency": "CONTINUOUS_SCAN", "repositoryFilters": [{"filter": "*", "filterType": "WILDCARD"}]}
]


def scan_on_push(double: EcrDouble, repository: Any, image: StoredImage) -> None:
    """Start the scan that pushing ``image`` starts, if any: once per image, never for an index or
    an artifact (the caller holds the double's lock)."""
    if (image.scan is not None and image.scan.started_at is not None) or not scannable(image):
        return
    registry = Registry(repository.registry_id, repository.region_name)
    config = scanning_configuration(registry)
    scan_type = config.get("scanType") or BASIC
    repository_flag = bool((repository.image_scanning_configuration or {}).get("scanOnPush"))
    now = double.clock()
    starts = basic_scans_started(registry)
    final_status = push_scan(
        scan_type,
        config.get("rules") or [],
        repository.name,
        repository_flag,
        quota_left=quota_left(starts, double.basic_scan_quota, now),
    )
    if final_status == "LIMIT_EXCEEDED":
        scan_of(image).start(scan_type, final_status, now, 0.0)
    elif final_status is not None:
        scan_of(image).start(scan_type, final_status, now, double.scan_seconds)
        if scan_type == BASIC:
            starts.append(now)


class ScanningHandlers(ECRResponse):
    """StartImageScan and DescribeImageScanFindings, installed on ``ECRResponse`` while a double is active."""

    double: EcrDouble

    def _scanned_image(self) -> tuple[Any, dict[str, Any], StoredImage]:
        repository = self.ecr_backend._get_repository(self._get_param("repositoryName"), self._get_param("registryId"))
        image_id = self._get_param("imageId") or {}
        with self.double._lock:
            image, failure = rules.find_image(images_of(repository), image_id)
        if failure or image is None:
            raise rules.image_not_found(repository, image_id)
        return repository, image_id, image

    def start_image_scan(self) -> ActionResult:
        repository, image_id, image = self._scanned_image()
        with self.double._lock:
            scan = scan_of(image)
            now = self.double.clock()
            starts = basic_scans_started(self.registry)
            scan_type = scanning_configuration(self.registry).get("scanType") or BASIC
            check_can_start(
                image, scan, scan_type, now, quota_left=quota_left(starts, self.double.basic_scan_quota, now)
            )
            scan.start(BASIC, "COMPLETE", now, self.double.scan_seconds)
            starts.append(now)
        return ActionResult(
            {
                "registryId": repository.registry_id,
                "repositoryName": repository.name,
                "imageId": _echoed(image, image_id),
                "imageScanStatus": {"status": "IN_PROGRESS"},
            }
        )

    def describe_image_scan_findings(self) -> ActionResult:
        repository, image_id, image = self._scanned_image()
        with self.double._lock:
            scan = image.scan
            status = scan.status(self.double.clock()) if scan is not None else None
            reported = scan is not None and status in ("COMPLETE", "ACTIVE") and scan.findings_available
            listed = findings(scan, repository, image) if reported and scan is not None else []
            counts = severity_counts(scan) if reported and scan is not None else {}
        page, token = rules.paginate(listed, self._get_param("maxResults"), self._get_param("nextToken"))
        if scan is None or status is None:
            raise scan_not_found(repository, image_id)
        description = scan.description or STATUS_DESCRIPTIONS.get(status)
        response: dict[str, Any] = {
            "registryId": repository.registry_id,
            "repositoryName": repository.name,
            "imageId": _echoed(image, image_id),
            "imageScanStatus": {"status": status, **({"description": description} if description else {})},
        }
        if reported:
            completed = datetime.fromtimestamp(scan.completes_at, tz=UTC)
            response["imageScanFindings"] = {
                "imageScanCompletedAt": completed,
                "vulnerabilitySourceUpdatedAt": completed,
                **({"findingSeverityCounts": counts} if counts else {}),
                ("enhancedFindings" if scan.scan_type == ENHANCED else "findings"): page,
            }
        elif status in ("COMPLETE", "ACTIVE"):
            # Finished, but no findings yet: what aws/aws-sdk#289 shows.
            response["imageScanFindings"] = {"findings": []}
        if token:
            response["nextToken"] = token
        return ActionResult(response)


def _echoed(image: StoredImage, image_id: dict[str, Any]) -> dict[str, str]:
    return {"imageDigest": image.digest, **({"imageTag": image_id["imageTag"]} if "imageTag" in image_id else {})}


class ScanSeeding:
    """The double's scanning helpers (a base class of :class:`~airflow_ecr_retag.testing.double.EcrDouble`);
    each takes ``registry_id=`` and ``region_name=`` like the other seeding helpers. Not counted."""

    _lock: threading.RLock
    clock: Callable[[], float]
    registry: Callable[..., Registry]
    _repository: Callable[..., Any]
    #: How long a scan stays IN_PROGRESS before it finishes, in seconds of :attr:`clock` (0: a scan
    #: finishes as soon as it starts, so DAG tests never wait; set it to watch one progress).
    scan_seconds: float = 0.0
    #: Basic scans a registry may start in 24 hours, scans on push included (ECR's quota; lower it
    #: to see StartImageScan's LimitExceededException and scans on push end LIMIT_EXCEEDED).
    basic_scan_quota: int = BASIC_SCANS_PER_INTERVAL

    def set_registry_scanning(
        self,
        scan_type: str = BASIC,
        rules: list[dict[str, Any]] | None = None,
        *,
        registry_id: str | None = None,
        region_name: str | None = None,
    ) -> None:
        """Set a registry's scanning configuration, as PutRegistryScanningConfiguration would.

        :param scan_type: BASIC or ENHANCED.
        :param rules: ``[{"scanFrequency": "SCAN_ON_PUSH" | "CONTINUOUS_SCAN" | "MANUAL",
            "repositoryFilters": [{"filter": "team/*", "filterType": "WILDCARD"}]}]``; for ENHANCED,
            by default continuous scanning of every repository.
        """
        if scan_type not in (BASIC, ENHANCED):
            raise ValueError(f"scan_type must be {BASIC} or {ENHANCED}, not {scan_type!r}")
        if rules is None:
            rules = _ENHANCED_DEFAULT_RULES if scan_type == ENHANCED else []
        with self._lock:
            self.registry(registry_id, region_name).backend.put_registry_scanning_configuration(scan_type, list(rules))

    def add_findings(
        self, repository_name: str, digest: str, vulnerabilities: Iterable[Vulnerability | dict[str, Any]], **where: Any
    ) -> None:
        """Give an image vulnerabilities: its finished scans report them, in their scan type's shape.

        Each is a :class:`~airflow_ecr_retag.testing.scan_rules.Vulnerability` or its keyword
        arguments as a dict (``{"name": "CVE-2024-1", "severity": "CRITICAL", "package": "openssl",
        "version": "3.0.2", "fixed_in": "3.0.13"}``).
        """
        found = [v if isinstance(v, Vulnerability) else Vulnerability(**v) for v in vulnerabilities]
        with self._lock:
            scan_of(self._image(repository_name, digest, where)).vulnerabilities.extend(found)

    def set_scan(
        self,
        repository_name: str,
        digest: str,
        status: str | None = None,
        *,
        description: str | None = None,
        findings_available: bool = True,
        scan_type: str | None = None,
        **where: Any,
    ) -> None:
        """Give an image a scan that is in ``status`` now: COMPLETE (ACTIVE in an enhanced registry)
        by default, or any ScanStatus (IN_PROGRESS and PENDING stay so until set again).

        :param findings_available: False makes a finished scan report no findings yet (aws/aws-sdk#289).
        :param scan_type: BASIC or ENHANCED; by default the registry's.
        """
        with self._lock:
            image = self._image(repository_name, digest, where)
            kind = scan_type or scanning_configuration(self.registry(**where)).get("scanType") or BASIC
            status = status or ("ACTIVE" if kind == ENHANCED else "COMPLETE")
            if status not in SCAN_STATUSES:
                raise ValueError(f"status must be one of {', '.join(sorted(SCAN_STATUSES))}, not {status!r}")
            scan = scan_of(image)
            scan.start(kind, status, self.clock(), 0.0)
            scan.description, scan.findings_available = description, findings_available

    def scan_status(self, repository_name: str, digest: str, **where: Any) -> str | None:
        """The image's scan status now, or None when it has no scan."""
        with self._lock:
            scan = self._image(repository_name, digest, where).scan
            return scan.status(self.clock()) if scan is not None else None

    def _image(self, repository_name: str, digest: str, where: dict[str, Any]) -> StoredImage:
        return images_of(self._repository(repository_name, **where)).by_digest[digest]
