"""The release gate: wait for an image's vulnerability scan, then judge its findings against thresholds.

Shared by the poke-mode sensor and the deferrable trigger (EcrImageScanSensor, EcrImageScanTrigger).

- :func:`resolve` (one BatchGetImage, once per task run): a tag becomes its digest, so the gate
  judges one image however the tag moves; an image index becomes its platform images, because
  ECR scans those and refuses to scan an index ("An artifact with media type
  'application/vnd.oci.image.index.v1+json' cannot be scanned").
- :func:`check_scan` / :func:`check_scan_async` (one check): every platform image's scan through
  the DescribeImageScanFindings paginator (1000 findings a page; a scan that is not finished costs
  one call), and with ``start_scan`` a basic scan (StartImageScan) where there is none.
- "Finished" is ``COMPLETE`` (basic scanning, and enhanced scanning on push) or ``ACTIVE``
  (enhanced continuous scanning, which never reaches ``COMPLETE``: aws/aws-sdk#288), *and* ECR
  has findings for it: a scan reported finished before its findings arrive (aws/aws-sdk#289) is
  "not yet". ``FAILED``, ``UNSUPPORTED_IMAGE``, ``SCAN_ELIGIBILITY_EXPIRED``, ``FINDINGS_UNAVAILABLE``,
  ``LIMIT_EXCEEDED`` and ``IMAGE_ARCHIVED`` fail at once: waiting brings no findings.
- :func:`evaluate` counts every finding of every page by severity, less ``ignore_findings`` and,
  with ``only_fixable``, findings without a fix; a count over its threshold fails the gate with a
  table of the blocking findings.

The decisions are written once, as a generator of the calls they need (:func:`_steps`); a sync
and an async driver perform those calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from airflow_ecr_retag.core import ecr, errors, validation
from airflow_ecr_retag.core.backoff import backoff_seconds
from airflow_ecr_retag.core.errors import (
    EcrPermanentError,
    EcrRetagError,
    ImageNotFoundError,
    ScanFailedError,
    ScanLimitExceededError,
    ScanThresholdExceededError,
    as_core_error,
    error_code,
    is_permanent,
)
from airflow_ecr_retag.core.limits import FINDING_SEVERITIES
from airflow_ecr_retag.core.manifests import INDEX_MEDIA_TYPES

_module_log = logging.getLogger(__name__)

#: Scan statuses after which the findings can be judged (once ECR has them).
FINISHED_STATUSES = frozenset({"COMPLETE", "ACTIVE"})
#: Scan statuses that end the wait with a failure: no findings come by waiting. Anything else
#: (IN_PROGRESS, PENDING, a status ECR adds later) is "not yet".
FAILED_STATUSES = frozenset(
    {
        "FAILED",
        "UNSUPPORTED_IMAGE",
        "SCAN_ELIGIBILITY_EXPIRED",
        "FINDINGS_UNAVAILABLE",
        "LIMIT_EXCEEDED",
        "IMAGE_ARCHIVED",
    }
)
#: Enhanced (Amazon Inspector) severities under the name ECR's severity counts use.
SEVERITY_ALIASES = {"UNTRIAGED": "UNDEFINED"}
#: ``fixAvailable`` values of an enhanced finding that mean a fixed version exists ("PARTIAL": for
#: some of its packages).
FIXABLE_VALUES = frozenset({"YES", "PARTIAL"})
#: What Inspector puts in ``fixedInVersion`` when there is no fix.
NO_FIXED_VERSION = "NotAvailable"
#: Rows of the blocking-findings table in the log and the failure message.
BLOCKING_TABLE_ROWS = 20
_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(FINDING_SEVERITIES)}


@dataclass(frozen=True)
class ScanGate:
    """A validated gate: the image (by digest or by tag), the thresholds and the filters."""

    repository_name: str
    image_digest: str | None
    image_tag: str | None
    registry_id: str | None
    max_findings: dict[str, int]
    ignore_findings: tuple[str, ...] = ()
    only_fixable: bool = False
    start_scan: bool = False

    @classmethod
    def validated(
        cls,
        *,
        repository_name: Any,
        image_digest: Any = None,
        image_tag: Any = None,
        registry_id: Any = None,
        max_findings: Any,
        ignore_findings: Any = None,
        only_fixable: Any = False,
        start_scan: Any = False,
    ) -> ScanGate:
        repository_name = validation.repository_name(repository_name)
        validation.exactly_one(("image_digest", image_digest), ("image_tag", image_tag))
        return cls(
            repository_name,
            validation.optional(validation.digest, image_digest, "image_digest"),
            validation.optional(validation.tag, image_tag, "image_tag"),
            validation.registry_id(registry_id),
            validation.severity_thresholds(max_findings, "max_findings"),
            validation.finding_names(ignore_findings, "ignore_findings"),
            validation.flag(only_fixable, "only_fixable"),
            validation.flag(start_scan, "start_scan"),
        )

    @property
    def image_label(self) -> str:
        return (
            f"{self.repository_name}@{self.image_digest}"
            if self.image_digest
            else f"{self.repository_name}:{self.image_tag}"
        )


@dataclass(frozen=True)
class ScanTarget:
    """An image whose scan is judged: the gated image, or one platform image of an index."""

    digest: str
    platform: str | None = None

    def label(self, repository_name: str) -> str:
        where = f"{repository_name}@{self.digest}"
        return f"{where} ({self.platform})" if self.platform else where


@dataclass(frozen=True)
class ResolvedImage:
    """The gated image's digest and the images whose scans decide (serialisable for the trigger)."""

    digest: str
    targets: tuple[ScanTarget, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "targets": [asdict(t) for t in self.targets]}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ResolvedImage:
        return cls(value["digest"], tuple(ScanTarget(**t) for t in value["targets"]))


