"""ECR's image-scanning rules for the double: which scans run, how they progress, what they report.

Sources, each rule citing its own: the botocore model (DescribeImageScanFindings and its shapes, the
ScanStatus values, maxResults 1-1000 default 100); the StartImageScan documentation ("A basic image
scan can only be started once per 24 hours on an individual image. This limit includes if an image
was scanned on initial push."); and what ECR answers as users report it (issue threads named
below). Where ECR's answer is not documented, the choice is the double's and is said so.

Nothing here locks: the handlers (:mod:`~airflow_ecr_retag.testing.scanning`) hold the double's
lock around reads and changes.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_ecr_retag.core.limits import BASIC_SCAN_INTERVAL_SECONDS, FINDING_SEVERITIES
from airflow_ecr_retag.core.manifests import DOCKER_CONFIG, INDEX_MEDIA_TYPES, OCI_CONFIG
from airflow_ecr_retag.testing.request_rules import EcrError
from airflow_ecr_retag.testing.store import StoredImage

BASIC = "BASIC"
ENHANCED = "ENHANCED"
#: Every ScanStatus value of the botocore model.
SCAN_STATUSES = frozenset(
    {
        "IN_PROGRESS",
        "COMPLETE",
        "FAILED",
        "UNSUPPORTED_IMAGE",
        "ACTIVE",
        "PENDING",
        "SCAN_ELIGIBILITY_EXPIRED",
        "FINDINGS_UNAVAILABLE",
        "LIMIT_EXCEEDED",
        "IMAGE_ARCHIVED",
    }
)
#: The descriptions ECR gives with a status, as users quote them: COMPLETE (aws/aws-sdk#289), ACTIVE
#: (aws/aws-cli#6759, alexjurkiewicz/ecr-scan-image#45), PENDING (alexjurkiewicz/ecr-scan-image#51),
#: FAILED (aws-observability/aws-otel-collector#2193). Other statuses carry none unless seeded.
STATUS_DESCRIPTIONS = {
    "COMPLETE": "The scan was completed successfully.",
    "ACTIVE": "Continuous scan is selected for image.",
    "PENDING": "Pending start of the image scan.",
    "FAILED": "UnsupportedImageError: The operating system and/or package manager are not supported.",
}
#: Amazon Inspector's name for a severity it has not triaged (ECR's basic findings say UNDEFINED).
ENHANCED_UNDEFINED = "UNTRIAGED"
_IMAGE_CONFIGS = frozenset({DOCKER_CONFIG, OCI_CONFIG})


@dataclass(frozen=True)
class Vulnerability:
    """A vulnerability an image has, which a finished scan reports as a finding in its scan type's
    shape (basic ``findings`` or enhanced ``enhancedFindings``).

    :param name: the CVE id (basic ``name``, enhanced ``packageVulnerabilityDetails.vulnerabilityId``).
    :param severity: one of CRITICAL, HIGH, MEDIUM, LOW, INFORMATIONAL, UNDEFINED.
    :param package: the vulnerable package; ``version`` its installed version.
    :param fixed_in: the version that fixes it, or None (enhanced: ``fixAvailable`` NO).
    :param score: the CVSS base score.
    :param exploit_available: enhanced ``exploitAvailable``.
    """

    name: str
    severity: str
    package: str = ""
    version: str = ""
    fixed_in: str | None = None
    score: float | None = None
    exploit_available: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.severity not in FINDING_SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(FINDING_SEVERITIES)}, not {self.severity!r}")


@dataclass
class ImageScan:
    """An image's scan state: the vulnerabilities a scanner finds in it, and its latest scan, if any."""

    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    #: BASIC or ENHANCED: the registry's scan type when the scan started (None: never scanned).
    scan_type: str | None = None
    started_at: float | None = None
    #: Until this time (the double's clock) the scan is IN_PROGRESS; then it is ``final_status``.
    completes_at: float = 0.0
    final_status: str = "COMPLETE"
    description: str | None = None
    #: False: the scan reports finished before its findings exist (aws/aws-sdk#289).
    findings_available: bool = True

    def status(self, now: float) -> str | None:
        if self.started_at is None:
            return None
        return "IN_PROGRESS" if now < self.completes_at else self.final_status

    def start(self, scan_type: str, final_status: str, now: float, duration: float) -> None:
        self.scan_type, self.final_status, self.description = scan_type, final_status, None
        self.started_at, self.completes_at, self.findings_available = now, now + duration, True


def scan_of(image: StoredImage) -> ImageScan:
    """The image's scan state, created empty (never scanned, no vulnerabilities) on first use."""
    if image.scan is None:
        image.scan = ImageScan()
    return image.scan


