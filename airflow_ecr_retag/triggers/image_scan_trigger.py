"""The deferrable half of EcrImageScanSensor: a trigger that waits for an image's scan with aiobotocore."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ecr_retag.core.image_scan import ResolvedImage, ScanGate, error_event, wait_for_scan
from airflow_ecr_retag.core.tag_poller import ClientKey, shared_client
from airflow_ecr_retag.triggers.connection import AwsConnectionFields


class EcrImageScanTrigger(AwsConnectionFields, BaseTrigger):
    """
    Wait in the triggerer until an image's scan is finished, then judge its findings.

    Checks every ``poke_interval`` (each check reads every platform image's scan through the
    DescribeImageScanFindings paginator) through an async ECR client shared with the other
    triggers of the triggerer that have the same connection, region, endpoint and config (the tag
    triggers' clients: :func:`airflow_ecr_retag.core.tag_poller.shared_client`). Throttling,
    server errors and dropped connections are logged and retried with backoff; a failed scan,
    exceeded thresholds, a missing image, access denied or another error a retry cannot fix ends
    the wait with an error event.

    Events: ``{"status": "success", "report"}``, ``{"status": "error", "error", "code", "message",
    "attributes"}`` (the core error it stands for) or ``{"status": "timeout", "message"}``.

    :param repository_name: The repository.
    :param image: The resolved image: ``{"digest", "targets": [{"digest", "platform"}]}``.
    :param registry_id: The registry's 12-digit account id.
    :param image_tag: The tag the image was resolved from, for the report.
    :param max_findings: Severity -> allowed count.
    :param ignore_findings: Finding names never counted.
    :param only_fixable: Count only findings with a fix.
    :param start_scan: Start a basic scan where an image has none.
    :param poke_interval: Seconds between checks.
    :param timeout_at: Epoch seconds after which the wait ends with a timeout event. Absolute,
        so a trigger resumed by another triggerer keeps the original deadline.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region_name.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for the botocore client.
    """

    def __init__(
        self,
        *,
        repository_name: str,
        image: dict[str, Any],
        registry_id: str | None = None,
        image_tag: str | None = None,
        max_findings: dict[str, int] | None = None,
        ignore_findings: list[str] | None = None,
        only_fixable: bool = False,
        start_scan: bool = False,
        poke_interval: float = 30.0,
        timeout_at: float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ):
        super().__init__()
        self.repository_name = repository_name
        self.image = image
        self.registry_id = registry_id
        self.image_tag = image_tag
        self.max_findings = dict(max_findings or {})
        self.ignore_findings = list(ignore_findings or [])
        self.only_fixable = only_fixable
        self.start_scan = start_scan
        self.poke_interval = float(poke_interval)
        self.timeout_at = timeout_at
        self._set_connection(aws_conn_id, region_name, verify, botocore_config)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {
                "repository_name": self.repository_name,
                "image": self.image,
                "registry_id": self.registry_id,
                "image_tag": self.image_tag,
                "max_findings": self.max_findings,
                "ignore_findings": self.ignore_findings,
                "only_fixable": self.only_fixable,
                "start_scan": self.start_scan,
                "poke_interval": self.poke_interval,
                "timeout_at": self.timeout_at,
                **self.connection_kwargs(),
            },
        )

    @property
    def gate(self) -> ScanGate:
        resolved = ResolvedImage.from_dict(self.image)
        return ScanGate(
            self.repository_name,
            resolved.digest,
            self.image_tag,
            self.registry_id,
            self.max_findings,
            tuple(self.ignore_findings),
            self.only_fixable,
            self.start_scan,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        gate, image = self.gate, ResolvedImage.from_dict(self.image)
        key = ClientKey.of(**self.connection_kwargs())
        try:
            async with shared_client(key, self.hook().get_async_conn) as client:
                event = await wait_for_scan(
                    client, gate, image, poke_interval=self.poke_interval, timeout_at=self.timeout_at, log=self.log
                )
        except Exception as error:
            event = error_event(error)
        if event["status"] == "success":
            self.log.info("Scan gate open for %s@%s", self.repository_name, image.digest)
        else:
            self.log.warning("Scan gate for %s@%s ended: %s", self.repository_name, image.digest, event)
        yield TriggerEvent(event)