@dataclass(frozen=True)
class Finding:
    """A finding, basic or enhanced, in the terms the gate judges it by."""

    name: str
    severity: str
    package: str = ""
    fixed_in: str = ""
    #: Whether a fixed version exists; None when ECR does not say (basic scanning).
    fixable: bool | None = None
    score: float | None = None


@dataclass
class TargetScan:
    """What the DescribeImageScanFindings pages of one image said."""

    target: ScanTarget
    #: None: the image has no scan (ScanNotFoundException).
    status: str | None = None
    description: str = ""
    #: Whether ECR has findings for the scan (a finished scan's findings can lag, aws-sdk#289).
    available: bool = False
    completed_at: str | None = None
    findings: list[Finding] = field(default_factory=list)
    pages: int = 0

    def add(self, page: dict[str, Any]) -> bool:
        """Take one page; whether the next page is wanted (only for a finished scan)."""
        self.pages += 1
        found = page.get("imageScanFindings") or {}
        if self.pages == 1:
            status = page.get("imageScanStatus") or {}
            self.status = status.get("status") or "UNKNOWN"
            self.description = status.get("description") or ""
            completed = found.get("imageScanCompletedAt")
            self.completed_at = completed.isoformat() if isinstance(completed, datetime) else completed
            self.available = bool(
                completed
                or found.get("findingSeverityCounts")
                or found.get("findings")
                or found.get("enhancedFindings")
            )
        self.findings += [basic_finding(f) for f in found.get("findings") or []]
        self.findings += [enhanced_finding(f) for f in found.get("enhancedFindings") or []]
        return self.finished

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES and self.available


@dataclass(frozen=True)
class Evaluation:
    """One image's findings judged: the counts that decide and what was left out."""

    counts: dict[str, int]
    counted: tuple[Finding, ...]
    ignored: tuple[str, ...]
    not_fixable: int
    fix_unknown: int


@dataclass(frozen=True)
class ScanCheck:
    """The outcome of one check: finished and within the thresholds (with the report), or not yet."""

    done: bool
    message: str
    report: dict[str, Any] | None = None


# ---------------------------------------------------------------------- resolving the image
def resolve(client: Any, gate: ScanGate) -> ResolvedImage:
    """One BatchGetImage: the image's digest and the images whose scans decide."""
    reference = ecr.ref(tag=gate.image_tag) if gate.image_tag else ecr.ref(digest=gate.image_digest)
    found, failures = ecr.fetch_images(client, gate.repository_name, [reference], gate.registry_id)
    key = ecr.ref_key(reference)
    image = found.get(key)
    if image is None:
        failure = failures.get(key) or {}
        reason = failure.get("failureReason") or failure.get("failureCode") or "not found"
        raise ImageNotFoundError(f"{gate.image_label}: {reason}; there is no image to gate")
    return ResolvedImage(image.digest, scan_targets(image))