# ---------------------------------------------------------------------- which scans run
def push_scan(
    scan_type: str,
    rules: list[dict[str, Any]],
    repository_name: str,
    repository_scan_on_push: bool,
    *,
    quota_left: bool,
) -> str | None:
    """The final status of the scan a push starts, or None when the push starts none.

    Basic scanning: the repository's ``scanOnPush`` or a registry rule with SCAN_ON_PUSH for it;
    the scan ends COMPLETE, or LIMIT_EXCEEDED when the registry's basic scans of the day are used
    up (the double's reading of that status). Enhanced scanning (Amazon Inspector): a rule for the
    repository, whose ``scanOnPush`` is then ignored; CONTINUOUS_SCAN ends ACTIVE, as it never
    completes (aws/aws-sdk#288), SCAN_ON_PUSH ends COMPLETE (aws/aws-sdk#289). An index is never
    scanned itself: its platform images are, as they are pushed.
    """
    frequency = rule_frequency(rules, repository_name)
    if scan_type == ENHANCED:
        return {"CONTINUOUS_SCAN": "ACTIVE", "SCAN_ON_PUSH": "COMPLETE"}.get(frequency or "")
    if not (repository_scan_on_push or frequency == "SCAN_ON_PUSH"):
        return None
    return "COMPLETE" if quota_left else "LIMIT_EXCEEDED"


def rule_frequency(rules: list[dict[str, Any]], repository_name: str) -> str | None:
    """The scan frequency the registry's rules give a repository: CONTINUOUS_SCAN wins over
    SCAN_ON_PUSH when filters of both match (the user guide's "Enhanced scanning"); None when no
    filter matches (the repository is not scanned).

    Filters are ``[a-z0-9._/*-]`` only (the botocore model's pattern), so shell matching with
    ``*`` is exactly ECR's wildcard.
    """
    matching = {
        rule.get("scanFrequency")
        for rule in rules or []
        if any(fnmatch.fnmatchcase(repository_name, f.get("filter", "")) for f in rule.get("repositoryFilters", []))
    }
    return next((f for f in ("CONTINUOUS_SCAN", "SCAN_ON_PUSH", "MANUAL") if f in matching), None)


def scannable(image: StoredImage) -> bool:
    """Whether ECR scans the image: not an index, and not an artifact (a config that is no image's)."""
    if image.media_type in INDEX_MEDIA_TYPES:
        return False
    config = image.document.get("config") or {}
    return config.get("mediaType") in _IMAGE_CONFIGS and not image.document.get("artifactType")


def unscannable_media_type(image: StoredImage) -> str:
    if image.media_type in INDEX_MEDIA_TYPES:
        return image.media_type
    return image.document.get("artifactType") or (image.document.get("config") or {}).get("mediaType") or "unknown"


def quota_left(starts: list[float], quota: int, now: float) -> bool:
    """Whether the registry may start another basic scan: fewer than ``quota`` in the last 24 hours
    ("You can start up to 100,000 basic scans per 24 hours", scans on push included)."""
    return sum(1 for started in starts if now - started < BASIC_SCAN_INTERVAL_SECONDS) < quota


def check_can_start(
    image: StoredImage, scan: ImageScan, registry_scan_type: str, now: float, *, quota_left: bool
) -> None:
    """StartImageScan's rules, in this order: a scannable image, basic scanning, the 24-hour rule
    for the image, the registry's quota of basic scans a day."""
    if not scannable(image):
        # The message users report (docker/setup-buildx-action#186, alexjurkiewicz/ecr-scan-image#43).
        raise EcrError(
            "UnsupportedImageTypeException",
            f"An artifact with media type '{unscannable_media_type(image)}' cannot be scanned. "
            "For more information, see the Amazon ECR documentation.",
        )
    if registry_scan_type == ENHANCED:
        # "Manual scans using enhanced scanning aren't supported" (the user guide); the error is not
        # documented: the double's choice, after what users report for scans ECR will not start
        # (alexjurkiewicz/ecr-scan-image#44, aws/containers-roadmap#2656).
        raise EcrError("ValidationException", "This feature is disabled")
    if scan.scan_type == BASIC and scan.started_at is not None and now - scan.started_at < BASIC_SCAN_INTERVAL_SECONDS:
        raise EcrError("LimitExceededException", "The scan quota per image has been exceeded. Wait and try again.")
    if not quota_left:
        # ECR's wording for the registry's quota is not documented: the double's.
        raise EcrError(
            "LimitExceededException", "The basic scan quota for the registry has been exceeded. Wait and try again."
        )


def scan_not_found(repository: Any, image_id: dict[str, Any]) -> EcrError:
    shown = f"{{imageDigest:'{image_id.get('imageDigest', 'null')}', imageTag:'{image_id.get('imageTag', 'null')}'}}"
    return EcrError(
        "ScanNotFoundException",
        f"Image scan does not exist for the image with '{shown}' in the repository with name "
        f"'{repository.name}' in the registry with id '{repository.registry_id}'",
    )


