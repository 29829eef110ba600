from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import PokeReturnValue, conf

from airflow_ecr_retag.core.errors import ScanThresholdExceededError
from airflow_ecr_retag.core.image_scan import (
    ResolvedImage,
    ScanCheck,
    ScanGate,
    check_scan,
    error_from_event,
    resolve,
)
from airflow_ecr_retag.exceptions import fail_fast
from airflow_ecr_retag.sensors.deferral import poke_result, settled_event, trigger_arguments
from airflow_ecr_retag.triggers.image_scan_trigger import EcrImageScanTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrImageScanSensor(AwsBaseSensor[EcrHook]):
    """
    Release gate: wait for an image's vulnerability scan in Amazon ECR, then refuse it above thresholds.

    The image is resolved once (one BatchGetImage): a tag to its digest, so the gate judges one
    image however the tag moves, and an image index to its platform images, which is what ECR
    scans (each is held to the thresholds). Each poke then reads every platform image's scan
    through the DescribeImageScanFindings paginator. The scan is finished at ``COMPLETE`` (basic
    scanning) or ``ACTIVE`` (enhanced, continuous scanning) once ECR has its findings; then
    every finding of every page is counted by severity, less ``ignore_findings`` and, with
    ``only_fixable``, findings without a fix.

    The XCom ``return_value`` is the report: ``digest``, ``severity_counts`` (what was judged),
    ``max_findings``, ``ignored``, and per platform image its ``scan_status`` and counts. A count
    over its threshold fails the task (``AirflowFailException``) with a table of the blocking
    findings (name, severity, package, fixed-in version) in the log and the message. A failed,
    unsupported, expired or unavailable scan, a missing image or repository, access denied, or a
    scan that ``start_scan`` cannot start fails at once, not at the timeout.

    In deferrable mode the sensor checks once, then defers to
    :class:`~airflow_ecr_retag.triggers.image_scan_trigger.EcrImageScanTrigger`, which polls with
    aiobotocore in the triggerer, sharing its clients with the tag triggers (install the ``async``
    extra).

    :param repository_name: The repository, e.g. ``team/app``. (templated)
    :param image_digest: The image's digest, ``sha256:<64 hex>``; or give ``image_tag``. (templated)
    :param image_tag: The image's tag, resolved to its digest once. (templated)
    :param registry_id: The registry's 12-digit account id. (templated)
    :param max_findings: Severity -> allowed count, e.g. ``{"CRITICAL": 0, "HIGH": 0}``: the
        severities are CRITICAL, HIGH, MEDIUM, LOW, INFORMATIONAL and UNDEFINED (enhanced
        scanning's UNTRIAGED); an unlisted severity is not limited. (templated)
    :param ignore_findings: Finding names (CVE ids) never counted. (templated)
    :param only_fixable: Count only findings with a fix (enhanced scanning's ``fixAvailable``;
        basic findings carry no fix information and always count).
    :param start_scan: Basic scanning: start a scan (StartImageScan) where an image has none.
    :param deferrable: Wait in the triggerer rather than in a worker slot.
        Defaults to the ``operators.default_deferrable`` setting.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates. See:
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/core/session.html
    :param botocore_config: Configuration dictionary (key-values) for botocore client. See:
        https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
    """

    aws_hook_class = EcrHook
    template_fields: Sequence[str] = aws_template_fields(
        "repository_name", "image_digest", "image_tag", "registry_id", "max_findings", "ignore_findings"
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"max_findings": "json", "ignore_findings": "json"}
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        repository_name: str,
        image_digest: str | None = None,
        image_tag: str | None = None,
        registry_id: str | None = None,
        max_findings: dict[str, int] | str,
        ignore_findings: Sequence[str] | str | None = None,
        only_fixable: bool = False,
        start_scan: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.repository_name = repository_name
        self.image_digest = image_digest
        self.image_tag = image_tag
        self.registry_id = registry_id
        self.max_findings = max_findings
        self.ignore_findings = ignore_findings
        self.only_fixable = only_fixable
        self.start_scan = start_scan
        self.deferrable = deferrable
        self._resolved: ResolvedImage | None = None

    def _gate(self) -> ScanGate:
        with fail_fast():
            return ScanGate.validated(
                repository_name=self.repository_name,
                image_digest=self.image_digest,
                image_tag=self.image_tag,
                registry_id=self.registry_id,
                max_findings=self.max_findings,
                ignore_findings=self.ignore_findings,
                only_fixable=self.only_fixable,
                start_scan=self.start_scan,
            )

    def _check(self, gate: ScanGate) -> tuple[ResolvedImage, ScanCheck]:
        with fail_fast():
            client = self.hook.conn
            if self._resolved is None:
                self._resolved = resolve(client, gate)
                self.log.info(
                    "Gating %s: %s, thresholds %s",
                    gate.image_label,
                    ", ".join(t.label(gate.repository_name) for t in self._resolved.targets),
                    gate.max_findings or "none",
                )
            check = check_scan(client, gate, self._resolved, log=self.log)
        self.log.info("%s", check.message)
        return self._resolved, check

    def execute(self, context: Context) -> Any:
        gate = self._gate()
        self._resolved = None
        if not self.deferrable:
            return super().execute(context=context)
        image, check = self._check(gate)
        if check.done:
            return check.report
        self.defer(
            trigger=EcrImageScanTrigger(
                repository_name=gate.repository_name,
                image=image.to_dict(),
                registry_id=gate.registry_id,
                image_tag=gate.image_tag,
                max_findings=gate.max_findings,
                ignore_findings=list(gate.ignore_findings),
                only_fixable=gate.only_fixable,
                start_scan=gate.start_scan,
                **trigger_arguments(self),
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> PokeReturnValue:
        _, check = self._check(self._gate())
        return poke_result(check.done, check.report)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = settled_event(event)
        if event.get("status") == "success" and isinstance(event.get("report"), dict):
            report = event["report"]
            self.log.info("Scan gate open for %s@%s: %s", report["repository_name"], report["digest"], report)
            return report
        error = error_from_event(event)
        if isinstance(error, ScanThresholdExceededError):  # the blocking-findings table, in the log too
            self.log.error("%s", error)
        with fail_fast():
            raise error