def scan_targets(image: ecr.FetchedImage) -> tuple[ScanTarget, ...]:
    """The image itself, or for an index its platform images (never its attestation manifests)."""
    if image.media_type not in INDEX_MEDIA_TYPES:
        return (ScanTarget(image.digest),)
    targets = []
    for entry in json.loads(image.manifest).get("manifests", []):
        annotations = entry.get("annotations") or {}
        platform = entry.get("platform") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest" or platform.get("os") == "unknown":
            continue
        if entry.get("mediaType") in INDEX_MEDIA_TYPES:
            raise ScanFailedError(
                "UNSUPPORTED_IMAGE",
                f"image index {image.digest} nests another index ({entry.get('digest')}): gate that index instead",
            )
        parts = (platform.get("os"), platform.get("architecture"), platform.get("variant"))
        targets.append(ScanTarget(entry["digest"], "/".join(p for p in parts if p) or None))
    if not targets:
        raise ScanFailedError("UNSUPPORTED_IMAGE", f"image index {image.digest} lists no platform image to scan")
    return tuple(targets)


# ---------------------------------------------------------------------- findings
def severity(value: Any) -> str:
    """A finding's severity in ECR's vocabulary (anything unknown is UNDEFINED)."""
    name = SEVERITY_ALIASES.get(str(value).upper(), str(value).upper())
    return name if name in _SEVERITY_RANK else "UNDEFINED"


def basic_finding(raw: dict[str, Any]) -> Finding:
    """A basic-scanning finding: ``name``, ``severity`` and ``package_name``/``package_version`` attributes."""
    attributes = {a.get("key"): a.get("value") for a in raw.get("attributes") or []}
    package = " ".join(p for p in (attributes.get("package_name"), attributes.get("package_version")) if p)
    score = attributes.get("CVSS3_SCORE") or attributes.get("CVSS2_SCORE")
    try:
        parsed_score = float(score) if score is not None else None
    except ValueError:
        parsed_score = None
    return Finding(raw.get("name") or "", severity(raw.get("severity")), package, "", None, parsed_score)


def enhanced_finding(raw: dict[str, Any]) -> Finding:
    """An enhanced-scanning (Amazon Inspector) finding: the vulnerability id, its packages and fixes."""
    details = raw.get("packageVulnerabilityDetails") or {}
    packages = details.get("vulnerablePackages") or []
    name = details.get("vulnerabilityId") or raw.get("title") or raw.get("findingArn") or ""
    package = ", ".join(" ".join(p for p in (pkg.get("name"), pkg.get("version")) if p) for pkg in packages)
    fixes = [pkg["fixedInVersion"] for pkg in packages if pkg.get("fixedInVersion") not in (None, "", NO_FIXED_VERSION)]
    fix_available = raw.get("fixAvailable")
    if fix_available:
        fixable: bool | None = fix_available in FIXABLE_VALUES
    else:
        fixable = bool(fixes) if packages else None
    return Finding(name, severity(raw.get("severity")), package, ", ".join(fixes), fixable, raw.get("score"))


def evaluate(gate: ScanGate, findings: Iterable[Finding]) -> Evaluation:
    """Count ``findings`` by severity, less the ignored ones and (``only_fixable``) those without a fix.

    A finding whose fix ECR does not report (basic scanning) is counted even with ``only_fixable``:
    the gate cannot tell it has no fix, and fails closed.
    """
    ignore = set(gate.ignore_findings)
    counts = dict.fromkeys(FINDING_SEVERITIES, 0)
    counted, ignored = [], []
    not_fixable = fix_unknown = 0
    for finding in findings:
        if finding.name in ignore:
            ignored.append(finding.name)
            continue
        if gate.only_fixable:
            if finding.fixable is False:
                not_fixable += 1
                continue
            if finding.fixable is None:
                fix_unknown += 1
        counts[finding.severity] += 1
        counted.append(finding)
    return Evaluation(counts, tuple(counted), tuple(sorted(set(ignored))), not_fixable, fix_unknown)


def exceeded(gate: ScanGate, counts: dict[str, int]) -> dict[str, int]:
    """The severities over their threshold, with their counts."""
    return {s: counts[s] for s, allowed in gate.max_findings.items() if counts[s] > allowed}