# ---------------------------------------------------------------------- what a scan reports
def findings(scan: ImageScan, repository: Any, image: StoredImage) -> list[dict[str, Any]]:
    """The scan's findings in its type's shape, in the order they were seeded (ECR documents no order)."""
    if scan.scan_type == ENHANCED:
        return [enhanced_finding(v, repository, image, scan) for v in scan.vulnerabilities]
    return [basic_finding(v) for v in scan.vulnerabilities]


def severity_counts(scan: ImageScan) -> dict[str, int]:
    """``findingSeverityCounts``: the severities present and how many; enhanced scans say UNTRIAGED
    for UNDEFINED, as Inspector does."""
    counts: dict[str, int] = {}
    for vulnerability in scan.vulnerabilities:
        name = vulnerability.severity
        if scan.scan_type == ENHANCED and name == "UNDEFINED":
            name = ENHANCED_UNDEFINED
        counts[name] = counts.get(name, 0) + 1
    return counts


def basic_finding(vulnerability: Vulnerability) -> dict[str, Any]:
    """An ImageScanFinding: basic findings name the package in attributes and carry no fix."""
    attributes = []
    if vulnerability.package:
        attributes.append({"key": "package_version", "value": vulnerability.version})
        attributes.append({"key": "package_name", "value": vulnerability.package})
    if vulnerability.score is not None:
        attributes.append({"key": "CVSS3_SCORE", "value": str(vulnerability.score)})
    return {
        "name": vulnerability.name,
        "description": vulnerability.description or _description(vulnerability),
        "uri": f"https://nvd.nist.gov/vuln/detail/{vulnerability.name}",
        "severity": vulnerability.severity,
        "attributes": attributes,
    }


def enhanced_finding(
    vulnerability: Vulnerability, repository: Any, image: StoredImage, scan: ImageScan
) -> dict[str, Any]:
    """An EnhancedImageScanFinding, as Amazon Inspector reports a package vulnerability."""
    observed = datetime.fromtimestamp(scan.completes_at, tz=UTC)
    region = repository.region_name
    finding_id = hashlib.sha256(f"{image.digest}/{vulnerability.name}".encode()).hexdigest()[:32]
    inspector_severity = ENHANCED_UNDEFINED if vulnerability.severity == "UNDEFINED" else vulnerability.severity
    cvss = (
        [{"baseScore": vulnerability.score, "scoringVector": "CVSS:3.1", "source": "NVD", "version": "3.1"}]
        if vulnerability.score is not None
        else []
    )
    finding: dict[str, Any] = {
        "awsAccountId": repository.registry_id,
        "description": vulnerability.description or _description(vulnerability),
        "findingArn": f"arn:aws:inspector2:{region}:{repository.registry_id}:finding/{finding_id}",
        "firstObservedAt": observed,
        "lastObservedAt": observed,
        "updatedAt": observed,
        "packageVulnerabilityDetails": {
            "cvss": cvss,
            "referenceUrls": [f"https://nvd.nist.gov/vuln/detail/{vulnerability.name}"],
            "relatedVulnerabilities": [],
            "source": "NVD",
            "sourceUrl": f"https://nvd.nist.gov/vuln/detail/{vulnerability.name}",
            "vendorSeverity": inspector_severity,
            "vulnerabilityId": vulnerability.name,
            "vulnerablePackages": [
                {
                    "name": vulnerability.package,
                    "version": vulnerability.version,
                    "packageManager": "OS",
                    "fixedInVersion": vulnerability.fixed_in or "NotAvailable",
                }
            ]
            if vulnerability.package
            else [],
        },
        "remediation": {"recommendation": {"text": "None Provided"}},
        "resources": [
            {
                "type": "AWS_ECR_CONTAINER_IMAGE",
                "id": f"arn:aws:ecr:{region}:{repository.registry_id}:repository/{repository.name}/{image.digest}",
                "details": {
                    "awsEcrContainerImage": {
                        "imageHash": image.digest,
                        "repositoryName": repository.name,
                        "registry": repository.registry_id,
                        "imageTags": list(image.tags),
                        "pushedAt": datetime.fromtimestamp(image.pushed_at, tz=UTC),
                    }
                },
            }
        ],
        "severity": inspector_severity,
        "status": "ACTIVE",
        "title": f"{vulnerability.name} - {vulnerability.package}" if vulnerability.package else vulnerability.name,
        "type": "PACKAGE_VULNERABILITY",
        "fixAvailable": "YES" if vulnerability.fixed_in else "NO",
        "exploitAvailable": "YES" if vulnerability.exploit_available else "NO",
    }
    if vulnerability.score is not None:
        finding["score"] = vulnerability.score
    return finding


def _description(vulnerability: Vulnerability) -> str:
    return f"{vulnerability.name} in {vulnerability.package}" if vulnerability.package else vulnerability.name