def blocking_table(rows: list[tuple[ScanTarget, Finding]], *, limit: int = BLOCKING_TABLE_ROWS) -> str:
    """The blocking findings as a text table, most severe first, at most ``limit`` rows."""
    ordered = sorted(rows, key=lambda row: (_SEVERITY_RANK[row[1].severity], -(row[1].score or 0.0), row[1].name))
    with_platform = any(target.platform for target, _ in rows)
    header = (["platform"] if with_platform else []) + ["name", "severity", "package", "fixed in"]
    lines = [header]
    for target, finding in ordered[:limit]:
        cells = [finding.name, finding.severity, finding.package or "-", finding.fixed_in or "-"]
        lines.append(([target.platform or "-"] if with_platform else []) + [_clip(c) for c in cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    if len(ordered) > limit:
        text.append(f"... and {len(ordered) - limit} more blocking findings")
    return "\n".join(text)


def _clip(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _counts_text(counts: dict[str, int]) -> str:
    shown = [f"{s} {n}" for s, n in counts.items() if n]
    return ", ".join(shown) or "none"


# ---------------------------------------------------------------------- one check
# A step is a call the decisions need: ("read", target) -> TargetScan, or ("start", target) -> scan status.
Step = tuple[str, ScanTarget]


def _steps(gate: ScanGate, image: ResolvedImage, log: Any) -> Generator[Step, Any, ScanCheck]:
    scans = []
    for target in image.targets:
        scan = yield ("read", target)
        if scan.status is None and gate.start_scan:
            try:
                started = yield ("start", target)
            except Exception as error:
                if error_code(error) != "LimitExceededException":
                    refused = _start_refused(gate, target, error)
                    if refused is error:
                        raise
                    raise refused from error
                # The 24-hour rule: a scan ran or runs, so one on push may have begun since the read.
                scan = yield ("read", target)
                if scan.status is None:
                    raise ScanLimitExceededError(
                        f"StartImageScan refused for {target.label(gate.repository_name)} ({error}): ECR starts one "
                        "basic scan per image per 24 hours, a scan on push included, and a limited number per "
                        "registry; there is no scan to wait for"
                    ) from error
            else:
                log.info("Started a basic scan of %s (%s)", target.label(gate.repository_name), started.get("status"))
                scan = TargetScan(target, status=started.get("status") or "IN_PROGRESS")
        scans.append(scan)
    return judge(gate, image, scans, log)


def _start_refused(gate: ScanGate, target: ScanTarget, error: Exception) -> Exception:
    """What a StartImageScan error means for the gate (anything unlisted stays as it is)."""
    code = error_code(error)
    label = target.label(gate.repository_name)
    if code == "UnsupportedImageTypeException":
        return ScanFailedError("UNSUPPORTED_IMAGE", f"ECR cannot scan {label}: {error}")
    if code == "ImageArchivedException":
        return ScanFailedError("IMAGE_ARCHIVED", f"{label} is archived and cannot be scanned: {error}")
    if code == "ImageNotFoundException":
        return ImageNotFoundError(f"{label} is not in the repository: {error}")
    return error


def _unread(scan: TargetScan, gate: ScanGate, error: Exception) -> TargetScan:
    """A DescribeImageScanFindings error: no scan yet is an answer; a missing image fails the gate."""
    code = error_code(error)
    if code == "ScanNotFoundException":
        return scan
    if code == "ImageNotFoundException":
        raise ImageNotFoundError(f"{scan.target.label(gate.repository_name)} is not in the repository: {error}")
    raise error


def judge(gate: ScanGate, image: ResolvedImage, scans: list[TargetScan], log: Any) -> ScanCheck:
    """Decide on the scans of every target: fail, not yet, blocked (raises) or passed (the report)."""
    for scan in scans:
        if scan.status in FAILED_STATUSES:
            raise ScanFailedError(
                scan.status,
                f"the scan of {scan.target.label(gate.repository_name)} is {scan.status}"
                + (f": {scan.description}" if scan.description else "")
                + "; waiting will not bring findings to judge",
            )
    waiting = [_waiting_reason(gate, scan) for scan in scans if not scan.finished]
    if waiting:
        return ScanCheck(False, "; ".join(waiting))
    judged = [(scan, evaluate(gate, scan.findings)) for scan in scans]
    for scan, evaluation in judged:
        log.info(
            "%s: scan %s, completed %s: %d findings; counted %s%s",
            scan.target.label(gate.repository_name),
            scan.status,
            scan.completed_at or "-",
            len(scan.findings),
            _counts_text(evaluation.counts),
            f" (ignored {len(evaluation.ignored)} by name)" if evaluation.ignored else "",
        )
        if evaluation.fix_unknown:
            log.warning(
                "only_fixable: ECR reports no fix information for %d findings of %s (basic scanning): they count",
                evaluation.fix_unknown,
                scan.target.label(gate.repository_name),
            )
    report = _report(gate, image, judged)
    blocking: list[tuple[ScanTarget, Finding]] = []
    over: dict[str, int] = {}
    for scan, evaluation in judged:
        severities = exceeded(gate, evaluation.counts)
        blocking += [(scan.target, f) for f in evaluation.counted if f.severity in severities]
        for severity, count in severities.items():
            over[severity] = max(over.get(severity, 0), count)
    if blocking:
        limits = ", ".join(f"{s} {n} > {gate.max_findings[s]}" for s, n in sorted(over.items(), key=_rank))
        table = blocking_table(blocking)
        report = {**report, "passed": False, "blocking_total": len(blocking)}
        message = (
            f"Scan gate closed for {gate.repository_name}@{image.digest}: {limits} "
            f"({len(blocking)} blocking finding{'' if len(blocking) == 1 else 's'}{_filters_text(gate)}):\n{table}"
        )
        log.error("%s", message)
        raise ScanThresholdExceededError(message, report)
    return ScanCheck(
        True,
        f"Scan gate open for {gate.repository_name}@{image.digest}: counted {_counts_text(report['severity_counts'])}"
        f" within {gate.max_findings or 'no thresholds'}",
        report,
    )


def _rank(item: tuple[str, int]) -> int:
    return _SEVERITY_RANK[item[0]]


def _filters_text(gate: ScanGate) -> str:
    parts = []
    if gate.ignore_findings:
        names = gate.ignore_findings
        parts.append("ignoring " + (", ".join(names) if len(names) <= 5 else f"{len(names)} finding names"))
    if gate.only_fixable:
        parts.append("counting only findings with a fix")
    return "; " + "; ".join(parts) if parts else ""


def _waiting_reason(gate: ScanGate, scan: TargetScan) -> str:
    label = scan.target.label(gate.repository_name)
    if scan.status is None:
        return (
            f"{label} has no scan yet (ScanNotFoundException): waiting for a scan on push, or set start_scan=True "
            "to start a basic scan"
        )
    if scan.status in FINISHED_STATUSES:
        return f"{label}: scan {scan.status}, but ECR has no findings for it yet"
    return f"{label}: scan {scan.status}" + (f" ({scan.description})" if scan.description else "")


def _report(gate: ScanGate, image: ResolvedImage, judged: list[tuple[TargetScan, Evaluation]]) -> dict[str, Any]:
    """The ``return_value``: the counts that decided (for an index, each severity's highest count
    among its platform images, each of which is held to the thresholds) and the digest."""
    images = [
        {
            "digest": scan.target.digest,
            "platform": scan.target.platform,
            "scan_status": scan.status,
            "scan_completed_at": scan.completed_at,
            "findings": len(scan.findings),
            "severity_counts": evaluation.counts,
            "ignored": list(evaluation.ignored),
            "not_fixable": evaluation.not_fixable,
        }
        for scan, evaluation in judged
    ]
    return {
        "repository_name": gate.repository_name,
        "digest": image.digest,
        "image_tag": gate.image_tag,
        "severity_counts": {s: max(e.counts[s] for _, e in judged) for s in FINDING_SEVERITIES},
        "max_findings": dict(gate.max_findings),
        "ignored": sorted({name for _, e in judged for name in e.ignored}),
        "only_fixable": gate.only_fixable,
        "images": images,
        "passed": True,
    }


# ---------------------------------------------------------------------- drivers
def check_scan(client: Any, gate: ScanGate, image: ResolvedImage, *, log: Any = _module_log) -> ScanCheck:
    """One synchronous check (a boto3 client)."""

    def perform(step: Step) -> Any:
        kind, target = step
        if kind == "start":
            return ecr.start_image_scan(client, gate.repository_name, target.digest, gate.registry_id)
        scan = TargetScan(target)
        try:
            for page in ecr.scan_findings_pages(client, gate.repository_name, target.digest, gate.registry_id):
                if not scan.add(page):
                    break
        except Exception as error:
            return _unread(scan, gate, error)
        return scan

    return _run(_steps(gate, image, log), perform)


async def check_scan_async(client: Any, gate: ScanGate, image: ResolvedImage, *, log: Any = _module_log) -> ScanCheck:
    """One check with an aiobotocore client (the deferrable trigger)."""

    async def perform(step: Step) -> Any:
        kind, target = step
        if kind == "start":
            return await ecr.start_image_scan_async(client, gate.repository_name, target.digest, gate.registry_id)
        scan = TargetScan(target)
        try:
            async for page in ecr.scan_findings_pages_async(
                client, gate.repository_name, target.digest, gate.registry_id
            ):
                if not scan.add(page):
                    break
        except Exception as error:
            return _unread(scan, gate, error)
        return scan

    return await _run_async(_steps(gate, image, log), perform)


def _run(steps: Generator[Step, Any, ScanCheck], perform: Callable[[Step], Any]) -> ScanCheck:
    """Perform the steps' calls in turn, sending each outcome back (or throwing its error in)."""
    outcome: Any = None
    failure: Exception | None = None
    while True:
        try:
            step = steps.throw(failure) if failure is not None else steps.send(outcome)
        except StopIteration as done:
            return done.value
        try:
            outcome, failure = perform(step), None
        except Exception as error:
            outcome, failure = None, error


async def _run_async(steps: Generator[Step, Any, ScanCheck], perform: Callable[[Step], Awaitable[Any]]) -> ScanCheck:
    """:func:`_run` with calls that are awaited."""
    outcome: Any = None
    failure: Exception | None = None
    while True:
        try:
            step = steps.throw(failure) if failure is not None else steps.send(outcome)
        except StopIteration as done:
            return done.value
        try:
            outcome, failure = await perform(step), None
        except Exception as error:
            outcome, failure = None, error


async def wait_for_scan(
    client: Any,
    gate: ScanGate,
    image: ResolvedImage,
    *,
    poke_interval: float,
    timeout_at: float | None,
    log: Any = _module_log,
) -> dict[str, Any]:
    """Check every ``poke_interval`` until the gate decides or ``timeout_at`` passes: the trigger's event.

    Transient errors (throttling, 5xx, dropped connections) back off (doubling, at most
    :data:`~airflow_ecr_retag.core.backoff.MAX_BACKOFF_SECONDS` or the interval); a permanent
    one, a failed scan or exceeded thresholds end the wait with an error event (:func:`error_event`).
    """
    failures = 0
    last = "no check finished"
    while True:
        try:
            check = await check_scan_async(client, gate, image, log=log)
        except Exception as error:
            if is_permanent(error):
                return error_event(error)
            failures += 1
            delay = backoff_seconds(poke_interval, failures)
            last = f"transient error: {error}"
            log.warning(
                "Transient error reading the scan of %s (%s); next check in %.1f s", gate.image_label, error, delay
            )
        else:
            if check.done:
                return {"status": "success", "report": check.report}
            failures = 0
            last = check.message
            log.info("%s", check.message)
            delay = poke_interval
        if timeout_at is not None:
            remaining = timeout_at - time.time()
            if remaining <= 0:
                return {
                    "status": "timeout",
                    "message": f"the scan gate for {gate.image_label} did not decide in time: {last}",
                }
            delay = min(delay, remaining)
        await asyncio.sleep(delay)


# ---------------------------------------------------------------------- events
def error_event(error: BaseException) -> dict[str, Any]:
    """A trigger's error event for ``error``, from which :func:`error_from_event` rebuilds it."""
    failure = as_core_error(error)
    if failure is None:
        return {"status": "error", "error": type(error).__name__, "code": error_code(error), "message": str(error)}
    attributes = {k: v for k, v in vars(failure).items() if not k.startswith("_")}
    return {
        "status": "error",
        "error": type(failure).__name__,
        "code": getattr(failure, "code", None),
        "message": str(failure),
        "attributes": attributes,
    }


def error_from_event(event: dict[str, Any]) -> EcrRetagError:
    """The core error an error event stands for (an unknown one as :class:`EcrPermanentError`)."""
    cls = getattr(errors, str(event.get("error")), None)
    message = str(event.get("message") or event)
    if not (isinstance(cls, type) and issubclass(cls, EcrRetagError)):
        return EcrPermanentError(str(event.get("code") or event.get("error") or "TriggerError"), message)
    error = cls.__new__(cls)
    error.args = (message,)
    error.__dict__.update(event.get("attributes") or {})
    return error
